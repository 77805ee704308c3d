"""chromabeam.transforms.ops.color against colour-science (channels-last numpy reference).

Tolerances: float64 inputs must agree with colour-science to 1e-9 (same formulas and
constants, only rounding differs); float32 inputs to 1e-5 for [0, 1]-range quantities
(linear RGB, XYZ, luma) and 1e-3 for CIELAB (L* in [0, 100]).
"""
import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():  # colour warns that matplotlib is absent
    warnings.simplefilter("ignore")
    import colour

import skimage.data

from chromabeam.transforms.ops import color

DTYPE_TOL_UNIT = {torch.float32: 1e-5, torch.float64: 1e-9}
DTYPE_TOL_LAB = {torch.float32: 1e-3, torch.float64: 1e-9}


def chw(a_hwc: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a_hwc, -1, -3))).to(dtype)


def hwc(t: torch.Tensor) -> np.ndarray:
    return np.moveaxis(t.detach().double().numpy(), -3, -1)


def random_rgb(h=37, w=53, seed=0) -> np.ndarray:
    """Random sRGB, including exact 0/1 and values around the 0.04045 knee."""
    rng = np.random.default_rng(seed)
    rgb = rng.random((h, w, 3))
    rgb[0, :5] = [[0, 0, 0], [1, 1, 1], [0.04045, 0.04, 0.041], [1, 0, 0], [0, 0, 1]]
    return rgb


def astronaut_rgb() -> np.ndarray:
    """skimage's astronaut, subsampled to 128×128 and cropped to an odd 37×53."""
    return (skimage.data.astronaut()[::4, ::4] / 255.0)[40:77, 30:83]


def ref_xyz_to_srgb(xyz_hwc: np.ndarray) -> np.ndarray:
    """colour's sRGB encoding of XYZ through the exact inverse of its RGB→XYZ matrix.

    colour.XYZ_to_sRGB uses the IEC's separately rounded inverse matrix, which is not an
    exact inverse (≤3e-4 apart); chromabeam keeps conversions invertible instead.
    """
    m_inv = np.linalg.inv(colour.RGB_COLOURSPACES["sRGB"].matrix_RGB_to_XYZ)
    return colour.models.eotf_inverse_sRGB(colour.algebra.vecmul(m_inv, xyz_hwc))


def ref_lab(rgb_hwc: np.ndarray) -> np.ndarray:
    # colour.sRGB_to_XYZ applies the sRGB decoding CCTF by default (apply_cctf_decoding=True).
    return colour.XYZ_to_Lab(colour.sRGB_to_XYZ(rgb_hwc))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("image", ["random", "astronaut"])
def test_rgb_to_lab_matches_colour(dtype, image):
    """rgb_to_lab == colour.XYZ_to_Lab(colour.sRGB_to_XYZ(rgb)); ≤1e-3 in float32, ≤1e-9 in float64."""
    rgb = random_rgb() if image == "random" else astronaut_rgb()
    x = chw(rgb, dtype)
    ref = ref_lab(x.double().numpy().transpose(1, 2, 0))  # same (rounded) inputs
    out = color.rgb_to_lab(x)
    assert out.shape == x.shape and out.dtype == dtype
    np.testing.assert_allclose(hwc(out), ref, rtol=0, atol=DTYPE_TOL_LAB[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transfer_functions_match_colour(dtype):
    """srgb_to_linear/linear_to_srgb == colour's eotf_sRGB / eotf_inverse_sRGB (1e-5 f32, 1e-9 f64)."""
    v = torch.linspace(0, 1, 2001, dtype=dtype)
    ref_dec = colour.models.eotf_sRGB(v.double().numpy())
    ref_enc = colour.models.eotf_inverse_sRGB(v.double().numpy())
    tol = DTYPE_TOL_UNIT[dtype]
    np.testing.assert_allclose(color.srgb_to_linear(v).double().numpy(), ref_dec, atol=tol)
    np.testing.assert_allclose(color.linear_to_srgb(v).double().numpy(), ref_enc, atol=tol)
    np.testing.assert_allclose(
        color.linear_to_srgb(color.srgb_to_linear(v)).numpy(), v.numpy(), atol=tol
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rgb_to_xyz_and_back_match_colour(dtype):
    """rgb_to_xyz == colour.sRGB_to_XYZ; xyz_to_rgb == ref_xyz_to_srgb (1e-5 f32, 1e-9 f64),
    and within 5e-4 of colour.XYZ_to_sRGB (whose inverse matrix is rounded)."""
    x = chw(random_rgb(seed=1), dtype)
    rgb = x.double().numpy().transpose(1, 2, 0)
    xyz = color.rgb_to_xyz(x)
    np.testing.assert_allclose(hwc(xyz), colour.sRGB_to_XYZ(rgb), atol=DTYPE_TOL_UNIT[dtype])
    back = hwc(color.xyz_to_rgb(xyz))
    np.testing.assert_allclose(back, ref_xyz_to_srgb(hwc(xyz)), atol=DTYPE_TOL_UNIT[dtype])
    np.testing.assert_allclose(back, colour.XYZ_to_sRGB(hwc(xyz)), atol=5e-4)
    np.testing.assert_allclose(hwc(color.xyz_to_rgb(xyz)), rgb, atol=10 * DTYPE_TOL_UNIT[dtype])


def test_xyz_lab_pair_matches_colour_including_dark_branch():
    """xyz_to_lab / lab_to_xyz == colour.XYZ_to_Lab / Lab_to_XYZ (1e-9, float64), with many
    XYZ values below CIE epsilon (0.008856) so the linear branch is exercised."""
    rng = np.random.default_rng(2)
    xyz = np.concatenate([rng.random((20, 30, 3)), rng.random((20, 30, 3)) * 0.01], axis=0)
    lab = color.xyz_to_lab(chw(xyz))
    np.testing.assert_allclose(hwc(lab), colour.XYZ_to_Lab(xyz), atol=1e-9)
    lab_ref = rng.uniform([0, -100, -100], [100, 100, 100], (16, 16, 3))
    np.testing.assert_allclose(
        hwc(color.lab_to_xyz(chw(lab_ref))), colour.Lab_to_XYZ(lab_ref), atol=1e-9
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lab_to_rgb_matches_colour_and_round_trips(dtype):
    """lab_to_rgb == ref_xyz_to_srgb(colour.Lab_to_XYZ(lab)) (1e-5 f32, 1e-9 f64) and
    inverts rgb_to_lab on the astronaut crop to 1e-4 (f32) / 1e-9 (f64)."""
    x = chw(astronaut_rgb(), dtype)
    lab = color.rgb_to_lab(x)
    ref = ref_xyz_to_srgb(colour.Lab_to_XYZ(hwc(lab)))
    back = color.lab_to_rgb(lab)
    np.testing.assert_allclose(hwc(back), ref, atol=DTYPE_TOL_UNIT[dtype])
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=10 * DTYPE_TOL_UNIT[dtype])


def test_lab_to_rgb_does_not_clip_out_of_gamut():
    """A saturated Lab green outside sRGB maps below 0, as colour's conversion does (1e-9)."""
    lab = torch.tensor([50.0, -120.0, 60.0], dtype=torch.float64).view(3, 1, 1)
    rgb = color.lab_to_rgb(lab)
    ref = ref_xyz_to_srgb(colour.Lab_to_XYZ(np.array([50.0, -120.0, 60.0])))
    np.testing.assert_allclose(rgb.flatten().numpy(), ref, atol=1e-9)
    assert rgb.min() < 0


def test_rgb_to_luma_uses_srgb_y_row():
    """rgb_to_luma == colour's sRGB RGB→XYZ Y row (0.2126, 0.7152, 0.0722) applied to the
    encoded values, 1e-12; output shape (*, 1, H, W)."""
    rgb = random_rgb(seed=3)
    weights = colour.RGB_COLOURSPACES["sRGB"].matrix_RGB_to_XYZ[1]
    out = color.rgb_to_luma(chw(rgb).unsqueeze(0))
    assert out.shape == (1, 1, 37, 53)
    np.testing.assert_allclose(out[0, 0].numpy(), rgb @ weights, atol=1e-12)


def test_batched_equals_per_image():
    """(2, 3, 3, H, W) input: every op equals its per-image result exactly (1e-12, float64)."""
    imgs = torch.stack([chw(random_rgb(seed=s)) for s in range(6)]).view(2, 3, 3, 37, 53)
    for fn in (color.rgb_to_lab, color.rgb_to_xyz, color.rgb_to_luma):
        batched = fn(imgs)
        for i in range(2):
            for j in range(3):
                torch.testing.assert_close(batched[i, j], fn(imgs[i, j]), rtol=0, atol=1e-12)
    lab = color.rgb_to_lab(imgs)
    torch.testing.assert_close(color.lab_to_rgb(lab)[1, 2], color.lab_to_rgb(lab[1, 2]))


def test_gradients_finite_at_black_zero_and_out_of_range():
    """Backprop through every conversion at 0, the knees, negatives and >1 gives finite
    gradients (clamped branches inside torch.where), and gradcheck passes in float64."""
    vals = torch.tensor([0.0, -0.2, 0.04045, 0.0031308, 1.0, 1.3, 0.5], dtype=torch.float64)
    x = vals.repeat(3, 1).view(3, 1, 7).clone().requires_grad_(True)
    total = (
        color.srgb_to_linear(x).sum()
        + color.linear_to_srgb(x).sum()
        + color.rgb_to_lab(x).sum()
        + color.lab_to_rgb(color.rgb_to_lab(x)).sum()
        + color.xyz_to_lab(x).sum()
        + color.rgb_to_luma(x).sum()
    )
    total.backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    inner = torch.rand(1, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    inner = (0.05 + 0.9 * inner).requires_grad_(True)
    assert torch.autograd.gradcheck(color.rgb_to_lab, (inner,))
    assert torch.autograd.gradcheck(lambda t: color.lab_to_rgb(100 * t), (inner,))


def test_input_validation():
    """Wrong channel count, integer dtype or non-tensor inputs raise ValueError naming the issue."""
    with pytest.raises(ValueError, match=r"shape \(\*, 3, H, W\)"):
        color.rgb_to_lab(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        color.rgb_to_lab(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="torch.Tensor"):
        color.srgb_to_linear(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match=r"shape \(\*, 3, H, W\)"):
        color.lab_to_rgb(torch.rand(8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    """On CUDA the result stays on the input's device and matches CPU to 1e-3 in Lab units (float32)."""
    x = chw(astronaut_rgb(), torch.float32)
    out = color.rgb_to_lab(x.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), color.rgb_to_lab(x), rtol=0, atol=1e-3)
