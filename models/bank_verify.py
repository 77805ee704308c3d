"""Give a trained restorer's filter bank a verifier: a second opinion on what the bank's
classifier recognised, from what each candidate's restoration looks like.

    python -m chromabeam.models.bank_verify WEIGHTS OUT [--candidates 5] [--samples 24000]
        [--beta B --chosen-on "…"] [--cache DIR]
    python -m chromabeam.models.bank_verify WEIGHTS_WITH_A_VERIFIER OUT --beta B --chosen-on "…"

The classifier reads the input's colour and shading statistics. On photos it never saw
it confuses filters with a scene's own colours (docs/restorer.md: told the filter, the
same model gains 7 dB more). A wrong inverse, though, leaves a look or makes one: so the
most probable filters and "no bank entry" each restore the view (``Restorer.candidate_views``),
and a verifier scores each restoration from its own statistics and how they moved from
the input's. The candidates' probability mass is then shared again in proportion to
P · exp(β · score) (``Restorer.verify_probs``).

The verifier is trained on ``--samples`` fresh looks of TRAIN photos
(``train_restorer.PhotoLooks``: clean photos, the 40 filters, grades, casts): for each,
"no bank entry", the true filter (when it is one) and filters drawn from the classifier's
probabilities restore the view, and the verifier learns to rank them as their PSNR
against the clean view does (listwise cross-entropy against softmax(PSNR / τ), τ = 1 dB).
So a score is in units of log-odds per dB, and β = 1 trusts it as such. Everything else
in the weights is kept bit for bit; the card gets a ``bank_verify`` entry.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable

import numpy as np
import torch

from chromabeam.models.registry import build_model, derived_card, save_weights
from chromabeam.models.restorer import Restorer
from chromabeam.models.train_restorer import (
    PhotoLooks,
    bank_filter_names,
    bank_model,
    bank_tool_parser,
    bank_tool_setup,
    fit_head,
    with_new_bank_head,
)
from chromabeam.transforms import storage
from chromabeam.transforms.ops.metrics import psnr

log = logging.getLogger("chromabeam.bank_verify")

# The PSNR labels are capped: above this a restoration is as good as it needs to be.
_PSNR_CAP = 50.0


def verify_dataset(model: Restorer, looks: PhotoLooks, samples: int, crop: int, rng: np.random.Generator, *,
                   candidates: int = 5, log_fn: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """``samples`` fresh looks → per look ``candidates`` restorations of its view:
    "no bank entry", the true filter when the look is a bank filter, the rest drawn
    without replacement from 0.7 · the classifier's P + 0.3 · uniform (so the confusions
    it makes are well represented, the rest not absent). Returns ``{"feats": (N, F)``
    the input's bank inputs, ``"seen": (N, K, F)`` each restoration's, ``"psnr": (N, K)``
    each restoration's PSNR against the clean view (capped), ``"candidates": (N, K)``
    bank indices (−1: none), ``"label": (N,)`` the true bank index (−1: not a bank filter)}."""
    if candidates < 2:
        raise ValueError(f"verify_dataset: need at least 2 candidates per look, got {candidates}")
    filters = bank_filter_names(model)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    out = {"feats": [], "seen": [], "psnr": [], "candidates": [], "label": []}
    n = 0
    while n < samples:
        x, y, specs = looks.sample_with_specs(min(64, samples - n), crop, rng)
        label = torch.tensor([filters.index(s["id"]) if s["family"] == "filter" else -1 for s in specs])
        with torch.no_grad():
            view = model.view(x)
            f16, pooled = model.encode(view)
            feats = model.bank_inputs(view, pooled if model.encoder is None else None)
            probs = model._bank_probs(feats)
            p = torch.stack([q for q, _ in probs]).mean(dim=0)
            strength = torch.stack([s for _, s in probs]).mean(dim=0)
            draw = 0.7 * p + 0.3 / p.shape[1]
            cand = torch.full((len(specs), candidates), -1, dtype=torch.long)
            for i, true in enumerate(label.tolist()):
                w = draw[i].clone()
                fixed = [-1] + ([true] if true >= 0 else [])
                if true >= 0:
                    w[true] = 0.0
                extra = torch.multinomial(w, candidates - len(fixed), replacement=False, generator=gen)
                cand[i] = torch.tensor(fixed + extra.tolist())
            views = model.candidate_views(view, f16, pooled, cand, strength)
            b, k = cand.shape
            seen = model.bank_inputs(views.flatten(0, 1)).view(b, k, -1)
            clean = model.view(y)
            quality = torch.stack([psnr(views[:, j], clean) for j in range(k)], dim=1).clamp(max=_PSNR_CAP)
        for key, v in zip(out, (feats, seen, quality, cand, label)):
            out[key].append(v)
        n += len(specs)
        if log_fn and n % 2048 < len(specs):
            log_fn(f"verifier looks: {n}/{samples}")
    return {k: torch.cat(v) for k, v in out.items()}


def train_verify_head(model: Restorer, data: dict[str, torch.Tensor], *, epochs: int = 30, lr: float = 1e-3,
                      tau: float = 1.0, seed: int = 0, holdout: float = 0.1,
                      log_fn: Callable[[str], None] | None = None) -> dict:
    """Fit ``model.bank_verify_head`` on ``verify_dataset`` output: per look, cross-entropy
    between softmax of the scores over its candidates and softmax(PSNR / ``tau``). The
    last ``holdout`` of the looks is scored: how often the verifier's top candidate is
    the best one, and the mean PSNR of its pick, of the classifier's pick (the candidate
    it gives most probability) and of the best candidate."""
    if not model.bank_verify:
        raise ValueError("train_verify_head: the model has no verifier (bank_verify)")
    feats, seen, quality = data["feats"], data["seen"], data["psnr"]
    n, k, f = seen.shape
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    n_hold = int(n * holdout)
    hold, fit = order[:n_hold], order[n_hold:]
    target = (quality / tau).softmax(dim=1)

    def scores(idx):
        return model.verify_score(seen[idx].reshape(-1, f), feats[idx].repeat_interleave(k, dim=0)).view(-1, k)

    fit_head(model.bank_verify_head, fit, lambda b: -(target[b] * scores(b).log_softmax(dim=1)).sum(dim=1).mean(),
             epochs=epochs, lr=lr, generator=g, log_fn=log_fn, label="verifier")
    with torch.no_grad():
        pick = scores(hold).argmax(dim=1)
        probs = model._bank_probs(feats[hold])
        p = torch.stack([q for q, _ in probs]).mean(dim=0)
        cand = data["candidates"][hold]
        cand_p = torch.where(cand >= 0, p.gather(1, cand.clamp_min(0)), (1.0 - p.sum(dim=1, keepdim=True)))
        q = quality[hold]
        best = q.argmax(dim=1)
        report = {"looks": int(n), "candidates": int(k), "epochs": epochs, "tau_db": tau,
                  "holdout_picks_best": round(float((pick == best).float().mean()), 4),
                  "holdout_psnr_verifier_pick": round(float(q.gather(1, pick[:, None]).mean()), 2),
                  "holdout_psnr_classifier_pick": round(float(q.gather(1, cand_p.argmax(dim=1)[:, None]).mean()), 2),
                  "holdout_psnr_best": round(float(q.max(dim=1).values.mean()), 2)}
    if log_fn:
        log_fn(f"verifier: {report}")
    return report


def set_beta(weights: str, out: str, beta: float, chosen_on: str) -> str:
    """``weights`` (with a trained verifier) with β set to ``beta``, saved under ``out``;
    the card's ``bank_verify`` entry says how it was chosen. Returns the new URL."""
    model = bank_model(weights, "bank_verify")
    if not model.bank_verify:
        raise ValueError(f"bank_verify: {storage.redact(weights)} has no verifier to set β of")
    if not chosen_on:
        raise ValueError("bank_verify: say how --beta was chosen (--chosen-on)")
    card, applied_to = derived_card(model, weights)
    with torch.no_grad():
        model.bank_verify_beta.fill_(beta)
    card["bank_verify"] = {**card.get("bank_verify", {}), "beta": beta, "chosen_on": chosen_on,
                           "beta_applied_to": applied_to}
    return save_weights(model, model.weights_config, out, card)


def add_verifier(weights: str, out: str, looks: PhotoLooks, *, candidates: int = 5, samples: int = 24000,
                 crop: int = 128, epochs: int = 30, seed: int = 0, beta: float = 1.0,
                 chosen_on: str | None = None) -> str:
    """``weights`` with a verifier of its ``candidates`` most probable filters (plus "no bank
    entry") trained on ``samples`` looks of ``looks``, saved under ``out``; returns its URL."""
    base = bank_model(weights, "bank_verify")
    if base.bank_verify:
        raise ValueError(f"bank_verify: {storage.redact(weights)} already has a verifier "
                         f"({base.weights_card.get('bank_verify')}); train it on the weights it came from, "
                         "or set its β alone (--beta B --chosen-on …)")
    if not 1 <= candidates <= base.bank_size:
        raise ValueError(f"bank_verify: --candidates must be in [1, {base.bank_size}], got {candidates}")
    if beta != 1.0 and not chosen_on:
        raise ValueError("bank_verify: say how --beta was chosen (--chosen-on)")
    card, applied_to = derived_card(base, weights)
    model = with_new_bank_head(base, {"bank_verify": candidates}, "bank_verify_", seed=seed, tool="bank_verify")
    t = time.time()
    # the looks it learns from carry as many candidates as it will see, with the true one among them
    data = verify_dataset(model, looks, samples, crop, np.random.default_rng(seed + 11), candidates=candidates + 1,
                          log_fn=log.info)
    log.info("bank_verify: %d looks × %d restorations in %.0f s", samples, candidates + 1, time.time() - t)
    report = train_verify_head(model, data, epochs=epochs, seed=seed, log_fn=log.info)
    with torch.no_grad():
        model.bank_verify_beta.fill_(beta)
    card["bank_verify"] = {"training_looks": {"samples": samples, "crop": crop, "cast_prob": looks.cast_prob,
                                              "photos": "the TRAIN photos of training_data"},
                           "head": report, "beta": beta, "seed": seed, "seconds": round(time.time() - t, 1),
                           **({"chosen_on": chosen_on} if chosen_on else {}),
                           "applied_to": applied_to}
    return save_weights(model, model.config, out, card)


def main(argv: list[str] | None = None) -> int:
    ap = bank_tool_parser("bank_verify", __doc__)
    ap.add_argument("--candidates", type=int, default=5, help="most probable filters re-scored per image")
    ap.add_argument("--samples", type=int, default=24000, help="looks the verifier is trained on")
    ap.add_argument("--cast-prob", type=float, default=0.1, help="share of those looks that are casts")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--beta", type=float, default=None,
                    help="weight of the verifier's score against log P (default 1); on weights that already have "
                         "a verifier, only this is changed")
    ap.add_argument("--chosen-on", default=None, help="how --beta was chosen (goes to the card)")
    args = ap.parse_args(argv)
    bank_tool_setup(args)
    if args.beta is not None and getattr(build_model(args.weights, "cpu"), "bank_verify", 0):
        print(set_beta(args.weights, args.out, args.beta, args.chosen_on))
        return 0
    looks = PhotoLooks.from_photos(args.cache, identity_prob=0.25, perturb_prob=0.3, cast_prob=args.cast_prob)
    print(add_verifier(args.weights, args.out, looks, candidates=args.candidates, samples=args.samples,
                       epochs=args.epochs, seed=args.seed, beta=1.0 if args.beta is None else args.beta,
                       chosen_on=args.chosen_on))
    return 0


if __name__ == "__main__":
    sys.exit(main())
