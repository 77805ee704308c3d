"""The bank's heads reading each feature by its rank (``Restorer(bank_quantiles=Q)``).

- ``quantile_normal`` agrees with an independent reading of the same definition (numpy's
  interpolation forwards and backwards, the standard library's Φ⁻¹): ties get their
  run's middle level, values past the knots the bounded tails;
- ``train_bank`` fits each feature's knots on its fit looks, and the classifier, the cast
  heads and the verifier all read the same transformed, standardised inputs;
- the setting survives the registry, weights without it load as before, bad values are
  refused, and ``train restorer --bank-quantiles Q`` records it on the card.
"""
import json
from statistics import NormalDist

import numpy as np
import pytest
import torch

from chromabeam.models.registry import build_model, save_weights
from chromabeam.models.restorer import Restorer, quantile_normal
from chromabeam.models.train_restorer import train_bank, train_command

SMALL = {"encoder": "stats", "view_size": 64, "width": 16, "lut_size": 5, "grid_size": 4, "lut_basis": 2}


def _reference(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """The definition, one feature at a time: the mean of numpy's interpolation of the
    level forwards and backwards, levels 0 / 1 at (or within 1e-7 of) the outer knots,
    then the normal quantile with the level clipped to [1e-7, 1 − 1e-7]."""
    n = knots.shape[1]
    levels = np.linspace(0, 1, n)
    out = np.empty_like(x, dtype=np.float64)
    inv = NormalDist().inv_cdf
    for j in range(x.shape[1]):
        q, v = knots[j], x[:, j].astype(np.float64)
        u = 0.5 * (np.interp(v, q, levels) - np.interp(-v, -q[::-1], -levels[::-1]))
        u[v - 1e-7 < q[0]] = 0.0
        u[v + 1e-7 > q[-1]] = 1.0
        out[:, j] = [inv(min(max(a, 1e-7), 1 - 1e-7)) for a in u]
    return out


def _features(rng: np.random.Generator, n: int) -> np.ndarray:
    """Three kinds of feature a view's statistics hold: continuous, a histogram bin that is
    often exactly 0, a share that piles up at 1."""
    return np.stack([rng.normal(2.0, 3.0, n), np.where(rng.random(n) < 0.4, 0.0, rng.random(n)),
                     np.minimum(1.0, rng.random(n) * 1.5)], axis=1).astype(np.float32)


def test_quantile_normal_agrees_with_an_independent_reading_of_its_definition():
    rng = np.random.default_rng(0)
    fit = torch.from_numpy(_features(rng, 4000))
    knots = torch.quantile(fit.double(), torch.linspace(0, 1, 32, dtype=torch.float64), dim=0).T
    probe = np.concatenate([_features(rng, 500), [[-50.0, -1.0, 2.0], [50.0, 0.0, 1.0]]]).astype(np.float32)
    got = quantile_normal(torch.from_numpy(probe), knots.float()).numpy()
    want = _reference(probe, knots.float().numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
    # past either end, or on the outer knots (a bin that is often exactly 0): the bounded tails
    assert got[-2, 0] == pytest.approx(-5.199, abs=1e-3) and got[-1, 0] == pytest.approx(5.199, abs=1e-3)
    assert got[-1, 1] == pytest.approx(-5.199, abs=1e-3) and got[-1, 2] == pytest.approx(5.199, abs=1e-3)
    # on a run of equal inner knots: the run's middle level (2 holds levels 2/7 … 5/7)
    hand = torch.tensor([[0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 4.0]])
    levels = quantile_normal(torch.tensor([[2.0], [1.5], [3.5]]), hand)[:, 0].tolist()
    inv = NormalDist().inv_cdf
    assert levels == pytest.approx([0.0, inv(1.5 / 7), inv(6.5 / 7)], abs=1e-5)
    # the continuous feature's median reads 0, and the map keeps the order of values
    median = fit[:, :1].median(0, keepdim=True).values  # (1, 1)
    assert float(quantile_normal(median, knots[:1].float())) == pytest.approx(0.0, abs=0.03)
    order = np.argsort(probe[:, 0])
    assert np.all(np.diff(got[order, 0]) >= 0)


def test_quantile_normal_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"expected x \(B, F\) and knots \(F, Q >= 2\)"):
        quantile_normal(torch.zeros(4, 3), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="bank_quantiles must be 0"):
        Restorer(**SMALL, bank=2, bank_quantiles=1, pretrained=False)


def _trained(bank_quantiles: int, **kw) -> tuple[Restorer, torch.Tensor]:
    torch.manual_seed(0)
    model = Restorer(**SMALL, bank=2, bank_shading=True, bank_quantiles=bank_quantiles, pretrained=False, **kw)
    rng = np.random.default_rng(1)
    n, f = 600, model.bank_mean.numel()
    labels = torch.from_numpy(rng.integers(0, 3, n))
    # heavy-tailed features whose first column carries the class
    feats = torch.from_numpy(rng.standard_cauchy((n, f)).astype(np.float32))
    feats[:, 0] = labels.float() * 4 + torch.from_numpy(rng.normal(0, 1, n).astype(np.float32))
    train_bank(model, feats, labels, torch.ones(n), epochs=5, seed=0)
    return model.eval(), feats


def test_train_bank_fits_the_knots_and_every_head_reads_the_same_inputs(tmp_path):
    model, feats = _trained(16, bank_casts=True, bank_verify=1)
    knots = model.bank_knots
    assert knots.shape == (feats.shape[1], 16) and torch.all(knots[:, 1:] >= knots[:, :-1])
    # the knots are the fit looks' quantiles (train_bank keeps its last 10 % out)
    fit = feats[torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[60:]]
    want = torch.quantile(fit.double(), torch.linspace(0, 1, 16, dtype=torch.float64), dim=0).T.float()
    torch.testing.assert_close(knots, want, rtol=0, atol=1e-5)
    seen = model.bank_standardise(fit)
    torch.testing.assert_close(seen.mean(0), torch.zeros(seen.shape[1]), rtol=0, atol=1e-4)
    assert float(seen.abs().max()) < 12  # Cauchy features, yet bounded: ±5.2 before standardising
    z = (quantile_normal(feats[:5], knots) - model.bank_mean) / model.bank_scale
    with torch.no_grad():
        torch.testing.assert_close(model.bank_logits(feats[:5])[0], model.bank_head(z)[:, :3], rtol=0, atol=1e-6)
        torch.testing.assert_close(model.bank_cast(feats[:5])[0], torch.sigmoid(model.bank_cast_head(z)[:, 0]),
                                   rtol=0, atol=1e-6)
        score = model.bank_verify_head(torch.cat([z, torch.zeros_like(z)], 1))[:, 0]
        torch.testing.assert_close(model.verify_score(feats[:5], feats[:5]), score, rtol=0, atol=1e-6)
    url = save_weights(model, model.config, str(tmp_path), {"task": "test"})
    loaded = build_model(url, "cpu").eval()
    assert loaded.config["bank_quantiles"] == 16
    with torch.no_grad():
        torch.testing.assert_close(loaded.bank_logits(feats)[0], model.bank_logits(feats)[0], rtol=0, atol=0)


def test_without_quantiles_the_bank_reads_standardised_features_as_before():
    model, feats = _trained(0)
    assert "bank_quantiles" not in model.config and not hasattr(model, "bank_knots")
    assert not any(k.startswith("bank_knots") for k in model.state_dict())
    with torch.no_grad():
        z = (feats[:5] - model.bank_mean) / model.bank_scale
        torch.testing.assert_close(model.bank_logits(feats[:5])[0], model.bank_head(z)[:, :3], rtol=0, atol=0)


def test_train_command_records_the_quantiles_on_the_card(tmp_path, monkeypatch):
    from test_train_restorer import TINY, _banked_run_from

    torch.manual_seed(6)
    init = Restorer(**{**TINY, "encoder": "stats"}, bank=40, pretrained=False).eval()
    init.set_bank(torch.rand(40, 3, 5, 5, 5))
    parser, args = _banked_run_from(init, tmp_path, monkeypatch, steps=1)
    assert train_command(parser.parse_args(args + ["--bank-quantiles", "8"])) == 0
    card = json.loads(next((tmp_path / "w").glob("restorer-*.json")).read_text())
    assert card["filter_bank"]["classifier"]["quantiles"] == 8
    saved = build_model(str(tmp_path / "w" / card["weights"]))
    assert saved.bank_quantiles == 8 and saved.bank_knots.shape[1] == 8
    assert torch.all(saved.bank_knots[:, 1:] >= saved.bank_knots[:, :-1])
    assert not torch.equal(saved.bank_knots, torch.linspace(0, 1, 8).repeat(saved.bank_knots.shape[0], 1))
