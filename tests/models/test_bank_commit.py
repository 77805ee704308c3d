"""Committing (``Restorer(bank_commit=ε)``): the bank's weights are the action with the best
expected PSNR over the candidates ("no bank entry" + the most probable filters), not the
probability-weighted blend.

- the floor is part of the weights' config; bad floors and models without a bank are refused;
- a huge floor gives the blend back (the expected squared error is what it then minimises);
- a small floor commits to the likely candidate when the candidates' restorations differ,
  and to "no bank entry" when that is the likely one;
- the solution scores at least as well as the best weights on a fine grid of the simplex,
  computed here from the candidates' restorations made with ``heads(known_bank=…)``;
- with a cast head the cast's inverse is one more candidate: a huge floor gives the
  blend's weights back (filters scaled by 1 − the cast's), a small one commits to it;
- training keeps the blend (gradients reach the classifier), eval mode commits.
"""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chromabeam.models.registry import build_model, save_weights
from chromabeam.models.restorer import COMMIT_SIDE, Restorer

from bank_photos import SMALL, as_tensor, photo


def _bank(n: int = 3, **kw) -> Restorer:
    torch.manual_seed(0)
    model = Restorer(**SMALL, bank=n, pretrained=False, **kw).eval()
    # distinct inverses: each one moves colours far from the others'
    ident = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 9)] * 3, indexing="ij"))
    tables = torch.stack([(ident.flip(0) * (0.4 + 0.2 * i) + 0.3 * torch.rand(3, 9, 9, 9)).clamp(0, 1)
                          for i in range(n)])
    model.set_bank(tables)
    return model


def _inputs(model: Restorer):
    x = as_tensor(photo("coffee", 160, 120))
    view = model.view(x)
    f16, pooled = model.encode(view)
    lut, grid = model.heads(view, f16, pooled, known_bank=torch.zeros(1, model.bank_size))
    return view, f16, pooled, lut, grid


def _probs(p: list[float], s: list[float]):
    return [(torch.tensor([p]), torch.tensor([s]))]


def test_the_floor_is_part_of_the_config_and_bad_floors_are_refused(tmp_path):
    model = _bank(bank_commit=1e-3)
    assert model.bank_commit == 1e-3 and model.config["bank_commit"] == 1e-3
    again = build_model(save_weights(model, model.config, str(tmp_path), {"task": "test"}), "cpu")
    assert again.bank_commit == 1e-3
    plain = _bank()
    assert plain.bank_commit == 0.0 and "bank_commit" not in plain.config
    plain.set_bank_commit(2e-3)
    assert plain.config["bank_commit"] == 2e-3
    for bad in (-1e-3, 1.0, 3.0):
        with pytest.raises(ValueError, match="bank_commit"):
            Restorer(**SMALL, bank=3, bank_commit=bad, pretrained=False)
    with pytest.raises(ValueError, match="no filter bank"):
        Restorer(**SMALL, pretrained=False).set_bank_commit(1e-3)


def test_a_huge_floor_gives_the_blend_back():
    model = _bank(bank_commit=0.9)
    view, _, _, lut, grid = _inputs(model)
    probs = _probs([0.3, 0.25, 0.15], [0.9, 0.6, 0.8])  # "no bank entry" 0.3
    got, cast_w = model.commit_weights(view, lut, grid, probs)
    assert cast_w is None  # no cast head
    want = model.bank_weights(torch.zeros(1, 1), probs)  # P · strength
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)


def test_a_small_floor_commits_to_the_likely_candidate():
    model = _bank(bank_commit=1e-4)
    view, _, _, lut, grid = _inputs(model)
    got = model.commit_weights(view, lut, grid, _probs([0.6, 0.15, 0.1], [0.9, 0.6, 0.8]))[0]
    # (nearly all: a sliver of the others lowers the log error their being right would leave,
    # at next to no cost)
    torch.testing.assert_close(got, torch.tensor([[0.9, 0.0, 0.0]]), rtol=0, atol=0.01)
    # the blend would have applied 0.6 · 0.9 of the first inverse and some of the others
    assert float(model.bank_weights(torch.zeros(1, 1), _probs([0.6, 0.15, 0.1], [0.9, 0.6, 0.8]))[0, 1]) > 0.05
    # "no bank entry" the likely one: nothing from the bank
    got = model.commit_weights(view, lut, grid, _probs([0.1, 0.1, 0.05], [0.9, 0.6, 0.8]))[0]
    torch.testing.assert_close(got, torch.zeros(1, 3), rtol=0, atol=0.01)


def test_the_weights_are_at_least_as_good_as_the_best_on_a_grid_of_the_simplex():
    """The objective is recomputed here from the candidates' restorations as ``heads`` makes
    them with one bank entry known, on the view shrunk as ``commit_weights`` shrinks it."""
    eps = 3e-4
    model = _bank(n=2, bank_commit=eps)
    view, f16, pooled, lut, grid = _inputs(model)
    small = F.interpolate(view, size=(COMMIT_SIDE, COMMIT_SIDE), mode="area") if view.shape[-1] > COMMIT_SIDE else view
    p, s = [0.45, 0.3], [0.8, 0.7]  # π = (0.25, 0.45, 0.3): a close call
    restored = []
    for c in (None, 0, 1):
        known = torch.zeros(1, 2)
        if c is not None:
            known[0, c] = s[c]
        y = model.apply(small, *model.heads(view, f16, pooled, known_bank=known)).clamp(0, 1)
        restored.append((torch.round(y * 255) / 255).double().flatten())
    pi = np.array([0.25, 0.45, 0.3])

    def objective(w):
        mix = sum(wj * yj for wj, yj in zip(w, restored))
        return float(sum(pk * np.log(float(((mix - yk) ** 2).mean()) + eps) for pk, yk in zip(pi, restored)))

    with torch.no_grad():
        got = model.commit_weights(view, lut, grid, _probs(p, s))[0][0]
    w = [1 - float(got[0] / s[0] + got[1] / s[1]), float(got[0] / s[0]), float(got[1] / s[1])]
    steps = np.linspace(0, 1, 51)
    grid_best = min(objective((1 - a - b, a, b)) for a, b in itertools.product(steps, steps) if a + b <= 1)
    assert objective(w) <= grid_best + 1e-3
    # and it is not the blend: the blend scores worse here
    assert objective(w) < objective(pi) - 0.05


def test_training_keeps_the_blend_and_eval_commits():
    model = _bank(bank_commit=1e-4)
    with torch.no_grad():  # a classifier sure of filter 0 on any input
        model.bank_head[-1].bias.copy_(torch.tensor([0.0, 3.0, 0.0, 0.0, 2.0, 2.0, 2.0]))
    x = as_tensor(photo("coffee", 160, 120))
    blend = _bank()
    blend.load_state_dict(model.state_dict())
    model.train(), blend.train()
    torch.testing.assert_close(model.predict(x)[0], blend.predict(x)[0])  # dropout off: the bias decides
    model.eval(), blend.eval()
    committed, blended = model.predict(x)[0], blend.predict(x)[0]
    assert (committed - blended).abs().max() > 0.05
    # committed: the first filter's inverse at its strength, as if it were known (to a sliver)
    strength = float(torch.sigmoid(torch.tensor(2.0)))
    known = model.predict(x, known_bank=torch.tensor([[strength, 0.0, 0.0]]))[0]
    torch.testing.assert_close(committed, known, rtol=0, atol=2e-3)
    assert (blended - known).abs().max() > 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_commit_on_cuda_matches_the_cpu():
    model = _bank(bank_commit=1e-3)
    view, _, _, lut, grid = _inputs(model)
    probs = _probs([0.45, 0.3, 0.1], [0.8, 0.7, 0.9])
    want = model.commit_weights(view, lut, grid, probs)[0]
    gpu = model.to("cuda")
    got = gpu.commit_weights(view.cuda(), lut.cuda(), grid.cuda(), [(p.cuda(), s.cuda()) for p, s in probs])[0]
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-3)


def test_the_cast_is_one_more_candidate():
    cast = (torch.tensor([0.7]), torch.tensor([[0.3, 0.0, -0.4]]))  # (weight, log gains): a strong warm cast
    probs = _probs([0.1, 0.05, 0.05], [0.9, 0.6, 0.8])
    model = _bank(bank_commit=0.9)
    view, _, _, lut, grid = _inputs(model)
    bank_w, cast_w = model.commit_weights(view, lut, grid, probs, cast)
    torch.testing.assert_close(bank_w, model.bank_weights(torch.zeros(1, 1), probs) * 0.3, rtol=0, atol=2e-3)
    torch.testing.assert_close(cast_w, torch.tensor([0.7]), rtol=0, atol=2e-3)
    model.set_bank_commit(1e-4)
    bank_w, cast_w = model.commit_weights(view, lut, grid, probs, cast)
    assert float(cast_w) > 0.97 and float(bank_w.abs().max()) < 0.02
