"""Publish task results: images as WebDataset shards or files, manifest rows as Parquet parts.

Results are spread over N parts by a stable hash of their key (N from the record count
and ``shard_size``), so every run of the same input gives the same parts, byte for byte.
Each part is written as one unit: images first (tar published atomically), then its
manifest part, so a manifest never names an object that does not exist. A re-run skips
keys whose part already exists (see ``finished_parts``): that is how crashed jobs resume.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import tarfile

import apache_beam as beam
import pyarrow.parquet as pq

from chromabeam.schemas.manifest import STATUS_OK, ManifestRow, rows_to_table
from chromabeam.schemas.records import TaskResult
from chromabeam.transforms import storage

IMAGE_LAYOUTS = ("webdataset", "files")
_PART_RE = re.compile(r"^part-(\d{5})-of-(\d{5})\.parquet$")


def num_parts(count: int, shard_size: int) -> int:
    return max(1, math.ceil(count / max(1, shard_size)))


def part_of(key: str, n: int) -> int:
    """Stable part index of a key (blake2b, never Python's salted hash())."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def part_name(index: int, n: int) -> str:
    return f"part-{index:05d}-of-{n:05d}"


def finished_parts(output: str) -> set[str]:
    """Names (``part-SSSSS-of-NNNNN``) of the manifest parts already published in OUTPUT."""
    names = storage.list_names(storage.join(output, "manifest"))
    return {n[: -len(".parquet")] for n in names if _PART_RE.match(n)}


def parse_part(name: str) -> tuple[int, int]:
    m = _PART_RE.match(name + ".parquet")
    if not m:
        raise ValueError(f"not a manifest part name: {name}")
    return int(m.group(1)), int(m.group(2))


def wds_key(key: str) -> str:
    """A key usable as a WebDataset sample name (which may not contain '.')."""
    return key.replace("%", "%25").replace(".", "%2E")


def sample_name(row: ManifestRow) -> str:
    name = wds_key(row.key)
    if row.pair_index is not None:
        name += f"_{row.pair_index:03d}"
    if row.style:
        name += "_" + wds_key(row.style).replace("/", "_")
    return name


@dataclasses.dataclass(frozen=True)
class WriteConfig:
    output: str
    task: str
    layout: str = "webdataset"
    shard_size: int = 256

    def __post_init__(self) -> None:
        if self.layout not in IMAGE_LAYOUTS:
            raise ValueError(f"--format must be one of {IMAGE_LAYOUTS}, got {self.layout!r}")
        if self.shard_size < 1:
            raise ValueError("--shard-size must be at least 1")


def _dedupe(results: list[TaskResult]) -> list[TaskResult]:
    """Sort by (key, pair, style); a repeated identity becomes an error row naming the first source."""
    results = sorted(results, key=lambda r: (r.row.sort_key, r.row.source_uri or ""))
    out: list[TaskResult] = []
    first: dict[tuple, str | None] = {}
    for res in results:
        ident = res.row.sort_key
        if ident in first:
            row = res.row
            reason = f"duplicate key {row.key!r}: already read from {first[ident]}; this copy was not processed"
            dup = ManifestRow.error_row(row.key, row.task, reason, source_uri=row.source_uri, pair_index=row.pair_index, style=row.style)
            out.append(TaskResult(dup))
            continue
        first[ident] = res.row.source_uri
        out.append(res)
    return out


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_part(config: WriteConfig, part: str, results: list[TaskResult]) -> dict:
    """Write one part's images and manifest; returns counts for the run summary."""
    results = _dedupe(results)
    images_url = storage.join(config.output, "images")
    rows: list[ManifestRow] = []
    tar_buf = io.BytesIO()
    tar = tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) if config.layout == "webdataset" else None
    tar_url = storage.join(images_url, f"{part}.tar")
    members = 0
    for res in results:
        row = res.row
        if row.status == STATUS_OK and res.images:
            sample = sample_name(row)
            for img in res.images:
                member = f"{sample}.{img.suffix}"
                if tar is not None:
                    _tar_add(tar, member, img.data)
                    setattr(row, img.column, f"{tar_url}#{member}")
                else:
                    url = storage.join(images_url, member)
                    storage.put_atomic(url, img.data)
                    setattr(row, img.column, url)
                members += 1
            if tar is not None:
                meta = {k: v for k, v in row.to_dict().items() if v is not None and not k.endswith("_uri")}
                _tar_add(tar, f"{sample}.json", json.dumps(meta, sort_keys=True).encode())
        rows.append(row)
    if tar is not None:
        tar.close()
        if members:
            storage.put_atomic(tar_url, tar_buf.getvalue())
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows, config.task), buf, compression="zstd")
    storage.put_atomic(storage.join(config.output, "manifest", f"{part}.parquet"), buf.getvalue())
    ok = sum(r.status == STATUS_OK for r in rows)
    return {"part": part, "rows": len(rows), "ok": ok, "error": len(rows) - ok}


class WritePartFn(beam.DoFn):
    """(part name, results) → part written; yields its counts."""

    def __init__(self, config: WriteConfig):
        self._config = config
        self._parts = beam.metrics.Metrics.counter("chromabeam", "parts_written")

    def process(self, element):
        part, results = element
        counts = write_part(self._config, part, list(results))
        self._parts.inc()
        yield counts


class WriteResults(beam.PTransform):
    """PCollection[TaskResult] → parts under OUTPUT (``n`` is a singleton side input: part count)."""

    def __init__(self, config: WriteConfig, n):
        super().__init__()
        self._config = config
        self._n = n

    def expand(self, results):
        return (
            results
            | "ToPart" >> beam.Map(lambda r, n: (part_name(part_of(r.row.key, n), n), r), n=self._n)
            | "GroupByPart" >> beam.GroupByKey()
            | "WritePart" >> beam.ParDo(WritePartFn(self._config))
        )
