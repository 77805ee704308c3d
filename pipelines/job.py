"""The shape every chromabeam job shares, and its driver.

    units (key, payload) ─ count → N parts ─ skip keys of finished parts ─ task ─ write parts
                                                                              └ progress
    then: summary from the manifest, report, OUTPUT/_SUCCESS last, exit status.

A task supplies ``read(pipeline) -> PCollection[(key, payload)]`` and a PTransform from
units to ``TaskResult``s; the driver owns resume, sharding, counting and the summary.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import platform
import sys
import time
from typing import Any, Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import chromabeam
from chromabeam.pipelines.progress import ProgressFn
from chromabeam.schemas.manifest import SCHEMA_VERSION, STATUS_OK, reason_kind
from chromabeam.transforms import storage
from chromabeam.transforms.write import WriteConfig, WriteResults, finished_parts, num_parts, parse_part, part_name, part_of

log = logging.getLogger("chromabeam")


class JobError(RuntimeError):
    """A job-level failure with a message a person can act on (the CLI prints it, no traceback)."""


@dataclasses.dataclass
class JobConfig:
    """Options every job shares (validated)."""

    output: str
    task: str
    layout: str = "webdataset"
    shard_size: int = 256
    max_error_rate: float = 0.5
    overwrite: bool = False
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise JobError(f"--max-error-rate must be within [0, 1], got {self.max_error_rate}")
        self.write = WriteConfig(self.output, self.task, self.layout, self.shard_size)


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    """A Pipeline from Beam flags; the default runner is the in-process FnApiRunner.

    Beam's DirectRunner first tries Prism, which downloads a binary (slow or failing
    offline), so plain/Direct runs go straight to the FnApiRunner; multi-process mode
    still follows ``--direct_running_mode`` and ``--direct_num_workers``.
    """
    options = PipelineOptions(beam_args)
    runner_name = options.view_as(StandardOptions).runner
    if runner_name in (None, "DirectRunner", "FnApiRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def _success_url(output: str) -> str:
    return storage.join(output, "_SUCCESS")


def _clear_output(output: str) -> None:
    for sub in ("_SUCCESS", "report.html", "manifest", "images"):
        storage.remove(storage.join(output, sub))


def read_manifest(output: str):
    """All manifest parts of OUTPUT as one Arrow table (empty table if none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from chromabeam.schemas.manifest import check_table

    urls = storage.expand(storage.join(output, "manifest"), extensions=(".parquet",)) if storage.exists(storage.join(output, "manifest")) else []
    tables = []
    for url in urls:
        with storage.open_url(url, "rb") as fh:
            table = pq.read_table(fh)
        check_table(table)
        tables.append(table)
    return pa.concat_tables(tables) if tables else None


def _versions() -> dict[str, str]:
    import apache_beam
    import numpy
    import PIL
    import pyarrow
    import torch

    return {
        "chromabeam": chromabeam.__version__,
        "apache_beam": apache_beam.__version__,
        "torch": torch.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def summarize(output: str, task: str, *, started: float, params: dict, extra: dict | None = None) -> dict:
    table = read_manifest(output)
    rows = 0 if table is None else table.num_rows
    status = [] if table is None else table.column("status").to_pylist()
    ok = sum(s == STATUS_OK for s in status)
    reasons: dict[str, int] = {}
    keys = set()
    if table is not None:
        keys = set(table.column("key").to_pylist())
        for err in table.column("error").to_pylist():
            if err:
                kind = reason_kind(err)
                reasons[kind] = reasons.get(kind, 0) + 1
    summary = {
        "metrics": metric_stats(table),
        "task": task,
        "schema_version": SCHEMA_VERSION,
        "counts": {"records": len(keys), "rows": rows, "ok": ok, "error": rows - ok},
        "errors_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "duration_s": round(time.time() - started, 3),
        "versions": _versions(),
        "params": params,
    }
    summary.update(extra or {})
    return summary


def metric_stats(table) -> dict[str, dict[str, float]]:
    """Mean / median / 5th percentile / count of each metric column over ok rows (finite values)."""
    import numpy as np

    from chromabeam.schemas.manifest import METRIC_NAMES

    out: dict[str, dict[str, float]] = {}
    if table is None:
        return out
    for name in METRIC_NAMES:
        if name not in table.column_names:
            continue
        vals = np.array([v for v in table.column(name).to_pylist() if v is not None], dtype=float)
        finite = vals[np.isfinite(vals)]
        if vals.size:
            out[name] = {
                "count": int(vals.size),
                "mean": round(float(finite.mean()), 4) if finite.size else float("inf"),
                "median": round(float(np.median(vals)), 4),
                "p5": round(float(np.percentile(vals, 5)), 4),
            }
    return out


def run_job(
    config: JobConfig,
    beam_args: list[str],
    read: Callable[[beam.Pipeline], beam.PCollection],
    task: beam.PTransform,
    *,
    extra_summary: Callable[[], dict] | None = None,
) -> dict:
    """Run one job end to end and return its summary (also written to OUTPUT/_SUCCESS)."""
    started = time.time()
    output = config.output
    if storage.exists(_success_url(output)):
        if not config.overwrite:
            log.info("%s already complete (_SUCCESS exists); pass --overwrite to redo it", storage.redact(output))
            summary = json.loads(storage.read_bytes(_success_url(output)))
            summary["skipped"] = True
            return summary
    if config.overwrite:
        _clear_output(output)
    storage.makedirs(output)
    for sub in ("manifest", "images"):
        storage.remove_temporaries(storage.join(output, sub))
    done = finished_parts(output)
    if done:
        log.info("resuming: %d manifest part(s) already published in %s", len(done), storage.redact(output))

    pipeline = make_pipeline(beam_args)
    shard_size = config.shard_size
    units = read(pipeline)
    count = units | "CountRecords" >> beam.combiners.Count.Globally()
    n = beam.pvalue.AsSingleton(count | "NumParts" >> beam.Map(num_parts, shard_size))
    todo = units | "SkipFinished" >> beam.Filter(
        lambda unit, n: part_name(part_of(unit[0], n), n) not in done, n=n
    )
    results = todo | "Task" >> task
    results = results | "Progress" >> beam.ParDo(ProgressFn(config.task), total=beam.pvalue.AsSingleton(count))
    _ = results | "Write" >> WriteResults(config.write, n)
    state = pipeline.run()
    state.wait_until_finish()

    _check_parts(output)
    extra = {"beam_counters": _counters(state)}
    if extra_summary:
        extra.update(extra_summary())
    summary = summarize(output, config.task, started=started, params=config.params, extra=extra)
    from chromabeam.pipelines.report import write_report

    write_report(output, summary)
    storage.put_atomic(_success_url(output), json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


def _check_parts(output: str) -> None:
    parts = sorted(finished_parts(output))
    totals = {parse_part(p)[1] for p in parts}
    if len(totals) > 1:
        raise JobError(
            f"{storage.redact(output)}/manifest mixes parts of different runs ({sorted(totals)} parts): "
            "the input changed since the interrupted run; re-run with --overwrite"
        )


def _counters(state) -> dict[str, int]:
    try:
        result = state.metrics().query()
    except Exception:  # some runners do not report metrics
        return {}
    out: dict[str, int] = {}
    for c in result.get("counters", []):
        name = c.key.metric.name
        out[name] = out.get(name, 0) + int(c.committed if c.committed is not None else c.attempted or 0)
    return out


def exit_status(summary: dict, max_error_rate: float) -> int:
    """0 when the job ran and the error fraction is within ``max_error_rate``, else 1."""
    counts = summary["counts"]
    rows = counts["rows"]
    if rows and counts["error"] / rows > max_error_rate:
        print(
            f"chromabeam: {counts['error']} of {rows} rows failed (> {max_error_rate:.0%}); "
            "the manifest lists each failure and its reason",
            file=sys.stderr,
        )
        return 1
    return 0
