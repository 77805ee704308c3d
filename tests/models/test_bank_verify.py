"""The bank's verifier: a second opinion on what the classifier recognised, from what each
candidate's restoration looks like.

- untrained (every score 0), or with β = 0, the model is unchanged;
- ``verify_probs`` shares the candidates' mass again as P · exp(β · score), exactly,
  and leaves the other filters' probabilities alone;
- ``candidate_views`` is the model with that one bank entry (or none) at its strength;
- ``train_verify_head`` learns from looks of a few photos which restoration is best,
  measured on looks it held out;
- ``models.bank_verify`` adds a trained verifier to trained weights, keeps everything
  else bit for bit, fills the card, refuses what it cannot extend, and sets β alone on
  weights that have one;
- the trainer treats the verifier like the classifier (frozen, or tuned at the bank's rate:
  ``test_bank_casts.py``, for both heads).
"""
import json

import numpy as np
import pytest
import torch

from chromabeam.models.bank_verify import add_verifier, set_beta, train_verify_head, verify_dataset
from chromabeam.models.registry import build_model, save_weights
from chromabeam.models.restorer import Restorer
from chromabeam.models.train_restorer import (
    PhotoLooks,
    bank_filter_names,
    inverse_filter_tables,
)
from chromabeam.transforms.ops.synth import SynthConfig

from bank_photos import as_tensor as _float, photo as _photo, PHOTOS, SMALL

pytestmark = pytest.mark.usefixtures("one_torch_thread")





def _random_classifier(model, seed=0):
    """A classifier that says something (random, not certain) about every view."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last = model.bank_head[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.3)
        last.bias.copy_(torch.randn(last.bias.shape, generator=g))
        model.bank_luts.copy_(torch.randn(model.bank_luts.shape, generator=g) * 0.05)


def _pair(**extra):
    """The same model without and with a verifier (everything else shared)."""
    torch.manual_seed(0)
    plain = Restorer(**SMALL, bank=6, bank_casts=True, pretrained=False).eval()
    _random_classifier(plain)
    verified = Restorer(**SMALL, bank=6, bank_casts=True, bank_verify=3, pretrained=False, **extra).eval()
    missing, _ = verified.load_state_dict(plain.state_dict(), strict=False)
    assert all(k.startswith("bank_verify_") for k in missing)
    return plain, verified


def test_an_untrained_verifier_changes_nothing_and_beta_zero_turns_a_trained_one_off():
    plain, verified = _pair()
    x = torch.rand(2, 3, 99, 61)  # odd sizes
    with torch.no_grad():
        torch.testing.assert_close(verified(x), plain(x), rtol=0, atol=1e-6)
        verified.bank_verify_head[-1].weight.normal_(0, 20.0)  # strong opinions
        changed = (verified(x) - plain(x)).abs().amax()
        verified.bank_verify_beta.fill_(0.0)
        torch.testing.assert_close(verified(x), plain(x), rtol=0, atol=1e-6)
    assert changed > 1e-3, changed
    assert verified.config["bank_verify"] == 3 and "bank_verify" not in plain.config


def test_verify_probs_shares_the_candidates_mass_by_p_times_exp_beta_score(monkeypatch):
    _, model = _pair()
    p = torch.tensor([[0.05, 0.30, 0.02, 0.20, 0.25, 0.08]])  # "no bank entry": 0.10
    s = torch.full((1, 6), 0.7)
    scores = torch.tensor([[0.0, -1.0, 2.0, 0.5]])  # none, then filters 1, 4, 3 (P order)
    monkeypatch.setattr(model, "verify_candidates", lambda view, f16, pooled, feats, cand, strength: scores)
    with torch.no_grad():
        model.bank_verify_beta.fill_(1.5)
    (p2, s2), = model.verify_probs(None, None, None, None, [(p, s)])
    cand_p = torch.tensor([0.10, 0.30, 0.25, 0.20])
    shared = cand_p.sum() * torch.softmax(torch.log(cand_p) + 1.5 * scores[0], dim=0)
    torch.testing.assert_close(p2[0, [1, 4, 3]], shared[1:])
    torch.testing.assert_close(1 - p2.sum(), shared[0])  # "no bank entry" gets its share back
    torch.testing.assert_close(p2[0, [0, 2, 5]], p[0, [0, 2, 5]], rtol=0, atol=0)  # the rest keep theirs
    assert s2 is s
    # filter 4 restores best: it gains most (0.25 → 0.50)
    assert p2[0, 4] > 0.49 and p2[0, 1] < 0.05, p2


def test_candidate_views_are_the_model_with_one_bank_entry():
    _, model = _pair()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        view = model.view(x)
        f16, pooled = model.encode(view)
        strength = torch.rand(2, 6)
        views = model.candidate_views(view, f16, pooled, torch.tensor([[-1, 2], [5, -1]]), strength)
        none = model.apply(view, *model.heads(view, f16, pooled, known_bank=torch.zeros(2, 6))).clamp(0, 1)
        known = torch.zeros(2, 6)
        known[0, 2], known[1, 5] = strength[0, 2], strength[1, 5]
        one = model.apply(view, *model.heads(view, f16, pooled, known_bank=known)).clamp(0, 1)
    assert views.shape == (2, 2, 3, 64, 64)
    torch.testing.assert_close(views[0, 0], torch.round(none[0] * 255) / 255)
    torch.testing.assert_close(views[1, 1], torch.round(none[1] * 255) / 255)
    torch.testing.assert_close(views[0, 1], torch.round(one[0] * 255) / 255)
    torch.testing.assert_close(views[1, 0], torch.round(one[1] * 255) / 255)
    assert (views[0, 1] - views[0, 0]).abs().amax() > 0.01  # the bank entry changed something


BANK = ("valencia", "gingham", "brannan", "hudson", "lofi", "nashville")


@pytest.fixture(scope="module")
def verify_model():
    """A small restorer whose bank holds six filters' inverses fitted on three photos; its
    classifier is untrained (it reads every view as clean)."""
    images = [_photo(n, 120, 90) for n in PHOTOS[:3]]
    model = Restorer(**SMALL, bank=len(BANK), bank_verify=3, pretrained=False).eval()
    model.set_bank(inverse_filter_tables(images, list(BANK), model.lut_size, side=96))
    model.weights_card = {"filter_bank": {"filters": list(BANK)}}
    return model


@pytest.fixture(scope="module")
def verify_looks():
    images = [_photo(n, 120, 90) for n in PHOTOS[:5]]
    looks = PhotoLooks(images, list(PHOTOS[:5]), identity_prob=0.2, perturb_prob=0.0)
    looks.config = SynthConfig(mode="removal", perturb="none", grade_prob=0.0, identity_prob=0.2,
                               lut_strength=(1.0, 1.0), filters=BANK)
    return looks


def test_the_verifier_learns_which_restoration_is_best(verify_model, verify_looks):
    model = verify_model
    assert bank_filter_names(model) == list(BANK)
    data = verify_dataset(model, verify_looks, 1500, 64, np.random.default_rng(0), candidates=4)
    assert data["seen"].shape[:2] == (1500, 4) and data["psnr"].shape == (1500, 4)
    filtered = data["label"] >= 0
    assert (data["candidates"][:, 0] == -1).all()  # "no bank entry" always, the true filter next
    assert (data["candidates"][filtered, 1] == data["label"][filtered]).all()
    with torch.no_grad():  # the bank's standardisation, as train_bank would set it
        model.bank_mean.copy_(data["feats"].mean(0))
        model.bank_scale.copy_(data["feats"].std(0).clamp_min(0.05))
    torch.manual_seed(0)
    report = train_verify_head(model, data, epochs=30)
    # held-out looks of the same photos; the untrained classifier always picks "none"
    # (measured: picks the best 0.97-0.98; 31.0 dB against 27.3 for the classifier's pick, best 31.1)
    assert report["holdout_picks_best"] > 0.85, report
    assert report["holdout_psnr_verifier_pick"] > report["holdout_psnr_classifier_pick"] + 2.5, report
    assert report["holdout_psnr_verifier_pick"] > report["holdout_psnr_best"] - 0.5, report
    # Photos it never saw are the benchmark's job: from five photos the verifier does not
    # generalise (a scratch check on three other scikit-image photos through the six
    # filters: right 6 times of 18), from the catalogue's 217 it does a little
    # (docs/restorer.md "A verifier").


def test_bank_verify_command_extends_trained_weights(tmp_path, verify_model, verify_looks):
    base = Restorer(**{k: v for k, v in verify_model.config.items() if k not in ("model", "bank_verify")},
                    pretrained=False).eval()
    base.load_state_dict(verify_model.state_dict(), strict=False)
    url = save_weights(base, base.config, str(tmp_path / "in"),
                       {"task": "test", "steps": 7, "filter_bank": {"filters": list(BANK)}})
    out = add_verifier(url, str(tmp_path / "out"), verify_looks, candidates=2, samples=128, crop=64, epochs=2)
    extended = build_model(out)
    assert extended.bank_verify == 2 and extended.weights_config["bank_verify"] == 2
    assert float(extended.bank_verify_beta) == 1.0
    before = build_model(url).state_dict()
    for k, v in extended.state_dict().items():  # the classifier, bank and heads are kept
        if not k.startswith("bank_verify_"):
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    card = json.loads(open(out[: -len(".safetensors")] + ".json").read())
    assert card["steps"] == 7 and card["bank_verify"]["training_looks"]["samples"] == 128
    assert card["bank_verify"]["head"]["candidates"] == 3  # none, the true filter, one drawn
    assert build_model(url).weights_sha256 in card["bank_verify"]["applied_to"]
    with pytest.raises(ValueError, match="already has a verifier"):
        add_verifier(out, str(tmp_path / "again"), verify_looks, samples=8, crop=64, epochs=1)
    with pytest.raises(ValueError, match="chosen-on"):
        add_verifier(url, str(tmp_path / "x"), verify_looks, samples=8, crop=64, epochs=1, beta=2.0)
    # β alone, on weights that have a verifier: only the buffer changes, the card says why
    tuned = set_beta(out, str(tmp_path / "beta"), 0.5, chosen_on="a test")
    after = build_model(tuned)
    assert float(after.bank_verify_beta) == 0.5
    for k, v in after.state_dict().items():
        if k != "bank_verify_beta":
            torch.testing.assert_close(v, extended.state_dict()[k], rtol=0, atol=0)
    card = json.loads(open(tuned[: -len(".safetensors")] + ".json").read())
    assert card["bank_verify"]["beta"] == 0.5 and card["bank_verify"]["chosen_on"] == "a test"
    assert card["bank_verify"]["head"]["candidates"] == 3  # the training account is kept
    with pytest.raises(ValueError, match="no verifier"):
        set_beta(url, str(tmp_path / "y"), 0.5, chosen_on="a test")
    plain = Restorer(**SMALL, pretrained=False)
    plain_url = save_weights(plain, plain.config, str(tmp_path / "plain"), {"task": "test"})
    with pytest.raises(ValueError, match="filter bank"):
        add_verifier(plain_url, str(tmp_path / "z"), verify_looks, samples=8, crop=64, epochs=1)


def test_the_oracle_over_the_top_candidates_bounds_what_a_verifier_can_reach():
    """``benchmarks/restore_quick.py --oracle-candidates K``: with an untrained classifier
    (every filter equally likely) the true filter is among the top 40 of 40 always, and
    an oracle choosing among more candidates never does worse."""
    import sys
    from pathlib import Path

    from chromabeam.transforms.ops.synth import FILTER_NAMES

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from restore_quick import oracle_candidates

    filters = list(SynthConfig(mode="removal").filters)
    assert len(filters) == 40 and set(filters) <= set(FILTER_NAMES)
    model = Restorer(**SMALL, bank=40, pretrained=False).eval()
    model.set_bank(inverse_filter_tables([_photo(n, 96, 72) for n in PHOTOS[:2]], filters, model.lut_size, side=64))
    with torch.no_grad():  # a classifier with no opinion: every filter equally likely, strength 1
        model.bank_head[-1].bias.zero_()
        model.bank_head[-1].bias[model.bank_classes:] = 50.0
    model.weights_card = {"filter_bank": {"filters": filters}}
    text = oracle_candidates(model, [_float(_photo("chelsea", 96, 72))], 40)
    shares, psnrs = text.split("; ")
    assert shares.split(": ")[1].split(" / ")[-1] == "1.000", text  # all 40: the true filter is there
    best = [float(v) for v in psnrs.split(": ")[1].removesuffix(" dB").split(" / ")]
    assert best == sorted(best), text  # more candidates, never worse
    # measured: 21.99 / 22.12 / 23.04 / 33.46 dB for the top 1 / 3 / 5 / 40 (shares 0 / 0 / 0.06 / 1)
    assert best[-1] > 30.0 and best[-1] > best[0] + 8, text
