"""OUTPUT/report.html: what a person looks at after a job, built from the manifest alone.

    manifest parts (+ _SUCCESS when the job finished) → one self-contained HTML page:
    summary cards · errors by kind (one example each) · metric histograms (inline SVG) ·
    contact sheet (a stable sample and the worst rows by each metric, thumbnails read
    from the URIs the manifest names) · per-filter / per-style table · versions, params.

Self-contained: thumbnails are ~160 px JPEG ``data:`` URIs and the CSS/SVG is inline; no
script, no font, no external URL, and a Content-Security-Policy that forbids any fetch,
so the page opens offline from disk or object storage. Work is capped: at most
``MAX_THUMBNAILS`` images are read (each shard once, see ``read_uris``), each at most
``MAX_THUMB_BYTES``, within ``READ_BUDGET_S``; an image that cannot be shown is a grey
box with the reason.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import math
import sys
import time
import warnings
from typing import Any

import numpy as np

from chromabeam.schemas.manifest import METRIC_NAMES, STATUS_OK, reason_kind
from chromabeam.transforms import storage

THUMB_PX = 160
MAX_THUMBNAILS = 48
MAX_THUMB_BYTES = 64 * 1024 * 1024
MAX_THUMB_PIXELS = 80_000_000
READ_BUDGET_S = 90.0
SAMPLE_ROWS = 12
WORST_ROWS = 4
MAX_GROUPS = 40
MAX_REASON_KINDS = 30

METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "delta_e2000": "ΔE2000", "lpips": "LPIPS"}
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "delta_e2000": False, "lpips": False}

# --------------------------------------------------------------------------- loading
def load_summary(output: str) -> dict | None:
    """OUTPUT/_SUCCESS as a dict, or None when the job has not finished."""
    url = storage.join(output, "_SUCCESS")
    if not storage.exists(url):
        return None
    try:
        return json.loads(storage.read_bytes(url))
    except ValueError as exc:
        raise ValueError(f"{storage.redact(url)} is not valid JSON ({exc}); re-run the job or delete it") from None


def manifest_task(table) -> str:
    meta = table.schema.metadata or {}
    return meta.get(b"chromabeam.task", b"").decode() or "unknown"


# --------------------------------------------------------------------------- row views
def _col(table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _metric_array(table, name: str) -> np.ndarray:
    """float64 values of a metric column over all rows; NaN for null or non-ok rows."""
    vals = np.array([np.nan if v is None else v for v in _col(table, name)], dtype=np.float64)
    ok = np.array([s == STATUS_OK for s in table.column("status").to_pylist()], dtype=bool)
    vals[~ok] = np.nan
    return vals


def _stable_rank(key: str, pair_index, style) -> bytes:
    ident = f"{key}\x00{'' if pair_index is None else pair_index}\x00{style or ''}"
    return hashlib.blake2b(ident.encode("utf-8", "surrogateescape"), digest_size=8).digest()


def _json(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _transform_label(spec: dict | None) -> str | None:
    """``filter clarendon ×0.8 + contrast, shadow`` for one side of a pair transform."""
    if not isinstance(spec, dict) or not spec.get("family"):
        return None
    family, ident = spec["family"], spec.get("id")
    label = family if ident in (None, family) else f"{family} {ident}"
    strength = spec.get("strength")
    if isinstance(strength, (int, float)) and family not in ("identity",) and strength != 1:
        label += f" ×{strength:.2f}"
    perturb = [p.get("name") for p in spec.get("perturb") or [] if isinstance(p, dict) and p.get("name")]
    if perturb:
        label += " + " + ", ".join(perturb)
    return label


def _group_of(task: str, row: dict) -> str | None:
    """The per-filter / per-style group of a row, when the manifest says one."""
    if task == "synth-pairs":
        spec = _json(row.get("transform")).get("input")
        if isinstance(spec, dict) and spec.get("family"):
            ident = spec.get("id")
            return spec["family"] if ident in (None, spec["family"]) else f"{spec['family']}: {ident}"
        return None
    if row.get("style"):
        return str(row["style"])
    params = _json(row.get("params"))
    for name in ("filter", "filter_name", "style", "preset"):
        if params.get(name) not in (None, ""):
            return str(params[name])
    recognised = params.get("recognised")  # restore: what the model recognised in the image
    if isinstance(recognised, dict) and "p_none" in recognised:
        return f"recognised: {recognised.get('filter') or 'no filter'}"
    return None


def _image_columns(task: str, table) -> list[tuple[str, str]]:
    """(caption, manifest column) of the images shown per contact-sheet row."""
    have = set(table.column_names)
    if task == "synth-pairs":
        cols = [("input", "input_uri"), ("target", "target_uri")]
    elif task == "evaluate":
        cols = [("prediction", "source_uri"), ("reference", "reference_uri")]
    else:
        cols = [("before", "source_uri"), ("after", "output_uri"), ("reference", "reference_uri")]
    return [(c, n) for c, n in cols if n in have and table.column(n).null_count < table.num_rows]


# --------------------------------------------------------------------------- thumbnails
def thumbnail(data: bytes, size: int = THUMB_PX) -> bytes:
    """A JPEG of at most ``size`` px on the long side (EXIF orientation applied).

    Raises ValueError with a short reason when the bytes are not a displayable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_THUMB_PIXELS:
                    raise ValueError(f"{im.width}x{im.height} is too large to preview")
                im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced scale
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA", "P"):
                    rgba = im.convert("RGBA")
                    im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                im = im.convert("RGB")
                im.thumbnail((size, size), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=78, optimize=True)
                return buf.getvalue()
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode: {type(exc).__name__}: {exc}") from None


def _thumbnails(uris: list[str], budget_s: float) -> dict[str, tuple[str, str]]:
    """uri → ("img", data URI) or ("missing", reason)."""
    from chromabeam.transforms.read import read_uris

    out: dict[str, tuple[str, str]] = {}
    raw = read_uris(uris, max_bytes=MAX_THUMB_BYTES, deadline=time.monotonic() + budget_s)
    for uri in uris:
        value = raw.get(uri)
        if isinstance(value, BaseException):
            out[uri] = ("missing", shorten(str(value) or type(value).__name__))
            continue
        try:
            jpeg = thumbnail(value)
        except ValueError as exc:
            out[uri] = ("missing", shorten(str(exc)))
            continue
        out[uri] = ("img", "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"))
    return out


def shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- page parts
_CSS = """
:root{--fg:#1d2330;--mute:#667085;--line:#e4e7ec;--bg:#f7f8fa;--bad:#b42318;--ok:#067647;--bar:#4e79a7}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:var(--fg);background:#fff}
header{padding:18px 28px;border-bottom:1px solid var(--line);background:var(--bg)}
header h1{margin:0;font-size:20px}header .sub{color:var(--mute);word-break:break-all}
main{padding:8px 28px 40px}h2{font-size:16px;margin:26px 0 10px}h3{font-size:14px;margin:18px 0 8px;color:var(--mute)}
.banner{margin:14px 0;padding:10px 14px;border-radius:6px;background:#fffaeb;border:1px solid #fedf89}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:110px;background:#fff}
.card b{display:block;font-size:20px}.card span{color:var(--mute);font-size:12px}.card.bad b{color:var(--bad)}.card.good b{color:var(--ok)}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
td,th{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
th{background:var(--bg);font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.reason{max-width:640px;color:var(--bad);word-break:break-word}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,var(--w));gap:14px}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:8px;background:#fff}
.imgs{display:flex;gap:6px}.im{width:160px;text-align:center}
.im img{display:block;max-width:160px;max-height:160px;margin:0 auto;background:var(--bg)}
.im small{color:var(--mute);font-size:11px}
.ph{width:160px;height:120px;display:flex;align-items:center;justify-content:center;padding:6px;
background:#eaecf0;color:var(--bad);font-size:11px;text-align:center;overflow:hidden;word-break:break-word;border-radius:4px}
figcaption{margin-top:6px;font-size:12px;word-break:break-word}figcaption .k{font-weight:600}
.m{color:var(--mute)}figcaption .w{color:var(--bad);font-weight:600}
.hists{display:flex;flex-wrap:wrap;gap:18px}.hist{border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.hist .t{font-weight:600}.hist .s{color:var(--mute);font-size:12px}
pre{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:10px;overflow:auto;font-size:12px}
details summary{cursor:pointer;color:var(--mute)}footer{color:var(--mute);font-size:12px;padding:0 28px 24px}
"""

# Nothing may be fetched at view time: images are data: URIs, styles inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _card(label: str, value: Any, cls: str = "") -> str:
    return f"<div class='card {cls}'><b>{_e(value)}</b><span>{_e(label)}</span></div>"


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           classes: dict[int, str] | None = None) -> str:
    """Rows of already-escaped cell HTML; ``numeric`` columns right-aligned."""
    cls = {i: "n" for i in numeric} | (classes or {})
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td class='{cls[i]}'>{c}</td>" if i in cls else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def histogram_svg(values: np.ndarray, name: str, bins: int = 24, width: int = 360, height: int = 150) -> str:
    """Inline SVG histogram of the finite ``values`` (empty string when there are none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return ""
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(finite, bins=bins, range=(lo, hi))
    top = int(counts.max())
    left, plot_w, plot_h = 34, width - 44, height - 34
    bar_w = plot_w / bins
    bars = []
    for i, c in enumerate(counts):
        if not c:
            continue
        h = plot_h * c / top
        x = left + i * bar_w
        tip = f"{edges[i]:.4g} – {edges[i + 1]:.4g}: {c} row{'s' if c != 1 else ''}"
        bars.append(f"<rect x='{x:.1f}' y='{10 + plot_h - h:.1f}' width='{max(bar_w - 1, 1):.1f}' "
                    f"height='{h:.1f}' fill='#4e79a7'><title>{_e(tip)}</title></rect>")
    axis_y = 10 + plot_h
    return (
        f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"role='img' aria-label='{_e(METRIC_LABELS.get(name, name))} histogram'>"
        f"<line x1='{left}' y1='{axis_y}' x2='{left + plot_w}' y2='{axis_y}' stroke='#98a2b3'/>"
        f"<line x1='{left}' y1='10' x2='{left}' y2='{axis_y}' stroke='#98a2b3'/>"
        + "".join(bars)
        + f"<text x='{left - 4}' y='16' font-size='10' text-anchor='end' fill='#667085'>{top}</text>"
        f"<text x='{left - 4}' y='{axis_y}' font-size='10' text-anchor='end' fill='#667085'>0</text>"
        f"<text x='{left}' y='{height - 6}' font-size='10' fill='#667085'>{lo:.4g}</text>"
        f"<text x='{left + plot_w}' y='{height - 6}' font-size='10' text-anchor='end' fill='#667085'>{hi:.4g}</text>"
        "</svg>"
    )


# --------------------------------------------------------------------------- the page
class _Report:
    def __init__(self, output: str, summary: dict | None, table, *, max_thumbnails: int, budget_s: float):
        self.output = output
        self.summary = summary or {}
        self.complete = summary is not None
        self.table = table
        self.task = manifest_task(table) if table is not None else self.summary.get("task", "unknown")
        self.max_thumbnails = max(0, min(int(max_thumbnails), MAX_THUMBNAILS))
        self.budget_s = budget_s
        self.thumbnails_shown = 0

    def render(self) -> str:
        t = self.table
        parts = [
            "<!doctype html>\n<html><head><meta charset='utf-8'>",
            f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">",
            "<meta name='viewport' content='width=device-width,initial-scale=1'>",
            f"<title>chromabeam {_e(self.task)} — {_e(storage.basename(self.output))}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<header><h1>chromabeam {_e(self.task)}</h1><div class='sub'>{_e(storage.redact(self.output))}</div>",
            self._cards(),
            "</header><main>",
        ]
        if not self.complete:
            parts.append("<div class='banner'>No <code>_SUCCESS</code> yet: the job is still running or was "
                         "interrupted. This page shows the manifest parts written so far; re-run the same "
                         "command to resume.</div>")
        if t is None or t.num_rows == 0:
            parts.append("<p>The manifest has no rows.</p>")
        else:
            parts += [self._errors(), self._histograms(), self._contact_sheet(), self._groups()]
        parts += [self._run(), "</main>", self._footer(), "</body></html>\n"]
        return "".join(p for p in parts if p)

    # summary ------------------------------------------------------------------------
    def _counts(self) -> dict:
        t = self.table
        if t is None:
            return dict(self.summary.get("counts") or {})
        status = t.column("status").to_pylist()
        ok = sum(s == STATUS_OK for s in status)
        return {"records": len(set(t.column("key").to_pylist())), "rows": t.num_rows, "ok": ok, "error": t.num_rows - ok}

    def _cards(self) -> str:
        c = self._counts()
        rows = c.get("rows", 0)
        cards = [_card("records", c.get("records", "–")), _card("rows", rows),
                 _card("ok", c.get("ok", "–"), "good" if c.get("ok") else "")]
        err = c.get("error", 0)
        share = f" ({err / rows:.1%})" if rows and err else ""
        cards.append(_card("error" + share, err, "bad" if err else ""))
        duration = self.summary.get("duration_s")
        if isinstance(duration, (int, float)):
            cards.append(_card("duration", _duration(duration)))
            if duration > 0 and rows:
                cards.append(_card("throughput", f"{rows / duration:.3g} rows/s"))
        cards.append(_card("status", "complete" if self.complete else "incomplete", "" if self.complete else "bad"))
        return "<div class='cards'>" + "".join(cards) + "</div>"

    def _errors(self) -> str:
        t = self.table
        kinds: dict[str, list] = {}
        for key, status, err in zip(t.column("key").to_pylist(), t.column("status").to_pylist(), t.column("error").to_pylist()):
            if status == STATUS_OK:
                continue
            kind = reason_kind(err)
            entry = kinds.setdefault(kind, [0, key, err])
            entry[0] += 1
        if not kinds:
            return ""
        ordered = sorted(kinds.items(), key=lambda kv: (-kv[1][0], kv[0]))
        rows = [[_e(k), str(n), f"<code>{_e(key)}</code>", _e(shorten(err or "", 300))]
                for k, (n, key, err) in ordered[:MAX_REASON_KINDS]]
        more = len(ordered) - MAX_REASON_KINDS
        note = f"<p>… and {more} more kinds (see <code>chromabeam inspect</code>).</p>" if more > 0 else ""
        head = ["kind", "rows", "example key", "example reason"]
        return "<h2>Errors by reason</h2>" + _table(head, rows, {1}, {3: "reason"}) + note

    # contact sheet ------------------------------------------------------------------
    def _contact_sheet(self) -> str:
        t = self.table
        images = _image_columns(self.task, t)
        if not images or self.max_thumbnails == 0:
            return ""
        status = t.column("status").to_pylist()
        uris = {name: _col(t, name) for _, name in images}
        has_image = [s == STATUS_OK and any(uris[n][i] for n in uris) for i, s in enumerate(status)]
        keys, pairs, styles = t.column("key").to_pylist(), _col(t, "pair_index"), _col(t, "style")
        candidates = [i for i, ok in enumerate(has_image) if ok]
        if not candidates:
            return ""
        metrics = {m: _metric_array(t, m) for m in METRIC_NAMES if m in t.column_names}
        metrics = {m: v for m, v in metrics.items() if np.isfinite(v).any()}
        per_row = len(images)
        budget_rows = max(1, self.max_thumbnails // per_row)
        worst_n = min(WORST_ROWS, budget_rows // (2 * len(metrics))) if metrics else 0
        sample_n = min(SAMPLE_ROWS if metrics else budget_rows, budget_rows - worst_n * len(metrics))
        sample = sorted(candidates, key=lambda i: _stable_rank(keys[i], pairs[i], styles[i]))[:sample_n]
        sections = [("Sample", f"{len(sample)} of {len(candidates)} rows, chosen by a stable hash of the key", sample)]
        cand = np.array(candidates)
        for m, vals in metrics.items():
            if not worst_n:
                break
            v = vals[cand]
            finite = cand[np.isfinite(v)]
            order = np.argsort(vals[finite], kind="stable")
            if HIGHER_IS_BETTER[m]:
                picked = finite[order[:worst_n]]
                title = f"Lowest {METRIC_LABELS[m]}"
            else:
                picked = finite[order[::-1][:worst_n]]
                title = f"Highest {METRIC_LABELS[m]}"
            sections.append((title, "the worst rows by this metric", [int(i) for i in picked]))
        wanted = [i for _, _, idx in sections for i in idx]
        needed = list(dict.fromkeys(uris[n][i] for i in wanted for _, n in images if uris[n][i]))[: self.max_thumbnails]
        thumbs = _thumbnails(needed, self.budget_s)
        self.thumbnails_shown = sum(kind == "img" for kind, _ in thumbs.values())
        rows = {i: r for i, r in zip(sorted(set(wanted)), t.take(sorted(set(wanted))).to_pylist())}
        width = per_row * 166 + 12
        out = [f"<h2>Contact sheet</h2><p class='m'>{' · '.join(_e(c) for c, _ in images)} "
               f"({THUMB_PX} px thumbnails; hover an image for its URI)</p>"]
        for title, note, idx in sections:
            if not idx:
                continue
            out.append(f"<h3>{_e(title)} <span class='m'>— {_e(note)}</span></h3>"
                       f"<div class='sheet' style='--w:{width}px'>")
            out += [self._figure(rows[i], images, thumbs, metrics, title) for i in idx]
            out.append("</div>")
        return "".join(out)

    def _figure(self, row: dict, images, thumbs, metrics, section: str) -> str:
        cells = []
        for caption, name in images:
            uri = row.get(name)
            if not uri:
                cell = "<div class='ph'>none</div>"
            else:
                kind, value = thumbs.get(uri, ("missing", f"not read: over the {self.max_thumbnails}-thumbnail cap"))
                tip = _e(storage.redact(uri))
                cell = (f"<img src='{value}' alt='{_e(caption)}' title='{tip}'>" if kind == "img"
                        else f"<div class='ph' title='{tip}'>{_e(value)}</div>")
            cells.append(f"<div class='im'>{cell}<small>{_e(caption)}</small></div>")
        label = f"<span class='k'>{_e(row['key'])}</span>"
        if row.get("pair_index") is not None:
            label += f" #{row['pair_index']}"
        extra = []
        if row.get("style"):
            extra.append(f"style {row['style']}")
        if self.task == "synth-pairs":
            spec = _json(row.get("transform"))
            inp, tgt = _transform_label(spec.get("input")), _transform_label(spec.get("target"))
            if inp:
                extra.append(f"input: {inp}")
            if tgt and tgt != "identity":
                extra.append(f"target: {tgt}")
        group = _group_of(self.task, row) if self.task not in ("synth-pairs", "stylize") else None
        if group:
            extra.append(group)
        values = []
        for m in metrics:
            v = row.get(m)
            if v is None:
                continue
            cls = "w" if METRIC_LABELS[m].split()[0] in section else "m"
            values.append(f"<span class='{cls}'>{_e(METRIC_LABELS[m].split()[0])} {_e(_fmt(v, 4))}</span>")
        caption = label + "".join(f"<br>{_e(x)}" for x in extra) + ("<br>" + " · ".join(values) if values else "")
        return f"<figure><div class='imgs'>{''.join(cells)}</div><figcaption>{caption}</figcaption></figure>"

    # plots and tables ---------------------------------------------------------------
    def _histograms(self) -> str:
        t = self.table
        out = []
        for m in METRIC_NAMES:
            if m not in t.column_names:
                continue
            vals = _metric_array(t, m)
            present = vals[~np.isnan(vals)]
            if present.size == 0:
                continue
            finite = present[np.isfinite(present)]
            stats = f"n={present.size}"
            if finite.size:
                stats += f" · mean {_fmt(float(finite.mean()), 4)} · median {_fmt(float(np.median(finite)), 4)}"
                stats += f" · p5 {_fmt(float(np.percentile(finite, 5)), 4)} · p95 {_fmt(float(np.percentile(finite, 95)), 4)}"
            inf = present.size - finite.size
            if inf:
                stats += f" · {inf} identical (∞)" if m == "psnr" else f" · {inf} infinite"
            better = "higher is better" if HIGHER_IS_BETTER[m] else "lower is better"
            out.append(f"<div class='hist'><div class='t'>{_e(METRIC_LABELS[m])} <span class='s'>({better})</span></div>"
                       f"<div class='s'>{_e(stats)}</div>{histogram_svg(present, m)}</div>")
        return "<h2>Metrics</h2><div class='hists'>" + "".join(out) + "</div>" if out else ""

    def _groups(self) -> str:
        t = self.table
        cols = [c for c in ("key", "status", "style", "params", "transform") if c in t.column_names]
        view = t.select(cols).to_pylist()
        metrics = [m for m in METRIC_NAMES if m in t.column_names]
        values = {m: _metric_array(t, m) for m in metrics}
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(view):
            g = _group_of(self.task, row)
            if g is not None:
                groups.setdefault(g, []).append(i)
        if not groups:
            return ""
        status = np.array([r["status"] == STATUS_OK for r in view])
        metrics = [m for m in metrics if np.isfinite(values[m]).any()]
        what = {"synth-pairs": "input transform (family: id)", "stylize": "style"}.get(self.task, "filter / style")
        rows = []
        for g, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:MAX_GROUPS]:
            idx = np.array(idx)
            ok = int(status[idx].sum())
            cells = [_e(g), str(len(idx)), str(ok), str(len(idx) - ok)]
            for m in metrics:
                v = values[m][idx]
                v = v[np.isfinite(v)]
                cells.append(_fmt(float(v.mean()), 4) if v.size else "–")
            rows.append(cells)
        more = len(groups) - MAX_GROUPS
        note = f"<p>… and {more} more groups.</p>" if more > 0 else ""
        head = [what, "rows", "ok", "error"] + [f"mean {METRIC_LABELS[m]}" for m in metrics]
        return f"<h2>By {_e(what)}</h2>" + _table(head, rows, set(range(1, len(head)))) + note

    def _run(self) -> str:
        s = self.summary
        out = ["<h2>Run</h2>"]
        notes = s.get("notes") or {}
        for k, v in notes.items():
            out.append(f"<p><b>{_e(k)}</b>: {_e(v)}</p>")
        counters = s.get("beam_counters") or {}
        if counters:
            out.append("<h3>Beam counters</h3>" + _table(["counter", "value"], [[_e(k), _e(v)] for k, v in sorted(counters.items())], {1}))
        versions = s.get("versions") or {}
        if versions:
            out.append("<h3>Versions</h3>" + _table(["package", "version"], [[_e(k), _e(v)] for k, v in sorted(versions.items())]))
        if "params" in s:
            out.append("<h3>Parameters</h3><pre>" + _e(json.dumps(s["params"], indent=2, sort_keys=True, default=str)) + "</pre>")
        return "".join(out) if len(out) > 1 else ""

    def _footer(self) -> str:
        from chromabeam import __version__

        rows = 0 if self.table is None else self.table.num_rows
        return (f"<footer>Built by chromabeam {_e(__version__)} from {rows} manifest rows"
                f"{' and _SUCCESS' if self.complete else ''}; rebuild with <code>chromabeam report "
                f"{_e(storage.redact(self.output))}</code>.</footer>")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render_report(output: str, summary: dict | None = None, *, max_thumbnails: int = MAX_THUMBNAILS,
                  budget_s: float = READ_BUDGET_S) -> str:
    """The report page of OUTPUT, from its manifest (and ``summary``, else OUTPUT/_SUCCESS
    when present). Raises ValueError for an unreadable manifest."""
    return _build(output, summary, max_thumbnails, budget_s).render()


def _build(output: str, summary: dict | None, max_thumbnails: int, budget_s: float) -> _Report:
    from chromabeam.pipelines.job import read_manifest

    if summary is None:
        summary = load_summary(output)
    return _Report(output, summary, read_manifest(output), max_thumbnails=max_thumbnails, budget_s=budget_s)


def write_report(output: str, summary: dict | None = None, *, to: str | None = None,
                 max_thumbnails: int = MAX_THUMBNAILS, budget_s: float = READ_BUDGET_S) -> str:
    """Write the report (to OUTPUT/report.html unless ``to`` names another URL); returns its URL."""
    report = _build(output, summary, max_thumbnails, budget_s)
    url = to or storage.join(output, "report.html")
    storage.put_atomic(url, report.render().encode("utf-8"))
    return url


# --------------------------------------------------------------------------- CLI
def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``chromabeam report OUTPUT``."""
    parser.add_argument("output", metavar="OUTPUT", help="a job's output URL (holds manifest/ and, when finished, _SUCCESS)")
    parser.add_argument("--to", metavar="URL", default=None, help="write the page here instead of OUTPUT/report.html")
    parser.add_argument("--max-thumbnails", type=int, default=MAX_THUMBNAILS,
                        help=f"images to read for the contact sheet (0..{MAX_THUMBNAILS}, default {MAX_THUMBNAILS})")
    parser.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                        help='per-protocol fsspec options, e.g. \'{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}\'')
    return parser


def report_command(args: argparse.Namespace) -> int:
    """Rebuild OUTPUT/report.html from the manifest and _SUCCESS; 0 on success, 2 with a
    one-line reason otherwise."""
    output = args.output.rstrip("/") or args.output
    try:
        if getattr(args, "storage_options", None):
            storage.set_storage_options(args.storage_options)
        if not 0 <= args.max_thumbnails <= MAX_THUMBNAILS:
            raise ValueError(f"--max-thumbnails must be within 0..{MAX_THUMBNAILS}, got {args.max_thumbnails}")
        if not storage.exists(storage.join(output, "manifest")):
            raise ValueError(f"no manifest at {storage.redact(storage.join(output, 'manifest'))}: "
                             "OUTPUT must be the output folder of a chromabeam job")
        report = _build(output, None, args.max_thumbnails, READ_BUDGET_S)
        page = report.render()
        url = args.to or storage.join(output, "report.html")
        storage.put_atomic(url, page.encode("utf-8"))
    except (storage.StorageError, ValueError) as exc:
        print(f"chromabeam report: {exc}", file=sys.stderr)
        return 2
    rows = 0 if report.table is None else report.table.num_rows
    state = "" if report.complete else " (job not finished: no _SUCCESS)"
    print(f"report: {rows} rows, {report.thumbnails_shown} thumbnails → {storage.redact(url)}{state}")
    return 0
