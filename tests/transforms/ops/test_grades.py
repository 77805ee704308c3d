"""Procedural grades: PCHIP against scipy, LUT against the direct float64 function,
realism/non-degeneracy over many samples, vignette geometry."""
import json

import numpy as np
import pytest
import scipy.interpolate
import skimage.color
import skimage.data
import torch
from PIL import Image

from chromabeam.transforms.ops.grades import (
    apply_grade,
    apply_vignette,
    grade_function,
    grade_lut,
    pchip,
    sample_grade,
    validate_grade,
)
from chromabeam.transforms.ops.lut import apply_lut

torch.set_num_threads(1)

IDENTITY = {
    "version": 1,
    "tone": [0.0, 0.25, 0.5, 0.75, 1.0],
    "channel_mid": [0.0, 0.0, 0.0],
    "mix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    "hue_shift": 0.0,
    "saturation": 1.0,
    "split": None,
    "fade": 0.0,
    "vignette": None,
}


@pytest.fixture(scope="module")
def photo():
    arr = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((64, 64), Image.LANCZOS))
    return torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)


@pytest.fixture(scope="module")
def grades():
    rng = np.random.default_rng(2024)
    return [sample_grade(rng, vignette_prob=0.3) for _ in range(150)]


@pytest.mark.parametrize("seed", range(5))
def test_pchip_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    xk = np.sort(np.concatenate([[0.0, 1.0], rng.random(4)]))
    yk = rng.random(6) if seed % 2 else np.sort(rng.random(6))  # also non-monotone data
    x = np.linspace(0, 1, 501)
    np.testing.assert_allclose(pchip(xk, yk, x), scipy.interpolate.PchipInterpolator(xk, yk)(x), atol=1e-12)


def test_samples_are_json_and_valid(grades):
    for params in grades:
        validate_grade(params)
        assert json.loads(json.dumps(params)) == params
    again = [sample_grade(np.random.default_rng(2024), vignette_prob=0.3)]
    assert again[0] == grades[0]


def test_every_component_is_exercised(grades):
    assert any(g["split"] for g in grades) and any(not g["split"] for g in grades)
    assert any(g["vignette"] for g in grades) and any(not g["vignette"] for g in grades)
    assert any(g["fade"] > 0 for g in grades) and any(g["hue_shift"] != 0 for g in grades)
    assert any(g["mix"] != IDENTITY["mix"] for g in grades) and any(any(g["channel_mid"]) for g in grades)
    assert len({json.dumps(g) for g in grades}) == len(grades)


def test_identity_params_are_identity():
    x = np.random.default_rng(0).random((1000, 3))
    np.testing.assert_allclose(grade_function(x, IDENTITY), x, atol=1e-12)


def test_grades_are_never_degenerate(grades, photo):
    luma = lambda t: 0.2126 * t[0] + 0.7152 * t[1] + 0.0722 * t[2]  # noqa: E731
    src_std = luma(photo).std().item()
    ramp = np.repeat(np.linspace(0, 1, 256)[:, None], 3, axis=1)
    deltas = []
    for params in grades:
        out = apply_grade(photo, params)
        y = luma(out)
        assert 0.12 < y.mean().item() < 0.88, params
        assert y.std().item() > 0.5 * src_std, params  # no flattening to a single tone
        assert out.max().item() > 0.5 and out.min().item() < 0.5
        neutral = grade_function(ramp, params) @ np.array([0.2126, 0.7152, 0.0722])
        assert np.all(np.diff(neutral) > 0), params  # tones keep their order
        deltas.append((out - photo).abs().mean().item())
    # moderate but visible changes: typical photo looks
    assert 0.01 < np.median(deltas) < 0.12
    assert max(deltas) < 0.25


def test_grades_are_varied(grades, photo):
    # mean Lab colour of the graded photo spreads out across grades
    labs = []
    for params in grades[:40]:
        out = apply_grade(photo, params).permute(1, 2, 0).double().numpy()
        labs.append(skimage.color.rgb2lab(out).reshape(-1, 3).mean(0))
    labs = np.array(labs)
    assert labs[:, 0].std() > 2.0 and labs[:, 1].std() > 1.0 and labs[:, 2].std() > 1.0


def test_lut_matches_direct_function(grades):
    # size-33 trilinear LUT vs the float64 grade function on random colours. The grade
    # clips at the gamut boundary (mixing, saturation); trilinear interpolation rounds
    # those kinks off, so the worst single pixel is ~3/255 while the RMS stays tiny
    # (measured: PSNR >= 58 dB, max 0.013).
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5))
    pixels = x.permute(1, 2, 0).reshape(-1, 3).double().numpy()
    for params in grades[:20]:
        direct = grade_function(pixels, params)
        via_lut = apply_lut(x, grade_lut(params, size=33)).permute(1, 2, 0).reshape(-1, 3).double().numpy()
        err = np.abs(direct - via_lut)
        assert 10 * np.log10(1.0 / np.mean(err**2)) > 52.0
        assert err.max() < 0.02


def test_saturation_and_hue_keep_greys_neutral():
    params = dict(IDENTITY, hue_shift=30.0, saturation=1.3, mix=[[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8]])
    grey = np.repeat(np.linspace(0, 1, 11)[:, None], 3, axis=1)
    np.testing.assert_allclose(grade_function(grey, params), grey, atol=2e-3)
    mono = grade_function(np.random.default_rng(1).random((50, 3)), dict(IDENTITY, saturation=0.0))
    np.testing.assert_allclose(mono, np.repeat(mono[:, :1], 3, axis=1), atol=1e-12)


def test_vignette_geometry():
    x = torch.full((2, 3, 41, 61), 0.8)
    vig = {"strength": 0.4, "radius": 0.5, "softness": 0.5, "center": [0.5, 0.5]}
    out = apply_vignette(x, vig)
    assert torch.allclose(out[..., 20, 30], x[..., 20, 30])  # centre untouched
    # corner pixel centre: d = |(0.5/61 - 0.5, 0.5/41 - 0.5)| * 2 / sqrt(2)
    d = np.hypot((0.5 / 61 - 0.5) * 2, (0.5 / 41 - 0.5) * 2) / np.sqrt(2)
    t = (d - 0.5) / 0.5
    expected = 0.8 * (1 - 0.4 * t * t * (3 - 2 * t))
    assert torch.allclose(out[..., 0, 0], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    row = out[0, 0, 20, 30:]
    assert torch.all(row[1:] <= row[:-1])  # darkens monotonically outwards
    assert torch.equal(apply_vignette(x, dict(vig, radius=1.5)), x)


def test_apply_grade_batch_strength_and_errors(grades, photo):
    params = next(g for g in grades if g["vignette"])
    batch = torch.stack([photo, photo.flip(-1)])
    out = apply_grade(batch, params)
    assert torch.allclose(out[1], apply_grade(batch[1], params), atol=1e-6)
    assert torch.equal(apply_grade(photo, params, strength=0.0), photo)
    half = apply_grade(photo, params, strength=0.5)
    assert torch.allclose(half, photo + 0.5 * (out[0] - photo), atol=1e-6)
    with pytest.raises(ValueError, match="missing"):
        apply_grade(photo, {k: v for k, v in params.items() if k != "fade"})
    with pytest.raises(ValueError, match="increasing"):
        apply_grade(photo, dict(params, tone=[0.0, 0.5, 0.4, 0.8, 1.0]))
    with pytest.raises(ValueError, match="strength"):
        apply_grade(photo, params, strength=2)
