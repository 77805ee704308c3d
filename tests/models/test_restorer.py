"""chromabeam.models.restorer.Restorer — shapes, identity at init, chunk seams, gradients,
determinism, and that it can actually learn a filter's inverse.

PSNR is scikit-image's ``peak_signal_noise_ratio`` (data_range=1).
"""
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from chromabeam.models.restorer import Restorer


def photo(h: int, w: int) -> torch.Tensor:
    img = Image.fromarray(skimage.data.astronaut()).resize((w, h), Image.BILINEAR)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return peak_signal_noise_ratio(a.detach().double().numpy(), b.detach().double().numpy(), data_range=1.0)


def filtered(x: torch.Tensor) -> torch.Tensor:
    """A filter with a global part (curve + tint) and a spatial part (vignette)."""
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    vignette = (1 - 0.4 * (xx**2 + yy**2)).clamp(0, 1)
    return (x**0.7 * torch.tensor([1.0, 0.9, 0.75]).view(1, 3, 1, 1) * vignette).clamp(0, 1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Restorer(pretrained=True).eval()


def test_identity_at_init_small_odd_size(model):
    x = photo(199, 123)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (1, 3, 199, 123)
    assert psnr(y, x) > 50


def test_identity_at_init_999x613_inference(model):
    x = photo(613, 999)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (1, 3, 613, 999)
    assert psnr(y, x) > 50


def test_predict_shapes_and_batches(model):
    x = torch.rand(2, 3, 77, 45, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        lut, grid = model.predict(x)
        y = model(x)
    assert lut.shape == (2, 3, 17, 17, 17)
    assert grid.shape == (2, 12, 8, 16, 16)
    assert y.shape == x.shape


def perturbed(seed: int = 2, **kw) -> Restorer:
    """A restorer whose heads are no longer zero, so the mapping is not the identity."""
    torch.manual_seed(seed)
    m = Restorer(pretrained=False, **kw).eval()
    with torch.no_grad():
        for last in (m.lut_weights, m.grid_head):
            last.weight.normal_(std=0.05)
            last.bias.normal_(std=0.05)
    return m


def test_row_chunks_have_no_seams():
    m = perturbed()
    x = torch.rand(1, 3, 199, 123, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        whole = m(x)
        m.chunk_pixels = 123 * 17  # 12 chunks of 17 rows, the last one short
        chunked = m(x)
    assert psnr(whole, x) < 40  # really not the identity any more
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_gradients_flow_to_all_heads():
    torch.manual_seed(4)
    m = Restorer(pretrained=True, view_size=64).train()
    x = photo(48, 64)
    inp, target = filtered(x), x

    def grads():
        m.zero_grad()
        (m(inp) - target).abs().mean().backward()
        return {n: p.grad for n, p in m.named_parameters()}

    g0 = grads()
    # zero-initialised last layers get a gradient immediately
    for name in ("lut_weights.weight", "lut_weights.bias", "grid_head.weight", "grid_head.bias"):
        assert g0[name] is not None and g0[name].abs().sum() > 0, name
    with torch.no_grad():
        for n, p in m.named_parameters():
            p -= 0.05 * g0[n]
    g1 = grads()
    # after one step every parameter (encoder, both heads, LUT bases, guide) has one
    dead = [n for n, g in g1.items() if g is None or not torch.isfinite(g).all() or g.abs().sum() == 0]
    assert dead == []


def test_learns_to_remove_a_filter():
    torch.manual_seed(5)
    m = Restorer(pretrained=True, view_size=64).train()
    m.encoder.requires_grad_(False)  # heads only: enough to fit one pair, and fast
    x = photo(64, 64)
    inp = filtered(x)
    view = m.view(inp)
    with torch.no_grad():  # a frozen encoder's features are computed once (as the trainer does)
        f16, pooled = m.encode(view)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(20):
        loss = (m.apply(inp, *m.heads(view, f16, pooled)) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_deterministic():
    a, b = perturbed(seed=6), perturbed(seed=6)
    x = torch.rand(1, 3, 57, 91, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ya, ya2, yb = a(x), a(x), b(x)
    assert torch.equal(ya, ya2) and torch.equal(ya, yb)


def test_config_and_input_checks(model):
    assert model.config == {
        "model": "restorer", "lut_size": 17, "lut_basis": 8, "grid_size": 16,
        "grid_bins": 8, "view_size": 256, "width": 64, "hist_bins": 0, "encoder": "efficientnet",
    }
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="lut_size"):
        Restorer(lut_size=1, pretrained=False)
    with pytest.raises(ValueError, match="encoder"):
        Restorer(encoder="resnet", pretrained=False)


def test_soft_histogram_matches_numpy_on_bin_centres():
    """Values exactly on bin centres fall into one bin each: the soft histogram is then
    numpy's ordinary histogram (normalised)."""
    from chromabeam.models.restorer import soft_histogram

    bins = 5
    rng = np.random.default_rng(8)
    levels = rng.integers(0, bins, (2, 3, 9, 7))
    x = torch.from_numpy(levels / (bins - 1)).float()
    got = soft_histogram(x, bins).view(2, 3, bins).numpy()
    for b in range(2):
        for c in range(3):
            want = np.bincount(levels[b, c].ravel(), minlength=bins) / levels[b, c].size
            np.testing.assert_allclose(got[b, c], want, atol=1e-6)
    # in between two centres the mass splits linearly
    half = soft_histogram(torch.full((1, 3, 4, 4), 0.125), bins).view(3, bins)[0]
    np.testing.assert_allclose(half.numpy(), [0.5, 0.5, 0, 0, 0], atol=1e-6)


def test_colour_statistics_variant_odd_size_and_identity_at_init():
    torch.manual_seed(9)
    m = Restorer(pretrained=False, hist_bins=16, view_size=64).eval()
    x = photo(613, 999)
    with torch.inference_mode():
        lut, grid = m.predict(x)
        y = m(x)
    assert lut.shape == (1, 3, 17, 17, 17) and grid.shape == (1, 12, 8, 16, 16)
    assert y.shape == (1, 3, 613, 999)
    assert psnr(y, x) > 50  # zero-initialised heads: still the identity
    assert m.config["hist_bins"] == 16


def test_apply_window_equals_the_same_crop_of_the_full_image():
    m = perturbed(seed=10, hist_bins=4)
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        lut, grid = m.predict(x)
        full = m.apply(x, lut, grid)
        crop = m.apply(x[:, :, 7:30, 13:44], lut, grid, window=(7, 13, 40, 56))
    torch.testing.assert_close(crop, full[:, :, 7:30, 13:44], rtol=0, atol=1e-6)


def test_stats_encoder_identity_at_init_999x613_and_shapes():
    torch.manual_seed(12)
    m = Restorer(encoder="stats", view_size=128, width=32).eval()
    assert m.encoder is None and m.config["encoder"] == "stats" and m.config["hist_bins"] == 16
    assert sum(p.numel() for p in m.parameters()) < 300_000  # no CNN: heads, bases and guide only
    x = photo(613, 999)
    with torch.inference_mode():
        lut, grid = m.predict(x)
        y = m(x)
    assert lut.shape == (1, 3, 17, 17, 17) and grid.shape == (1, 12, 8, 16, 16)
    assert y.shape == (1, 3, 613, 999) and psnr(y, x) > 50


def test_stats_encoder_learns_to_remove_a_filter():
    torch.manual_seed(13)
    m = Restorer(encoder="stats", view_size=64, width=32).train()
    x = photo(64, 64)
    inp = filtered(x)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    before = psnr(inp, x)
    for _ in range(60):
        loss = (m(inp) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.inference_mode():
        after = psnr(m.eval()(inp), x)
    assert after > before + 8, (before, after)
