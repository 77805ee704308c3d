"""The bank's white-balance cast head: whether a view is a cast (per-channel gains) and
which gains, so a cast is taken off instead of being read as a warm or cool filter.

- untrained, the head says "not a cast" with certainty and the model is unchanged;
- a head that says "cast, gains g" adds the inverse scale as a LUT with weight P(cast) ×
  (1 − the top filter's probability) and scales the filters' weights (and grids) by 1 −
  that weight, exactly; with the true gains a cast photo comes back (PSNR measured);
- ``train_cast_head`` learns casts from looks of a few photos: measured on looks it held
  out (accuracy, P(cast), log-gain error), and on a cast photo it never saw;
- ``models.bank_casts`` adds a trained head to trained weights and keeps everything else
  bit for bit; the card says what it was trained on; it refuses what it cannot extend;
- the trainer treats the head, and the verifier, like the classifier (frozen, or tuned at the bank's rate);
- a known filter (``predict(known_bank=…)``) replaces what the bank recognises, with no cast.
"""
import json
import math

import numpy as np
import pytest
import torch

from chromabeam.models.bank_casts import add_cast_head
from chromabeam.models.registry import build_model, save_weights
from chromabeam.models.restorer import Restorer
from chromabeam.models.train_restorer import (
    PhotoLooks,
    TrainConfig,
    _apply_freeze,
    _optimizer,
    apply_cast,
    cast_dataset,
    train_cast_head,
)

from bank_photos import as_tensor as _float, photo as _photo, PHOTOS, SMALL

pytestmark = pytest.mark.usefixtures("one_torch_thread")





def _psnr_where(a, b, mask):
    return 10 * math.log10(1 / float(((a - b)[mask] ** 2).mean()))


def _force_cast(model, log_gains, logit=50.0):
    """The cast head says "cast" with P sigmoid(logit) and ``log_gains``, whatever it sees."""
    with torch.no_grad():
        last = model.bank_cast_head[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([logit, *log_gains]))


def _force_classes(model, p_filter, index=1):
    """The classifier says filter ``index`` with P ``p_filter`` (strength 1), "no filter"
    with the rest."""
    with torch.no_grad():
        last = model.bank_head[-1]
        last.weight.zero_()
        last.bias.fill_(-80.0)
        last.bias[0] = 0.0
        last.bias[1 + index] = math.log(p_filter / (1 - p_filter)) if p_filter < 1 else 80.0
        last.bias[model.bank_classes + index] = 50.0  # strength 1


def test_an_untrained_cast_head_changes_nothing_and_a_certain_one_undoes_the_cast():
    torch.manual_seed(2)
    plain = Restorer(**SMALL, bank=2, bank_grids=True, pretrained=False).eval()
    plain.set_bank(torch.rand(2, 3, 9, 9, 9), grids=torch.randn(2, 12, 8, 8, 8))
    casts = Restorer(**SMALL, bank=2, bank_grids=True, bank_casts=True, pretrained=False).eval()
    missing, _ = casts.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("bank_cast_head.") for k in missing)
    assert casts.config["bank_casts"] is True and "bank_casts" not in plain.config
    clean = _float(_photo("coffee", 96, 72))
    gains = (1.2, 1.0, 0.7)
    cast = apply_cast(clean, {"gains": gains}).clamp(0, 1).mul(255).round().div(255)
    cast_delta = casts._lut_identity * (torch.tensor(gains) ** -1 - 1).view(1, 3, 1, 1, 1)
    filter_lut, filter_grid = plain.bank_luts[1][None], plain.bank_grid_deltas[1][None]

    def predict(p_filter, cast_logit=None):
        for m in (plain, casts):
            _force_classes(m, p_filter)
        if cast_logit is not None:
            _force_cast(casts, [math.log(g) for g in gains], cast_logit)
        with torch.inference_mode():
            return plain.predict(cast), casts.predict(cast), casts(cast)

    # untrained: "not a cast" with certainty (sigmoid(-20) ~ 2e-9): the same output
    (lut0, grid0), (lut1, grid1), out = predict(0.9)
    torch.testing.assert_close(out, plain(cast), rtol=0, atol=1e-6)
    # certain of a cast, the classifier certain there is no filter: the cast's inverse scale is in
    (lut0, grid0), (lut1, grid1), restored = predict(1e-30, 50.0)
    torch.testing.assert_close(lut1, lut0 + cast_delta, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grid1, grid0, rtol=0, atol=1e-6)
    # the learnt basis and grid of an untrained model are (near) identity: the cast comes back
    unclipped = (clean * torch.tensor(gains).view(1, 3, 1, 1) < 1).all(dim=1, keepdim=True).expand_as(clean)
    before, after = (_psnr_where(a, clean, unclipped) for a in (cast, restored))
    assert before < 25 and after > 45, (before, after)  # measured 22.1 → 59.1
    # certain of a cast, and of a filter too: the filter the classifier is sure of stands
    (lut0, grid0), (lut1, grid1), _ = predict(1.0, 50.0)
    torch.testing.assert_close(lut1, lut0, rtol=1e-5, atol=1e-5)
    # the classifier says that filter at P 0.4: the cast gets 0.6 of its inverse, the filter
    # and its grid 0.4 × (1 − 0.6)
    (lut0, grid0), (lut1, grid1), _ = predict(0.4, 50.0)
    base_lut, base_grid = lut0 - 0.4 * filter_lut, grid0 - 0.4 * filter_grid
    torch.testing.assert_close(lut1, base_lut + 0.6 * cast_delta + 0.16 * filter_lut, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grid1, base_grid + 0.16 * filter_grid, rtol=1e-4, atol=1e-4)


def test_a_known_filter_replaces_what_the_bank_recognises_and_takes_no_cast():
    torch.manual_seed(3)
    model = Restorer(**SMALL, bank=2, bank_grids=True, bank_casts=True, pretrained=False).eval()
    model.set_bank(torch.rand(2, 3, 9, 9, 9), grids=torch.randn(2, 12, 8, 8, 8))
    x = _float(_photo("coffee", 96, 72))
    with torch.inference_mode():
        _force_classes(model, 1.0)  # the classifier sure of filter 1 (the gate then leaves no cast)
        want = model.predict(x)
        _force_classes(model, 1e-30)  # now sure of "no filter", and the cast head sure of a cast
        _force_cast(model, [0.2, 0.0, -0.3])
        blind = model.predict(x)
        known = model.predict(x, known_bank=torch.tensor([[0.0, 1.0]]))
    for got, ref in zip(known, want):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (blind[0] - want[0]).abs().amax() > 0.05  # blind, it would have done otherwise


def test_calibration_shifts_the_cast_logit():
    model = Restorer(**SMALL, bank=2, bank_casts=True, pretrained=False)
    before = model.bank_cast_head[-1].bias[0].item()
    model.calibrate_bank(cast_shift=1.5)
    assert model.bank_cast_head[-1].bias[0].item() == pytest.approx(before + 1.5)
    with pytest.raises(ValueError, match="bank_casts"):
        Restorer(**SMALL, bank=2, pretrained=False).calibrate_bank(cast_shift=1.0)


@pytest.fixture(scope="module")
def cast_looks():
    images = [_photo(n, 120, 90) for n in PHOTOS[:5]]
    return PhotoLooks(images, list(PHOTOS[:5]), identity_prob=0.25, perturb_prob=0.0, cast_prob=0.4)


def test_the_cast_head_learns_casts_from_looks_of_a_few_photos(cast_looks):
    torch.manual_seed(0)
    model = Restorer(**SMALL, bank=40, bank_casts=True, pretrained=False).eval()
    feats, is_cast, gains = cast_dataset(model, cast_looks, 3000, 64, np.random.default_rng(0))
    assert feats.shape == (3000, model.bank_mean.numel()) and 0.3 < is_cast.mean() < 0.5
    assert (gains[is_cast == 0] == 0).all() and gains[is_cast > 0].abs().amax() > 0.2
    with torch.no_grad():  # the classifier's standardisation, as train_bank would set it
        model.bank_mean.copy_(feats.mean(0))
        model.bank_scale.copy_(feats.std(0).clamp_min(0.05))
    report = train_cast_head(model, feats, is_cast, gains, epochs=30)
    # held-out looks of the same photos (measured: accuracy 0.957, P(cast) 0.92 on casts and
    # 0.09 on the rest, log-gain MAE 0.033)
    assert report["holdout_accuracy"] > 0.85, report
    assert report["holdout_p_cast_on_casts"] > 0.75 and report["holdout_p_cast_on_others"] < 0.2, report
    assert report["holdout_log_gain_mae"] < 0.08, report
    # a photo it never saw, cast warm (log gains 0.22, 0, −0.33): read as a cast, the gains'
    # direction right (measured: P 1.00, 0.30 / −0.02 / −0.47)
    clean = _float(_photo("retina", 120, 90))
    warm = apply_cast(clean, {"gains": (1.25, 1.0, 0.72)}).clamp(0, 1)
    with torch.no_grad():
        p, pred = model.bank_cast(model.bank_inputs(model.view(warm)))
    assert p.item() > 0.5 and pred[0, 0] > 0.05 and pred[0, 2] < -0.05, (p, pred)
    with pytest.raises(ValueError, match="cast_prob"):
        cast_dataset(model, PhotoLooks(cast_looks.images, cast_looks.names), 4, 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="bank_casts"):
        train_cast_head(Restorer(**SMALL, bank=40, pretrained=False), feats, is_cast, gains, epochs=1)


def test_bank_casts_command_extends_trained_weights(tmp_path, cast_looks):
    torch.manual_seed(4)
    model = Restorer(**SMALL, bank=40, pretrained=False).eval()
    model.set_bank(torch.rand(40, 3, 9, 9, 9))
    url = save_weights(model, model.config, str(tmp_path / "in"), {"task": "test", "steps": 7})
    out = add_cast_head(url, str(tmp_path / "out"), cast_looks, samples=200, crop=64, epochs=2,
                        cast_shift=0.5, chosen_on="a test")
    extended = build_model(out)
    assert extended.bank_casts and extended.weights_config["bank_casts"] is True
    again = add_cast_head(url, str(tmp_path / "out2"), cast_looks, samples=200, crop=64, epochs=2,
                          cast_shift=0.5, chosen_on="a test")
    for k, v in build_model(again).state_dict().items():  # the same command makes the same weights
        torch.testing.assert_close(v, extended.state_dict()[k], rtol=0, atol=0)
    before = build_model(url).state_dict()
    for k, v in extended.state_dict().items():  # the classifier, bank and heads are kept
        if not k.startswith("bank_cast_head."):
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    card = json.loads(open(out[: -len(".safetensors")] + ".json").read())
    assert card["steps"] == 7 and card["bank_casts"]["training_looks"]["samples"] == 200
    assert card["bank_casts"]["cast_shift"] == 0.5 and card["bank_casts"]["chosen_on"] == "a test"
    assert card["bank_casts"]["head"]["casts"] > 40
    assert build_model(url).weights_sha256 in card["bank_casts"]["applied_to"]
    with pytest.raises(ValueError, match="already has a cast head"):
        add_cast_head(out, str(tmp_path / "again"), cast_looks, samples=8, crop=64, epochs=1)
    # --replace: a new head (another seed here), everything else bit for bit, the old entry kept
    replaced = add_cast_head(out, str(tmp_path / "replaced"), cast_looks, samples=200, crop=64, epochs=2, seed=1,
                             replace=True, holdout=0.2)
    new_state, old_state = build_model(replaced).state_dict(), extended.state_dict()
    for k, v in new_state.items():
        if k.startswith("bank_cast_head."):
            assert k in old_state
        else:
            torch.testing.assert_close(v, old_state[k], rtol=0, atol=0)
    assert not torch.equal(new_state["bank_cast_head.0.weight"], old_state["bank_cast_head.0.weight"])
    new_card = json.loads(open(replaced[: -len(".safetensors")] + ".json").read())["bank_casts"]
    assert new_card["seed"] == 1 and new_card["previous"]["cast_shift"] == 0.5
    assert new_card["training_looks"]["photos"].endswith("without the 0.2 held out")
    assert build_model(out).weights_sha256 in new_card["applied_to"]
    with pytest.raises(ValueError, match="chosen-on"):
        add_cast_head(url, str(tmp_path / "x"), cast_looks, samples=8, crop=64, epochs=1, cast_shift=1.0)
    plain = Restorer(**SMALL, pretrained=False)
    plain_url = save_weights(plain, plain.config, str(tmp_path / "plain"), {"task": "test"})
    with pytest.raises(ValueError, match="filter bank"):
        add_cast_head(plain_url, str(tmp_path / "y"), cast_looks, samples=8, crop=64, epochs=1)


def test_several_cast_heads_average_what_they_say():
    torch.manual_seed(5)
    model = Restorer(**SMALL, bank=2, bank_casts=True, bank_cast_heads=3, pretrained=False).eval()
    assert model.config["bank_cast_heads"] == 3 and len(model.bank_cast_head_list()) == 3
    assert "bank_cast_heads" not in Restorer(**SMALL, bank=2, bank_casts=True, pretrained=False).config
    with pytest.raises(ValueError, match="bank_cast_heads"):
        Restorer(**SMALL, bank=2, bank_casts=True, bank_cast_heads=0, pretrained=False)
    said = [(-1.0, (0.3, 0.0, -0.4)), (1.0, (0.1, 0.0, -0.2)), (-80.0, (5.0, 5.0, 5.0))]
    with torch.no_grad():
        for head, (logit, gains) in zip(model.bank_cast_head_list(), said):
            head[-1].weight.zero_()
            head[-1].bias.copy_(torch.tensor([logit, *gains]))
    feats = torch.randn(2, model.bank_mean.numel())
    with torch.no_grad():
        p, gains = model.bank_cast(feats)
    ps = [1 / (1 + math.exp(-z)) for z, _ in said]
    assert p.tolist() == pytest.approx([sum(ps) / 3] * 2, abs=1e-6)
    # a head that sees no cast has no say in the gains: P-weighted, the third one's 5s vanish
    want = [sum(pk * g[c] for pk, (_, g) in zip(ps, said)) / sum(ps) for c in range(3)]
    assert gains[0].tolist() == pytest.approx(want, abs=1e-5)
    model.calibrate_bank(cast_shift=2.0)  # every head's logit moves
    assert [h[-1].bias[0].item() for h in model.bank_cast_head_list()] == pytest.approx([1.0, 3.0, -78.0])
    with pytest.raises(ValueError, match="exactly one cast head"):
        train_cast_head(model, feats, torch.zeros(2), torch.zeros(2, 3), epochs=1)


def test_bank_casts_heads_are_the_single_head_runs_side_by_side(tmp_path, cast_looks):
    torch.manual_seed(4)
    model = Restorer(**SMALL, bank=40, pretrained=False).eval()
    model.set_bank(torch.rand(40, 3, 9, 9, 9))
    url = save_weights(model, model.config, str(tmp_path / "in"), {"task": "test"})
    both_url = add_cast_head(url, str(tmp_path / "both"), cast_looks, samples=120, crop=64, epochs=2, seed=3,
                             heads=2)
    both = build_model(both_url)
    assert both.weights_config["bank_cast_heads"] == 2
    for i, head in enumerate(both.bank_cast_head_list()):
        alone = build_model(add_cast_head(url, str(tmp_path / f"alone{i}"), cast_looks, samples=120, crop=64,
                                          epochs=2, seed=3 + i)).bank_cast_head
        for k, v in head.state_dict().items():
            torch.testing.assert_close(v, alone.state_dict()[k], rtol=0, atol=0)
    card = both.weights_card["bank_casts"]
    assert [h["seed"] for h in card["heads"]] == [3, 4] and all(h["casts"] > 20 for h in card["heads"])
    # --replace of an averaged head by a single one
    single = build_model(add_cast_head(both_url, str(tmp_path / "single"), cast_looks, samples=60, crop=64,
                                       epochs=1, replace=True))
    assert single.bank_cast_head_count == 1 and "bank_cast_heads" not in single.weights_config


@pytest.mark.parametrize("flag, head", [({"bank_casts": True}, "bank_cast_head"),
                                        ({"bank_verify": 2}, "bank_verify_head")])
def test_the_trainer_treats_the_cast_head_and_the_verifier_like_the_classifier(flag, head):
    params = lambda m: list(getattr(m, head).parameters())  # noqa: E731
    frozen = Restorer(**SMALL, bank=2, **flag, pretrained=False)
    _apply_freeze(frozen, "none", bank_lr_scale=0.0)
    assert not any(p.requires_grad for p in params(frozen))
    tuned = Restorer(**SMALL, bank=2, **flag, pretrained=False)
    _apply_freeze(tuned, "none", bank_lr_scale=0.3)
    opt = _optimizer(tuned, TrainConfig(bank_lr_scale=0.3))
    bank_group = next(g for g in opt.param_groups if g["lr_scale"] == 0.3)
    ids = {id(p) for p in bank_group["params"]}
    assert all(id(p) in ids for p in params(tuned))
    assert all(id(p) not in ids for p in tuned.lut_weights.parameters())