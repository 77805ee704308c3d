"""Give a trained restorer's filter bank spatial inverses: each filter's bilateral grid,
fitted with its LUT, so the filter's vignette or gradient is undone too.

    python -m chromabeam.models.bank_grids WEIGHTS OUT [--photos 64] [--steps 200] [--cache DIR]
    python -m chromabeam.models.bank_grids WEIGHTS OUT --copy-from SOURCE

A bank LUT is blind to position: for a filter with a radial or linear gradient layer
(toaster, sutro, hefe, lofi, xpro2, hudson, mayfair, perpetua …) it can only undo the
average over the frame. ``train_restorer.fit_bank_grids`` fits, per filter, a grid (in
front of the LUT, or with the LUT refitted) on ``--photos`` TRAIN photos spread over the
catalogue (never the EVAL photos) and keeps it where it beats the LUT alone on the ones
it held out; the model is rebuilt with ``bank_grids`` and everything else — classifier,
heads, learnt basis — is kept. Saved through the registry under its new content name,
with the original card plus a ``bank_grids`` entry (photos, steps, the weights it was
applied to). ``--copy-from`` gives WEIGHTS the grids that SOURCE's fit made for a model
with the same bank (e.g. a retrained classifier that kept its init's tables) without
refitting them.
"""
from __future__ import annotations

import logging
import sys
import time

import numpy as np
import torch

from chromabeam.models.registry import derived_card, save_weights
from chromabeam.models.train_restorer import (
    PhotoLooks,
    bank_filter_names,
    bank_model,
    bank_tool_parser,
    bank_tool_setup,
    fit_bank_grids,
    spread,
    with_new_bank_head,
)
from chromabeam.transforms import storage

log = logging.getLogger("chromabeam.bank_grids")


def add_bank_grids(weights: str, out: str, images: list[np.ndarray], names: list[str], *, steps: int = 200,
                   seed: int = 0) -> str:
    """``weights`` with bank grids fitted on ``images`` (uint8 ``(H, W, 3)`` TRAIN photos,
    ``names`` for the card), saved under ``out``; returns its URL."""
    base = bank_model(weights, "bank_grids")
    if base.bank_grids:
        raise ValueError(f"bank_grids: {storage.redact(weights)} already has bank grids "
                         f"({base.weights_card.get('bank_grids')}); fit them on the weights it came from")
    card, applied_to = derived_card(base, weights)
    try:
        filters = bank_filter_names(base)
    except ValueError as e:
        raise ValueError(f"bank_grids: {storage.redact(weights)}: {e}") from None
    model = with_new_bank_head(base, {"bank_grids": True}, "bank_grid_deltas", seed=None, tool="bank_grids")
    t = time.time()
    tables, grids, report = fit_bank_grids(model, images, filters, steps=steps, seed=seed, log_fn=log.info)
    model.set_bank(tables, grids=grids)
    card["bank_grids"] = {"filters": filters, "fit_photos": list(names), "steps": steps, "seed": seed,
                          "per_filter": report, "seconds": round(time.time() - t, 1), "applied_to": applied_to}
    return save_weights(model, model.config, out, card)


def copy_bank_grids(weights: str, source: str, out: str) -> str:
    """``weights`` with the bank grids (and the tables refitted with them) of ``source``,
    weights that ``add_bank_grids`` made from a model with the same bank: the filters whose
    LUT the fit kept ("none", "grid") must hold the same tables in both, or the grids were
    fitted for another bank. Nothing is refitted; saved under ``out``; returns its URL."""
    base, src = bank_model(weights, "bank_grids"), bank_model(source, "bank_grids")
    if base.bank_grids:
        raise ValueError(f"bank_grids: {storage.redact(weights)} already has bank grids")
    fitted = src.weights_card.get("bank_grids") or {}
    if not src.bank_grids or "per_filter" not in fitted:
        raise ValueError(f"bank_grids: {storage.redact(source)} has no fitted bank grids to copy")
    if src.bank_luts.shape != base.bank_luts.shape or src.bank_grid_deltas.shape[1:] != (
            12, base.grid_bins, base.grid_size, base.grid_size):
        raise ValueError("bank_grids: the two models' banks or grids differ in shape")
    kept = [k for k, r in enumerate(fitted["per_filter"]) if r["choice"] != "grid+lut"]
    if not kept:
        raise ValueError(f"bank_grids: every table of {storage.redact(source)} was refitted: nothing shows "
                         "that its grids were fitted for this bank")
    for k in kept:
        if not torch.equal(src.bank_luts[k], base.bank_luts[k]):
            raise ValueError(f"bank_grids: {storage.redact(source)}'s grids were fitted on another bank "
                             f"({fitted['per_filter'][k]['filter']}'s table differs)")
    card, applied_to = derived_card(base, weights)
    model = with_new_bank_head(base, {"bank_grids": True}, "bank_grid_deltas", seed=None, tool="bank_grids")
    model.set_bank(src.bank_luts + src._lut_identity, grids=src.bank_grid_deltas + src._grid_identity)
    card["bank_grids"] = {**fitted, "fitted_for": fitted.get("applied_to"),
                          "copied_from": f"{storage.basename(source)} (sha256 {src.weights_sha256})",
                          "applied_to": applied_to}
    return save_weights(model, model.config, out, card)


def main(argv: list[str] | None = None) -> int:
    ap = bank_tool_parser("bank_grids", __doc__)
    ap.add_argument("--photos", type=int, default=64, help="TRAIN photos the grids are fitted on")
    ap.add_argument("--steps", type=int, default=200, help="Adam steps per fit")
    ap.add_argument("--copy-from", metavar="SOURCE", default=None,
                    help="copy the grids (and refitted tables) SOURCE's fit made for the same bank; fit nothing")
    args = ap.parse_args(argv)
    bank_tool_setup(args)
    if args.copy_from:
        print(copy_bank_grids(args.weights, args.copy_from, args.out))
        return 0
    looks = PhotoLooks.from_photos(args.cache)
    chosen = spread(args.photos, len(looks))
    print(add_bank_grids(args.weights, args.out, [looks.images[i] for i in chosen], [looks.names[i] for i in chosen],
                         steps=args.steps, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
