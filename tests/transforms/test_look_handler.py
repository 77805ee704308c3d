"""Look transfer's style stage: ``fit_look`` and ``LookHandler``.

- a restorer that changes nothing (an untrained Restorer is the identity) gives the
  identity look: the reference has no look to take off;
- with the shipped restorer, the look fitted from a graded photo moves *other* photos
  towards the same grade (PSNR against the graded truth goes up);
- ``.cube`` looks pass through unchanged; DNCM ``.json`` presets are refused with the fix;
- the fit is at most ``REFERENCE_SIDE`` px: a large reference costs what a small one does.
"""
import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image

from chromabeam.models.restorer import Restorer
from chromabeam.pipelines.demo import photos_url
from chromabeam.pipelines.preset import SHIPPED_LOOKS, shipped_preset
from chromabeam.pipelines.restore import default_weights
from chromabeam.transforms.look_handler import LOOK_LUT_SIZE, LookHandler, fit_look
from chromabeam.transforms.ops.filters import apply_filter
from chromabeam.transforms.ops.grades import apply_grade
from chromabeam.transforms.ops.imageio import to_float, to_uint8
from chromabeam.transforms.ops.lut import identity_table
from chromabeam.transforms.ops.pixels8 import lut_uint8
from chromabeam.transforms.stylize_handler import StyleSource, read_look, style_source
from corpus import thumbnail

PHOTOS = sorted(glob.glob(os.path.join(photos_url(), "*.jpg")))


def _psnr(a, b):
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _grade(pixels, name):
    """A shipped preset's procedural grade, or an IFFI filter by name."""
    x = to_float(pixels)[None]
    out = apply_grade(x, SHIPPED_LOOKS[name][1]) if name in SHIPPED_LOOKS else apply_filter(x, name, 1.0)
    return to_uint8(out.clamp(0, 1)[0])


@pytest.fixture(scope="module")
def handler_and_model():
    url, sha = default_weights()
    handler = LookHandler(weights=url, expected_sha256=sha, device="cpu")
    return handler, handler.load_model()


def test_a_restorer_that_changes_nothing_gives_the_identity_look():
    identity = Restorer(encoder="stats", view_size=64, width=8, lut_basis=2, pretrained=False).eval()
    table = fit_look(identity, thumbnail(PHOTOS[4], 96))
    assert table.shape == (LOOK_LUT_SIZE,) * 3 + (3,) and table.dtype == np.float32
    np.testing.assert_allclose(table, identity_table(LOOK_LUT_SIZE), rtol=0, atol=2e-6)


# measured with the shipped restorer-82d9f99786d6, as with d366d20a2792 before it (gain over doing nothing on the 3
# photos): 1977 +27.3/+30.6/+26.4 dB, faded +6.9/+7.4/+6.6 (restorer-1c172988f99a before
# it, without the strength stretch: +26.8/+30.2/+25.8, +5.7/+6.2/+5.4;
# restorer-41a58a247a14, calibrated sharper and reading the whole view alone:
# +27.2/+30.7/+26.3, +8.5/+9.2/+8.5). (A mild `warm` grade gains +0.1: the restorer
# cannot tell a mild warm cast from the photo's own colours.)
@pytest.mark.parametrize("look, least", [("1977", 15.0), ("faded", 2.0)])
def test_the_fitted_look_moves_other_photos_towards_the_grade(handler_and_model, look, least):
    _, model = handler_and_model
    table = fit_look(model, _grade(thumbnail(PHOTOS[4], 128), look))  # motorcycle: varied colours
    gains = []
    for path in PHOTOS[:3]:
        content = thumbnail(path, 96)
        truth = _grade(content, look)
        gains.append(_psnr(lut_uint8(content, table), truth) - _psnr(content, truth))
    assert min(gains) > least, gains


def test_the_reference_is_fitted_at_most_reference_side(handler_and_model):
    _, model = handler_and_model
    ref = _grade(thumbnail(PHOTOS[4], 256), "warm")
    big = np.asarray(Image.fromarray(ref).resize((1024, 1024 * ref.shape[0] // ref.shape[1]), Image.BILINEAR))
    seen = []
    hook = model.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
    try:
        fit_look(model, big)
    finally:
        hook.remove()
    assert seen and max(seen[0][-2:]) == 512


def test_handler_passes_cube_looks_through_and_refuses_dncm_presets(handler_and_model, tmp_path):
    handler, model = handler_and_model
    cube = style_source(shipped_preset("warm", "look"), "look")
    (result,) = handler.run_inference([cube], model)
    assert result.inference.kind == "cube" and result.inference.r is None
    np.testing.assert_array_equal(result.inference.lut, read_look(shipped_preset("warm", "look")))
    dncm_preset = StyleSource("warm", shipped_preset("warm", "dncm"), r=((1.0,),))
    with pytest.raises(ValueError, match="use --method dncm"):
        handler.run_inference([dncm_preset], model)


def test_an_image_reference_is_restored_once_and_fitted(handler_and_model, tmp_path):
    handler, model = handler_and_model
    path = tmp_path / "ref.png"
    Image.fromarray(_grade(thumbnail(PHOTOS[4], 96), "1977")).save(path)
    (result,) = handler.run_inference([style_source(str(path), "look")], model)
    entry = result.inference
    assert entry.kind == "image" and entry.key == "ref" and result.model_id == model.weights_sha256
    with torch.inference_mode():
        np.testing.assert_allclose(entry.lut, fit_look(model, np.asarray(Image.open(path))), rtol=0, atol=1e-6)
    # 1977 lifts black to a dark pink, (84, 19, 59)/255: the fitted look does the same
    np.testing.assert_allclose(entry.lut[0, 0, 0], np.array([84, 19, 59]) / 255, rtol=0, atol=0.03)
