"""transforms.ops.colour_stats — the features say what a look changed: quantiles of a
known distribution, the tint of a tinted band, a vignette's dark corners."""
import numpy as np
import pytest
import torch

from chromabeam.transforms.ops.colour_stats import (
    CELL_FEATURES,
    cell_colour_features,
    colour_statistics,
    global_colour_features,
    global_feature_count,
)

BINS = 16
_Q = slice(3 * BINS + 64, 3 * BINS + 64 + 27)  # the 3 × 9 quantiles
_MASS = slice(_Q.stop, _Q.stop + 8)
_TINT = slice(_MASS.stop, _MASS.stop + 24)


def test_shapes_at_odd_sizes_and_feature_count():
    x = torch.rand(3, 3, 61, 99, generator=torch.Generator().manual_seed(0))
    g = global_colour_features(x, BINS)
    assert g.shape == (3, global_feature_count(BINS)) and global_feature_count(BINS) == 180
    assert colour_statistics(x, BINS).shape == (3, 3 * BINS + 64)
    assert cell_colour_features(x, 5).shape == (3, CELL_FEATURES, 5, 5)
    assert torch.isfinite(g).all()


def test_quantiles_of_a_ramp_are_the_quantile_levels():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    q = global_colour_features(ramp, BINS)[0, _Q].view(3, 9)
    want = torch.tensor([0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99])
    torch.testing.assert_close(q, want.expand(3, 9), atol=0.02, rtol=0)


def test_quantiles_match_torch_quantile_on_every_path():
    # numpy's sort on CPU without autograd, torch's sort where gradients flow: both give
    # torch.quantile's linear interpolation
    from chromabeam.transforms.ops.colour_stats import _QUANTILES, _quantiles

    flat = torch.rand(4, 3, 1001, generator=torch.Generator().manual_seed(1))
    want = torch.quantile(flat, torch.tensor(_QUANTILES), dim=2).permute(1, 2, 0)
    torch.testing.assert_close(_quantiles(flat, _QUANTILES), want, rtol=0, atol=1e-6)
    graded = flat.clone().requires_grad_(True)
    got = _quantiles(graded, _QUANTILES)
    torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-6)
    got.sum().backward()
    assert graded.grad.abs().sum() > 0
    with torch.inference_mode():  # what restore runs under
        torch.testing.assert_close(_quantiles(flat, _QUANTILES), want, rtol=0, atol=1e-6)


def test_grey_has_no_tint_and_tinted_shadows_show_in_the_dark_bands():
    grey = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    tint = global_colour_features(grey, BINS)[0, _TINT].view(8, 3)
    assert tint.abs().max() < 1e-5
    blue_shadows = grey.clone()
    dark = grey[:, 0] < 0.3
    blue_shadows[:, 2][dark] += 0.05  # blue lifted in the shadows only
    t = global_colour_features(blue_shadows, BINS)[0, _TINT].view(8, 3)
    assert t[0, 2] > 0.1 and t[1, 2] > 0.1  # darkest bands: blue above their luminance
    assert t[-1].abs().max() < 1e-5  # highlights untouched
    mass = global_colour_features(grey, BINS)[0, _MASS]
    assert mass.sum() == pytest.approx(8.0, rel=1e-4)  # a flat luminance histogram reads 1 per band


def test_vignette_shows_as_dark_corner_cells():
    h = w = 64
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = (0.7 * (1 - 0.5 * (xx**2 + yy**2) / 2)).expand(1, 3, h, w).contiguous()
    c = cell_colour_features(img, 4)[0]
    mean, offset = c[:3], c[3:6]
    assert (offset[:, 0, 0] < 0).all() and (offset[:, 1, 1] > 0).all()
    torch.testing.assert_close(mean[:, 1, 1], img[0, :, 16:32, 16:32].mean(dim=(1, 2)), rtol=0, atol=1e-6)


def test_differentiable_and_input_checks():
    x = torch.rand(2, 3, 40, 40, requires_grad=True)
    (global_colour_features(x).sum() + cell_colour_features(x, 4).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        global_colour_features(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="grid"):
        cell_colour_features(torch.rand(1, 3, 8, 8), 0)
    np.testing.assert_array_equal(global_colour_features(x.detach()).numpy(), global_colour_features(x.detach()).numpy())
