"""transforms.ops.lut_kernel — the compiled residual + LUT pass against the float path
(torch bilinear upsample + ``lut3d_apply``), Pillow's LUT, clipping, and input checks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chromabeam.transforms.ops.dncm import lut3d_apply, lut3d_identity
from chromabeam.transforms.ops.lut_kernel import residual_lut_uint8
from chromabeam.transforms.ops.pixels8 import lut_uint8


def _pixels(h=37, w=53, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mixing_lut(s=9):
    g = torch.linspace(0, 1, s)
    b, gg, r = torch.meshgrid(g, g, g, indexing="ij")
    return torch.stack([r ** 0.7, gg * 0.9 + 0.05, (b ** 1.3) * 0.8 + 0.1 * r])  # (3, b, g, r)


def _float_path(px, lut, residual=None):
    x = torch.from_numpy(px).permute(2, 0, 1)[None].double() / 255
    if residual is not None:
        r = torch.from_numpy(residual).permute(2, 0, 1)[None].double()
        x = (x + F.interpolate(r, size=px.shape[:2], mode="bilinear", align_corners=False)).clamp(0, 1)
    y = lut3d_apply(x.float(), lut[None])[0].permute(1, 2, 0)
    return (y * 255).round().clamp(0, 255).numpy().astype(int)


def test_lut_alone_matches_the_float_path_and_pillow_within_one_level():
    lut, px = _mixing_lut(), _pixels()
    got = residual_lut_uint8(px, lut.permute(1, 2, 3, 0).numpy())
    assert got.shape == px.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - _float_path(px, lut)).max() <= 1
    assert np.abs(got.astype(int) - lut_uint8(px, lut.permute(1, 2, 3, 0).numpy()).astype(int)).max() <= 1
    assert (got.astype(int) != px).mean() > 0.5  # the LUT did change the pixels


def test_identity_lut_returns_the_pixels_exactly():
    px = _pixels(64, 48, seed=3)
    for s in (2, 17, 33):
        np.testing.assert_array_equal(residual_lut_uint8(px, lut3d_identity(s).permute(1, 2, 3, 0).numpy()), px)


def test_residual_is_upsampled_bilinearly_like_torch():
    lut, px = _mixing_lut(17), _pixels(90, 120, seed=1)
    rng = np.random.default_rng(2)
    residual = (0.05 * rng.standard_normal((6, 8, 3))).astype(np.float32)
    got = residual_lut_uint8(px, lut.permute(1, 2, 3, 0).numpy(), residual).astype(int)
    want = _float_path(px, lut, residual)
    assert np.abs(got - want).max() <= 1 and np.abs(got - want).mean() < 0.01
    without = residual_lut_uint8(px, lut.permute(1, 2, 3, 0).numpy()).astype(int)
    assert np.abs(got - without).mean() > 3  # the residual mattered


def test_constant_residual_adds_and_clips():
    px = _pixels(20, 30, seed=1)
    ident = lut3d_identity(17).permute(1, 2, 3, 0).numpy()
    out = residual_lut_uint8(px, ident, np.full((4, 6, 3), 0.1, np.float32)).astype(int)
    want = np.clip(px.astype(int) + 25.5, 0, 255)
    assert np.abs(out - want).max() <= 0.5 + 1e-6
    assert (out[px >= 230] == 255).all() and (out[px <= 228] < 255).all()  # clipped at white, not before


def test_gradient_residual_gives_a_seamless_ramp():
    base = np.full((40, 80, 3), 100, np.uint8)
    ramp = np.linspace(-0.2, 0.2, 8, dtype=np.float32)[None, :, None].repeat(4, 0).repeat(3, 2)
    out = residual_lut_uint8(base, lut3d_identity(9).permute(1, 2, 3, 0).numpy(), ramp).astype(int)
    assert out[:, 0].mean() < 60 and out[:, -1].mean() > 140  # the ends follow the residual
    assert np.all(np.diff(out[20, :, 0]) >= 0)  # monotone across: no blocks or seams


def test_bad_inputs_are_refused():
    px, ident = _pixels(8, 8), lut3d_identity(5).permute(1, 2, 3, 0).numpy()
    with pytest.raises(ValueError, match="uint8"):
        residual_lut_uint8(px.astype(np.float32), ident)
    with pytest.raises(ValueError, match=r"\(S, S, S, 3\)"):
        residual_lut_uint8(px, np.zeros((2, 3, 2, 3)))
    with pytest.raises(ValueError, match="residual"):
        residual_lut_uint8(px, ident, np.zeros((4, 4)))
