"""A folder of good files mixed with broken ones: one manifest row per file, valid ones
`ok` (matching an independent Pillow conversion), broken ones `error` with a reason, exit 0."""
import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageOps

import corpus
from chromabeam.pipelines.cli import main


def _expected_rgb(data: bytes) -> np.ndarray:
    """Independent expectation with Pillow's own operations (alpha over white)."""
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if im.mode in ("RGBA", "LA", "P"):
        rgba = im.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"))
    if im.mode.startswith("I;16"):
        return np.repeat((np.asarray(im, np.float64) / 65535 * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def test_mixed_folder_yields_one_row_per_file(tmp_path):
    good = {
        "plain": corpus.jpeg(96, 64),
        "cmyk": corpus.cmyk_jpeg(80, 60),
        "gray": corpus.l_png(64, 64),
        "rgba": corpus.rgba_png(64, 48),
        "sixteen": corpus.i16_png(np.linspace(0, 65535, 48 * 64).reshape(48, 64)),
        "rotated": corpus.oriented_jpeg(6, 64, 40),
    }
    bad = {
        "empty": corpus.EMPTY,
        "cut": corpus.truncated(corpus.png(64, 64)),
        "notes": corpus.text_bytes(),
        "bomb": corpus.png_bomb(),
    }
    pred, target = tmp_path / "in", tmp_path / "ref"
    pred.mkdir(), target.mkdir()
    for key, data in {**good, **bad}.items():
        (pred / f"{key}.png").write_bytes(data)
    for key, data in good.items():
        Image.fromarray(_expected_rgb(data)).save(target / f"{key}.png")
    for key in bad:
        Image.fromarray(corpus.photo(32, 32)).save(target / f"{key}.png")

    out = tmp_path / "out"
    assert main(["evaluate", str(pred), str(target), str(out)]) == 0
    rows = {r["key"]: r for r in pq.read_table(str(out / "manifest")).to_pylist()}
    assert set(rows) == set(good) | set(bad)
    for key in good:
        assert rows[key]["status"] == "ok", rows[key]["error"]
        assert rows[key]["psnr"] >= 48, key  # decode policy == Pillow's own conversion (±1 level)
    assert (rows["rotated"]["width"], rows["rotated"]["height"]) == (40, 64)  # orientation 6 swaps axes
    expected = {"empty": "empty file", "cut": "truncated", "notes": "not a recognised image", "bomb": "3600.0 MP"}
    for key, words in expected.items():
        assert rows[key]["status"] == "error" and words in rows[key]["error"], rows[key]["error"]
