"""``chromabeam inspect OUTPUT [--where SQL] [--limit N] [--columns a,b]``: a manifest at a glance.

Without ``--where``: counts, errors by kind (with an example key and reason each) and
metric quantiles over the ok rows. With ``--where``: the rows matching a DuckDB SQL
expression over the manifest's columns (``psnr < 25``, ``status = 'error'``,
``json_extract_string(transform, '$.input.id') = 'clarendon'``).

OUTPUT is a job's output folder, its manifest folder, or Parquet part(s) by URL or glob.
Parts are read through the storage layer (so gs:// and s3:// use the same credentials,
emulators and ``--storage-options`` as jobs) into Arrow tables that DuckDB queries in
memory; DuckDB's own file and network access is switched off, so ``--where`` can only
see the manifest.
"""
from __future__ import annotations

import argparse
import json
import sys

from chromabeam.pipelines.report import MAX_REASON_KINDS, shorten
from chromabeam.schemas.manifest import reason_kind
from chromabeam.schemas.manifest import METRIC_NAMES, STATUS_OK
from chromabeam.transforms import storage

DEFAULT_LIMIT = 20
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
_CELL = 60  # widest cell printed for long text columns; longer values end with …
_LONG_TEXT = ("error", "params", "transform")
# Shown for matching rows unless --columns says otherwise (those the manifest has).
_DEFAULT_COLUMNS = ("key", "pair_index", "style", "status", "psnr", "ssim", "delta_e2000", "lpips", "error")


class InspectError(ValueError):
    """A problem with OUTPUT or an option; printed as one line."""


def manifest_urls(output: str) -> list[str]:
    """The Parquet parts OUTPUT names: OUTPUT/manifest/*.parquet, or OUTPUT itself when it is
    a manifest folder, a .parquet file or a glob of them."""
    output = output.rstrip("/") or output
    folder = storage.join(output, "manifest")
    if not storage.has_magic(output) and storage.exists(folder):
        urls = storage.expand(folder, extensions=(".parquet",))
    else:
        urls = storage.expand(output, extensions=(".parquet",))
    if not urls:
        raise InspectError(f"no manifest parts at {storage.redact(output)} "
                           "(expected OUTPUT/manifest/part-*.parquet from a chromabeam job)")
    return urls


def load_manifest(output: str):
    """All manifest parts as one Arrow table, read through the storage layer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from chromabeam.schemas.manifest import check_table

    tables = []
    for url in manifest_urls(output):
        with storage.open_url(url, "rb") as fh:
            try:
                table = pq.read_table(fh)
            except Exception as exc:  # not Parquet, truncated, ...
                raise InspectError(f"{storage.redact(url)} is not a readable Parquet file ({type(exc).__name__}: {exc})") from None
        try:
            check_table(table)
        except ValueError as exc:
            raise InspectError(f"{storage.redact(url)}: {exc}") from None
        tables.append(table)
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid:
        raise InspectError(f"the manifest parts under {storage.redact(output)} have different columns "
                           "(parts of different tasks?); inspect one job's output at a time") from None


def connect(table):
    """An in-memory DuckDB connection with ``table`` registered as ``manifest`` and no
    access to files or the network."""
    import duckdb

    con = duckdb.connect(":memory:")
    con.register("manifest", table)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def query_rows(con, where: str, columns: list[str], limit: int) -> tuple[int, list[tuple]]:
    """(number of rows matching ``where``, the first ``limit`` of them in key order)."""
    import duckdb

    names = con.execute("SELECT * FROM manifest LIMIT 0").description
    order = ", ".join(c for c in ("key", "pair_index", "style") if c in {d[0] for d in names})
    cols = ", ".join(f'"{c}"' for c in columns)
    try:
        total = con.execute(f"SELECT count(*) FROM manifest WHERE ({where})").fetchone()[0]
        rows = con.execute(f"SELECT {cols} FROM manifest WHERE ({where}) ORDER BY {order} LIMIT {int(limit)}").fetchall()
    except duckdb.Error as exc:
        hint = ""
        if isinstance(exc, duckdb.BinderException):
            hint = f" (columns: {', '.join(d[0] for d in names)})"
        raise InspectError(f'--where "{where}": {_one_line(exc)}{hint}') from None
    return total, rows


# --------------------------------------------------------------------------- printing
def _cell(value, cut: bool = True) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e6 else f"{value:.4e}"
    else:
        text = " ".join(str(value).split())
    return text if len(text) <= _CELL or not cut else text[: _CELL - 1] + "…"


def format_table(head: list[str], rows: list[tuple]) -> str:
    """Aligned text columns; long error/params/transform text is cut, URIs never are."""
    cells = [[_cell(v, head[i] in _LONG_TEXT) for i, v in enumerate(r)] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(head)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) if numeric[i] else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths))).rstrip()]
    for r in cells:
        lines.append("  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return "\n".join(lines)


def summary_text(con, output: str, success: dict | None, task: str) -> str:
    """The summary block: counts, errors by kind, metric quantiles."""
    out = []
    state = "complete" if success else "no _SUCCESS: running, interrupted or not a job folder"
    out.append(f"{storage.redact(output)}  [{task}, {state}]")
    rows, records, ok = con.execute(
        f"SELECT count(*), count(DISTINCT key), count(*) FILTER (WHERE status = '{STATUS_OK}') FROM manifest").fetchone()
    line = f"rows {rows} · records {records} · ok {ok} · error {rows - ok}"
    if success and isinstance(success.get("duration_s"), (int, float)):
        d = success["duration_s"]
        line += f" · {d:.1f} s" + (f" · {rows / d:.3g} rows/s" if d > 0 else "")
    out.append(line)

    errors = con.execute(f"SELECT key, error FROM manifest WHERE status <> '{STATUS_OK}' ORDER BY key").fetchall()
    if errors:
        kinds: dict[str, list] = {}
        for key, err in errors:
            entry = kinds.setdefault(reason_kind(err), [0, key, err])
            entry[0] += 1
        ordered = sorted(kinds.items(), key=lambda kv: (-kv[1][0], kv[0]))
        out.append("\nerrors by kind (example key: reason):")
        for kind, (n, key, err) in ordered[:MAX_REASON_KINDS]:
            out.append(f"  {n:>7}  {kind}\n           e.g. {key}: {shorten(err or '', 240)}")
        if len(ordered) > MAX_REASON_KINDS:
            out.append(f"  … {len(ordered) - MAX_REASON_KINDS} more kinds: --where \"status = 'error'\" lists them")

    columns = {d[0] for d in con.execute("SELECT * FROM manifest LIMIT 0").description}
    metric_rows = []
    for m in METRIC_NAMES:
        if m not in columns:
            continue
        n, inf, q, mean = con.execute(
            f"SELECT count({m}), count(*) FILTER (WHERE isinf({m})), "
            f"quantile_cont({m}, {list(QUANTILES)}) FILTER (WHERE isfinite({m})), avg({m}) FILTER (WHERE isfinite({m})) "
            f"FROM manifest WHERE status = '{STATUS_OK}'").fetchone()
        if n:
            metric_rows.append((m, n, *(q or [None] * len(QUANTILES)), mean, inf))
    if metric_rows:
        head = ["metric", "n", "min", "p5", "p25", "median", "p75", "p95", "max", "mean", "inf"]
        out.append("\nmetrics over ok rows:\n" + "\n".join("  " + ln for ln in format_table(head, metric_rows).splitlines()))
    elif task not in ("synth-pairs",):
        out.append("\nno metric values (no reference given, or every row failed)")
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI
def add_inspect_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``chromabeam inspect OUTPUT``."""
    parser.add_argument("output", metavar="OUTPUT", help="a job's output folder (or its manifest Parquet files) by URL")
    parser.add_argument("--where", metavar="SQL", default=None,
                        help="print the rows matching this DuckDB expression, e.g. \"psnr < 25\" or \"status = 'error'\"")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"rows to print with --where (default {DEFAULT_LIMIT})")
    parser.add_argument("--columns", metavar="A,B", default=None, help="columns to print with --where (default: key, status, metrics, error)")
    parser.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                        help='per-protocol fsspec options, e.g. \'{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}\'')
    return parser


def _columns(spec: str | None, available: list[str]) -> list[str]:
    if spec is None:
        return [c for c in _DEFAULT_COLUMNS if c in available]
    wanted = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in available]
    if unknown or not wanted:
        raise InspectError(f"--columns: unknown column(s) {', '.join(unknown) or '(none given)'}; "
                           f"this manifest has: {', '.join(available)}")
    return wanted


def inspect_command(args: argparse.Namespace) -> int:
    """Print the summary (and matching rows with --where); 0 on success, 2 with a one-line
    reason on a bad OUTPUT or option."""
    try:
        if getattr(args, "storage_options", None):
            storage.set_storage_options(args.storage_options)
        if args.limit < 0:
            raise InspectError(f"--limit must be 0 or more, got {args.limit}")
        table = load_manifest(args.output)
        columns = _columns(args.columns, table.column_names)
        con = connect(table)
        task = (table.schema.metadata or {}).get(b"chromabeam.task", b"").decode() or "unknown"
        output = args.output.rstrip("/") or args.output
        success = None
        if not storage.has_magic(output) and not output.endswith(".parquet"):
            from chromabeam.pipelines.report import load_summary

            success = load_summary(output)
        text = summary_text(con, output, success, task)
        if args.where is not None:
            if not args.where.strip():
                raise InspectError('--where needs an expression, e.g. --where "psnr < 25"')
            total, rows = query_rows(con, args.where, columns, args.limit)
            shown = f", first {len(rows)} shown" if total > len(rows) else ""
            text += f"\n\n{total} rows where {args.where}{shown}:\n"
            text += format_table(columns, rows) if rows else "(none)"
    except (InspectError, storage.StorageError, ValueError) as exc:
        print(f"chromabeam inspect: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0
