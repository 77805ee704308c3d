"""Filter-removal quality on photographs never used in training.

    python benchmarks/restore_quality.py [--weights URL] [--size 1024] [--grades-per-photo 8]
                                         [--json out.json] [--write-docs docs/restorer.md]

EVAL photos of models/photos.py (never trained on), long side ``--size`` (smaller photos
stay at their size). Inputs are 8-bit, like real filtered files. For each of the 16 IFFI
filters (strength 1, no perturbation) and overall, PSNR / SSIM / ΔE2000 (mean over
photos) of

1. doing nothing (the filtered image itself);
2. an oracle inverse LUT per look: it knows which filter was applied and maps colours
   through a 33³ LUT fitted on the TRAIN photos (filtered → original colour, trilinear
   splatting of every pixel, empty cells from their nearest filled cell) — the best a
   global colour map learnt from other photos can do; it cannot undo spatial parts
   (vignettes);
3. the shipped model, blind (it is not told the filter).

Then "unseen grades": procedural grades (transforms/ops/grades.py ``sample_grade``, 30 %
with a vignette) drawn from ``numpy.random.default_rng(900000 + i)`` — seeds the
training pairs never used (synth-pairs derives its draws from (seed, key, pair index)),
applied to the EVAL photos; the oracle is fitted per grade on the TRAIN photos. Then
"white-balance casts": three per-channel gains (``CASTS``: warm, cool, mildly warm) on
each EVAL photo, the oracle fitted per cast likewise. And "identity": clean photos in, the
PSNR of what comes out.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np
import torch

from chromabeam.models import photos
from chromabeam.models.registry import build_model
from chromabeam.models.train_restorer import apply_cast
from chromabeam.transforms.ops.dncm import lut3d_apply
from chromabeam.transforms.ops.filters import IFFI_FILTERS, apply_filter
from chromabeam.transforms.ops.grades import apply_grade, sample_grade
from chromabeam.transforms.ops.lut import fit_lut_from_pairs
from chromabeam.transforms.ops.metrics import compute_metrics

LUT_SIZE = 33
# The oracle is fitted on the first TRAIN photos of the catalogue (the scikit-image and
# wallpaper ones): enough pixels for a 33³ LUT, and a fixed set, so runs compare.
ORACLE_FIT_PHOTOS = 26
GRADE_SEED = 900_000
# white-balance casts (R, G, B gains on the encoded values): the commonest "grade" of all
# — warm, cool, mildly warm
CASTS = ((1.2, 1.0, 0.7), (0.8, 1.0, 1.2), (1.1, 1.0, 0.85))
METRICS = ("psnr", "ssim", "delta_e2000")
BEGIN, END = "<!-- restore-quality:begin -->", "<!-- restore-quality:end -->"


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255


def _q8(x: torch.Tensor) -> torch.Tensor:
    """Round to 8 bits, as a saved image would be."""
    return x.clamp(0, 1).mul(255).round().div(255)


def _mean_metrics(rows: list[dict]) -> dict:
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}


def _metrics(pred: torch.Tensor, target: torch.Tensor) -> dict:
    v = compute_metrics(_q8(pred), target)
    return {m: float(v[m][0]) for m in METRICS}


def run(weights: str | None, size: int, grades_per_photo: int, fit_side: int, log=print) -> dict:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from chromabeam.pipelines.restore import default_weights

    url, sha = (weights, None) if weights else default_weights()
    model = build_model(url, "cpu", expected_sha256=sha)
    cache = photos.fetch_debian(os.environ.get("CHROMABEAM_PHOTO_CACHE", "/tmp/photo-cache"))
    train, evals = photos.split()
    train = train[:ORACLE_FIT_PHOTOS]
    train_imgs = [_tensor(photos.load(p, cache, fit_side)) for p in train]
    eval_imgs = [(p.name, _tensor(photos.load(p, cache, size))) for p in evals]
    log(f"{len(eval_imgs)} eval photos at ≤{size} px, oracle fitted on {len(train_imgs)} train photos at ≤{fit_side} px")

    def restore(x):
        with torch.inference_mode():
            return model(x)

    def evaluate(look_name, look, inputs_for):
        lut = fit_lut_from_pairs([(_q8(look(t)), t) for t in train_imgs], LUT_SIZE)
        rows = []
        for name, clean in inputs_for:
            x = _q8(look(clean))
            rows.append({
                "photo": name,
                "nothing": _metrics(x, clean),
                "oracle_lut": _metrics(lut3d_apply(x, lut), clean),
                "model": _metrics(restore(x), clean),
            })
        return rows

    results: dict = {"weights": os.path.basename(url), "sha256": model.weights_sha256, "size": size,
                     "eval_photos": [n for n, _ in eval_imgs], "filters": {}, "grades": {}}
    t0 = time.time()
    for f in IFFI_FILTERS:
        rows = evaluate(f, lambda t, f=f: apply_filter(t, f, 1.0), eval_imgs)
        results["filters"][f] = {k: _mean_metrics([r[k] for r in rows]) for k in ("nothing", "oracle_lut", "model")}
        m = results["filters"][f]
        log(f"{f:>10}: nothing {m['nothing']['psnr']:.2f}  oracle {m['oracle_lut']['psnr']:.2f}  "
            f"model {m['model']['psnr']:.2f} dB  [{time.time() - t0:.0f} s]")
    grade_rows = []
    for i, (name, clean) in enumerate(eval_imgs):
        for j in range(grades_per_photo):
            seed = GRADE_SEED + i * grades_per_photo + j
            params = sample_grade(np.random.default_rng(seed))
            rows = evaluate(f"grade{seed}", lambda t, p=params: apply_grade(t, p, 1.0), [(name, clean)])
            rows[0]["seed"] = seed
            grade_rows.append(rows[0])
        log(f"grades on {name}: done [{time.time() - t0:.0f} s]")
    results["grades"] = {k: _mean_metrics([r[k] for r in grade_rows]) for k in ("nothing", "oracle_lut", "model")}
    results["grades"]["count"] = len(grade_rows)
    cast_rows = []
    for gains in CASTS:
        cast_rows += evaluate(f"cast{gains}", lambda t, g=gains: apply_cast(t, {"gains": g}), eval_imgs)
    results["casts"] = {k: _mean_metrics([r[k] for r in cast_rows]) for k in ("nothing", "oracle_lut", "model")}
    results["casts"]["count"] = len(cast_rows)
    log(f"casts: nothing {results['casts']['nothing']['psnr']:.2f}  model {results['casts']['model']['psnr']:.2f} dB")
    ident = [_metrics(restore(clean), clean) for _, clean in eval_imgs]
    results["identity"] = {"model": _mean_metrics(ident), "min_psnr": float(min(r["psnr"] for r in ident))}
    results["iffi_overall"] = {
        k: {m: float(np.mean([results["filters"][f][k][m] for f in IFFI_FILTERS])) for m in METRICS}
        for k in ("nothing", "oracle_lut", "model")
    }
    results["seconds"] = round(time.time() - t0, 1)
    return results


def table(results: dict) -> str:
    """Markdown table: rows = filters, overall, unseen grades, identity."""
    head = ("| look | nothing PSNR / SSIM / ΔE00 | oracle inverse LUT PSNR / SSIM / ΔE00 | "
            "model (blind) PSNR / SSIM / ΔE00 | model − nothing (dB) |")
    lines = [head, "| --- | --- | --- | --- | --- |"]

    def cell(m):
        return f"{m['psnr']:.2f} / {m['ssim']:.3f} / {m['delta_e2000']:.2f}"

    def row(label, r):
        gain = r["model"]["psnr"] - r["nothing"]["psnr"]
        lines.append(f"| {label} | {cell(r['nothing'])} | {cell(r['oracle_lut'])} | {cell(r['model'])} | {gain:+.2f} |")

    for f, r in results["filters"].items():
        row(f, r)
    row("**IFFI overall (mean of 16)**", results["iffi_overall"])
    row(f"**unseen grades** ({results['grades']['count']})", results["grades"])
    if "casts" in results:
        row(f"**white-balance casts** ({results['casts']['count']})", results["casts"])
    ident = results["identity"]
    lines.append(f"| **identity** (clean in) | ∞ | – | {cell(ident['model'])} (min PSNR {ident['min_psnr']:.2f}) | – |")
    return "\n".join(lines)


def write_docs(path: str, text: str) -> None:
    doc = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
    else:
        doc = doc + ("\n" if doc else "") + block + "\n"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)


def update_card(weights_path: str, results: dict, text: str, command: str) -> None:
    """Add the results to the weights' model card sidecars (``.json``: a ``benchmark``
    entry; ``.md``: the table). The safetensors file, and so its sha256, is unchanged:
    the card describes exactly the weights that were measured."""
    stem = weights_path[: -len(".safetensors")]
    with open(stem + ".json", encoding="utf-8") as fh:
        card = json.load(fh)
    if card.get("sha256") != results["sha256"]:
        raise ValueError(f"{stem}.json describes sha256 {card.get('sha256')}, the benchmark ran {results['sha256']}")
    summary = {k: results[k] for k in ("iffi_overall", "grades", "casts", "identity", "size", "eval_photos")
               if k in results}
    summary["per_filter"] = {f: {k: round(v["psnr"], 2) for k, v in r.items()} for f, r in results["filters"].items()}
    card["benchmark"] = {"command": command, **summary}
    with open(stem + ".json", "w", encoding="utf-8") as fh:
        fh.write(json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    write_docs(stem + ".md", f"## Benchmark\n\n`{command}`\n\n{text}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="default: the shipped restorer")
    ap.add_argument("--size", type=int, default=1024, help="long side of the eval photos")
    ap.add_argument("--grades-per-photo", type=int, default=8)
    ap.add_argument("--fit-side", type=int, default=512, help="long side of the train photos the oracle is fitted on")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument("--write-docs", default=None, help="replace the table between the markers in this Markdown file")
    ap.add_argument("--update-card", action="store_true",
                    help="add the results to the weights' .json/.md model card (not to the weights file)")
    args = ap.parse_args(argv)
    results = run(args.weights, args.size, args.grades_per_photo, args.fit_side, log=lambda s: print(s, file=sys.stderr))
    text = table(results)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if args.write_docs:
        write_docs(args.write_docs, text)
    if args.update_card:
        from chromabeam.pipelines.restore import default_weights

        path = args.weights or default_weights()[0]
        update_card(path, results, text, "python benchmarks/restore_quality.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
