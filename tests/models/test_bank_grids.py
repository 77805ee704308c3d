"""Bank grids: each bank filter's bilateral grid, fitted with its LUT, undoes the filter's
vignette where a LUT (blind to position) cannot.

- the classifier's weight for filter f adds that weight times f's grid residual to the
  predicted grid, exactly;
- ``fit_bank_grids`` on a few photos undoes a vignetting filter (sutro) on another photo
  better than the LUT alone — measured in PSNR;
- ``models.bank_grids`` gives trained weights fitted grids and keeps everything else;
  the card says what was fitted on what; it refuses what it cannot extend.
"""
import json

import pytest
import torch

from chromabeam.models.bank_grids import add_bank_grids, copy_bank_grids
from chromabeam.models.registry import build_model, save_weights
from chromabeam.models.restorer import Restorer
from chromabeam.models.train_restorer import fit_bank_grids, inverse_filter_tables, spread
from chromabeam.transforms.ops.filters import apply_filter
from chromabeam.transforms.ops.metrics import psnr

from bank_photos import as_tensor as _float, photo as _photo, SMALL

FIT = ("astronaut", "coffee", "rocket", "immunohistochemistry")




def _force(model, index, strength_logit=0.0):
    """The classifier says "filter ``index``" with certainty, strength sigmoid(logit)."""
    with torch.no_grad():
        last = model.bank_head[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[1 + index] = 50.0
        last.bias[model.bank_classes + index] = strength_logit


def test_the_filters_grid_is_added_with_its_weight():
    torch.manual_seed(3)
    plain = Restorer(**SMALL, bank=2, pretrained=False).eval()
    gridded = Restorer(**SMALL, bank=2, bank_grids=True, pretrained=False).eval()
    gridded.load_state_dict(plain.state_dict(), strict=False)
    tables = torch.rand(2, 3, 9, 9, 9)
    grids = torch.randn(2, 12, 8, 8, 8)
    plain.set_bank(tables)
    gridded.set_bank(tables, grids=grids)
    for m in (plain, gridded):
        _force(m, 1)  # filter 2 at strength 0.5
    x = _float(_photo("coffee", 90, 70))
    with torch.inference_mode():
        lut0, grid0 = plain.predict(x)
        lut1, grid1 = gridded.predict(x)
    torch.testing.assert_close(lut1, lut0, rtol=0, atol=0)
    torch.testing.assert_close(grid1 - grid0, 0.5 * (grids[1] - gridded._grid_identity[0])[None], rtol=1e-5, atol=1e-5)
    assert gridded.config["bank_grids"] is True and "bank_grids" not in plain.config
    # without bank grids (or with the wrong shape) grids are refused, not ignored
    with pytest.raises(ValueError, match="bank_grids"):
        plain.set_bank(tables, grids=grids)
    with pytest.raises(ValueError, match="bank_grids"):
        gridded.set_bank(tables, grids=grids[:, :, :4])


def test_a_fitted_grid_undoes_a_vignette_the_lut_cannot():
    torch.manual_seed(0)
    images = [_photo(n, 120, 90) for n in FIT]
    model = Restorer(**SMALL, bank=1, bank_grids=True, pretrained=False).eval()
    model.set_bank(inverse_filter_tables(images, ["sutro"], 9, side=96))
    tables, grids, report = fit_bank_grids(model, images, ["sutro"], side=120, size=64, steps=150)
    assert report[0]["filter"] == "sutro" and report[0]["choice"] in ("grid", "grid+lut")
    assert report[0]["psnr"][report[0]["choice"]] >= report[0]["psnr"]["none"] + 0.2
    clean = _float(_photo("chelsea", 128, 96))  # not fitted on
    filtered = apply_filter(clean, "sutro", 1.0).clamp(0, 1).mul(255).round().div(255)
    identity_grid = model._grid_identity.expand(1, -1, -1, -1, -1)
    with torch.no_grad():
        lut_alone = model.apply(filtered, (model._lut_identity + model.bank_luts)[:1], identity_grid).clamp(0, 1)
        both = model.apply(filtered, tables[:1], grids[:1]).clamp(0, 1)
    before, after = psnr(lut_alone, clean).item(), psnr(both, clean).item()
    assert after > before + 2.0, (before, after)
    assert not torch.equal(grids[0], model._grid_identity[0])
    # a grid that cannot beat the LUT alone by the margin on the held-out photos is not kept
    tables, grids, report = fit_bank_grids(model, images, ["sutro"], side=120, size=64, steps=5, margin=100.0)
    assert report[0]["choice"] == "none"
    torch.testing.assert_close(tables[0], (model._lut_identity + model.bank_luts)[0], rtol=0, atol=0)
    torch.testing.assert_close(grids[0], model._grid_identity[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot be split"):
        fit_bank_grids(model, images[:1], ["sutro"], steps=1)


def test_bank_grids_command_extends_trained_weights(tmp_path):
    torch.manual_seed(5)
    images = [_photo(n, 96, 72) for n in FIT[:3]]
    model = Restorer(**SMALL, bank=2, pretrained=False).eval()
    model.set_bank(inverse_filter_tables(images, ["sutro", "1977"], 9, side=64))
    _force(model, 0, 2.0)
    url = save_weights(model, model.config, str(tmp_path / "in"),
                       {"task": "test", "steps": 9, "filter_bank": {"filters": ["sutro", "1977"]}})
    out = add_bank_grids(url, str(tmp_path / "out"), images, ["a", "b", "c"], steps=20)
    extended = build_model(out)
    assert extended.bank_grids and extended.weights_config["bank_grids"] is True
    before = build_model(url).state_dict()
    for k, v in extended.state_dict().items():  # the classifier and the rest are kept
        if not k.startswith(("bank_grid_deltas", "bank_luts")):
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    card = json.loads(open(out[: -len(".safetensors")] + ".json").read())
    assert card["steps"] == 9 and card["bank_grids"]["fit_photos"] == ["a", "b", "c"]
    assert [r["filter"] for r in card["bank_grids"]["per_filter"]] == ["sutro", "1977"]
    for k, r in enumerate(card["bank_grids"]["per_filter"]):  # what the card says is what the file holds
        assert (extended.bank_grid_deltas[k].abs().amax() > 0) == (r["choice"] != "none")
    assert build_model(url).weights_sha256 in card["bank_grids"]["applied_to"]
    with pytest.raises(ValueError, match="already has bank grids"):
        add_bank_grids(out, str(tmp_path / "again"), images, ["a", "b", "c"], steps=1)
    plain = Restorer(**SMALL, pretrained=False)
    plain_url = save_weights(plain, plain.config, str(tmp_path / "plain"), {"task": "test"})
    with pytest.raises(ValueError, match="filter bank"):
        add_bank_grids(plain_url, str(tmp_path / "x"), images, ["a", "b", "c"])


def test_grids_fitted_for_one_bank_are_copied_to_another_model_with_that_bank(tmp_path):
    torch.manual_seed(6)
    images = [_photo(n, 96, 72) for n in FIT[:3]]
    tables = inverse_filter_tables(images, ["sutro", "1977"], 9, side=64)
    urls = []
    for seed, strength in ((0, 2.0), (1, -1.0)):  # two models, one bank, different classifiers
        torch.manual_seed(seed)
        m = Restorer(**SMALL, bank=2, pretrained=False).eval()
        m.set_bank(tables)
        _force(m, seed, strength)
        urls.append(save_weights(m, m.config, str(tmp_path / f"m{seed}"),
                                 {"task": "test", "steps": seed, "filter_bank": {"filters": ["sutro", "1977"]}}))
    fitted = add_bank_grids(urls[0], str(tmp_path / "fitted"), images, ["a", "b", "c"], steps=20)
    out = copy_bank_grids(urls[1], fitted, str(tmp_path / "copied"))
    copied, source, target = build_model(out), build_model(fitted), build_model(urls[1])
    for k, v in copied.state_dict().items():  # the bank from the fit, the rest from the target
        want = (source if k.startswith(("bank_grid_deltas", "bank_luts")) else target).state_dict()[k]
        torch.testing.assert_close(v, want, rtol=0, atol=0)
    card = copied.weights_card["bank_grids"]
    assert card["per_filter"] == source.weights_card["bank_grids"]["per_filter"] and card["fit_photos"] == ["a", "b", "c"]
    assert source.weights_sha256 in card["copied_from"] and target.weights_sha256 in card["applied_to"]
    assert build_model(urls[0]).weights_sha256 in card["fitted_for"]
    other = Restorer(**SMALL, bank=2, pretrained=False).eval()  # another bank: refused
    other.set_bank(torch.rand(2, 3, 9, 9, 9))
    other_url = save_weights(other, other.config, str(tmp_path / "other"), {"task": "test"})
    with pytest.raises(ValueError, match="another bank"):
        copy_bank_grids(other_url, fitted, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="no fitted bank grids"):
        copy_bank_grids(urls[1], urls[0], str(tmp_path / "y"))
    with pytest.raises(ValueError, match="already has bank grids"):
        copy_bank_grids(fitted, fitted, str(tmp_path / "z"))


def test_spread_covers_the_catalogue():
    assert spread(3, 10) == [0, 4, 9] and spread(20, 4) == [0, 1, 2, 3]
