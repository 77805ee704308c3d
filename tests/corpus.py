"""A corpus of good, odd and broken image bytes and shards, built in memory for tests.

Plain functions returning bytes (or small arrays), so any test can ask for exactly the
file it needs. Everything is deterministic (fixed seeds, mtime 0) and small.

Images:  photo / jpeg / png / webp, cmyk_jpeg, l_png, la_png, p_png_transparent,
         rgba_png, i16_png, oriented_jpeg (EXIF 1..8), corrupt_exif_jpeg, truncated,
         EMPTY, text_bytes, html_error_page, png_bomb, animated_gif, animated_webp.
Shards:  tar_bytes (raw members, any names), wds_tar ((key, bytes) samples),
         truncated_tar, hostile_tar, parquet_shard.
"""
from __future__ import annotations

import io
import struct
import tarfile
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

RED = (255, 0, 0)
# Corner marker of oriented_jpeg: 16 px wide, 8 px tall (JPEG-block aligned, asymmetric).
MARK_W, MARK_H = 16, 8


# --------------------------------------------------------------------------- images


def photo(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth-plus-noise RGB uint8 image (H, W, 3): compresses well, no flat regions."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 100 * np.sin((x + y) / 7.0)],
        axis=-1,
    )
    noisy = base + rng.normal(0, 12, base.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str, **save_kw) -> bytes:
    """Bytes of ``image`` saved by Pillow as ``fmt`` (``JPEG``, ``PNG``, ``WEBP``, ``GIF`` …)."""
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    im.save(buf, fmt, **save_kw)
    return buf.getvalue()


def jpeg(width: int = 64, height: int = 48, *, seed: int = 0, quality: int = 95) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=quality)


def png(width: int = 64, height: int = 48, *, seed: int = 0) -> bytes:
    return encode(photo(width, height, seed), "PNG")


def webp(width: int = 64, height: int = 48, *, seed: int = 0, lossless: bool = True) -> bytes:
    return encode(photo(width, height, seed), "WEBP", lossless=lossless)


def cmyk_jpeg(width: int = 64, height: int = 48, *, seed: int = 0) -> bytes:
    """A CMYK JPEG (Pillow writes Adobe-style CMYK) with all four channels varying."""
    rgb = photo(width, height, seed)
    k = np.linspace(0, 160, width, dtype=np.float64)[None, :].repeat(height, 0)
    cmyk = np.concatenate([255 - rgb, k[..., None].astype(np.uint8)], axis=-1)
    return encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)


def l_png(width: int = 64, height: int = 48, *, seed: int = 0) -> bytes:
    return encode(Image.fromarray(photo(width, height, seed)[..., 0], "L"), "PNG")


def alpha_pattern(width: int = 64, height: int = 48) -> np.ndarray:
    """Alpha (H, W) uint8: left quarter 0, next 128, right half 255."""
    a = np.full((height, width), 255, np.uint8)
    a[:, : width // 4] = 0
    a[:, width // 4 : width // 2] = 128
    return a


def la_png(width: int = 64, height: int = 48, *, seed: int = 0) -> bytes:
    la = np.stack([photo(width, height, seed)[..., 1], alpha_pattern(width, height)], axis=-1)
    return encode(Image.fromarray(la, "LA"), "PNG")


def rgba_png(width: int = 64, height: int = 48, *, seed: int = 0) -> bytes:
    rgba = np.concatenate([photo(width, height, seed), alpha_pattern(width, height)[..., None]], axis=-1)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


P_PALETTE = [(0, 0, 0), (200, 30, 40), (20, 180, 60), (10, 20, 230)]


def p_png_transparent(width: int = 64, height: int = 48) -> bytes:
    """Palette PNG; index 0 is transparent (left quarter), indices 1..3 opaque stripes."""
    idx = np.zeros((height, width), np.uint8)
    idx[:, width // 4 :] = 1 + (np.arange(width - width // 4) * 3 // (width - width // 4))[None, :]
    im = Image.fromarray(idx, "P")
    im.putpalette([c for rgb in P_PALETTE for c in rgb])
    return encode(im, "PNG", transparency=0)


def i16_png(values: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG (Pillow mode I;16) of the given uint16 (H, W) values."""
    arr = np.asarray(values, dtype=np.uint16)
    im = Image.fromarray(arr)
    assert im.mode == "I;16", im.mode
    return encode(im, "PNG")


def marked(width: int = 40, height: int = 24) -> np.ndarray:
    """Grey image (H, W, 3) with a red MARK_W×MARK_H block in the top-left corner."""
    arr = np.full((height, width, 3), 128, np.uint8)
    arr[:MARK_H, :MARK_W] = RED
    return arr


def oriented_jpeg(orientation: int, width: int = 40, height: int = 24) -> bytes:
    """``marked()`` stored as JPEG with EXIF Orientation ``orientation`` (1..8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(marked(width, height), "JPEG", quality=95, subsampling=0, exif=exif.tobytes())


def corrupt_exif_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A good JPEG with an APP1 'Exif' segment whose TIFF IFD offset points past its end."""
    good = jpeg(width, height)
    tiff = b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\xde\xad\xbe\xef" * 4
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return good[:2] + app1 + good[2:]


def truncated(data: bytes, fraction: float = 0.6) -> bytes:
    """The first ``fraction`` of ``data``."""
    return data[: int(len(data) * fraction)]


EMPTY = b""


def text_bytes() -> bytes:
    return b"key,label\ncat,1\ndog,2\n"


def html_error_page() -> bytes:
    """What a crawler saves as 'photo.jpg' when the server answered 404."""
    return (
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n"
    )


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """An 8×8 PNG whose IHDR claims ``width``×``height`` (CRC fixed, IDAT unchanged)."""
    src = encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    sig, length, ctype = src[:8], src[8:12], src[12:16]
    assert ctype == b"IHDR" and struct.unpack(">I", length)[0] == 13
    body = struct.pack(">II", width, height) + src[24:29]
    chunk = length + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    return sig + chunk + src[33:]


def solid(width: int, height: int, color=(10, 200, 30)) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (height, width, 3)).copy()


FRAME_COLORS = [(250, 20, 20), (20, 250, 20), (20, 20, 250)]


def _frames(width: int, height: int) -> list[Image.Image]:
    frames = []
    for i, c in enumerate(FRAME_COLORS):
        arr = solid(width, height, c)
        arr[: height // 2, : width // 2] = 255 - np.array(c, np.uint8)  # frames differ spatially too
        arr[i, i] = (0, 0, 0)
        frames.append(Image.fromarray(arr))
    return frames


def animated_gif(width: int = 32, height: int = 24) -> bytes:
    frames = _frames(width, height)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def animated_webp(width: int = 32, height: int = 24) -> bytes:
    frames = _frames(width, height)
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)


# --------------------------------------------------------------------------- shards


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of (member name, data) in order; names are written verbatim."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wds_tar(
    samples: Sequence[tuple[str, bytes]],
    *,
    ext: str = "jpg",
    extra: Mapping[str, Mapping[str, bytes]] | None = None,
) -> bytes:
    """A WebDataset shard: for each (key, image bytes) a ``key.ext`` member, then the
    sample's ``extra[key]`` members (e.g. ``{"json": b"{...}"}``) as ``key.<suffix>``."""
    members = []
    for key, data in samples:
        members.append((f"{key}.{ext}", data))
        for suffix, payload in (extra or {}).get(key, {}).items():
            members.append((f"{key}.{suffix}", payload))
    return tar_bytes(members)


def member_offsets(tar: bytes) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of each member, read back with tarfile."""
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        return [(m.name, m.offset, m.offset_data) for m in tf.getmembers()]


def truncated_tar(samples: Sequence[tuple[str, bytes]], *, cut_in: int, where: str = "data") -> bytes:
    """``wds_tar(samples)`` cut inside sample ``cut_in``: in its data (``"data"``), in its
    header (``"header"``), or just before it, at a member boundary (``"boundary"``)."""
    full = wds_tar(samples)
    _, header, data = member_offsets(full)[cut_in]
    cut = {"data": data + 10, "header": header + 100, "boundary": header}[where]
    return full[:cut]


HOSTILE_NAMES = ("../evil.jpg", "/abs/evil.jpg", "dir/nested.jpg")


def hostile_tar(image: bytes) -> bytes:
    """A tar mixing good samples with hostile or odd members, in this order:

    good1.jpg+good1.json, ../evil.jpg, /abs/evil.jpg, dir/nested.jpg, notes.txt (no image),
    dup.jpg, good2.png, dup.jpg (same key again, different bytes: ``image + b"\\0"``).
    """
    return tar_bytes(
        [
            ("good1.jpg", image),
            ("good1.json", b'{"caption": "a"}'),
            *[(name, image) for name in HOSTILE_NAMES],
            ("notes.txt", b"no image here"),
            ("dup.jpg", image),
            ("good2.png", image),
            ("dup.jpg", image + b"\x00"),
        ]
    )


def parquet_shard(
    rows: Sequence[tuple[object, object]],
    *,
    key_column: str = "key",
    image_column: str = "image",
    image_first: bool = False,
    extra_columns: Mapping[str, Sequence[object]] | None = None,
) -> bytes:
    """Parquet bytes with one row per (key, image bytes); ``None`` makes a null.

    Rename a column (``image_column="img"``) for a shard lacking ``image``; ``image_first``
    stores the image column before the key column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = [
        (key_column, pa.array([r[0] for r in rows], pa.string())),
        (image_column, pa.array([r[1] for r in rows], pa.binary())),
    ]
    if image_first:
        cols.reverse()
    table = pa.table(dict(cols + [(n, pa.array(v)) for n, v in (extra_columns or {}).items()]))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def thumbnail(path: str, side: int) -> np.ndarray:
    """A photo file as uint8 RGB ``(h, w, 3)`` with its long side at most ``side``."""
    im = Image.open(path).convert("RGB")
    im.thumbnail((side, side))
    return np.asarray(im)


def styling_inputs(root, sides: Sequence[int] = (96, 80, 72)) -> list[str]:
    """``root/in``: the first bundled demo photos as small PNGs (long sides ``sides``) and
    ``broken.png`` (a PNG signature, then junk). Returns all demo photo paths, sorted."""
    import glob
    import os

    from chromabeam.pipelines.demo import photos_url

    src = root / "in"
    src.mkdir()
    photos = sorted(glob.glob(os.path.join(photos_url(), "*.jpg")))
    for path, side in zip(photos, sides):
        Image.fromarray(thumbnail(path, side)).save(src / os.path.basename(path).replace(".jpg", ".png"))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return photos
