"""Give a trained restorer's filter bank a white-balance cast head: whether the photo is a
cast (per-channel gains) and which gains, so a cast is taken off instead of being read as
the warm or cool filter it resembles.

    python -m chromabeam.models.bank_casts WEIGHTS OUT [--samples 30000] [--cast-prob 0.3] [--heads K]
        [--cast-shift S --chosen-on "…"] [--replace] [--holdout-photos F] [--cache DIR]

A cast is the commonest "grade" a catalogue holds and no filter inverse undoes it: before
this head the bank's classifier put about half its weight on warm filters' inverses for a
warm photo (docs/restorer.md). ``train_restorer.train_cast_head`` fits the head on
``--samples`` fresh looks of TRAIN photos, ``--cast-prob`` of them casts (log-uniform
gains, ``train_restorer.sample_cast``), the rest what the restorer trains on (clean
photos, filters, grades); the head uses the bank's own feature standardisation and the
classifier, grids and heads are kept bit for bit. ``--cast-shift`` adds S to the cast
logit (chosen on photos the model never saw). ``--replace`` trains a new head in place of
the one the weights have (the card keeps the old entry under ``bank_casts.previous``).
``--heads K`` trains K heads, head i as ``--seed SEED+i`` alone would (its own
looks and initial weights), and the model averages what they say: a head's reading of
warm scenes against warm casts varies by a dB or more with the looks it happened to see
(docs/restorer.md). ``--holdout-photos F`` leaves out the TRAIN photos
``photos.holdout_split(F)`` holds out, as ``chromabeam train restorer --holdout-photos``
does: a twin's head, scored on them.
Saved through the registry under its new content name, with the original card plus a
``bank_casts`` entry.
"""
from __future__ import annotations

import logging
import sys
import time

import numpy as np

from chromabeam.models.registry import derived_card, save_weights
from chromabeam.models.train_restorer import (
    PhotoLooks,
    bank_model,
    bank_tool_parser,
    bank_tool_setup,
    cast_dataset,
    train_cast_head,
    with_new_bank_head,
)
from chromabeam.transforms import storage

log = logging.getLogger("chromabeam.bank_casts")


def add_cast_head(weights: str, out: str, looks: PhotoLooks, *, samples: int = 30000, crop: int = 128,
                  epochs: int = 30, seed: int = 0, heads: int = 1, cast_shift: float = 0.0,
                  chosen_on: str | None = None, replace: bool = False, holdout: float = 0.0) -> str:
    """``weights`` with ``heads`` cast heads trained on ``samples`` looks of ``looks`` each
    (whose ``cast_prob`` sets the share of casts), saved under ``out``; returns its URL.
    Head i is what ``heads=1, seed=seed + i`` trains, bit for bit: its own initial weights
    and its own draw of looks. Weights that already have a cast head are refused unless
    ``replace``; ``holdout``: the share of TRAIN photos ``looks`` left out, for the card."""
    if heads < 1:
        raise ValueError(f"bank_casts: heads must be >= 1, got {heads}")
    base = bank_model(weights, "bank_casts")
    previous = base.weights_card.get("bank_casts") if base.bank_casts else None
    if base.bank_casts and not replace:
        raise ValueError(f"bank_casts: {storage.redact(weights)} already has a cast head "
                         f"({previous}); train it on the weights it came from, or pass --replace")
    if cast_shift and not chosen_on:
        raise ValueError("bank_casts: say how --cast-shift was chosen (--chosen-on)")
    card, applied_to = derived_card(base, weights)
    t = time.time()
    trained, reports = [], []
    for i in range(heads):
        model = with_new_bank_head(base, {"bank_casts": True, "bank_cast_heads": 1}, "bank_cast_head.",
                                   seed=seed + i, tool="bank_casts")
        feats, is_cast, gains = cast_dataset(model, looks, samples, crop, np.random.default_rng(seed + i + 7))
        log.info("bank_casts: head %d/%d: %d labelled looks (%d casts) in %.0f s", i + 1, heads, len(is_cast),
                 int(is_cast.sum()), time.time() - t)
        reports.append(train_cast_head(model, feats, is_cast, gains, epochs=epochs, seed=seed + i, log_fn=log.info))
        trained.append(model.bank_cast_head)
    if heads > 1:  # the heads side by side; they average what they say (Restorer.bank_cast)
        model = with_new_bank_head(base, {"bank_casts": True, "bank_cast_heads": heads}, "bank_cast_head.",
                                   seed=None, tool="bank_casts")
        for dst, src in zip(model.bank_cast_head_list(), trained):
            dst.load_state_dict(src.state_dict())
    if cast_shift:
        model.calibrate_bank(cast_shift=cast_shift)
    card["bank_casts"] = {"training_looks": {"samples": samples, "crop": crop, "cast_prob": looks.cast_prob,
                                             "jpeg_prob": looks.jpeg_prob,
                                             "photos": "the TRAIN photos of training_data"
                                             + (f" without the {holdout:g} held out" if holdout else "")},
                          **({"head": reports[0], "seed": seed} if heads == 1 else
                             {"heads": [{"seed": seed + i, **r} for i, r in enumerate(reports)],
                              "averaged": "mean P(cast); gains weighted by each head's P"}),
                          "seconds": round(time.time() - t, 1),
                          **({"cast_shift": cast_shift, "chosen_on": chosen_on} if cast_shift else {}),
                          "applied_to": applied_to, **({"previous": previous} if previous else {})}
    return save_weights(model, model.config, out, card)


def main(argv: list[str] | None = None) -> int:
    ap = bank_tool_parser("bank_casts", __doc__)
    ap.add_argument("--samples", type=int, default=30000, help="labelled looks the head is trained on")
    ap.add_argument("--cast-prob", type=float, default=0.3, help="share of those looks that are casts")
    ap.add_argument("--jpeg-prob", type=float, default=0.0, help="share of looks round-tripped through a JPEG")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--heads", type=int, default=1,
                    help="cast heads, head i trained as --seed SEED+i alone would be; they average what they say")
    ap.add_argument("--cast-shift", type=float, default=0.0, help="added to the cast logit (calibration)")
    ap.add_argument("--chosen-on", default=None, help="how --cast-shift was chosen (goes to the card)")
    ap.add_argument("--replace", action="store_true", help="train a new head in place of the weights' own")
    ap.add_argument("--holdout-photos", type=float, default=0.0, metavar="F",
                    help="leave out the TRAIN photos photos.holdout_split(F) holds out (a twin's head)")
    args = ap.parse_args(argv)
    bank_tool_setup(args)
    looks = PhotoLooks.from_photos(args.cache, identity_prob=0.25, perturb_prob=0.3, cast_prob=args.cast_prob,
                                   jpeg_prob=args.jpeg_prob, holdout=args.holdout_photos)
    print(add_cast_head(args.weights, args.out, looks, samples=args.samples, epochs=args.epochs, seed=args.seed,
                        heads=args.heads, cast_shift=args.cast_shift, chosen_on=args.chosen_on, replace=args.replace,
                        holdout=args.holdout_photos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
