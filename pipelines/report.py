"""OUTPUT/report.html: a self-contained page (no network at view time) built from the
run summary and the manifest — counts, errors by reason, metric summaries."""
from __future__ import annotations

import html
import json

from chromabeam.schemas.manifest import METRIC_NAMES
from chromabeam.transforms import storage


def _metric_rows(table) -> list[tuple[str, int, float, float, float]]:
    import numpy as np

    out = []
    if table is None:
        return out
    for name in METRIC_NAMES:
        if name not in table.column_names:
            continue
        vals = np.array([v for v in table.column(name).to_pylist() if v is not None], dtype=float)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            out.append((name, int(vals.size), float(vals.mean()), float(np.percentile(vals, 5)), float(np.median(vals))))
    return out


def render_report(summary: dict, table) -> str:
    counts = summary.get("counts", {})
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>chromabeam {esc(summary.get('task', ''))} report</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f4f4f4}.err{color:#a00}</style></head><body>",
        f"<h1>chromabeam {esc(summary.get('task', ''))}</h1>",
        "<table><tr>" + "".join(f"<th>{esc(k)}</th>" for k in counts) + "<th>duration (s)</th></tr><tr>"
        + "".join(f"<td>{v}</td>" for v in counts.values()) + f"<td>{summary.get('duration_s', '')}</td></tr></table>",
    ]
    metrics = _metric_rows(table)
    if metrics:
        parts.append("<h2>Quality</h2><table><tr><th>metric</th><th>n</th><th>mean</th><th>p5</th><th>median</th></tr>")
        parts += [f"<tr><td>{m}</td><td>{n}</td><td>{a:.4f}</td><td>{p:.4f}</td><td>{md:.4f}</td></tr>" for m, n, a, p, md in metrics]
        parts.append("</table>")
    reasons = summary.get("errors_by_reason") or {}
    if reasons:
        parts.append("<h2 class='err'>Errors by reason</h2><table><tr><th>reason</th><th>rows</th></tr>")
        parts += [f"<tr><td>{esc(r)}</td><td>{n}</td></tr>" for r, n in reasons.items()]
        parts.append("</table>")
    notes = summary.get("notes") or {}
    for k, v in notes.items():
        parts.append(f"<p><b>{esc(k)}</b>: {esc(str(v))}</p>")
    parts.append("<h2>Run</h2><pre>" + esc(json.dumps({k: summary[k] for k in ("versions", "params") if k in summary}, indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(output: str, summary: dict) -> str:
    from chromabeam.pipelines.job import read_manifest

    url = storage.join(output, "report.html")
    storage.put_atomic(url, render_report(summary, read_manifest(output)).encode("utf-8"))
    return url
