"""transforms.ops.shading_stats — what the features say about a tone curve: pure shading
moves every channel alike (slopes 1, nothing left over); a per-channel power curve scales
that channel's log-variation by its exponent; a fade flattens the shadows' log-contrast."""
import pytest
import torch

from chromabeam.transforms.ops.shading_stats import BANDS, SCALES, shading_feature_count, shading_statistics

_PER = BANDS + 1 + 3 * BANDS + BANDS
_SLOPES = slice(BANDS + 1, BANDS + 1 + 3 * BANDS)  # (3, BANDS) at the first scale
_LEFT = slice(_SLOPES.stop, _PER)


def _shaded(colour=(0.9, 0.7, 0.5), size=96, seed=0):
    """A smooth multiplicative light field (0.05…1) on one surface colour: pure shading."""
    g = torch.Generator().manual_seed(seed)
    field = torch.nn.functional.interpolate(torch.rand(1, 1, 6, 6, generator=g), size=(size, size), mode="bicubic",
                                            align_corners=False).clamp(0, 1)
    field = 0.05 + 0.95 * (field - field.min()) / (field.max() - field.min())
    return field * torch.tensor(colour).view(1, 3, 1, 1)


def _populated(x):
    """Bands at the first scale that hold a fair share of the neighbour pairs."""
    from chromabeam.transforms.ops.color import rgb_to_luma

    band = (rgb_to_luma(x)[0, 0] * BANDS).long().clamp(0, BANDS - 1).flatten()
    return torch.bincount(band, minlength=BANDS) > 0.05 * band.numel()


def test_shape_contract_and_bad_input():
    x = torch.rand(2, 3, 61, 99, generator=torch.Generator().manual_seed(0))
    f = shading_statistics(x)
    assert f.shape == (2, shading_feature_count()) and shading_feature_count() == SCALES * _PER
    assert torch.isfinite(f).all()
    with pytest.raises(ValueError, match="shading_statistics: expected float RGB"):
        shading_statistics(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="need H, W >= 4"):
        shading_statistics(torch.rand(1, 3, 3, 64))


def test_pure_shading_moves_all_channels_alike():
    x = _shaded()
    f = shading_statistics(x)[0]
    slopes, ok = f[_SLOPES].view(3, BANDS), _populated(x)
    assert ok.sum() >= 3
    # log(x + ε): the small offset bends the darkest bands a little; slopes stay near 1
    torch.testing.assert_close(slopes[:, ok], torch.ones(3, int(ok.sum())), atol=0.12, rtol=0)
    assert float(f[_LEFT][ok].max()) < -3.0  # log of the left-over share: almost nothing is not shading


def test_a_power_curve_on_red_scales_its_log_variation_by_the_exponent():
    x = _shaded()
    curved = x.clone()
    curved[:, 0] = x[:, 0] ** 0.5
    slopes, ok = shading_statistics(curved)[0, _SLOPES].view(3, BANDS), _populated(curved)
    ratio = slopes[0, ok] / slopes[1, ok]
    assert float(ratio.min()) > 0.4 and float(ratio.max()) < 0.65, ratio
    # green and blue are untouched: they still agree with each other
    torch.testing.assert_close(slopes[1, ok], slopes[2, ok], atol=0.1, rtol=0)


def test_a_fade_flattens_the_shadows_log_contrast():
    x = _shaded(colour=(0.8, 0.8, 0.8))
    faded = 0.25 + 0.75 * x  # lifted blacks
    before, after = shading_statistics(x)[0, :BANDS], shading_statistics(faded)[0, :BANDS]
    dark, light = _populated(x), _populated(faded)
    # the contrast profile's slope over luminance: darkest populated band minus brightest
    span = lambda prof, ok: float(prof[ok.nonzero()[0, 0]] - prof[ok.nonzero()[-1, 0]])
    assert span(after, light) < span(before, dark) - 0.3
