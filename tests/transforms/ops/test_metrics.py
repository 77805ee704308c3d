"""chromabeam.transforms.ops.metrics against scikit-image and colour-science.

References and tolerances (absolute):
- psnr  vs skimage.metrics.peak_signal_noise_ratio(data_range=1): 1e-4 dB (float32),
  1e-9 dB (float64);
- ssim  vs skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1.0, channel_axis=0) on float64 arrays:
  1e-4 (float32), 1e-9 (float64); ssim_map vs its full=True image per pixel: 5e-4
  (float32: local variances of flat regions lose digits to E[x²] - E[x]²), 1e-9 (float64);
- delta_e2000 vs colour.delta_E(method='CIE 2000') on colour.XYZ_to_Lab(colour.sRGB_to_XYZ)
  Lab values: 1e-3 (float32), 1e-9 (float64).
LPIPS has no installable reference with weights, so it is checked for its defining
properties (0 on identical inputs, > 0 otherwise, symmetric) and against a direct
functional evaluation of the LPIPS formula from the same weights file.
"""
import warnings

import numpy as np
import pytest
import skimage.data
import skimage.metrics
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

with warnings.catch_warnings():  # colour warns that matplotlib is absent
    warnings.simplefilter("ignore")
    import colour

from chromabeam.transforms.ops import metrics

TOL = {torch.float32: 1e-4, torch.float64: 1e-9}
MAP_TOL = {torch.float32: 5e-4, torch.float64: 1e-9}
DE_TOL = {torch.float32: 1e-3, torch.float64: 1e-9}
DTYPES = [torch.float32, torch.float64]


def astronaut(h=None, w=None) -> np.ndarray:
    """skimage's astronaut subsampled to 128×128 (CHW float64), optionally cropped to h×w."""
    img = np.moveaxis(skimage.data.astronaut()[::4, ::4] / 255.0, -1, 0)
    return img if h is None else img[:, 30 : 30 + h, 20 : 20 + w]


def perturbed(img: np.ndarray, seed: int = 0) -> np.ndarray:
    """A plausibly edited copy: gamma, a warm colour cast and noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    out = img**0.8 * np.array([1.05, 1.0, 0.9])[:, None, None]
    return np.clip(out + rng.normal(0, 0.03, img.shape), 0, 1)


def random_pair(h=37, w=53, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random((3, h, w))
    return a, np.clip(a + rng.normal(0, 0.15, a.shape), 0, 1)


PAIRS = {
    "random_37x53": lambda: random_pair(),
    "astronaut_128": lambda: (astronaut(), perturbed(astronaut())),
    "astronaut_37x53": lambda: (astronaut(37, 53), perturbed(astronaut(37, 53), seed=1)),
    "random_11x11": lambda: random_pair(11, 11, seed=2),
}


def t(a: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def sk_ssim(a, b, full=False):
    return skimage.metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0, channel_axis=0, full=full,
    )


def ref_de2000_map(a_chw: np.ndarray, b_chw: np.ndarray) -> np.ndarray:
    lab = [colour.XYZ_to_Lab(colour.sRGB_to_XYZ(np.moveaxis(x, 0, -1))) for x in (a_chw, b_chw)]
    return colour.delta_E(lab[0], lab[1], method="CIE 2000")


# ----------------------------------------------------------------------------- PSNR / SSIM


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", PAIRS)
def test_psnr_matches_skimage(pair, dtype):
    """psnr == skimage peak_signal_noise_ratio (1e-4 dB f32, 1e-9 dB f64); dtype follows input."""
    a, b = PAIRS[pair]()
    ta, tb = t(a, dtype), t(b, dtype)
    ref = skimage.metrics.peak_signal_noise_ratio(
        ta.double().numpy(), tb.double().numpy(), data_range=1.0
    )
    out = metrics.psnr(ta, tb)
    assert out.shape == () and out.dtype == dtype
    assert abs(out.item() - ref) <= TOL[dtype]


def test_psnr_identical_is_inf_and_data_range():
    """Identical images give +inf (documented; stored as is); data_range=255 on 0..255
    data equals skimage with data_range=255 (1e-9)."""
    a, b = random_pair()
    assert metrics.psnr(t(a, torch.float64), t(a, torch.float64)).item() == float("inf")
    ref = skimage.metrics.peak_signal_noise_ratio(a * 255, b * 255, data_range=255)
    got = metrics.psnr(t(a * 255, torch.float64), t(b * 255, torch.float64), data_range=255)
    assert abs(got.item() - ref) <= 1e-9


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", PAIRS)
def test_ssim_matches_skimage(pair, dtype):
    """ssim == skimage structural_similarity (Wang et al. settings) within 1e-4 (f32) /
    1e-9 (f64), at 128², odd 37×53 and the minimum 11×11; ssim_map equals skimage's
    full=True image everywhere, borders included (reflect padding), within 5e-4 (f32) /
    1e-9 (f64)."""
    a, b = PAIRS[pair]()
    ta, tb = t(a, dtype), t(b, dtype)
    ref, ref_map = sk_ssim(ta.double().numpy(), tb.double().numpy(), full=True)
    out = metrics.ssim(ta, tb)
    assert out.shape == () and out.dtype == dtype
    assert abs(out.item() - ref) <= TOL[dtype]
    smap = metrics.ssim_map(ta, tb)
    assert smap.shape == ta.shape
    np.testing.assert_allclose(smap.double().numpy(), ref_map, rtol=0, atol=MAP_TOL[dtype])


def test_ssim_identical_is_one_and_too_small_raises():
    """SSIM(x, x) = 1 (to 1e-6); images under 11×11 raise ValueError like skimage does."""
    a, _ = random_pair()
    assert abs(metrics.ssim(t(a, torch.float32), t(a, torch.float32)).item() - 1) < 1e-6
    with pytest.raises(ValueError, match="at least 11×11"):
        metrics.ssim(torch.rand(3, 10, 40), torch.rand(3, 10, 40))


# ----------------------------------------------------------------------------- CIEDE2000


def random_lab(n: int, rng) -> np.ndarray:
    lab = np.stack(
        [rng.uniform(0, 100, n), rng.uniform(-128, 128, n), rng.uniform(-128, 128, n)], -1
    )
    lab[:50, 1:] = 0  # achromatic colours: the zero-chroma hue conventions
    lab[50:100, 1:] = rng.uniform(-2, 2, (50, 2))  # near-neutral, hue poorly defined
    return lab


@pytest.mark.parametrize("dtype", DTYPES)
def test_delta_e2000_lab_matches_colour_on_random_colours(dtype):
    """delta_e2000_lab == colour.delta_E(method='CIE 2000') on 20 000 random Lab pairs
    (achromatic and near-neutral ones included), 1e-3 (f32) / 1e-9 (f64); 0 for a == b."""
    rng = np.random.default_rng(7)
    lab1, lab2 = random_lab(20000, rng), random_lab(20000, rng)
    lab2[-100:] = lab1[-100:]  # identical colours
    t1, t2 = (t(x.T.reshape(3, 100, 200), dtype) for x in (lab1, lab2))
    ref = colour.delta_E(
        t1.double().numpy().reshape(3, -1).T, t2.double().numpy().reshape(3, -1).T,
        method="CIE 2000",
    )
    out = metrics.delta_e2000_lab(t1, t2)
    assert out.shape == (100, 200) and out.dtype == dtype
    np.testing.assert_allclose(out.double().numpy().ravel(), ref, rtol=0, atol=DE_TOL[dtype])
    assert (out.flatten()[-100:] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", ["random_37x53", "astronaut_128", "astronaut_37x53"])
def test_delta_e2000_rgb_matches_colour(pair, dtype):
    """delta_e2000_map / delta_e2000 on sRGB == colour.delta_E of colour's Lab conversions,
    per pixel and mean, 1e-3 (f32) / 1e-9 (f64)."""
    a, b = PAIRS[pair]()
    ta, tb = t(a, dtype), t(b, dtype)
    ref = ref_de2000_map(ta.double().numpy(), tb.double().numpy())
    dmap = metrics.delta_e2000_map(ta, tb)
    assert dmap.shape == a.shape[1:] and dmap.dtype == dtype
    np.testing.assert_allclose(dmap.double().numpy(), ref, rtol=0, atol=DE_TOL[dtype])
    assert abs(metrics.delta_e2000(ta, tb).item() - ref.mean()) <= DE_TOL[dtype]


def test_losses_have_finite_gradients_even_for_identical_pixels():
    """SSIM and CIEDE2000 backprop finitely where pred == target, including black/neutral
    pixels (zero chroma, zero distance), so they can serve as training losses."""
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    target[:, :, :4] = 0.0  # black
    target[:, :, 4:8] = 0.5  # neutral grey
    pred = target.clone()
    pred[0, :, 8:] += 0.05
    pred.requires_grad_(True)
    (metrics.delta_e2000(pred, target).sum() + (1 - metrics.ssim_map(pred, target)).mean()).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- batching, validation


def test_batch_of_three_equals_per_image():
    """Every metric on a (3, 3, 37, 53) batch equals the per-image results (1e-6, float32),
    and a (1, 3, ...) leading shape is kept: output shape is the input's leading dims."""
    imgs = [PAIRS[k]() for k in ("random_37x53", "astronaut_37x53")] + [random_pair(seed=5)]
    pa = torch.stack([t(a, torch.float32) for a, _ in imgs])
    pb = torch.stack([t(b, torch.float32) for _, b in imgs])
    for fn in (metrics.psnr, metrics.ssim, metrics.delta_e2000):
        batched = fn(pa, pb)
        assert batched.shape == (3,)
        single = torch.stack([fn(pa[i], pb[i]) for i in range(3)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)
        assert fn(pa[None], pb[None]).shape == (1, 3)
    assert metrics.delta_e2000_map(pa, pb).shape == (3, 37, 53)


def test_compute_metrics_without_lpips():
    """compute_metrics returns psnr/ssim/delta_e2000 of shape (*,) equal to the single
    functions, and lpips None when no model is given; works in float64."""
    a, b = PAIRS["astronaut_37x53"]()
    pa = torch.stack([t(a, torch.float64)] * 2)
    pb = torch.stack([t(b, torch.float64), t(a, torch.float64)])
    out = metrics.compute_metrics(pa, pb)
    assert set(out) == {"psnr", "ssim", "delta_e2000", "lpips"} and out["lpips"] is None
    assert out["psnr"].dtype == torch.float64 and out["psnr"].shape == (2,)
    assert out["psnr"][1].item() == float("inf") and out["delta_e2000"][1].item() == 0
    assert abs(out["ssim"][0].item() - sk_ssim(a, b)) <= 1e-9
    assert abs(out["delta_e2000"][0].item() - ref_de2000_map(a, b).mean()) <= 1e-9


@pytest.mark.parametrize(
    "pred, target, message",
    [
        (torch.rand(3, 16, 16), torch.rand(3, 16, 17), "same shape"),
        (torch.rand(4, 16, 16), torch.rand(4, 16, 16), r"shape \(\*, 3, H, W\)"),
        (torch.rand(16, 16), torch.rand(16, 16), r"shape \(\*, 3, H, W\)"),
        (torch.zeros(3, 16, 16, dtype=torch.uint8), torch.zeros(3, 16, 16), "floating-point"),
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16, dtype=torch.float64), "dtypes differ"),
        (np.zeros((3, 16, 16)), torch.rand(3, 16, 16), "torch.Tensor"),
    ],
)
def test_invalid_inputs_raise_value_error(pred, target, message):
    """Each metric rejects mismatched shapes, wrong channel counts, non-float dtypes,
    mixed dtypes and non-tensors with a ValueError naming the problem."""
    for fn in (metrics.psnr, metrics.ssim, metrics.delta_e2000, metrics.compute_metrics):
        with pytest.raises(ValueError, match=message):
            fn(pred, target)


# ----------------------------------------------------------------------------- LPIPS


def random_lpips_weights(path, seed=0, drop=None) -> None:
    """A weights file with the documented tensor names and random values (lin ≥ 0, as in
    the published LPIPS lin layers), optionally without tensor `drop`."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, ref in metrics.AlexNetLPIPS().state_dict().items():
        w = torch.randn(ref.shape, generator=g) * 0.1
        tensors[name] = w.abs() if name.startswith("lin") else w
    tensors["classifier.1.weight"] = torch.zeros(4, 4)  # extra tensors are ignored
    if drop:
        del tensors[drop]
    save_file(tensors, str(path))


def test_lpips_without_weights_explains_how_to_provide_them(monkeypatch):
    """No path and no env var → (None, reason) naming the env var and the file format."""
    monkeypatch.delenv(metrics.LPIPS_WEIGHTS_ENV, raising=False)
    model, reason = metrics.lpips_model("cpu")
    assert model is None
    assert "CHROMABEAM_LPIPS_WEIGHTS" in reason and "safetensors" in reason
    assert metrics.compute_metrics(torch.rand(3, 32, 32), torch.rand(3, 32, 32))["lpips"] is None


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "alex_random.safetensors"
    random_lpips_weights(path)
    return path


def test_lpips_with_random_weights_properties(lpips_file, monkeypatch):
    """Weights from $CHROMABEAM_LPIPS_WEIGHTS: lpips(x, x) == 0 exactly, lpips(x, y) > 0,
    lpips(x, y) == lpips(y, x) (1e-6), batch of 3 == per-image (1e-6), shape (*,)."""
    monkeypatch.setenv(metrics.LPIPS_WEIGHTS_ENV, str(lpips_file))
    model, reason = metrics.lpips_model("cpu")
    assert reason is None and isinstance(model, metrics.AlexNetLPIPS)
    assert len(model.weights_sha256) == 64
    a = t(astronaut(), torch.float32)[:, :64, :64]
    x = torch.stack([a, torch.rand(3, 64, 64), 1 - a])
    y = torch.stack([t(perturbed(a.double().numpy()), torch.float32), torch.rand(3, 64, 64), a])
    same = metrics.lpips(x, x, model)
    assert same.shape == (3,) and (same == 0).all()
    d = metrics.lpips(x, y, model)
    assert (d > 0).all()
    torch.testing.assert_close(d, metrics.lpips(y, x, model), rtol=1e-6, atol=0)
    single = torch.stack([metrics.lpips(x[i], y[i], model) for i in range(3)])
    torch.testing.assert_close(d, single, rtol=1e-6, atol=1e-7)
    out = metrics.compute_metrics(x, y, lpips_model=model)
    torch.testing.assert_close(out["lpips"], d)


def test_lpips_equals_functional_formula(lpips_file):
    """The module equals the LPIPS v0.1 formula evaluated directly with F.conv2d on the
    file's tensors (scaling layer, AlexNet relu1–relu5 taps, channel-normalised squared
    differences, 1×1 lin weights, spatial mean, sum over layers), float64, 1e-10."""
    from safetensors.torch import load_file

    w = {k: v.double() for k, v in load_file(str(lpips_file)).items()}
    model, _ = metrics.lpips_model("cpu", weights=lpips_file)
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 47, 61, generator=g, dtype=torch.float64)

    def taps(img):
        shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
        h = ((img[None] * 2 - 1) - shift) / scale
        out = []
        for i, (stride, pad, pool) in zip(
            (0, 3, 6, 8, 10), ((4, 2, False), (1, 2, True), (1, 1, True), (1, 1, False), (1, 1, False))
        ):
            if pool:
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(F.conv2d(h, w[f"features.{i}.weight"], w[f"features.{i}.bias"], stride, pad))
            out.append(h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    expected = sum(
        (w[f"lin{k}.model.1.weight"] * (fx - fy) ** 2).sum(1).mean()
        for k, (fx, fy) in enumerate(zip(taps(x), taps(y)))
    )
    got = metrics.lpips(x, y, model.double())
    assert abs(got.item() - expected.item()) <= 1e-10 * max(1.0, expected.item())


def test_lpips_bad_weight_files_give_clear_reasons(tmp_path):
    """A missing tensor, a wrong shape, a non-safetensors file and a missing path each give
    (None, reason) naming the problem; load_lpips raises LPIPSWeightsError for them."""
    missing = tmp_path / "missing.safetensors"
    random_lpips_weights(missing, drop="features.3.weight")
    model, reason = metrics.lpips_model("cpu", weights=missing)
    assert model is None and "features.3.weight" in reason and "lack" in reason
    with pytest.raises(metrics.LPIPSWeightsError, match="features.3.weight"):
        metrics.load_lpips(missing)

    wrong = tmp_path / "wrong.safetensors"
    tensors = {k: torch.zeros(v.shape) for k, v in metrics.AlexNetLPIPS().state_dict().items()}
    tensors["lin2.model.1.weight"] = torch.zeros(1, 385, 1, 1)
    save_file(tensors, str(wrong))
    _, reason = metrics.lpips_model("cpu", weights=wrong)
    assert "lin2.model.1.weight" in reason and "(1, 384, 1, 1)" in reason

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04 this is a pickle, not safetensors" * 10)
    _, reason = metrics.lpips_model("cpu", weights=garbage)
    assert "not a readable safetensors file" in reason

    _, reason = metrics.lpips_model("cpu", weights=tmp_path / "nope.safetensors")
    assert "not found" in reason and "nope.safetensors" in reason


def test_lpips_rejects_small_images(lpips_file):
    """LPIPS-Alex needs ≥31 px per side (the second max-pool); smaller raises ValueError."""
    model, _ = metrics.lpips_model("cpu", weights=lpips_file)
    with pytest.raises(ValueError, match="at least 31×31"):
        metrics.lpips(torch.rand(3, 30, 64), torch.rand(3, 30, 64), model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_lpips_cuda_request_without_cuda_is_an_error(lpips_file):
    """Asking for CUDA where none exists raises ValueError instead of falling back."""
    with pytest.raises(ValueError, match="CUDA is not available"):
        metrics.lpips_model("cuda", weights=lpips_file)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(lpips_file):
    """On CUDA every metric stays on the input's device and matches CPU (1e-4; 1e-3 for ΔE)."""
    a, b = PAIRS["astronaut_128"]()
    ta, tb = t(a, torch.float32), t(b, torch.float32)
    model, _ = metrics.lpips_model("cuda", weights=lpips_file)
    cpu_model, _ = metrics.lpips_model("cpu", weights=lpips_file)
    gpu = metrics.compute_metrics(ta.cuda(), tb.cuda(), lpips_model=model)
    cpu = metrics.compute_metrics(ta, tb, lpips_model=cpu_model)
    for key, tol in (("psnr", 1e-4), ("ssim", 1e-4), ("delta_e2000", 1e-3), ("lpips", 1e-4)):
        assert gpu[key].device.type == "cuda"
        assert abs(gpu[key].item() - cpu[key].item()) <= tol


def test_compute_metrics_leaves_undefined_metrics_null_for_tiny_images():
    """An 8×5 image has no SSIM (needs 11 px) but PSNR and ΔE2000 are still defined."""
    a, b = torch.rand(1, 3, 8, 5), torch.rand(1, 3, 8, 5)
    out = metrics.compute_metrics(a, b)
    assert out["ssim"] is None and out["lpips"] is None
    assert torch.allclose(out["psnr"], metrics.psnr(a, b))
    assert torch.allclose(out["delta_e2000"], metrics.delta_e2000(a, b))
