"""Property tests with hypothesis (derandomized: the same ~1,100 cases on every run).

- decode_image on mutated JPEG/PNG/WebP/GIF/BMP bytes (byte flips, truncation, insertion,
  header fields rewritten with valid checksums) returns RGB uint8 within the pixel limit
  or raises DecodeError with a reason, nothing else, within a per-case deadline;
- read_shard on mutated WebDataset tars and Parquet shards never raises; every sample
  wholly before the damage comes out exactly once with its bytes; nothing is lost
  silently (either every sample comes out or one shard-level error names the shard);
  a Parquet file that pyarrow itself reads gives exactly one item per row, in order;
- a few real `chromabeam evaluate` runs on folders of mutated files: one manifest row per
  file, each error row with a reason.
"""
import contextlib
import io
import random
import signal
import struct
import time
import zlib

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import corpus
from chromabeam.pipelines.cli import main
from chromabeam.schemas.records import ImageRecord, ReadError
from chromabeam.transforms.ops.imageio import DecodeError, decode_image
from chromabeam.transforms.read import read_shard

pytestmark = pytest.mark.timeout(240)

MAX_PIXELS = 2_000_000  # keeps header-rewritten "big" images cheap; the policy is the same at 80 MP
CASE_DEADLINE_S = 5  # one 64 px decode or one small shard takes milliseconds
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(BaseException):
    """Raised by the per-case alarm; a BaseException so no `except Exception` swallows it."""


@contextlib.contextmanager
def deadline(seconds=CASE_DEADLINE_S):
    """SIGALRM after ``seconds``; pytest-timeout's own alarm (same signal) is put back after."""
    def fire(*_):
        raise Hang(f"case ran over {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001))


# --------------------------------------------------------------------------- seed images


def _seeds():
    rgb = corpus.photo(40, 30, seed=1)
    return {
        "jpeg": corpus.jpeg(40, 30, seed=1),
        "progressive": corpus.encode(rgb, "JPEG", quality=80, progressive=True),
        "png": corpus.png(40, 30, seed=1),
        "png_rgba": corpus.rgba_png(40, 30, seed=1),
        "webp_lossless": corpus.webp(40, 30, seed=1, lossless=True),
        "webp_lossy": corpus.webp(40, 30, seed=1, lossless=False),
        "gif": corpus.animated_gif(32, 24),
        "bmp": corpus.encode(rgb, "BMP"),
        "exif_jpeg": corpus.oriented_jpeg(6, 40, 24),
    }


SEEDS = _seeds()


def _png_fields(data: bytes, field: int, value: int) -> bytes:
    """Rewrite one IHDR field (0 width, 1 height, 2 bit depth, 3 colour type, 4 interlace)
    and fix the chunk CRC, so the decoder gets past the checksum."""
    ihdr = bytearray(data[16:29])
    if field == 0:
        ihdr[0:4] = struct.pack(">I", value & 0xFFFFFFFF)
    elif field == 1:
        ihdr[4:8] = struct.pack(">I", value & 0xFFFFFFFF)
    else:
        ihdr[{2: 8, 3: 9, 4: 12}[field]] = value & 0xFF
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return data[:16] + bytes(ihdr) + crc + data[33:]


def _jpeg_fields(data: bytes, field: int, value: int) -> bytes:
    """Rewrite a SOF field (0 precision, 1 height, 2 width, 3 component count)."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            break
    else:
        return data
    out = bytearray(data)
    body = at + 4
    if field == 0:
        out[body] = value & 0xFF
    elif field in (1, 2):
        out[body + 1 + 2 * (field - 1): body + 3 + 2 * (field - 1)] = struct.pack(">H", value & 0xFFFF)
    else:
        out[body + 5] = value & 0xFF
    return bytes(out)


def _gif_fields(data: bytes, field: int, value: int) -> bytes:
    """Logical screen width/height (0, 1) or the first frame's width/height (2, 3)."""
    out = bytearray(data)
    if field < 2:
        out[6 + 2 * field: 8 + 2 * field] = struct.pack("<H", value & 0xFFFF)
    else:
        at = data.find(b"\x2c", 13)
        if at >= 0:
            out[at + 5 + 2 * (field - 2): at + 7 + 2 * (field - 2)] = struct.pack("<H", value & 0xFFFF)
    return bytes(out)


def _bmp_fields(data: bytes, field: int, value: int) -> bytes:
    """Width, height (signed: negative means top-down), bits per pixel, compression."""
    out = bytearray(data)
    off, size = [(18, 4), (22, 4), (28, 2), (30, 4)][field]
    out[off: off + size] = (value & (2 ** (8 * size) - 1)).to_bytes(size, "little")
    return bytes(out)


def _webp_fields(data: bytes, field: int, value: int) -> bytes:
    """RIFF size (0), or the VP8L/VP8 size word (1..3)."""
    out = bytearray(data)
    if field == 0:
        out[4:8] = struct.pack("<I", value & 0xFFFFFFFF)
    elif data[12:16] == b"VP8L":
        out[21:25] = struct.pack("<I", value & 0xFFFFFFFF)
    else:  # lossy VP8: 14-bit width and height after the start code
        at = data.find(b"\x9d\x01\x2a")
        if at >= 0:
            out[at + 3: at + 7] = struct.pack("<HH", value & 0xFFFF, (value >> 16) & 0xFFFF)
    return bytes(out)


FIELD_EDITORS = {
    "png": _png_fields, "png_rgba": _png_fields, "jpeg": _jpeg_fields, "progressive": _jpeg_fields,
    "exif_jpeg": _jpeg_fields, "gif": _gif_fields, "bmp": _bmp_fields,
    "webp_lossless": _webp_fields, "webp_lossy": _webp_fields,
}
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 15, 16, 255, 256, 1414, 2000, 20000, 65535, 2**31 - 1, 2**31, 2**32 - 1]


@st.composite
def mutations(draw, data: bytes, editor=None):
    """(description, mutated bytes) of one mutation of ``data``."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "field"] if editor else ["flip", "truncate", "insert"]))
    n = len(data)
    if kind == "flip":
        k = draw(st.integers(1, 8))
        out = bytearray(data)
        head = draw(st.booleans())  # half the flips land in the first 64 bytes (headers)
        for _ in range(k):
            pos = draw(st.integers(0, min(63, n - 1) if head else n - 1))
            out[pos] ^= draw(st.integers(1, 255))
        return f"flip x{k}", bytes(out)
    if kind == "truncate":
        t = draw(st.integers(0, n - 1))
        return f"truncate at {t}", data[:t]
    if kind == "insert":
        pos = draw(st.integers(0, n))
        junk = draw(st.binary(min_size=1, max_size=600))
        return f"insert {len(junk)} at {pos}", data[:pos] + junk + data[pos:]
    field = draw(st.integers(0, 4 if editor is _png_fields else 3))
    value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**32 - 1))
    return f"field {field}={value}", editor(data, field, value)


@st.composite
def mutated_images(draw):
    name = draw(st.sampled_from(sorted(SEEDS)))
    what, data = draw(mutations(SEEDS[name], FIELD_EDITORS[name]))
    return name, what, data


@settings(FUZZ, max_examples=700)
@given(mutated_images())
def test_decode_image_only_ever_raises_decode_error(case):
    name, what, data = case
    with deadline():
        try:
            pixels = decode_image(data, max_pixels=MAX_PIXELS)
        except DecodeError as exc:
            assert str(exc).strip(), (name, what)
            return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, (name, what)
    assert 0 < pixels.shape[0] * pixels.shape[1] <= MAX_PIXELS, (name, what, pixels.shape)


# --------------------------------------------------------------------------- shards

MEM = fsspec.filesystem("memory")
_counter = iter(range(10**9))
KEYS = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)
IMAGES = [corpus.jpeg(24, 16, seed=i) for i in range(3)] + [corpus.png(16, 16, seed=4)]


def _put(data: bytes, ext: str) -> str:
    path = f"/fuzz/s{next(_counter)}.{ext}"
    MEM.pipe_file(path, data)
    return f"memory://{path}"


def _read(url: str):
    with deadline():
        items = list(read_shard(url))  # any exception fails the property
    for item in items:
        assert isinstance(item, (ImageRecord, ReadError)), item
        if isinstance(item, ReadError):
            assert item.reason and item.reason.strip()
    MEM.rm(url.split("://", 1)[1])
    shard_errors = [i for i in items if isinstance(i, ReadError) and i.source_uri == url]
    assert len(shard_errors) <= 1
    return [i for i in items if i.source_uri != url], shard_errors


@st.composite
def wds_samples(draw):
    keys = draw(st.lists(KEYS, min_size=1, max_size=5, unique=True))
    samples = []
    for key in keys:
        image = draw(st.sampled_from(IMAGES))
        ext = "png" if image.startswith(b"\x89PNG") else "jpg"
        members = [(f"{key}.{ext}", image)]
        if draw(st.booleans()):
            members.append((f"{key}.json", b'{"caption": "%s"}' % key.encode()))
        samples.append((key, members))
    return samples


def _layout(tar: bytes, samples):
    """({key: (first header byte, end of last data byte)}, {image member: (data start, end)})
    from tarfile on the intact bytes."""
    offsets = {name: (h, d) for name, h, d in corpus.member_offsets(tar)}
    spans, image_data = {}, {}
    for key, members in samples:
        starts = [offsets[n][0] for n, _ in members]
        ends = [offsets[n][1] + len(data) for n, data in members]
        spans[key] = (min(starts), max(ends))
        name, data = members[0]
        image_data[name] = (offsets[name][1], offsets[name][1] + len(data))
    return spans, image_data


@st.composite
def tar_cases(draw):
    samples = draw(wds_samples())
    tar = corpus.tar_bytes([m for _, members in samples for m in members])
    layout, image_data = _layout(tar, samples)
    kind = draw(st.sampled_from(["data_flip", "header_flip", "any_flip", "truncate", "insert"]))
    out = bytearray(tar)
    if kind == "data_flip":  # inside an image member's data: the structure stays intact
        start, end = image_data[draw(st.sampled_from(sorted(image_data)))]
        pos = draw(st.integers(start, end - 1))
        out[pos] ^= draw(st.integers(1, 255))
    elif kind == "header_flip":
        key = draw(st.sampled_from([k for k, _ in samples]))
        pos = layout[key][0] + draw(st.integers(0, 511))
        out[pos] ^= draw(st.integers(1, 255))
    elif kind == "any_flip":
        pos = draw(st.integers(0, len(tar) - 1))
        out[pos] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        pos = draw(st.integers(0, max(end for _, end in layout.values()) + 1024))
        out = out[:pos]
    else:
        pos = draw(st.integers(0, len(tar)))
        out[pos:pos] = draw(st.binary(min_size=1, max_size=700))
    return samples, layout, kind, pos, bytes(out)


@settings(FUZZ, max_examples=400)
@given(tar_cases())
def test_read_shard_on_mutated_tars_loses_nothing_silently(case):
    samples, layout, kind, pos, data = case
    items, shard_errors = _read(_put(data, "tar"))
    keys = [i.key for i in items]
    original = {k: dict(members) for k, members in samples}
    assert len(keys) == len(set(keys)), keys  # no sample twice
    assert set(keys) <= set(original), keys  # no invented samples
    for key, (start, end) in layout.items():
        if end <= pos:  # wholly before the damage: exactly once, with its own bytes
            assert key in keys, (kind, pos, key, keys, shard_errors)
            item = items[keys.index(key)]
            assert isinstance(item, ImageRecord) and item.data == original[key][item.meta["member"]]
    if not shard_errors:
        assert sorted(keys) == sorted(original), (kind, pos, keys)  # nothing lost silently
    if kind == "data_flip":
        assert not shard_errors and len(items) == len(samples)


@st.composite
def parquet_cases(draw):
    keys = draw(st.lists(KEYS, min_size=1, max_size=6, unique=True))
    rows = [(k, draw(st.sampled_from(IMAGES + [None]))) for k in keys]
    table = pa.table({"key": pa.array([k for k, _ in rows], pa.string()),
                      "image": pa.array([v for _, v in rows], pa.binary())})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=draw(st.integers(1, 4)),
                   compression=draw(st.sampled_from(["NONE", "SNAPPY", "ZSTD"])))
    data = bytearray(buf.getvalue())
    kind = draw(st.sampled_from(["flip", "footer_flip", "truncate", "insert"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif kind == "footer_flip":  # the Thrift footer: schema, row counts, offsets
        data[draw(st.integers(max(0, len(data) - 400), len(data) - 1))] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    else:
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    return rows, kind, bytes(data)


def _pyarrow_rows(data: bytes):
    """Row count pyarrow itself reads from the key/image columns, or None if it cannot."""
    try:
        return pq.ParquetFile(io.BytesIO(data)).read(columns=["key", "image"]).num_rows
    except Exception:
        return None


@settings(FUZZ, max_examples=300)
@given(parquet_cases())
def test_read_shard_on_mutated_parquet_gives_one_item_per_row(case):
    rows, kind, data = case
    url = _put(data, "parquet")
    items, shard_errors = _read(url)
    sources = [i.source_uri for i in items]
    assert sources == [f"{url}#row={r}" for r in range(len(items))], (kind, sources)  # in order, no gaps
    readable = _pyarrow_rows(data)
    if readable is not None:
        assert len(items) == readable and not shard_errors, (kind, readable, shard_errors)
    else:
        assert len(shard_errors) == 1, (kind, len(items))


# --------------------------------------------------------------------------- pipeline level


def _mutate(rng: random.Random, data: bytes, editor) -> bytes:
    kind = rng.choice(["flip", "truncate", "insert", "field", "none"])
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            out[rng.randrange(min(len(out), 96) if rng.random() < 0.5 else len(out))] ^= rng.randint(1, 255)
        return bytes(out)
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    if kind == "insert":
        pos = rng.randrange(len(data) + 1)
        return data[:pos] + rng.randbytes(rng.randint(1, 300)) + data[pos:]
    if kind == "field":
        return editor(data, rng.randint(0, 3), rng.choice(INTERESTING))
    return data


EXT = {"jpeg": "jpg", "progressive": "jpg", "exif_jpeg": "jpg", "png": "png", "png_rgba": "png",
       "webp_lossless": "webp", "webp_lossy": "webp", "gif": "gif", "bmp": "bmp"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_on_mutated_folders_gives_one_row_per_file_with_reasons(tmp_path, seed):
    rng = random.Random(seed)
    pred, target, out = tmp_path / "pred", tmp_path / "target", tmp_path / "out"
    pred.mkdir(), target.mkdir()
    names = sorted(SEEDS)
    keys = []
    for i in range(10):
        name = names[(seed * 10 + i) % len(names)]
        key = f"k{i}_{name}"
        keys.append(key)
        (pred / f"{key}.{EXT[name]}").write_bytes(_mutate(rng, SEEDS[name], FIELD_EDITORS[name]))
        reference = np.asarray(Image.open(io.BytesIO(SEEDS[name])).convert("RGB"))
        Image.fromarray(reference).save(target / f"{key}.png")
    assert main(["evaluate", str(pred), str(target), str(out), "--max-error-rate", "1"]) == 0
    rows = pq.read_table(str(out / "manifest")).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(keys)  # one row per file
    for r in rows:
        assert r["status"] in ("ok", "error")
        if r["status"] == "error":
            assert r["error"] and r["error"].strip(), r
        else:
            assert r["error"] is None and r["psnr"] is not None, r
    assert {r["status"] for r in rows} == {"ok", "error"}  # the mix really has both
    assert (out / "_SUCCESS").exists()
