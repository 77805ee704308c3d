"""How often the restorer's filter-bank classifier recognises a filter on photographs it
was never trained on: colour statistics, with the shading statistics, and those read by
their rank (``bank_quantiles``) (6–13 min on one core).

    python benchmarks/bank_recognition.py [--holdout 0.2] [--samples 30000] [--size 512] [--json OUT]

The TRAIN photos are split by photograph (``photos.holdout_split``). Labelled looks of
the fit part (the trainer's own ``PhotoLooks`` and ``bank_dataset``: 128² crops, every
look family, the trainer's settings) train one classifier per feature set with the
trainer's ``train_bank``; all see the same looks (the colour features are the first
columns of the shading model's inputs; the third set is the second through each
feature's quantile transform, ``Restorer(bank_quantiles=64)``). Each held-out photo, at
``--size`` px long side, then goes through each of the 16 IFFI filters at full strength, is rounded to 8 bits and
viewed as ``restore`` views it (the whole image, 128²); clean photos go through as they
are. Printed: per filter and overall top-1 and mean P(true filter), and how often a clean
photo's top class is "no filter". The EVAL photos are not used.
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
from chromabeam.models.train_restorer import PhotoLooks, bank_dataset, train_bank
from chromabeam.transforms.ops.colour_stats import global_feature_count
from chromabeam.transforms.ops.filters import IFFI_FILTERS, apply_filter

FEATURE_SETS = ("colour", "colour + shading", "colour + shading, by rank")
_QUANTILES = 64
_MODEL = {"encoder": "stats", "view_size": 128, "width": 16, "lut_size": 9, "grid_size": 4, "lut_basis": 2}


def held_out_views(model: Restorer, held: list, cache: str, size: int,
                   filters: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each held-out photo clean (label 0) and through each IFFI filter (label 1 + its index
    in the bank's ``filters``), 8-bit, viewed whole → (bank inputs ``(N, F)``, labels ``(N,)``)."""
    feats, labels = [], []
    for p in held:
        clean = torch.from_numpy(np.asarray(photos.load(p, cache, size)).copy()).permute(2, 0, 1)[None].float() / 255
        for name in (None, *IFFI_FILTERS):
            x = clean if name is None else apply_filter(clean, name, 1.0).clamp(0, 1).mul(255).round().div(255)
            with torch.no_grad():
                feats.append(model.bank_inputs(model.view(x)))
            labels.append(0 if name is None else 1 + filters.index(name))
    return torch.cat(feats), torch.tensor(labels)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--holdout", type=float, default=0.2, help="share of the TRAIN photos held out")
    ap.add_argument("--samples", type=int, default=30000, help="labelled looks the classifiers train on")
    ap.add_argument("--size", type=int, default=512, help="held-out photos' long side (px)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    cache = photos.fetch_debian(os.environ.get("CHROMABEAM_PHOTO_CACHE", "/tmp/photo-cache"))
    looks = PhotoLooks.from_photos(cache, holdout=args.holdout, identity_prob=0.25, perturb_prob=0.3)
    held = photos.holdout_split(args.holdout)[1]
    filters = list(looks.config.filters)
    torch.manual_seed(args.seed)
    shading = Restorer(**_MODEL, bank=len(filters), bank_shading=True, pretrained=False)
    feats, labels, strengths = bank_dataset(shading, looks, filters, args.samples, 128,
                                            np.random.default_rng(args.seed + 1))
    test_feats, test_labels = held_out_views(shading, held, cache, args.size, filters)
    print(f"{len(labels)} looks of {len(looks)} photos, {len(held)} held-out photos [{time.time() - t0:.0f} s]",
          flush=True)
    n_colour = global_feature_count(16)
    results = {}
    for name in FEATURE_SETS:
        with_shading = name != "colour"
        if not with_shading:
            model = Restorer(**_MODEL, bank=len(filters), pretrained=False)
        elif name == "colour + shading":  # the model the looks were viewed with
            model = shading
        else:
            model = Restorer(**_MODEL, bank=len(filters), bank_shading=True, bank_quantiles=_QUANTILES,
                             pretrained=False)
        cols = slice(None) if with_shading else slice(0, n_colour)
        fit = train_bank(model, feats[:, cols], labels, strengths, seed=args.seed)
        with torch.no_grad():
            probs = model.bank_logits(test_feats[:, cols])[0].softmax(1)
        top = probs.argmax(1) == test_labels
        p_true = probs.gather(1, test_labels[:, None])[:, 0]
        per = {}
        for f in IFFI_FILTERS:
            sel = test_labels == 1 + filters.index(f)
            per[f] = {"top1": round(float(top[sel].float().mean()), 3), "p_true": round(float(p_true[sel].mean()), 3)}
        filtered = test_labels > 0
        results[name] = {"looks_holdout_top1": fit["holdout_accuracy"],
                         "iffi_top1": round(float(top[filtered].float().mean()), 3),
                         "iffi_p_true": round(float(p_true[filtered].mean()), 3),
                         "clean_read_as_clean": round(float(top[~filtered].float().mean()), 3),
                         "per_filter": per}
    print("| filter | " + " | ".join(f"{n}: top-1 / P(true)" for n in FEATURE_SETS) + " |")
    print("| --- |" + " --- |" * len(FEATURE_SETS))
    for f in IFFI_FILTERS:
        cells = [f"{results[n]['per_filter'][f]['top1']:.2f} / {results[n]['per_filter'][f]['p_true']:.2f}"
                 for n in FEATURE_SETS]
        print(f"| {f} | " + " | ".join(cells) + " |")
    print("| **IFFI (16)** | " + " | ".join(f"**{results[n]['iffi_top1']:.3f} / {results[n]['iffi_p_true']:.3f}**"
                                          for n in FEATURE_SETS) + " |")
    print("| clean read as clean | " + " | ".join(f"{results[n]['clean_read_as_clean']:.3f}" for n in FEATURE_SETS) + " |")
    print("| looks of the fit photos (train_bank's holdout) | "
          + " | ".join(f"{results[n]['looks_holdout_top1']:.3f}" for n in FEATURE_SETS) + " |")
    print(f"[{time.time() - t0:.0f} s]")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "held_out_photos": len(held), "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
