"""A quick restorer check for training runs (~40 s): the EVAL photos at 512 px, the 16 IFFI
filters at full strength (and, on a line of its own, at half strength), 4 unseen procedural
grades, 3 white-balance casts (channel gains: warm, cool, mildly warm), and clean photos
(identity) —
mean PSNR of doing nothing and of the model. No oracle, no SSIM/ΔE: for comparing
checkpoints; ``benchmarks/restore_quality.py`` is the benchmark.

    python benchmarks/restore_quick.py WEIGHTS.safetensors|CHECKPOINT_DIR [--size 512]
        [--photos eval|holdout:FRACTION|packages:NAME,…] [--bank-temperature T] [--bank-none-shift D]
        [--bank-cast-shift S] [--bank-strength-shift B] [--bank-strength-stretch K] [--bank-verify-beta B]
        [--bank-crops F] [--bank-commit EPS]
        [--path exact|fast] [--jpeg QUALITY] [--known-filter] [--oracle-candidates K]

A CHECKPOINT_DIR is a ``chromabeam train restorer`` checkpoint folder (``model.safetensors``
+ ``state.json``). ``--photos holdout:F`` scores the TRAIN photos that ``chromabeam train
restorer --holdout-photos F`` left out instead of the EVAL photos (``packages:…``: the
TRAIN photos of those packages, e.g. ones added to the catalogue after a model was
trained); ``--jpeg Q`` saves every input (filtered, graded or clean) as a JPEG of quality Q
and decodes it before the model sees it, as photos arrive in practice; ``--known-filter``
also scores the IFFI looks with the model told the filter (``Restorer.predict(known_bank=…)``);
``--path fast`` restores through ``restore_pixels``' 8-bit CPU path (what ``chromabeam
restore`` runs on CPU) instead of the model's float forward pass;
``--oracle-candidates K`` says how often the true filter is among the classifier's top
1 / 3 / 5 / K and how good the best of "no bank entry" + those candidates' restorations
is (an oracle choosing: the room a second opinion such as ``bank_verify`` has).
Settings such as the
bank's calibration (``--bank-temperature``/``--bank-none-shift``/``--bank-cast-shift``/
``--bank-strength-shift``/``--bank-strength-stretch``, applied with
``Restorer.calibrate_bank`` before scoring), the verifier's β (``--bank-verify-beta``) and the
classifiers' crops (``--bank-crops``) and the commit floor (``--bank-commit``,
``Restorer.set_bank_commit``) are
chosen there, never on EVAL.
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
from chromabeam.models.restorer import Restorer
from chromabeam.models.train_restorer import apply_cast, bank_filter_names, jpeg_round_trip
from chromabeam.transforms.ops.filters import IFFI_FILTERS, apply_filter
from chromabeam.transforms.ops.grades import apply_grade, sample_grade
from chromabeam.transforms.ops.imageio import to_float, to_uint8
from chromabeam.transforms.ops.metrics import psnr
from chromabeam.transforms.restore_handler import restore_pixels
from restore_quality import CASTS, GRADE_SEED, _q8, _tensor  # the full benchmark's seeds and conversions (same folder)


def load(path: str) -> tuple[Restorer, str]:
    if os.path.isdir(path):
        from safetensors.torch import load as st_load

        with open(os.path.join(path, "state.json")) as fh:
            state = json.load(fh)
        cfg = {k: v for k, v in state["config"]["model"].items() if k != "model"}
        model = Restorer(pretrained=False, **cfg)
        with open(os.path.join(path, "model.safetensors"), "rb") as fh:
            model.load_state_dict(st_load(fh.read()))
        return model.eval(), f"step {state['step']}"
    from chromabeam.models.registry import build_model

    model = build_model(path, "cpu")
    return model.eval(), os.path.basename(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--photos", default="eval",
                    help="eval (the EVAL photos), holdout:FRACTION, or packages:NAME[,NAME…] (the TRAIN photos of "
                         "those packages: photos a model trained before they joined the catalogue never saw)")
    ap.add_argument("--bank-temperature", type=float, default=1.0)
    ap.add_argument("--bank-none-shift", type=float, default=0.0)
    ap.add_argument("--bank-cast-shift", type=float, default=0.0, help="added to the cast head's logit (bank_casts)")
    ap.add_argument("--bank-strength-shift", type=float, default=0.0, help="added to the classifiers' strength logits")
    ap.add_argument("--bank-strength-stretch", type=float, default=1.0, metavar="K",
                    help="the classifiers' strength logits stretched by K about restorer.STRENGTH_CENTRE's")
    ap.add_argument("--bank-verify-beta", type=float, default=None,
                    help="the verifier's weight against the classifier's log P (bank_verify; 0: the classifier alone)")
    ap.add_argument("--bank-commit", type=float, default=None, metavar="EPS",
                    help="the bank's weights as the action with the best expected PSNR, error floor EPS "
                         "(Restorer bank_commit; 0: the probability-weighted blend)")
    ap.add_argument("--bank-crops", type=float, default=None, metavar="F",
                    help="the bank classifiers also read four corner crops of F of each side (Restorer bank_crops; "
                         "0: the whole view alone)")
    ap.add_argument("--path", choices=("exact", "fast"), default="exact",
                    help="exact: the model's float forward pass; fast: restore_pixels' 8-bit CPU path, what "
                         "`chromabeam restore` runs on CPU by default (the IFFI/grades/casts/identity looks only)")
    ap.add_argument("--jpeg", type=int, default=0, metavar="QUALITY",
                    help="round-trip every input through a JPEG of this quality (4:2:0) before restoring")
    ap.add_argument("--known-filter", action="store_true",
                    help="also score the IFFI looks with the model told the filter (its bank entry at weight 1, "
                         "no cast): how much of blind removal is recognition")
    ap.add_argument("--oracle-candidates", type=int, default=0, metavar="K",
                    help="also: the true filter's rank among the classifier's top K, and the best of 'no bank entry' "
                         "+ the top 1/3/5/K candidates' restorations of the IFFI looks (an oracle choosing)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, label = load(args.weights)
    if args.bank_verify_beta is not None:
        if not getattr(model, "bank_verify", 0):
            ap.error("--bank-verify-beta needs a model with a verifier (bank_verify)")
        model.bank_verify_beta.fill_(args.bank_verify_beta)
        label += f" (verifier beta {args.bank_verify_beta:g})"
    for flag, value, setter in (("crops", args.bank_crops, model.set_bank_crops),
                                ("commit", args.bank_commit, model.set_bank_commit)):
        if value is not None:
            try:
                setter(value)
            except ValueError as e:
                ap.error(f"--bank-{flag}: {e}")
            label += f" (bank {flag} {value:g})"
    if (args.bank_temperature != 1.0 or args.bank_none_shift or args.bank_cast_shift or args.bank_strength_shift
            or args.bank_strength_stretch != 1.0):
        model.calibrate_bank(args.bank_temperature, args.bank_none_shift, args.bank_cast_shift,
                             args.bank_strength_shift, args.bank_strength_stretch)
        label += (f" (bank temperature {args.bank_temperature:g}, none shift {args.bank_none_shift:g}"
                  + (f", cast shift {args.bank_cast_shift:g}" if args.bank_cast_shift else "")
                  + (f", strength shift {args.bank_strength_shift:g}" if args.bank_strength_shift else "")
                  + (f", strength stretch {args.bank_strength_stretch:g}" if args.bank_strength_stretch != 1.0 else "")
                  + ")")
    cache = photos.fetch_debian(os.environ.get("CHROMABEAM_PHOTO_CACHE", "/tmp/photo-cache"))
    if args.photos == "eval":
        chosen = photos.split()[1]
    elif args.photos.startswith("holdout:"):
        chosen = photos.holdout_split(float(args.photos.split(":", 1)[1]))[1]
        label += f" on {len(chosen)} held-out TRAIN photos"
    elif args.photos.startswith("packages:"):
        wanted = set(args.photos.split(":", 1)[1].split(","))
        chosen = [p for p in photos.split()[0] if p.source.split(":", 1)[1] in wanted]
        if not chosen:
            ap.error(f"no TRAIN photos come from {sorted(wanted)}")
        label += f" on the {len(chosen)} TRAIN photos of {','.join(sorted(wanted))}"
    else:
        ap.error(f"--photos must be eval, holdout:FRACTION or packages:NAME[,NAME…], got {args.photos!r}")
    evals = [_tensor(photos.load(p, cache, args.size)) for p in chosen]
    cpu = torch.device("cpu")
    if args.path == "fast":
        label += " (8-bit fast path)"
    if args.jpeg:
        if not 1 <= args.jpeg <= 100:
            ap.error(f"--jpeg must be a quality in [1, 100], got {args.jpeg}")
        label += f" (JPEG q{args.jpeg} inputs)"

    def score(look, known=None):
        nothing, restored = [], []
        for clean in evals:
            x = jpeg_round_trip(_q8(look(clean)), args.jpeg) if args.jpeg else _q8(look(clean))
            with torch.inference_mode():
                if known is not None:
                    y = _q8(model.apply(x, *model.predict(x, known_bank=known)))
                elif args.path == "fast":
                    y = to_float(restore_pixels(model, [to_uint8(x[0])], cpu)[0])[None]
                else:
                    y = _q8(model(x))
            nothing.append(float(psnr(x, clean)[0]))
            restored.append(float(psnr(y, clean)[0]))
        return float(np.mean(nothing)), float(np.mean(restored))

    t = time.time()
    filters = [score(lambda c, f=f: apply_filter(c, f, 1.0)) for f in IFFI_FILTERS]
    grades = [score(lambda c, s=s: apply_grade(c, sample_grade(np.random.default_rng(GRADE_SEED + s)), 1.0))
              for s in range(4)]
    casts = [score(lambda c, g=g: apply_cast(c, {"gains": g}).clamp(0, 1)) for g in CASTS]
    half = [score(lambda c, f=f: apply_filter(c, f, 0.5)) for f in IFFI_FILTERS]
    clean_in, identity = score(lambda c: c)  # clean_in: ∞ unless the input went through a JPEG
    print(f"{label}: IFFI nothing {np.mean([a for a, _ in filters]):.2f} model {np.mean([b for _, b in filters]):.2f} | "
          f"grades nothing {np.mean([a for a, _ in grades]):.2f} model {np.mean([b for _, b in grades]):.2f} | "
          f"casts nothing {np.mean([a for a, _ in casts]):.2f} model {np.mean([b for _, b in casts]):.2f} | "
          f"identity {identity:.2f}" + (f" (its JPEG input {clean_in:.2f})" if args.jpeg else "")
          + f"  [{time.time() - t:.0f} s]")
    print(f"IFFI at half strength (a milder use of the filters; what a strength calibration can cost): "
          f"nothing {np.mean([a for a, _ in half]):.2f} model {np.mean([b for _, b in half]):.2f}")
    print("per filter (model − nothing, dB):", " ".join(f"{f}:{b - a:+.1f}" for f, (a, b) in zip(IFFI_FILTERS, filters)))
    print("per cast (model − nothing, dB):", " ".join(f"{g}:{b - a:+.1f}" for g, (a, b) in zip(CASTS, casts)))
    if args.known_filter:
        if not getattr(model, "bank_size", 0):
            ap.error("--known-filter needs a model with a filter bank")
        bank = bank_filter_names(model)
        known = [score(lambda c, f=f: apply_filter(c, f, 1.0), torch.eye(len(bank))[bank.index(f)][None])
                 for f in IFFI_FILTERS]
        print(f"IFFI with the filter known: model {np.mean([b for _, b in known]):.2f}; per filter (blind → known, dB):",
              " ".join(f"{f}:{b:.1f}→{k:.1f}" for f, (_, b), (_, k) in zip(IFFI_FILTERS, filters, known)))
    if args.oracle_candidates:
        if not getattr(model, "bank_size", 0) or not 1 <= args.oracle_candidates <= model.bank_size:
            ap.error("--oracle-candidates needs a model with a filter bank and K in [1, bank size]")
        print(oracle_candidates(model, evals, args.oracle_candidates, args.jpeg))
    return 0


def oracle_candidates(model: Restorer, evals: list[torch.Tensor], k: int, jpeg: int = 0) -> str:
    """On the IFFI looks of ``evals``: the share whose true filter is among the classifier's
    top n, and the mean PSNR of the best of "no bank entry" + the top n candidates'
    restorations (each the model with that one bank entry at its predicted strength), for
    n in 1 / 3 / 5 / ``k``."""
    bank = bank_filter_names(model)
    sizes = sorted({n for n in (1, 3, 5, k) if n <= k})
    ranks, best = [], {n: [] for n in sizes}
    for f in IFFI_FILTERS:
        for clean in evals:
            x = jpeg_round_trip(_q8(apply_filter(clean, f, 1.0)), jpeg) if jpeg else _q8(apply_filter(clean, f, 1.0))
            with torch.inference_mode():
                view = model.view(x)
                f16, pooled = model.encode(view)
                probs = model._bank_probs(model.bank_inputs(view, pooled if model.encoder is None else None))
                p = torch.stack([q for q, _ in probs]).mean(dim=0)[0]
                strength = torch.stack([s for _, s in probs]).mean(dim=0)[0]
                order = p.argsort(descending=True).tolist()
                quality = []
                for c in [-1] + order[:k]:
                    known = torch.zeros(1, model.bank_size)
                    if c >= 0:
                        known[0, c] = strength[c]
                    y = _q8(model.apply(x, *model.heads(view, f16, pooled, known_bank=known)).clamp(0, 1))
                    quality.append(float(psnr(y, clean)[0]))
            ranks.append(order.index(bank.index(f)) + 1)
            for n in sizes:
                best[n].append(max(quality[:n + 1]))
    ranks = np.array(ranks)
    return ("true filter among the classifier's top " + " / ".join(map(str, sizes)) + ": "
            + " / ".join(f"{np.mean(ranks <= n):.3f}" for n in sizes)
            + "; best of 'no bank entry' + the top " + " / ".join(map(str, sizes)) + " restorations (oracle): "
            + " / ".join(f"{np.mean(best[n]):.2f}" for n in sizes) + " dB")


if __name__ == "__main__":
    sys.exit(main())
