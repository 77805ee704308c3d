"""Recalibrate a trained restorer's filter-bank classifier without retraining it.

    python -m chromabeam.models.calibrate_restorer WEIGHTS OUT [--bank-temperature T]
        [--bank-none-shift D] [--bank-strength-shift B] [--bank-strength-stretch K] [--bank-crops F]
        [--bank-commit EPS] [--on-top]
        --chosen-on "how the values were chosen"

``Restorer.calibrate_bank`` rescales the classifier's last layer ("no filter" logit − D,
then class logits ÷ T; strength logits stretched by K about the logit of
``restorer.STRENGTH_CENTRE``, then + B); ``--bank-crops F`` sets the model's
``bank_crops`` (the classifiers also read four corner crops of F of each side);
``--bank-commit EPS`` sets its ``bank_commit`` (the bank's weights chosen as the action
with the best expected PSNR, ``Restorer.commit_weights``, error floor EPS; 0: the
probability-weighted blend). The
result is saved through the registry under its new content name, with the original card
plus a ``bank_calibration`` entry (values, how they were chosen, the weights they were
applied to). Choose the values on photos the model never saw and that are not EVAL
photos (``benchmarks/restore_quick.py --photos …``).

Weights that are already calibrated are refused — calibrating twice compounds — unless
``--on-top`` says that is meant: the new values then apply to the calibrated logits
(T and D compose as T₀·T and D₀ + T₀·D) and the card keeps the earlier entry under
``bank_calibration.previous``.
"""
from __future__ import annotations

import argparse
import sys

from chromabeam.models.registry import build_model, derived_card, save_weights
from chromabeam.models.restorer import STRENGTH_CENTRE
from chromabeam.transforms import storage


def calibrate(weights: str, out: str, temperature: float, none_shift: float, chosen_on: str, *,
              strength_shift: float = 0.0, strength_stretch: float = 1.0, crops: float | None = None,
              commit: float | None = None, on_top: bool = False) -> str:
    """Calibrated copy of ``weights`` saved under ``out``; returns its URL."""
    model = build_model(weights, "cpu")
    if model.weights_config.get("model") != "restorer":
        raise ValueError(f"calibrate_restorer: {storage.redact(weights)} holds a "
                         f"{model.weights_config.get('model')!r} model, not a restorer")
    previous = model.weights_card.get("bank_calibration")
    if previous and not on_top:
        raise ValueError(f"calibrate_restorer: {storage.redact(weights)} is already calibrated "
                         f"({previous}); calibrate the weights it came from, or pass --on-top")
    model.calibrate_bank(temperature, none_shift, strength_shift=strength_shift, strength_stretch=strength_stretch)
    if crops is not None:
        try:
            model.set_bank_crops(crops)
        except ValueError as e:
            raise ValueError(f"calibrate_restorer: --bank-crops: {e}") from None
    if commit is not None:
        try:
            model.set_bank_commit(commit)
        except ValueError as e:
            raise ValueError(f"calibrate_restorer: --bank-commit: {e}") from None
    card, applied_to = derived_card(model, weights)
    entry = {"temperature": temperature, "none_shift": none_shift}
    if strength_shift:
        entry["strength_shift"] = strength_shift
    if strength_stretch != 1.0:
        entry["strength_stretch"] = {"factor": strength_stretch, "about": STRENGTH_CENTRE}
    if crops is not None:
        entry["crops"] = float(crops)
    if commit is not None:
        entry["commit"] = float(commit)
    card["bank_calibration"] = {**entry, "chosen_on": chosen_on, "applied_to": applied_to,
                                **({"previous": previous} if previous else {})}
    return save_weights(model, model.config, out, card)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chromabeam.models.calibrate_restorer", description=__doc__.split("\n\n")[0])
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--bank-temperature", type=float, default=1.0)
    ap.add_argument("--bank-none-shift", type=float, default=0.0)
    ap.add_argument("--bank-strength-shift", type=float, default=0.0)
    ap.add_argument("--bank-strength-stretch", type=float, default=1.0, metavar="K",
                    help="stretch the strength logits by K about the logit of restorer.STRENGTH_CENTRE (1: off)")
    ap.add_argument("--bank-crops", type=float, default=None, metavar="F",
                    help="the classifiers also read four corner crops of F of each side (0: off)")
    ap.add_argument("--bank-commit", type=float, default=None, metavar="EPS",
                    help="choose the bank's weights as the action with the best expected PSNR, error floor EPS "
                         "(Restorer.commit_weights; 0: the probability-weighted blend)")
    ap.add_argument("--on-top", action="store_true", help="calibrate weights that are already calibrated")
    ap.add_argument("--chosen-on", required=True, help="how the values were chosen (goes to the card)")
    args = ap.parse_args(argv)
    print(calibrate(args.weights, args.out, args.bank_temperature, args.bank_none_shift, args.chosen_on,
                    strength_shift=args.bank_strength_shift, strength_stretch=args.bank_strength_stretch,
                    crops=args.bank_crops, commit=args.bank_commit, on_top=args.on_top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
