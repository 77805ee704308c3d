"""decode_image / encode_image against the module's decoding policy.

Independent references: Pillow's own conversions (``Image.convert``,
``ImageOps.exif_transpose``, ``Image.seek``), numpy re-implementations of the formulas
(CMYK → RGB, alpha over white, 16 → 8 bit), and the corpus's known pixel values.
"""
from __future__ import annotations

import io
import resource
import struct
import time
import tracemalloc
import zlib

import corpus
import numpy as np
import pytest
from PIL import Image, ImageOps

from chromabeam.transforms.ops.imageio import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    decode_image,
    encode_image,
    extension,
    probe_size,
    to_float,
    to_uint8,
)


def pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


GOOD = {
    "jpeg": (corpus.jpeg, (48, 64)),
    "png": (corpus.png, (48, 64)),
    "webp": (corpus.webp, (48, 64)),
    "webp_lossy": (lambda: corpus.webp(lossless=False), (48, 64)),
    "cmyk_jpeg": (corpus.cmyk_jpeg, (48, 64)),
    "l_png": (corpus.l_png, (48, 64)),
    "la_png": (corpus.la_png, (48, 64)),
    "rgba_png": (corpus.rgba_png, (48, 64)),
    "p_png_transparent": (corpus.p_png_transparent, (48, 64)),
    "i16_png": (lambda: corpus.i16_png(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21), (48, 64)),
    "oriented_6": (lambda: corpus.oriented_jpeg(6), (40, 24)),
    "corrupt_exif": (corpus.corrupt_exif_jpeg, (48, 64)),
    "1x1": (lambda: corpus.encode(corpus.solid(1, 1), "PNG"), (1, 1)),
    "1x20000": (lambda: corpus.encode(corpus.solid(1, 20000), "PNG"), (20000, 1)),
    "20000x1": (lambda: corpus.encode(corpus.solid(20000, 1), "JPEG"), (1, 20000)),
    "animated_gif": (corpus.animated_gif, (24, 32)),
    "animated_webp": (corpus.animated_webp, (24, 32)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt EXIF
@pytest.mark.parametrize("name", sorted(GOOD))
def test_output_is_always_uint8_hw3(name):
    build, (h, w) = GOOD[name]
    out = decode_image(build())
    assert out.dtype == np.uint8
    assert out.shape == (h, w, 3)
    assert out.flags["C_CONTIGUOUS"] and out.flags["WRITEABLE"]


def test_rgb_formats_match_pillow_and_source():
    src = corpus.photo()
    # Lossless formats: exactly the pixels that were saved.
    np.testing.assert_array_equal(decode_image(corpus.png()), src)
    np.testing.assert_array_equal(decode_image(corpus.webp()), src)
    # Lossy JPEG: exactly Pillow's own decode, and close to the source (q=95).
    data = corpus.jpeg()
    np.testing.assert_array_equal(decode_image(data), pillow_rgb(data))
    assert np.abs(decode_image(data).astype(int) - src).mean() < 10.0  # noisy source, 4:2:0 chroma


def test_cmyk_matches_pillow_convert_and_formula():
    data = corpus.cmyk_jpeg()
    out = decode_image(data).astype(int)
    # Reference 1: Pillow's own CMYK → RGB of the same decoded image (within 1 level).
    assert np.abs(out - pillow_rgb(data).astype(int)).max() <= 1
    # Reference 2: the naive formula R = 255·(1 − C/255)·(1 − K/255) on the CMYK samples.
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
        cmyk = np.asarray(im).astype(np.float64)
    expected = 255 * (1 - cmyk[..., :3] / 255) * (1 - cmyk[..., 3:] / 255)
    assert np.abs(out - expected).max() <= 1.0
    assert cmyk[..., 3].max() > 150  # K really varies, so the formula is exercised


def over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return color.astype(np.float64) * a + 255.0 * (1 - a)


def test_l_is_grey_replicated():
    out = decode_image(corpus.l_png())
    grey = corpus.photo()[..., 0]
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_rgba_composited_over_white():
    out = decode_image(corpus.rgba_png()).astype(int)
    src, alpha = corpus.photo(), corpus.alpha_pattern()
    assert (out[:, :16] == 255).all(), "fully transparent pixels become white"
    np.testing.assert_array_equal(out[:, 32:], src[:, 32:])  # opaque keep their colour
    assert np.abs(out - over_white(src, alpha)).max() <= 1.0  # half-transparent: blend, ±1 rounding
    assert out[0, 16, 0] != 255 or src[0, 16, 0] == 255  # the alpha=128 band is not just white


def test_la_composited_over_white():
    out = decode_image(corpus.la_png()).astype(int)
    grey, alpha = corpus.photo()[..., 1], corpus.alpha_pattern()
    assert (out[:, :16] == 255).all()
    np.testing.assert_array_equal(out[:, 32:, 0], grey[:, 32:])
    expected = over_white(np.repeat(grey[..., None], 3, -1), alpha)
    assert np.abs(out - expected).max() <= 1.0


def test_palette_transparency_composited_over_white():
    out = decode_image(corpus.p_png_transparent())
    assert (out[:, :16] == 255).all(), "transparent palette index becomes white, not black"
    # Opaque palette entries keep their exact colours, one per stripe.
    stripes = {tuple(out[0, x]) for x in range(16, 64)}
    assert stripes == set(corpus.P_PALETTE[1:])


def test_i16_scaled_not_clipped():
    values = np.array([[65535, 32768, 0, 25600, 257, 255]], np.uint16)
    out = decode_image(corpus.i16_png(values))
    # round(v / 65535 · 255): 65535→255, 32768→128 (127.50…), 25600→100 (99.6), 257→1, 255→1.
    np.testing.assert_array_equal(out[0, :, 0], [255, 128, 0, 100, 1, 1])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def _red_box(arr: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) bounds (inclusive) of the clearly red pixels."""
    r, g, b = (arr[..., i].astype(int) for i in range(3))
    ys, xs = np.nonzero((r > 200) & (g < 70) & (b < 70))
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


# Orientation → numpy op that displays the stored pixels upright (EXIF 2.3 table).
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(orientation):
    data = corpus.oriented_jpeg(orientation)
    out = decode_image(data)
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif()[0x0112] == orientation
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(out, reference)  # Pillow's transpose, applied independently

    expected = _UPRIGHT[orientation](corpus.marked())  # and the numpy table on the source
    assert out.shape == expected.shape == ((24, 40, 3) if orientation <= 4 else (40, 24, 3))
    assert _red_box(out) == _red_box(expected)


def test_corrupt_exif_still_decodes():
    data = corpus.corrupt_exif_jpeg()
    with pytest.warns(UserWarning):  # Pillow notices the corruption …
        with Image.open(io.BytesIO(data)) as im:
            im.getexif()
    with pytest.warns(UserWarning):
        out = decode_image(data)  # … and decoding keeps the pixels anyway
    np.testing.assert_array_equal(out, pillow_rgb(corpus.jpeg()))


@pytest.mark.parametrize(
    "name, data, needle",
    [
        ("empty", corpus.EMPTY, "empty"),
        ("text", corpus.text_bytes(), "not a recognised image format"),
        ("html", corpus.html_error_page(), "HTML"),
        ("truncated_jpeg", corpus.truncated(corpus.jpeg(), 0.6), "truncated"),
        ("truncated_png", corpus.truncated(corpus.png(), 0.6), "truncated"),
        ("truncated_webp", corpus.truncated(corpus.webp(), 0.6), "truncated"),
        ("truncated_webp_lossy", corpus.truncated(corpus.webp(lossless=False), 0.9), "truncated"),
        ("truncated_gif", corpus.truncated(corpus.animated_gif(), 0.3), "truncated"),
        ("jpeg_header_only", corpus.jpeg()[:200], "truncated"),
    ],
)
def test_bad_bytes_raise_specific_decode_error(name, data, needle):
    with pytest.raises(DecodeError) as info:
        decode_image(data)
    assert needle in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)
    # The reason's kind comes before the first colon (the run summary groups by it).
    assert needle.lower() in str(info.value).split(":", 1)[0].lower() or needle == "HTML"


def test_html_message_says_html_document():
    with pytest.raises(DecodeError, match=r"HTML/XML document"):
        decode_image(b"  \n<html><body>Access denied</body></html>")


def test_bomb_refused_fast_from_header():
    bomb = corpus.png_bomb(60000, 60000)
    assert struct.unpack(">II", bomb[16:24]) == (60000, 60000)  # IHDR width, height
    assert zlib.crc32(bomb[12:29]) == struct.unpack(">I", bomb[29:33])[0]  # valid CRC
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        decode_image(bomb)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    msg = str(info.value)
    assert "3600.0 MP" in msg and "80 MP limit" in msg, msg
    assert "truncated" not in msg  # a decode attempt would fail on the 8×8 IDAT instead
    assert elapsed < 1.0
    assert peak < 5 * 2**20  # Python-side allocations stay tiny
    # 60000² RGB would be 10.8 GB; the process peak must not have grown noticeably.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200 * 1024


def test_bomb_between_pillow_warning_and_error_uses_our_limit():
    # 10000×9000 = 90 MP: above Pillow's warning threshold (~89.5 MP), below its error;
    # our own check must refuse it, naming the dimensions and the configured limit.
    with pytest.raises(DecodeError, match=r"10000x9000 = 90\.0 MP, over the 80 MP limit"):
        decode_image(corpus.png_bomb(10000, 9000))
    with pytest.raises(DecodeError, match=r"10000x9000 = 90\.0 MP, over the 50 MP limit"):
        decode_image(corpus.png_bomb(10000, 9000), max_pixels=50_000_000)


def test_max_pixels_configurable():
    data = corpus.png(64, 48)  # 3072 pixels
    assert decode_image(data, max_pixels=3072).shape == (48, 64, 3)
    with pytest.raises(DecodeError, match=r"64x48 = 0\.0 MP, over the 0\.003071 MP limit"):
        decode_image(data, max_pixels=3071)
    assert DEFAULT_MAX_PIXELS == 80_000_000


def _first_frame(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 3
        im.seek(0)
        first = np.asarray(im.convert("RGB"))
        im.seek(1)
        second = np.asarray(im.convert("RGB"))
    assert np.abs(first.astype(int) - second).max() > 100  # frames really differ
    return first


@pytest.mark.parametrize("build", [corpus.animated_gif, corpus.animated_webp], ids=["gif", "webp"])
def test_animated_gives_first_frame(build):
    data = build()
    out = decode_image(data)
    np.testing.assert_array_equal(out, _first_frame(data))
    assert tuple(out[-1, -1]) == corpus.FRAME_COLORS[0]


def test_probe_size():
    assert probe_size(corpus.png(64, 48)) == (64, 48)
    assert probe_size(corpus.oriented_jpeg(6)) == (40, 24)  # stored size, before orientation
    with pytest.raises(DecodeError, match="not a recognised image format"):
        probe_size(corpus.text_bytes())
    with pytest.raises(DecodeError, match=r"3600\.0 MP"):
        probe_size(corpus.png_bomb())


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "png", "webp"])
def test_encode_deterministic(fmt):
    src = corpus.photo(48, 32, seed=3)
    a, b = encode_image(src, fmt), encode_image(src.copy(), fmt)
    assert a == b
    with Image.open(io.BytesIO(a)) as im:
        assert im.format == {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
        assert im.size == (48, 32) and im.mode == "RGB"


def test_png_round_trip_lossless():
    src = corpus.photo(48, 32, seed=5)
    data = encode_image(src, "png")
    np.testing.assert_array_equal(decode_image(data), src)
    np.testing.assert_array_equal(pillow_rgb(data), src)  # and Pillow agrees


def test_jpeg_round_trip_close():
    src = corpus.photo(48, 32, seed=5)
    back = decode_image(encode_image(src, "jpg", quality=95)).astype(int)
    assert np.abs(back - src).mean() < 4.0
    low = decode_image(encode_image(src, "jpg", quality=30)).astype(int)
    assert np.abs(low - src).mean() > np.abs(back - src).mean()  # quality is honoured


@pytest.mark.parametrize(
    "pixels, fmt",
    [
        (np.zeros((8, 8, 3), np.float32), "png"),
        (np.zeros((8, 8), np.uint8), "png"),
        (np.zeros((8, 8, 4), np.uint8), "png"),
        (np.zeros((8, 8, 3), np.uint8), "gif"),
    ],
)
def test_encode_rejects_bad_input(pixels, fmt):
    with pytest.raises(ValueError):
        encode_image(pixels, fmt)


def test_extension():
    assert [extension(f) for f in ("jpg", "JPEG", "png", "webp")] == ["jpg", "jpg", "png", "webp"]


def test_float_conversions_round_trip():
    src = corpus.photo(16, 8)
    t = to_float(src)
    assert t.shape == (3, 8, 16) and str(t.dtype) == "torch.float32"
    np.testing.assert_allclose(t.numpy(), src.transpose(2, 0, 1) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(to_uint8(t), src)


def test_reasons_are_deterministic():
    # Pillow's message names the BytesIO by memory address; the reason must not.
    reasons = set()
    for _ in range(3):
        with pytest.raises(DecodeError) as info:
            decode_image(corpus.text_bytes())
        reasons.add(str(info.value))
    assert len(reasons) == 1 and " at 0x" not in reasons.pop()


def test_is_plain_jpeg_only_for_rgb_jpegs_without_rotation():
    from chromabeam.transforms.ops.imageio import is_plain_jpeg

    assert is_plain_jpeg(corpus.jpeg(32, 24))
    assert not is_plain_jpeg(corpus.cmyk_jpeg(32, 24))
    assert not is_plain_jpeg(corpus.oriented_jpeg(6))
    assert is_plain_jpeg(corpus.oriented_jpeg(1))
    assert not is_plain_jpeg(corpus.png(32, 24))
    assert not is_plain_jpeg(corpus.truncated(corpus.png(32, 24)))
