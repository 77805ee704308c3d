"""The restorer's filter bank: fixed inverse-filter LUTs chosen by a classifier.

- untrained, the bank adds nothing (the classifier says "no filter" with certainty);
- a classifier that says "filter f at strength s" makes the model add s·(inverse_f − I)
  to its LUT — exactly, checked against ``lut3d_apply`` of that table;
- the inverse of a filter fitted on some photos undoes that filter on another photo;
- ``train_bank`` learns to tell filtered looks apart from colour statistics (real looks
  from the transform library on bundled photos), and the weights round-trip through the
  registry with the bank in their config;
- the image-loss trainer leaves the bank's classifier as it is.
"""
import numpy as np
import pytest
import torch

from chromabeam.models.registry import build_model, save_weights
from chromabeam.models.restorer import Restorer
from chromabeam.models.train_restorer import (
    PhotoLooks, TrainConfig, bank_dataset, inverse_filter_tables, train, train_bank,
)
from chromabeam.transforms.ops.dncm import lut3d_apply, lut3d_identity
from chromabeam.transforms.ops.filters import apply_filter
from chromabeam.transforms.ops.metrics import psnr

from bank_photos import as_tensor as _float, photo as _photo

SMALL = {"encoder": "stats", "view_size": 64, "width": 16, "lut_size": 9, "grid_size": 4, "lut_basis": 2}




def test_an_untrained_bank_adds_nothing():
    torch.manual_seed(0)
    plain = Restorer(**SMALL, pretrained=False).eval()
    banked = Restorer(**SMALL, bank=3, pretrained=False).eval()
    banked.load_state_dict(plain.state_dict(), strict=False)
    banked.set_bank(torch.rand(3, 3, 9, 9, 9))
    x = _float(_photo("coffee", 80, 60))
    with torch.inference_mode():
        torch.testing.assert_close(banked(x), plain(x), rtol=0, atol=1e-6)
    assert banked.config["bank"] == 3 and "bank" not in plain.config


def test_the_classifier_picks_a_table_at_a_strength():
    torch.manual_seed(1)
    model = Restorer(**SMALL, bank=2, pretrained=False).eval()
    tables = torch.stack([lut3d_identity(9).flip(0), lut3d_identity(9) ** 2])  # channel swap, gamma 2
    model.set_bank(tables)
    with torch.no_grad():  # force "filter 2 (index 1), strength sigmoid(0) = 0.5"
        last = model.bank_head[-1]
        last.bias.zero_()
        last.bias[2] = 50.0
    x = _float(_photo("chelsea", 72, 56))
    with torch.inference_mode():
        want = lut3d_apply(x, (lut3d_identity(9) + 0.5 * (tables[1] - lut3d_identity(9)))[None])
        torch.testing.assert_close(model(x), want.clamp(0, 1), rtol=0, atol=1e-5)
        w = model.bank_weights(torch.zeros(1, 180))
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.5]]), rtol=0, atol=1e-6)


def test_a_fitted_inverse_undoes_its_filter_on_another_photo():
    fit_on = [_photo(n, 128, 96) for n in ("coffee", "rocket", "astronaut")]
    tables = inverse_filter_tables(fit_on, ["1977", "gingham"], 17, side=96)
    assert tables.shape == (2, 3, 17, 17, 17)
    clean = _float(_photo("chelsea", 128, 96))
    for i, name in enumerate(("1977", "gingham")):
        filtered = apply_filter(clean, name, 1.0).clamp(0, 1).mul(255).round().div(255)
        before = float(psnr(filtered, clean))
        after = float(psnr(lut3d_apply(filtered, tables[i][None]).clamp(0, 1), clean))
        # measured: 1977 14.5 → 43.9 dB, gingham 13.2 → 47.4 dB
        assert after > before + 20, (name, before, after)


def test_train_bank_learns_to_recognise_filters_and_round_trips(tmp_path):
    names = ("chelsea", "coffee", "rocket", "astronaut")
    looks = PhotoLooks([_photo(n, 96, 96) for n in names], list(names), identity_prob=0.3, perturb_prob=0.0)
    filters = ["1977", "gingham", "willow"]
    looks.config = type(looks.config)(mode="removal", filters=tuple(filters), grade_prob=0.0, identity_prob=0.3,
                                      lut_strength=(1.0, 1.0), perturb="none", vignette_prob=0.0)
    model = Restorer(**SMALL, bank=len(filters), pretrained=False)
    model.set_bank(inverse_filter_tables(looks.images, filters, 9, side=64))
    feats, labels, strengths = bank_dataset(model, looks, filters, 600, 64, np.random.default_rng(0))
    assert feats.shape == (600, 180) and set(labels.tolist()) == {0, 1, 2, 3}
    assert torch.all(strengths[labels > 0] == 1.0)
    stats = train_bank(model, feats, labels, strengths, epochs=40, seed=0)
    # four classes of which "none" is ~30 %: these looks are easy to tell apart
    assert stats["holdout_accuracy"] > 0.8, stats
    url = save_weights(model.eval(), model.config, str(tmp_path), {"task": "test"})
    loaded = build_model(url, "cpu")
    assert loaded.config["bank"] == 3
    x, y, specs = looks.sample_with_specs(4, 64, np.random.default_rng(5))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


def _bank_tuning(**cfg_kw):
    """One photo's looks, a small banked restorer whose classifier has random weights, and
    a 3-step training config."""
    looks = PhotoLooks([_photo("coffee", 96, 96)], ["coffee"], identity_prob=0.0)
    init = Restorer(**SMALL, bank=2, pretrained=False)
    init.set_bank(torch.rand(2, 3, 9, 9, 9))
    with torch.no_grad():
        init.bank_head[-1].weight.normal_()
    cfg = TrainConfig(steps=3, batch=2, crop=64, loss_size=32, device="cpu", model=SMALL, log_every=1,
                      checkpoint_every=100, **cfg_kw)
    return looks, init, cfg


def test_image_loss_training_leaves_the_bank_classifier_alone():
    looks, init, cfg = _bank_tuning()
    before = {k: v.clone() for k, v in init.state_dict().items() if k.startswith("bank")}
    model, _ = train(looks, cfg, init=init)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert not torch.equal(after["lut_weights.weight"], init.state_dict()["lut_weights.weight"])


def test_consistency_features_tell_a_filters_output_from_a_clean_photo():
    fit_on = [_photo(n, 128, 96) for n in ("coffee", "rocket", "astronaut")]
    inverse, forward = inverse_filter_tables(fit_on, ["gingham", "willow"], 17, side=96, forward=True)
    model = Restorer(**{**SMALL, "lut_size": 17}, bank=2, bank_consistency=True, pretrained=False).eval()
    with pytest.raises(ValueError, match="forward must be"):
        model.set_bank(inverse)
    model.set_bank(inverse, forward)
    assert model.config["bank_consistency"] is True
    clean = _float(_photo("chelsea", 128, 96))
    views = torch.cat([clean] + [apply_filter(clean, f, 1.0).clamp(0, 1).mul(255).round().div(255)
                                 for f in ("gingham", "willow")])
    with torch.no_grad():
        feats = model.bank_check_features(model.view(views))
        inputs = model.bank_inputs(model.view(views))
    assert feats.shape == (3, 4) and inputs.shape == (3, 180 + 4)
    mean_err = feats[:, :2]  # rows: clean, gingham(clean), willow(clean); columns: gingham, willow
    # each filter's own output is (nearly) in its range; the clean photo is not
    # (measured: gingham column 0.0072 clean vs 0.0017; willow column 0.118 vs 0.029)
    assert mean_err[1, 0] < 0.5 * mean_err[0, 0], mean_err
    assert mean_err[2, 1] < 0.5 * mean_err[0, 1], mean_err


def test_bank_lr_scale_lets_the_image_loss_tune_the_classifier():
    looks, init, cfg = _bank_tuning(bank_lr_scale=0.5)
    with torch.no_grad():
        init.bank_head[-1].bias[0] = 0.0  # not certain of "no filter": the bank gets a gradient
    model, _ = train(looks, cfg, init=init)
    before, after = init.state_dict(), model.state_dict()
    assert not torch.equal(after["bank_head.6.weight"], before["bank_head.6.weight"])
    assert torch.equal(after["bank_luts"], before["bank_luts"])  # the tables stay fixed


def test_other_look_class_and_several_heads():
    """``bank_other``: a class for looks outside the bank, which adds no inverse;
    ``bank_heads``: the bank's weight is the mean of the classifiers' weights; both
    survive the weight registry."""
    torch.manual_seed(2)
    model = Restorer(**SMALL, bank=2, bank_other=True, bank_heads=2, pretrained=False).eval()
    assert model.bank_classes == 4 and len(model.bank_head_list()) == 2
    with torch.no_grad():
        first, second = (h[-1] for h in model.bank_head_list())
        for last in (first, second):
            last.bias.zero_()
        first.bias[3] = 50.0  # "another look": no inverse
        second.bias[1] = 50.0  # filter 1 at strength sigmoid(0) = 0.5
    feats = torch.zeros(1, 180)
    assert float(model.bank_logits(feats, 0)[0].detach().softmax(1)[0, 3]) > 0.99
    torch.testing.assert_close(model.bank_weights(feats), torch.tensor([[0.25, 0.0]]), rtol=0, atol=1e-6)
    assert model.config["bank_other"] is True and model.config["bank_heads"] == 2
    again = Restorer(**{k: v for k, v in model.config.items() if k != "model"}, pretrained=False)
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.eval().bank_weights(feats), model.bank_weights(feats))


def test_bank_dataset_labels_other_looks_apart_when_asked():
    from chromabeam.models.train_restorer import PhotoLooks, bank_dataset

    looks = PhotoLooks([_photo(n, 96, 72) for n in ("coffee", "rocket")], ["coffee", "rocket"],
                       identity_prob=0.3, perturb_prob=0.0)
    filters = list(looks.config.filters)
    labels = {}
    for other in (False, True):
        model = Restorer(**SMALL, bank=len(filters), bank_other=other, pretrained=False).eval()
        _, labels[other], _ = bank_dataset(model, looks, filters, 120, 48, np.random.default_rng(5))
    # the same looks (same seed): filters keep their class, the rest splits into clean (0) and other (41)
    same = labels[False] == labels[True]
    assert torch.all(labels[True][~same] == len(filters) + 1) and torch.all(labels[False][~same] == 0)
    assert 0 < int((~same).sum()) < 120 and int((labels[True] == 0).sum()) > 0


def test_calibrate_bank_shifts_none_then_divides_by_the_temperature(tmp_path):
    torch.manual_seed(3)
    model = Restorer(**SMALL, bank=3, bank_other=True, bank_heads=2, pretrained=False).eval()
    model.set_bank(torch.rand(3, 3, 9, 9, 9))
    for head in model.bank_head_list():  # a classifier with opinions
        torch.nn.init.normal_(head[-1].weight, std=0.5)
        torch.nn.init.normal_(head[-1].bias, std=1.0)
    feats = torch.randn(5, model.bank_mean.numel())
    with torch.no_grad():
        before = [model.bank_logits(feats, h) for h in range(2)]
        model.calibrate_bank(0.5, 1.5)
        after = [model.bank_logits(feats, h) for h in range(2)]
    for (z, s), (z2, s2) in zip(before, after):
        want = z.clone()
        want[:, 0] -= 1.5
        torch.testing.assert_close(z2, want / 0.5, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s2, s, rtol=0, atol=0)  # strengths untouched
    # the weights file carries the calibration
    url = save_weights(model, model.config, str(tmp_path), {"task": "test"})
    again = build_model(url, "cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(again.bank_logits(feats, 1)[0], after[1][0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.calibrate_bank(0.0)
    with pytest.raises(ValueError, match="no filter bank"):
        Restorer(**SMALL, pretrained=False).calibrate_bank(0.5)


def test_a_sharper_calibration_commits_to_the_top_filter():
    torch.manual_seed(4)
    model = Restorer(**SMALL, bank=2, pretrained=False).eval()
    model.set_bank(torch.rand(2, 3, 9, 9, 9))
    with torch.no_grad():
        last = model.bank_head[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, 2.0, 0.0, 20.0, 20.0]))  # P(filter 1) ~ 0.67, strengths ~ 1
        w1 = model.bank_weights(torch.zeros(1, 180))[0, 0]
        model.calibrate_bank(0.5)
        w2 = model.bank_weights(torch.zeros(1, 180))[0, 0]
    assert 0.6 < float(w1) < 0.7 and float(w2) > 0.84


def test_shading_features_join_the_bank_inputs_and_survive_the_registry(tmp_path):
    """``bank_shading``: the classifier sees the colour statistics, then the view's
    ``shading_statistics``; the option is in the config, so the weights rebuild it."""
    from chromabeam.transforms.ops.colour_stats import global_colour_features, global_feature_count
    from chromabeam.transforms.ops.shading_stats import shading_feature_count, shading_statistics

    torch.manual_seed(4)
    model = Restorer(**SMALL, bank=2, bank_shading=True, pretrained=False).eval()
    x = _float(_photo("coffee", 80, 60))
    view = model.view(x)
    feats = model.bank_inputs(view)
    assert feats.shape == (1, global_feature_count(16) + shading_feature_count()) == (1, model.bank_mean.numel())
    torch.testing.assert_close(feats[:, :180], global_colour_features(view, 16))
    torch.testing.assert_close(feats[:, 180:], shading_statistics(view))
    assert model.config["bank_shading"] is True and "bank_shading" not in Restorer(**SMALL, pretrained=False).config
    with torch.no_grad():
        last = model.bank_head[-1]
        torch.nn.init.normal_(last.weight, std=0.3)
    url = save_weights(model, model.config, str(tmp_path), {"task": "test"})
    again = build_model(url, "cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
