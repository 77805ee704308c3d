"""Recalibrate a trained restorer's filter-bank classifier without retraining it.

    python -m chromabeam.models.calibrate_restorer WEIGHTS OUT --bank-temperature T \\
        --bank-none-shift D --chosen-on "how T and D were chosen"

``Restorer.calibrate_bank`` rescales the classifier's last layer ("no filter" logit − D,
then class logits ÷ T); the result is saved through the registry under its new content
name, with the original card plus a ``bank_calibration`` entry (values, how they were
chosen, the weights they were applied to). Choose T and D on photos the model never saw
and that are not EVAL photos (``benchmarks/restore_quick.py --photos …``).
"""
from __future__ import annotations

import argparse
import sys

from chromabeam.models.registry import build_model, derived_card, save_weights
from chromabeam.transforms import storage


def calibrate(weights: str, out: str, temperature: float, none_shift: float, chosen_on: str) -> str:
    """Calibrated copy of ``weights`` saved under ``out``; returns its URL."""
    model = build_model(weights, "cpu")
    if model.weights_config.get("model") != "restorer":
        raise ValueError(f"calibrate_restorer: {storage.redact(weights)} holds a "
                         f"{model.weights_config.get('model')!r} model, not a restorer")
    if model.weights_card.get("bank_calibration"):
        raise ValueError(f"calibrate_restorer: {storage.redact(weights)} is already calibrated "
                         f"({model.weights_card['bank_calibration']}); calibrate the weights it came from")
    model.calibrate_bank(temperature, none_shift)
    card, applied_to = derived_card(model, weights)
    card["bank_calibration"] = {"temperature": temperature, "none_shift": none_shift, "chosen_on": chosen_on,
                                "applied_to": applied_to}
    return save_weights(model, model.weights_config, out, card)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chromabeam.models.calibrate_restorer", description=__doc__.split("\n\n")[0])
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--bank-temperature", type=float, required=True)
    ap.add_argument("--bank-none-shift", type=float, default=0.0)
    ap.add_argument("--chosen-on", required=True, help="how the values were chosen (goes to the card)")
    args = ap.parse_args(argv)
    print(calibrate(args.weights, args.out, args.bank_temperature, args.bank_none_shift, args.chosen_on))
    return 0


if __name__ == "__main__":
    sys.exit(main())
