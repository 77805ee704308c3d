"""DNCM colour-style quality on held-out photographs (EVAL split only).

For each grade G (IFFI filters and procedural grades from ``transforms.ops``) and each
EVAL photo Y: the style reference is S = G(Y); every other EVAL photo X is stylized with
S and compared with G(X) — what a user wants when they say "make X look like S". Reported
as mean PSNR (dB) and CIEDE2000 over all (G, Y, X) triples, for:

- ``identity``: doing nothing (X itself);
- ``reinhard``: Reinhard et al. 2001 colour transfer — per-channel mean/std matching in
  CIELAB (the classic global baseline), implemented here;
- ``dncm``: each ``--weights`` file (content Z computed once per X, r once per S);
- ``look``: ``stylize --method look`` — S's look fitted once with each ``--look-weights``
  restorer (``transforms.look_handler.fit_look`` on S in 8 bits), applied to X as a LUT.

    python benchmarks/stylize_quality.py [--weights A.safetensors B.safetensors] [--look-weights R.safetensors]
        [--max-side 256] [--refs N (default 4; 0: all)] [--json out.json]

Training never sees EVAL photos; the grade families are the same as training's (filters,
procedural grades), so this measures generalisation to unseen photographs, not unseen
grade families.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from chromabeam.models import photos
from chromabeam.models.registry import build_model
from chromabeam.transforms.ops.color import lab_to_rgb, rgb_to_lab
from chromabeam.transforms.ops.filters import apply_filter
from chromabeam.transforms.ops.grades import apply_grade, sample_grade
from chromabeam.transforms.ops.metrics import delta_e2000, psnr

FILTERS = ("1977", "amaro", "brannan", "clarendon", "gingham", "nashville", "valencia")


def grades(n_procedural: int = 5, seed: int = 2024) -> list[tuple[str, object]]:
    """Seven position-independent IFFI filters plus ``n_procedural`` seeded procedural
    grades (no vignette): 12 looks by default."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, object]] = [(f"filter:{n}", n) for n in FILTERS]
    out += [(f"grade:{i}", sample_grade(rng, vignette_prob=0.0)) for i in range(n_procedural)]
    return out


def apply_look(x: torch.Tensor, look: tuple[str, object]) -> torch.Tensor:
    name, spec = look
    return (apply_filter(x, spec) if name.startswith("filter:") else apply_grade(x, spec)).clamp(0, 1)


def reinhard(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Reinhard colour transfer in CIELAB: ``(1, 3, H, W)`` content, ``(1, 3, H', W')``
    style → content with the style's per-channel Lab mean and std, clipped to [0, 1]."""
    a, b = rgb_to_lab(content.double()), rgb_to_lab(style.double())
    ma, sa = a.mean(dim=(-2, -1), keepdim=True), a.std(dim=(-2, -1), keepdim=True)
    mb, sb = b.mean(dim=(-2, -1), keepdim=True), b.std(dim=(-2, -1), keepdim=True)
    out = (a - ma) / sa.clamp_min(1e-6) * sb + mb
    return lab_to_rgb(out).clamp(0, 1).float()


def oracle_psnr(x: torch.Tensor, target: torch.Tensor, knots: int) -> float:
    """PSNR of the best map of a DNCM function class fitted to (x → target) by least
    squares on this very image: the ceiling any predicted r could reach. ``knots=0``: the
    paper's linear x·M (3×3, no offset); else the curve basis φ(x)·M (3·knots×3)."""
    from chromabeam.transforms.ops.style import curve_basis

    feats = x if knots == 0 else curve_basis(x, knots)
    A = feats[0].reshape(feats.shape[1], -1).T.double()
    B = target[0].reshape(3, -1).T.double()
    M = torch.linalg.lstsq(A, B).solution
    pred = (A @ M).clamp(0, 1)
    return float(10 * torch.log10(1 / (pred - B).square().mean()))


def load_eval(max_side: int) -> list[tuple[str, torch.Tensor]]:
    cache = photos.fetch_debian(os.environ.get("CHROMABEAM_PHOTO_CACHE", "/tmp/photo-cache"))
    _, ev = photos.split()
    return [(p.name, torch.from_numpy(photos.load(p, cache, max_side).copy()).permute(2, 0, 1).float().div(255)[None])
            for p in ev]


def evaluate(weights: list[str], max_side: int = 256, refs: int | None = 4, n_procedural: int = 5,
             look_weights: list[str] = ()) -> dict:
    from chromabeam.transforms.look_handler import fit_look
    from chromabeam.transforms.ops.imageio import to_uint8
    from chromabeam.transforms.ops.lut import apply_lut

    images = load_eval(max_side)
    looks = grades(n_procedural)
    models = {os.path.basename(w): build_model(w, "cpu") for w in weights}
    restorers = {f"look ({os.path.basename(w)})": build_model(w, "cpu") for w in look_weights}
    scores: dict[str, dict[str, list]] = {}
    per_look: dict[str, dict[str, list]] = {}
    oracle: dict[str, list] = {}

    def add(method, look, p, de):
        for table in (scores.setdefault(method, {"psnr": [], "de": []}),
                      per_look.setdefault(look, {}).setdefault(method, {"psnr": [], "de": []})):
            table["psnr"].append(p)
            table["de"].append(de)

    with torch.inference_mode():
        Zs = {m: [model.normalize(x, model.encode(x)[0]) for _, x in images] for m, model in models.items()}
        for look in looks:
            graded = [apply_look(x, look) for _, x in images]
            for (_, X), T in zip(images, graded):  # ceilings: the best map fitted per image
                for label, knots in (("oracle: linear 3x3 (paper)", 0), ("oracle: curves, 8 knots", 8)):
                    oracle.setdefault(label, []).append(oracle_psnr(X, T, knots))
            for yi in range(len(images) if not refs else min(refs, len(images))):
                S = graded[yi]
                r = {m: model.encode(S)[1] for m, model in models.items()}
                fitted = {m: torch.from_numpy(fit_look(R, to_uint8(S[0]))) for m, R in restorers.items()}
                for xi, (_, X) in enumerate(images):
                    if xi == yi:
                        continue
                    T = graded[xi]
                    cands = {"identity": X, "reinhard": reinhard(X, S)}
                    for m, model in models.items():
                        cands[m] = model.stylize(Zs[m][xi], r[m]).clamp(0, 1)
                    for m, table in fitted.items():
                        cands[m] = apply_lut(X, table, method="volume")
                    for method, out in cands.items():
                        add(method, look[0], float(psnr(out, T)), float(delta_e2000(out, T)))
    mean = lambda v: round(float(np.mean(v)), 3)  # noqa: E731
    return {
        "photos": [n for n, _ in images],
        "looks": [n for n, _ in looks],
        "triples": len(scores["identity"]["psnr"]),
        "max_side": max_side,
        "overall": {m: {"psnr": mean(v["psnr"]), "delta_e2000": mean(v["de"])} for m, v in scores.items()},
        "oracle_psnr": {k: mean(v) for k, v in oracle.items()},
        "per_look": {lk: {m: {"psnr": mean(v["psnr"]), "delta_e2000": mean(v["de"])} for m, v in d.items()}
                     for lk, d in per_look.items()},
    }


def table(result: dict) -> str:
    methods = list(result["overall"])
    lines = [f"held-out EVAL photos: {len(result['photos'])}, looks: {len(result['looks'])}, "
             f"(look, reference, content) triples: {result['triples']}, long side {result['max_side']} px", ""]
    lines.append("| method | PSNR dB ↑ | ΔE2000 ↓ | PSNR gain vs identity |")
    lines.append("| --- | --- | --- | --- |")
    base = result["overall"]["identity"]["psnr"]
    for m in methods:
        o = result["overall"][m]
        lines.append(f"| {m} | {o['psnr']:.2f} | {o['delta_e2000']:.2f} | {o['psnr'] - base:+.2f} |")
    lines += ["", "Ceilings (the best map of each function class fitted on the target itself, per image):", ""]
    lines += [f"- {k}: {v:.2f} dB" for k, v in result["oracle_psnr"].items()]
    lines += ["", "| look | " + " | ".join(f"{m} PSNR" for m in methods) + " |",
              "| --- |" + " --- |" * len(methods)]
    for lk, d in result["per_look"].items():
        lines.append(f"| {lk} | " + " | ".join(f"{d[m]['psnr']:.2f}" for m in methods) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", nargs="*", default=None, help="DNCM safetensors (default: the shipped weights)")
    ap.add_argument("--look-weights", nargs="*", default=None,
                    help="restorer safetensors for the look method (default: the shipped restorer; none: skip)")
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--refs", type=int, default=4, help="the first N EVAL photos serve as references (0: all 13)")
    ap.add_argument("--procedural", type=int, default=5, help="procedural grades besides the 7 filters")
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    if not args.weights:
        from chromabeam.transforms.stylize_handler import default_weights

        args.weights = [default_weights()]
    if args.look_weights is None:
        from chromabeam.pipelines.restore import default_weights as restorer_weights

        args.look_weights = [restorer_weights()[0]]
    t0 = time.time()
    result = evaluate(args.weights, args.max_side, args.refs, args.procedural, args.look_weights)
    result["seconds"] = round(time.time() - t0, 1)
    print(table(result))
    print(f"\n({result['seconds']} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
