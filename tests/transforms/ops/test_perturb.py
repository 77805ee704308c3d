"""Harmonizer-style perturbations: identity at 0, direction by sign, values against
independent colour maths (scikit-image HSV, Python's colorsys HLS, numpy formulas)."""
import colorsys
import json

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
from PIL import Image

from chromabeam.transforms.ops.perturb import (
    ARGUMENT_RANGES,
    PERTURBATIONS,
    apply_perturbation,
    apply_perturbations,
    sample_perturbations,
)


@pytest.fixture(scope="module")
def photo():
    arr = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((48, 40), Image.LANCZOS))
    return torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().numpy()


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_zero_is_identity(photo, name):
    assert torch.equal(apply_perturbation(photo, name, 0.0), photo)


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_sign_is_direction(photo, name):
    up, down = apply_perturbation(photo, name, 0.4), apply_perturbation(photo, name, -0.4)
    if name in ("brightness", "highlight", "shadow"):
        measure = lambda t: t.mean().item()  # noqa: E731
    elif name == "contrast":
        measure = lambda t: t.std().item()  # noqa: E731
    elif name == "saturation":
        measure = lambda t: skimage.color.rgb2hsv(_np(t))[..., 1].mean()  # noqa: E731
    else:  # temperature: warmer means more red relative to blue
        measure = lambda t: (t[0].mean() / t[2].mean()).item()  # noqa: E731
    assert measure(down) < measure(photo) < measure(up), name
    for out in (up, down):
        assert out.shape == photo.shape and 0.0 <= out.min() and out.max() <= 1.0


def test_brightness_scales_hsv_value(photo):
    for amount, gain in ((0.3, 1 / 0.7), (-0.3, 0.7)):
        hsv = skimage.color.rgb2hsv(_np(photo))
        hsv[..., 2] *= gain
        expected = np.clip(skimage.color.hsv2rgb(np.clip(hsv, 0, None)), 0, 1)
        if gain > 1:  # skimage's hsv2rgb needs V <= 1: compare where no channel clips
            ok = hsv[..., 2] <= 1
            np.testing.assert_allclose(_np(apply_perturbation(photo, "brightness", amount))[ok], expected[ok], atol=1e-5)
        else:
            np.testing.assert_allclose(_np(apply_perturbation(photo, "brightness", amount)), expected, atol=1e-5)


def test_saturation_against_colorsys_hls():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0.2, 0.8, (200, 3))
    x = torch.from_numpy(rgb.T.reshape(3, 10, 20).astype(np.float32))
    out = apply_perturbation(x, "saturation", -1.0).numpy().reshape(3, -1).T
    for src, res in zip(rgb, out):
        h, light, s = colorsys.rgb_to_hls(*src)
        np.testing.assert_allclose(res, [light] * 3, atol=1e-6)  # fully desaturated to HLS lightness
    a = 0.2
    out = apply_perturbation(x, "saturation", a).numpy().reshape(3, -1).T
    checked = 0
    for src, res in zip(rgb, out):
        h, light, s = colorsys.rgb_to_hls(*src)
        if s + a <= 1 and s / (1 - a) <= 1 and res.min() > 0 and res.max() < 1:
            h2, l2, s2 = colorsys.rgb_to_hls(*res)
            assert abs(l2 - light) < 1e-5 and abs(s2 - s / (1 - a)) < 1e-4 and abs(h2 - h) < 1e-4
            checked += 1
    assert checked > 50


def test_contrast_highlight_shadow_formulas(photo):
    x = _np(photo)
    k = 255 / (256 - np.floor(0.3 * 255)) - 1
    np.testing.assert_allclose(_np(apply_perturbation(photo, "contrast", 0.3)), np.clip(x + (x - x.mean()) * k, 0, 1), atol=1e-5)
    np.testing.assert_allclose(_np(apply_perturbation(photo, "contrast", -0.3)), np.clip(x - 0.3 * (x - x.mean()), 0, 1), atol=1e-5)
    np.testing.assert_allclose(_np(apply_perturbation(photo, "highlight", 0.5)), 1 - (1 - x) ** 1.5, atol=1e-5)
    np.testing.assert_allclose(_np(apply_perturbation(photo, "shadow", 0.5)), x**0.5, atol=1e-5)


def test_temperature_on_grey_and_colour(photo):
    grey = torch.full((3, 8, 8), 0.5)
    warm = apply_perturbation(grey, "temperature", 0.3)
    cool = apply_perturbation(grey, "temperature", -0.3)
    assert warm[0, 0, 0] > warm[1, 0, 0] > warm[2, 0, 0]
    assert cool[0, 0, 0] < cool[1, 0, 0] < cool[2, 0, 0]
    # per-channel gains only: each channel is a scaled copy of the input channel
    out = apply_perturbation(photo, "temperature", 0.2)
    for c in range(3):
        keep = (photo[c] > 0.05) & (out[c] < 1.0)
        ratio = out[c][keep] / photo[c][keep]
        assert keep.sum() > 100 and ratio.std() < 1e-5


@pytest.mark.parametrize("name", ["contrast", "temperature", "saturation"])
def test_batch_uses_per_image_statistics(photo, name):
    batch = torch.stack([photo, photo.flip(0) * 0.5])
    out = apply_perturbation(batch, name, 0.25)
    for i in range(2):
        assert torch.allclose(out[i], apply_perturbation(batch[i], name, 0.25), atol=1e-6)


def test_validation(photo):
    for bad in (1.01, -1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\[-1, 1\]"):
            apply_perturbation(photo, "contrast", bad)
    with pytest.raises(ValueError, match="unknown perturbation"):
        apply_perturbation(photo, "vibrance", 0.1)
    with pytest.raises(ValueError, match="number"):
        apply_perturbation(photo, "contrast", "0.1")
    with pytest.raises(ValueError, match="name"):
        apply_perturbations(photo, [{"name": "contrast"}])


@pytest.mark.parametrize("level, most, scale", [("light", 2, 0.5), ("full", 4, 1.0)])
def test_sampling(level, most, scale):
    rng = np.random.default_rng(1)
    draws = [sample_perturbations(rng, level) for _ in range(300)]
    counts = {len(d) for d in draws}
    assert counts == set(range(1, most + 1))
    for d in draws:
        assert json.loads(json.dumps(d)) == d
        assert len({p["name"] for p in d}) == len(d)
        for p in d:
            assert abs(p["amount"]) <= ARGUMENT_RANGES[p["name"]] * scale
    seen = {p["name"] for d in draws for p in d}
    assert seen == set(PERTURBATIONS)
    assert sample_perturbations(np.random.default_rng(9), level) == sample_perturbations(np.random.default_rng(9), level)
    assert sample_perturbations(rng, "none") == []
    with pytest.raises(ValueError, match="level"):
        sample_perturbations(rng, "heavy")


def test_apply_perturbations_in_order(photo):
    seq = [{"name": "shadow", "amount": 0.3}, {"name": "contrast", "amount": 0.2}]
    expected = apply_perturbation(apply_perturbation(photo, "shadow", 0.3), "contrast", 0.2)
    assert torch.equal(apply_perturbations(photo, seq), expected)
