"""Read image records from shards named by an fsspec URL or glob.

Formats, chosen by extension: WebDataset ``.tar`` (samples grouped by key, the image
member picked by extension), ``.parquet`` with ``key`` + ``image`` (bytes) columns, and
plain image files (key = file stem). Shards stream: tars are read member by member,
Parquet by record batch. Anything unreadable becomes a ``ReadError`` (→ an error row)
naming the record or shard and the reason; other records are never dropped.
"""
from __future__ import annotations

import re
import tarfile
from typing import Iterator

import apache_beam as beam

from chromabeam.schemas.records import ImageRecord, ReadError
from chromabeam.transforms import storage
from chromabeam.transforms.ops.imageio import EXTENSIONS as IMAGE_EXTENSIONS

SHARD_EXTENSIONS = (".tar", ".parquet", *IMAGE_EXTENSIONS)
# Member extensions tried, in order, for a WebDataset sample's image.
_IMAGE_MEMBER_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
_PARQUET_BATCH = 32


def key_problem(key: str | None, *, webdataset: bool = False) -> str | None:
    """Why ``key`` cannot be used (None when it is fine)."""
    if key is None or key == "":
        return "empty key"
    if "\x00" in key:
        return "key contains a NUL byte"
    if key.startswith(("/", "\\")):
        return f"key {key!r} is an absolute path"
    if ".." in key.replace("\\", "/").split("/"):
        return f"key {key!r} contains a '..' path component (path traversal)"
    if "/" in key or "\\" in key:
        return f"key {key!r} contains a path separator"
    if key == "." or ".." in key:
        return f"key {key!r} is '.' or contains '..'"
    if webdataset and "." in key:
        return f"WebDataset key {key!r} contains '.'"
    if len(key.encode("utf-8", "surrogateescape")) > 512:
        return f"key is {len(key)} characters long (limit 512)"
    return None


def shard_format(url: str) -> str:
    lower = url.lower()
    if lower.endswith(".tar"):
        return "webdataset"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    raise ValueError(f"{storage.redact(url)}: unsupported extension; expected .tar, .parquet or an image")


def list_shards(url: str) -> list[str]:
    """Expand an input URL/glob into shard URLs, once. Raises StorageError if nothing matches."""
    shards = storage.expand(url, extensions=SHARD_EXTENSIONS)
    if not shards:
        raise storage.StorageError(
            f"no input found at {storage.redact(url)} (looked for .tar, .parquet and image files)"
        )
    return shards


def _stem(url: str) -> str:
    name = storage.basename(url)
    return name.rsplit(".", 1)[0] if "." in name else name


def read_shard(url: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[ImageRecord | ReadError]:
    """Every record of one shard, as ImageRecord or ReadError, in shard order."""
    fmt = shard_format(url)
    if fmt == "image":
        yield from _read_image_file(url, max_bytes)
    elif fmt == "webdataset":
        yield from _read_tar(url, max_bytes)
    else:
        yield from _read_parquet(url, max_bytes)


def _read_image_file(url: str, max_bytes: int) -> Iterator[ImageRecord | ReadError]:
    key = _stem(url)
    problem = key_problem(key)
    if problem:
        yield ReadError(key or storage.basename(url), url, problem)
        return
    try:
        size = storage.size(url)
        if size is not None and size > max_bytes:
            yield ReadError(key, url, f"file over the size limit: {size} bytes, limit {max_bytes}")
            return
        yield ImageRecord(key, url, storage.read_bytes(url))
    except storage.StorageError as exc:  # storage faults are per-record: keep going
        yield ReadError(key, url, f"cannot read file: {exc}")


_WDS_SPLIT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


def _split_member(name: str) -> tuple[str, str] | None:
    """WebDataset convention: key = path up to the first dot of the base name."""
    m = _WDS_SPLIT.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


def _read_tar(url: str, max_bytes: int) -> Iterator[ImageRecord | ReadError]:
    current: str | None = None
    members: dict[str, bytes] = {}
    problems: list[str] = []
    count = 0  # samples already yielded, for the shard error's "after N samples"

    def flush() -> Iterator[ImageRecord | ReadError]:
        if current is None:
            return
        src = f"{url}#{current}"
        problem = key_problem(current, webdataset=True)
        if problem:
            yield ReadError(_safe_key(current), src, f"tar member: {problem}")
            return
        ext = next((e for e in _IMAGE_MEMBER_EXTS if e in members), None)
        if ext is None:
            found = ", ".join(sorted(members)) or "none"
            reason = "; ".join(problems) or f"sample has no image member (members: {found})"
            yield ReadError(current, src, reason)
            return
        meta = {"member": f"{current}.{ext}"}
        if "json" in members:
            meta["json"] = members["json"].decode("utf-8", "replace")
        yield ImageRecord(current, f"{url}#{current}.{ext}", members[ext], meta)

    try:
        with storage.open_url(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for info in tar:
                split = _split_member(info.name)
                key = split[0] if split else info.name
                # A member name seen again in the same sample starts a new sample, so a
                # repeated "a.jpg" yields two records (the writer dedups) instead of one
                # silently overwriting the other.
                if key != current or (split is not None and split[1] in members):
                    if current is not None:
                        yield from flush()
                        count += 1
                    current, members, problems = key, {}, []
                if not info.isfile():
                    problems.append(f"member {info.name!r} is not a regular file")
                    continue
                if split is None:
                    problems.append(f"member {info.name!r} has no extension")
                    continue
                if info.size > max_bytes:
                    problems.append(f"member {info.name!r} is {info.size} bytes, over the limit")
                    continue
                data = tar.extractfile(info)
                members[split[1]] = data.read() if data else b""
            if current is not None:
                yield from flush()
                count += 1
            current = None
            end = _end_problem(fh, tar)
        if end:
            yield ReadError(_stem(url), url, f"damaged tar shard: after {count} samples, {end}; later samples lost")
    except (tarfile.TarError, OSError, EOFError) as exc:
        if current is not None and members:
            yield from flush()
            count += 1
        where = f"after {count} samples" if count else "at the start"
        yield ReadError(_stem(url), url, f"unreadable tar shard: {where}, {type(exc).__name__}: {exc}; later samples lost")
    except storage.StorageError as exc:
        yield ReadError(_stem(url), url, str(exc))


def _end_problem(fh, tar: tarfile.TarFile) -> str | None:
    """Why the archive did not end with an end-of-archive block, or None.

    tarfile treats a missing, cut or garbled header after the first member as a normal
    end, which would drop the rest of a damaged shard silently; the block where it
    stopped tells which case it was.
    """
    if getattr(tar.fileobj, "comptype", "tar") != "tar":
        return None  # compressed stream: tar offsets are not file offsets
    try:
        fh.seek(tar.offset)
        block = fh.read(tarfile.BLOCKSIZE)
    except (OSError, ValueError):
        return None
    if len(block) == tarfile.BLOCKSIZE and block.count(0) == tarfile.BLOCKSIZE:
        return None
    if not block:
        return f"file ends at byte {tar.offset} without the end-of-archive marker (truncated?)"
    if len(block) < tarfile.BLOCKSIZE:
        return f"member header cut off at byte {tar.offset} (truncated)"
    return f"corrupt member header at byte {tar.offset}"


def _safe_key(key: str) -> str:
    """A printable stand-in for an invalid key (the manifest keeps the reason)."""
    return key.replace("\x00", "\\0")


def _read_parquet(url: str, max_bytes: int) -> Iterator[ImageRecord | ReadError]:
    import pyarrow.parquet as pq

    stem = _stem(url)
    try:
        with storage.open_url(url, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            missing = [c for c in ("key", "image") if c not in names]
            if missing:
                yield ReadError(stem, url, f"Parquet shard lacks column(s) {missing}; it has {names}")
                return
            row = 0
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=["key", "image"]):
                keys = batch.column(0).to_pylist()
                images = batch.column(1)
                for i, key in enumerate(keys):
                    src = f"{url}#row={row}"
                    row += 1
                    key = None if key is None else str(key)
                    problem = key_problem(key)
                    if problem:
                        yield ReadError(key or f"{stem}-row{row - 1}", src, problem)
                        continue
                    value = images[i].as_py()
                    if value is None:
                        yield ReadError(key, src, "image column is null")
                    elif not isinstance(value, (bytes, bytearray)):
                        yield ReadError(key, src, f"image column holds {type(value).__name__}, not bytes")
                    elif len(value) > max_bytes:
                        yield ReadError(key, src, f"image is {len(value)} bytes, over the limit")
                    else:
                        yield ImageRecord(key, src, bytes(value))
            # pyarrow's iter_batches can stop early on a corrupt page without raising
            # (read() of the same file says "Negative size"); the footer's count tells.
            expected = pf.metadata.num_rows
            if row < expected:
                yield ReadError(stem, url, f"unreadable Parquet shard: pages end after {row} of {expected} rows "
                                           "(corrupt file?); later rows lost")
    except storage.StorageError as exc:
        yield ReadError(stem, url, str(exc))
    except Exception as exc:  # corrupt footer, truncated row group, ...
        yield ReadError(stem, url, f"unreadable Parquet shard ({type(exc).__name__}: {exc})")


class ReadShardFn(beam.DoFn):
    """shard URL → ImageRecord | ReadError (thin: delegates to ``read_shard``)."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES):
        self._max_bytes = max_bytes

    def process(self, url: str):
        yield from read_shard(url, max_bytes=self._max_bytes)


class ReadImages(beam.PTransform):
    """PBegin → PCollection[ImageRecord | ReadError] for an input URL or glob.

    Listing happens once, at construction (in the driver), so a bad URL fails before the
    pipeline starts; shards are then read in parallel after a reshuffle.
    """

    def __init__(self, url: str, *, max_bytes: int = DEFAULT_MAX_BYTES, label: str = "input"):
        super().__init__()
        self.shards = list_shards(url)
        self._max_bytes = max_bytes
        self._label = label

    def expand(self, pbegin):
        return (
            pbegin
            | "ListShards" >> beam.Create(self.shards)
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadShard" >> beam.ParDo(ReadShardFn(max_bytes=self._max_bytes))
        )


# --------------------------------------------------------------------------- one record by URI
# Manifests name images as a plain object URL, ``SHARD.tar#MEMBER`` (an output or input
# WebDataset member) or ``FILE.parquet#row=N`` (row N of a Parquet shard's image column).
# The first ".tar#" / ".parquet#" splits: keys may contain '#', shard names rarely do.
_URI_FRAGMENT = re.compile(r"^(.*?\.(tar|parquet))#(.*)$", re.IGNORECASE | re.DOTALL)


def _split_uri(uri: str) -> tuple[str, str, str | None]:
    """(container URL, kind 'tar'|'parquet'|'file', fragment or None)."""
    m = _URI_FRAGMENT.match(uri)
    if not m:
        return uri, "file", None
    return m.group(1), m.group(2).lower(), m.group(3)


def _parquet_row(fragment: str, uri: str) -> int:
    m = re.fullmatch(r"row=(\d+)", fragment)
    if not m:
        raise ValueError(f"{storage.redact(uri)}: expected '#row=N' after a .parquet URL, got {fragment!r}")
    return int(m.group(1))


def read_uri(uri: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The image bytes a manifest URI names: a plain URL, ``SHARD.tar#MEMBER`` (the tar is
    streamed until the member) or ``FILE.parquet#row=N`` (that row's ``image`` column).

    Raises StorageError when the object cannot be read and ValueError (reason in the
    message) when the member/row is absent, damaged or over ``max_bytes``.
    """
    value = read_uris([uri], max_bytes=max_bytes)[uri]
    if isinstance(value, BaseException):
        raise value
    return value


def read_uris(uris, *, max_bytes: int = DEFAULT_MAX_BYTES, deadline: float | None = None) -> dict:
    """``read_uri`` for many URIs, reading each shard once: members of one tar come from a
    single streaming pass that stops at the last one wanted; rows of one Parquet file come
    from the row groups that hold them.

    Returns ``{uri: bytes | Exception}`` (StorageError / ValueError as ``read_uri`` raises;
    TimeoutError for shards not started before ``deadline``, a ``time.monotonic()`` value).
    """
    import time

    groups: dict[tuple[str, str], dict[str, list[str]]] = {}
    for uri in dict.fromkeys(uris):
        url, kind, fragment = _split_uri(uri)
        groups.setdefault((url, kind), {}).setdefault(fragment, []).append(uri)
    out: dict = {}
    for (url, kind), wanted in groups.items():
        if deadline is not None and time.monotonic() > deadline:
            found: dict = {f: TimeoutError("not read: time budget spent") for f in wanted}
        else:
            try:
                if kind == "tar":
                    found = _tar_members(url, list(wanted), max_bytes)
                elif kind == "parquet":
                    found = _parquet_rows(url, list(wanted), max_bytes)
                else:  # a whole object (an image file)
                    found = {None: _whole_file(url, max_bytes)}
            except storage.StorageError as exc:
                found = {f: exc for f in wanted}
        for fragment, names in wanted.items():
            value = found.get(fragment)
            if value is None:
                value = ValueError(f"{storage.redact(url)} has no member {fragment!r}")
            for uri in names:
                out[uri] = value
    return out


def _whole_file(url: str, max_bytes: int) -> bytes | Exception:
    n = storage.size(url)
    if n is not None and n > max_bytes:
        return ValueError(f"{storage.redact(url)} is {n} bytes, over the {max_bytes}-byte limit")
    return storage.read_bytes(url)


def _tar_members(url: str, members: list[str], max_bytes: int) -> dict:
    todo = set(members)
    found: dict = {}
    try:
        with storage.open_url(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for info in tar:
                if info.name not in todo:
                    continue
                if not info.isfile():
                    found[info.name] = ValueError(f"tar member {info.name!r} is not a regular file")
                elif info.size > max_bytes:
                    found[info.name] = ValueError(f"tar member {info.name!r} is {info.size} bytes, over the limit")
                else:
                    data = tar.extractfile(info)
                    found[info.name] = data.read() if data else b""
                todo.discard(info.name)  # only now: a read cut short below still gets the reason
                if not todo:
                    break
    except (tarfile.TarError, OSError, EOFError) as exc:
        reason = ValueError(f"unreadable tar shard {storage.redact(url)}: {type(exc).__name__}: {exc}")
        found.update({m: reason for m in todo})
    return found


def _parquet_rows(url: str, fragments: list[str], max_bytes: int) -> dict:
    import pyarrow.parquet as pq

    found: dict = {}
    rows: dict[int, list[str]] = {}
    for f in fragments:
        try:
            rows.setdefault(_parquet_row(f, url), []).append(f)
        except ValueError as exc:
            found[f] = exc
    try:
        with storage.open_url(url, "rb") as fh:
            pf = pq.ParquetFile(fh)
            if "image" not in pf.schema_arrow.names:
                reason = ValueError(f"{storage.redact(url)} has no 'image' column")
                return {**found, **{f: reason for fs in rows.values() for f in fs}}
            start = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                here = [r for r in rows if start <= r < start + n]
                if here:
                    column = pf.read_row_group(g, columns=["image"]).column(0)
                    for r in here:
                        value = column[r - start].as_py()
                        if not isinstance(value, (bytes, bytearray)):
                            result = ValueError(f"row {r} of {storage.redact(url)}: image is {type(value).__name__}, not bytes")
                        elif len(value) > max_bytes:
                            result = ValueError(f"row {r} of {storage.redact(url)}: image is {len(value)} bytes, over the limit")
                        else:
                            result = bytes(value)
                        for f in rows.pop(r):
                            found[f] = result
                start += n
            for r, fs in rows.items():
                for f in fs:
                    found[f] = ValueError(f"{storage.redact(url)} has {start} rows; no row {r}")
    except storage.StorageError:
        raise
    except Exception as exc:  # corrupt footer, truncated row group, ...
        reason = ValueError(f"unreadable Parquet file {storage.redact(url)} ({type(exc).__name__}: {exc})")
        found.update({f: reason for fs in rows.values() for f in fs})
    return found
