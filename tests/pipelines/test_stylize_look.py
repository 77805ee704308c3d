"""chromabeam stylize --method look (the default) and looks as .cube presets.

Checks: N styles → N rows per image (``model_name`` "look", the restorer's sha256,
``style_kind`` image / cube); each image reference is restored and fitted once (Beam
counter ``look_references``), .cube looks never; content images go through no model:
a .cube style's output is exactly Pillow's LUT of that table on the decoded pixels, and
``--exact`` (float) is within a level of it; a look saved with ``preset create REF
OUT.cube`` gives the same output as the reference image itself; an unreadable record
gets one error row per style.
"""
import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from chromabeam.pipelines import stylize
from chromabeam.pipelines.job import read_manifest
from chromabeam.pipelines.preset import add_preset_arguments, list_presets, preset_command, shipped_preset
from chromabeam.pipelines.restore import default_weights
from chromabeam.transforms import storage
from chromabeam.transforms.ops.imageio import decode_image
from chromabeam.transforms.ops.lut import LUT3D, format_cube, identity_table, parse_cube
from chromabeam.transforms.ops.pixels8 import lut_uint8
from chromabeam.transforms.stylize_handler import read_look
from corpus import styling_inputs, thumbnail

RESTORER, RESTORER_SHA = default_weights()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("look")
    photos = styling_inputs(root)
    base = thumbnail(photos[4], 128).astype(np.float64)
    Image.fromarray(np.clip(base * (1.2, 1.0, 0.7), 0, 255).round().astype(np.uint8)).save(root / "warm.png")
    # a user's own .cube: swap red and blue
    swap = identity_table(9)[..., ::-1].copy()
    (root / "swap.cube").write_text(format_cube(LUT3D(swap, title="swap")))
    return root


def _args(*argv):
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output")
    stylize.add_arguments(p)
    args = p.parse_args(list(argv))
    args.layout, args.image_format, args.quality, args.overwrite = "files", "png", 95, False
    args.shard_size, args.max_error_rate, args.max_pixels = 256, 0.5, 10**8
    return args


def _rows(out):
    by_key = {}
    for r in read_manifest(out).to_pylist():
        by_key.setdefault(r["key"], {})[r["style"]] = r
    return by_key


def test_look_styles_give_one_row_per_image_and_style(folder, tmp_path):
    out = str(tmp_path / "out")
    styles = f"{folder / 'warm.png'},{folder / 'swap.cube'},mono"
    assert stylize.command(_args(str(folder / "in"), out, "--style", styles, "--device", "cpu"), []) == 0
    by_key = _rows(out)
    assert sorted(by_key) == ["astronaut", "broken", "chelsea", "coffee"]
    assert all(sorted(v) == ["mono", "swap", "warm"] for v in by_key.values())
    assert {r["status"] for r in by_key["broken"].values()} == {"error"}
    good = [r for k, v in by_key.items() if k != "broken" for r in v.values()]
    assert all(r["status"] == "ok" and r["model_name"] == "look" and r["model_sha256"] == RESTORER_SHA for r in good)
    assert {json.loads(r["params"])["style_kind"] for r in good} == {"image", "cube"}
    counters = json.loads(storage.read_bytes(os.path.join(out, "_SUCCESS")))["beam_counters"]
    assert counters["look_references"] == 1 and counters["stylized_images"] == 9
    assert "dncm_encoder_contents" not in counters  # content images go through no model
    swap, mono = read_look(str(folder / "swap.cube")), read_look(shipped_preset("mono", "look"))
    for key in ("astronaut", "chelsea", "coffee"):
        src = decode_image((folder / "in" / f"{key}.png").read_bytes())
        got = decode_image(storage.read_bytes(by_key[key]["swap"]["output_uri"]))
        np.testing.assert_array_equal(got, lut_uint8(src, swap))
        assert np.abs(got.astype(int) - src[..., ::-1]).max() <= 1  # the swap itself, to Pillow's rounding
        grey = decode_image(storage.read_bytes(by_key[key]["mono"]["output_uri"])).astype(int)
        np.testing.assert_array_equal(grey, lut_uint8(src, mono))
        assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 2  # black and white
        warm = decode_image(storage.read_bytes(by_key[key]["warm"]["output_uri"])).astype(float)
        # the reference is warmer than its source photo: so are the outputs than theirs — in
        # chromaticity, (R − B) / (R + G + B): a look that also darkens a little shrinks R − B
        # in levels while making the image warmer
        def warmth(a):
            a = a.astype(float)
            return ((a[..., 0] - a[..., 2]) / (a.sum(axis=-1) + 1.0)).mean()

        assert warmth(warm) > warmth(src) + 0.01, (key, warmth(warm), warmth(src))


def test_exact_float_path_matches_the_8bit_path(folder, tmp_path):
    outs = {}
    for flag in ((), ("--exact",)):
        out = str(tmp_path / ("exact" if flag else "fast"))
        assert stylize.command(_args(str(folder / "in"), out, "--style", "teal-orange", "--device", "cpu", *flag), []) == 0
        outs[bool(flag)] = _rows(out)
    for key in ("astronaut", "chelsea", "coffee"):
        a, b = (decode_image(storage.read_bytes(outs[e][key]["teal-orange"]["output_uri"])).astype(int) for e in (False, True))
        diff = np.abs(a - b)
        assert diff.max() <= 2 and diff.mean() < 0.6, (key, diff.max(), diff.mean())


def test_a_saved_look_gives_what_the_reference_gives(folder, tmp_path):
    parser = argparse.ArgumentParser()
    add_preset_arguments(parser.add_subparsers(dest="command"))
    cube = str(tmp_path / "looks" / "warm-look.cube")
    args = parser.parse_args(["preset", "create", str(folder / "warm.png"), cube, "--device", "cpu",
                              "--description", "test warm"])
    assert preset_command(args) == 0
    lut = parse_cube(open(cube).read())
    assert lut.title == "warm-look" and any(RESTORER_SHA in c for c in lut.comments)
    listed = list_presets(str(tmp_path / "looks"))
    assert [(p["name"], p["kind"], p["size"]) for p in listed] == [("warm-look", "look", 17)]
    outs = {}
    for style in (str(folder / "warm.png"), cube):
        out = str(tmp_path / os.path.basename(style))
        assert stylize.command(_args(str(folder / "in"), out, "--style", style, "--device", "cpu"), []) == 0
        outs[style] = _rows(out)
    for key in ("astronaut", "chelsea", "coffee"):
        a = decode_image(storage.read_bytes(outs[str(folder / "warm.png")][key]["warm"]["output_uri"])).astype(int)
        b = decode_image(storage.read_bytes(outs[cube][key]["warm-look"]["output_uri"])).astype(int)
        assert np.abs(a - b).max() <= 1  # the .cube keeps 7 decimals
    assert preset_command(parser.parse_args(["preset", "create", cube, str(tmp_path / "x.cube")])) == 2
