"""models.calibrate_restorer: a trained restorer's bank classifier recalibrated without
retraining — the saved weights give exactly the calibrated logits, the card keeps the
training record and says what was changed, and it refuses what it cannot calibrate."""
import json

import pytest
import torch

from chromabeam.models.calibrate_restorer import main
from chromabeam.models.registry import build_model, save_weights
from chromabeam.models.restorer import Restorer

SMALL = {"encoder": "stats", "view_size": 64, "width": 16, "lut_size": 9, "grid_size": 4, "lut_basis": 2}


def _banked(tmp_path):
    torch.manual_seed(7)
    model = Restorer(**SMALL, bank=3, pretrained=False).eval()
    model.set_bank(torch.rand(3, 3, 9, 9, 9))
    with torch.no_grad():
        torch.nn.init.normal_(model.bank_head[-1].weight, std=0.5)
        torch.nn.init.normal_(model.bank_head[-1].bias, std=1.0)
    url = save_weights(model, model.config, str(tmp_path / "in"), {"task": "test", "steps": 12,
                                                                  "training_data": ["a", "b"]})
    return model, url


def test_calibrated_weights_give_the_calibrated_logits_and_say_so(tmp_path, capsys):
    model, url = _banked(tmp_path)
    assert main([url, str(tmp_path / "out"), "--bank-temperature", "0.7", "--bank-none-shift", "0.5",
                 "--chosen-on", "held-out photos"]) == 0
    out_url = capsys.readouterr().out.strip()
    calibrated = build_model(out_url)
    feats = torch.randn(6, model.bank_mean.numel())
    with torch.no_grad():
        want, strength = model.bank_logits(feats)
        want[:, 0] -= 0.5
        got, got_strength = calibrated.bank_logits(feats)
    torch.testing.assert_close(got, want / 0.7, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_strength, strength, rtol=0, atol=0)
    card = json.loads(open(out_url[: -len(".safetensors")] + ".json").read())
    assert card["steps"] == 12 and card["training_data"] == ["a", "b"]  # the training record stays
    cal = card["bank_calibration"]
    assert (cal["temperature"], cal["none_shift"], cal["chosen_on"]) == (0.7, 0.5, "held-out photos")
    assert build_model(url).weights_sha256 in cal["applied_to"] and card["sha256"] != build_model(url).weights_sha256
    # calibrating twice would compound: refused
    with pytest.raises(ValueError, match="already calibrated"):
        main([out_url, str(tmp_path / "again"), "--bank-temperature", "0.7", "--chosen-on", "x"])


def test_refuses_a_model_without_a_bank(tmp_path):
    plain = Restorer(**SMALL, pretrained=False)
    url = save_weights(plain, plain.config, str(tmp_path), {"task": "test"})
    with pytest.raises(ValueError, match="no filter bank"):
        main([url, str(tmp_path / "out"), "--bank-temperature", "0.7", "--chosen-on", "x"])


def test_strength_shift_crops_and_a_calibration_on_top(tmp_path, capsys):
    """``--bank-strength-shift`` adds to the strength logits alone; ``--bank-crops`` and
    ``--bank-commit`` go to the weights' config; ``--on-top`` composes with the calibration the weights carry
    (T₀·T, D₀ + T₀·D) and the card keeps the earlier entry."""
    model, url = _banked(tmp_path)
    assert main([url, str(tmp_path / "first"), "--bank-temperature", "0.7", "--bank-none-shift", "1.5",
                 "--chosen-on", "a twin"]) == 0
    first = capsys.readouterr().out.strip()
    assert main([first, str(tmp_path / "second"), "--bank-temperature", "0.5", "--bank-none-shift", "1.0",
                 "--bank-strength-shift", "2.0", "--bank-crops", "0.7", "--bank-commit", "0.002", "--on-top",
                 "--chosen-on", "the same twin"]) == 0
    second = build_model(capsys.readouterr().out.strip())
    assert second.bank_crops == 0.7 and second.weights_config["bank_crops"] == 0.7
    assert second.bank_commit == 0.002 and second.weights_config["bank_commit"] == 0.002
    feats = torch.randn(6, model.bank_mean.numel())
    with torch.no_grad():
        want, strength = model.bank_logits(feats)
        want[:, 0] -= 1.5 + 0.7 * 1.0
        got, got_strength = second.bank_logits(feats)
    torch.testing.assert_close(got, want / (0.7 * 0.5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_strength, strength + 2.0, rtol=0, atol=1e-5)
    cal = second.weights_card["bank_calibration"]
    assert (cal["temperature"], cal["none_shift"], cal["strength_shift"], cal["crops"], cal["commit"]) == (
        0.5, 1.0, 2.0, 0.7, 0.002)
    assert cal["previous"]["temperature"] == 0.7 and cal["previous"]["chosen_on"] == "a twin"
    assert cal["chosen_on"] == "the same twin"
    with pytest.raises(ValueError, match="bank-crops"):
        main([url, str(tmp_path / "bad"), "--bank-crops", "1.0", "--chosen-on", "x"])
    with pytest.raises(ValueError, match="bank-commit"):
        main([url, str(tmp_path / "bad"), "--bank-commit", "1.5", "--chosen-on", "x"])


def test_strength_stretch_spreads_the_read_strengths_about_the_centre(tmp_path, capsys):
    """``--bank-strength-stretch K`` maps each strength logit z to c + K·(z − c), c the logit
    of ``STRENGTH_CENTRE``, then the shift is added: a look read at the centre keeps its
    strength, stronger readings go up and milder ones down; the card records it."""
    import math

    from chromabeam.models.restorer import STRENGTH_CENTRE

    model, url = _banked(tmp_path)
    assert main([url, str(tmp_path / "out"), "--bank-strength-stretch", "1.5", "--bank-strength-shift", "0.25",
                 "--chosen-on", "a twin"]) == 0
    stretched = build_model(capsys.readouterr().out.strip())
    feats = torch.randn(6, model.bank_mean.numel())
    c = math.log(STRENGTH_CENTRE / (1 - STRENGTH_CENTRE))
    with torch.no_grad():
        logits, z = model.bank_logits(feats)
        got_logits, got_z = stretched.bank_logits(feats)
    torch.testing.assert_close(got_logits, logits, rtol=0, atol=1e-6)  # the classes are untouched
    torch.testing.assert_close(got_z, c + 1.5 * (z - c) + 0.25, rtol=0, atol=1e-5)
    cal = stretched.weights_card["bank_calibration"]
    assert cal["strength_stretch"] == {"factor": 1.5, "about": STRENGTH_CENTRE} and cal["strength_shift"] == 0.25
    # without the shift: readings above the centre get stronger, those below milder
    before, after = torch.sigmoid(z), torch.sigmoid(got_z - 0.25)
    above = before > STRENGTH_CENTRE
    assert above.any() and (~above).any()
    assert (after[above] > before[above]).all() and (after[~above] < before[~above]).all()
    with pytest.raises(ValueError, match="strength_stretch"):
        model.calibrate_bank(strength_stretch=0.0)
