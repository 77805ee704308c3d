"""THE manifest schemas: one source for writers, readers and tests.

Every task writes Parquet parts whose columns are ``COMMON`` plus the task's extras.
Bump ``SCHEMA_VERSION`` when a column changes meaning or type; readers check it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping

import pyarrow as pa

SCHEMA_VERSION = 1

STATUS_OK = "ok"
STATUS_ERROR = "error"

TASKS = ("evaluate", "synth-pairs", "restore", "stylize")

COMMON = (
    pa.field("key", pa.string(), nullable=False),
    pa.field("source_uri", pa.string()),
    pa.field("output_uri", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("task", pa.string(), nullable=False),
    pa.field("model_name", pa.string()),
    pa.field("model_sha256", pa.string()),
    pa.field("params", pa.string()),  # JSON
    pa.field("schema_version", pa.int32(), nullable=False),
)

METRICS = (
    pa.field("reference_uri", pa.string()),
    pa.field("psnr", pa.float64()),
    pa.field("ssim", pa.float64()),
    pa.field("delta_e2000", pa.float64()),
    pa.field("lpips", pa.float64()),
)

PAIRS = (
    pa.field("pair_index", pa.int32()),
    pa.field("input_uri", pa.string()),
    pa.field("target_uri", pa.string()),
    pa.field("transform", pa.string()),  # JSON: family, id, strength, seed, ...
)

STYLE = (pa.field("style", pa.string()),)

_EXTRAS = {
    "evaluate": METRICS,
    "synth-pairs": PAIRS,
    "restore": METRICS,
    "stylize": STYLE + METRICS,
}

METRIC_NAMES = ("psnr", "ssim", "delta_e2000", "lpips")


def manifest_schema(task: str) -> pa.Schema:
    """The Arrow schema of ``task``'s manifest (COMMON columns first)."""
    if task not in _EXTRAS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return pa.schema(
        list(COMMON) + list(_EXTRAS[task]),
        metadata={b"chromabeam.schema_version": str(SCHEMA_VERSION).encode(), b"chromabeam.task": task.encode()},
    )


@dataclasses.dataclass
class ManifestRow:
    """One manifest row. Unused task columns stay None; ``to_dict`` keeps the task's columns."""

    key: str
    task: str
    status: str = STATUS_OK
    source_uri: str | None = None
    output_uri: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    model_name: str | None = None
    model_sha256: str | None = None
    params: str | None = None
    reference_uri: str | None = None
    psnr: float | None = None
    ssim: float | None = None
    delta_e2000: float | None = None
    lpips: float | None = None
    pair_index: int | None = None
    input_uri: str | None = None
    target_uri: str | None = None
    transform: str | None = None
    style: str | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in (STATUS_OK, STATUS_ERROR):
            raise ValueError(f"status must be 'ok' or 'error', got {self.status!r}")
        if self.status == STATUS_ERROR and not self.error:
            raise ValueError(f"error row for {self.key!r} needs a reason")
        if self.task not in _EXTRAS:
            raise ValueError(f"unknown task {self.task!r}")

    @property
    def sort_key(self) -> tuple:
        return (self.key, -1 if self.pair_index is None else self.pair_index, self.style or "")

    def to_dict(self) -> dict[str, Any]:
        names = manifest_schema(self.task).names
        d = dataclasses.asdict(self)
        return {n: d[n] for n in names}

    @classmethod
    def error_row(cls, key: str, task: str, reason: str, **kw: Any) -> "ManifestRow":
        return cls(key=key, task=task, status=STATUS_ERROR, error=reason, **kw)


def to_json(obj: Mapping[str, Any]) -> str:
    """Canonical JSON for the ``params`` / ``transform`` columns (sorted keys, stable bytes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def rows_to_table(rows: list[ManifestRow], task: str) -> pa.Table:
    """Rows → an Arrow table with ``task``'s schema, ordered by (key, pair_index, style)."""
    schema = manifest_schema(task)
    ordered = sorted(rows, key=lambda r: r.sort_key)
    return pa.Table.from_pylist([r.to_dict() for r in ordered], schema=schema)


def check_table(table: pa.Table) -> str:
    """Validate a manifest table read back from Parquet; returns its task."""
    meta = table.schema.metadata or {}
    version = int(meta.get(b"chromabeam.schema_version", b"0"))
    if version != SCHEMA_VERSION:
        raise ValueError(f"manifest schema version {version} is not {SCHEMA_VERSION}")
    task = meta.get(b"chromabeam.task", b"").decode()
    expected = manifest_schema(task)
    if table.schema.names != expected.names:
        raise ValueError(f"manifest columns {table.schema.names} differ from the {task} schema {expected.names}")
    return task


# Error reasons start with their kind, then a colon and the details (see transforms/ops/imageio.py).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^\s:'\"]|:(?=\S))*")  # stops at ": "
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|\([^)]*\)|\[[^\]]*\]")
_NUMBER = re.compile(r"\d+(?:[.x]\d+)*")


def reason_kind(reason: str | None) -> str:
    """A bounded label for an error reason: the text before the first colon, with URLs,
    quoted names and numbers blanked, so per-key details never make a new bucket
    (``"no reference image with key 'k1'"`` → ``"no reference image with key …"``)."""
    text = _URL.sub("URL", reason or "")
    head = text.split(":", 1)[0]
    head = _NUMBER.sub("N", _QUOTED.sub("…", head))
    head = " ".join(head.split())[:60]
    return head or "unknown"
