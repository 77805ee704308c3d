"""Progress while a job runs: records done / total, rate and ETA.

On a terminal the line rewrites itself; otherwise (logs, CI) a plain line at most every
few seconds. Each worker process reports its own share.

Beam counters: ``rows_ok``, ``rows_error`` and ``error: KIND`` per reason kind
(``schemas.manifest.reason_kind``: the text before the first colon with names and numbers blanked,
at most ``MAX_ERROR_KINDS`` per worker, the rest under ``error: other``), so the run
summary's ``beam_counters`` say why rows failed without unbounded counter names.
"""
from __future__ import annotations

import sys
import time

import apache_beam as beam

from chromabeam.schemas.manifest import reason_kind

MAX_ERROR_KINDS = 20


class ProgressFn(beam.DoFn):
    """Pass-through DoFn that reports how many results this worker has produced."""

    def __init__(self, task: str, *, every_s: float = 2.0):
        self._task = task
        self._every = every_s
        self._ok = beam.metrics.Metrics.counter("chromabeam", "rows_ok")
        self._err = beam.metrics.Metrics.counter("chromabeam", "rows_error")

    def setup(self):
        self._kinds: dict[str, object] = {}
        self._done = 0
        self._start = time.monotonic()
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def process(self, result, total):
        self._done += 1
        if result.row.status == "ok":
            self._ok.inc()
        else:
            self._err.inc()
            self._kind_counter(reason_kind(result.row.error)).inc()
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._report(now, total)
        yield result

    def _kind_counter(self, kind: str):
        counter = self._kinds.get(kind)
        if counter is None:
            if len(self._kinds) >= MAX_ERROR_KINDS:
                kind = "other"
            counter = self._kinds.get(kind) or beam.metrics.Metrics.counter("chromabeam", f"error: {kind}")
            self._kinds[kind] = counter
        return counter

    def teardown(self):
        if getattr(self, "_done", 0) and self._tty:
            sys.stderr.write("\n")

    def _report(self, now: float, total: int) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = self._done / elapsed
        # Rows can outnumber records (pairs, styles): the ETA is only shown while it means something.
        eta = f", ETA {(total - self._done) / rate:.0f} s" if total and rate > 0 and self._done <= total else ""
        line = f"chromabeam {self._task}: {self._done} rows from {total or '?'} records ({rate:.1f} rows/s{eta})"
        if self._tty:
            sys.stderr.write("\r" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
