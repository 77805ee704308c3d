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
