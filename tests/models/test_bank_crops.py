"""The bank's crop consensus (``Restorer(bank_crops=f)``): the classifiers also read four
corner crops of the image, and the class probabilities are the normalised geometric mean
over the whole view and the crops.

- the crops are the four corners, ``f`` of each side, resized like the view; the setting
  survives the weight registry, and a bad fraction is refused;
- the consensus arithmetic is exact: mean log-probability softmaxed again, strengths
  averaged; identical views change nothing; a class that one view alone is sure of and
  the others reject gives way;
- ``predict``, the model's forward pass and ``restore_pixels`` (exact and fast paths)
  all read the crops, and the fast path recognises what the exact path does.
"""
import numpy as np
import pytest
import torch

from chromabeam.models.registry import build_model, save_weights
from chromabeam.models.restorer import Restorer
from chromabeam.transforms.restore_handler import recognition, restore_pixels

from bank_photos import SMALL, as_tensor, photo


def _random_bank(seed: int, **kw) -> Restorer:
    """A model whose classifier says something different for different colours."""
    torch.manual_seed(seed)
    model = Restorer(**SMALL, bank=3, pretrained=False, **kw).eval()
    model.set_bank(torch.rand(3, 3, 9, 9, 9))
    with torch.no_grad():
        last = model.bank_head[-1]
        last.weight.normal_(std=0.5)
        last.bias.normal_(std=0.5)
    return model


def test_crop_views_are_the_four_corners_resized_like_the_view(tmp_path):
    model = _random_bank(0, bank_crops=0.7)
    x = as_tensor(photo("astronaut", 999, 613))
    crops = model.bank_crop_views(x)
    assert crops.shape == (1, 4, 3, 64, 64)
    h, w = int(613 * 0.7), int(999 * 0.7)
    corners = [x[..., :h, :w], x[..., :h, -w:], x[..., -h:, :w], x[..., -h:, -w:]]
    for i, c in enumerate(corners):
        torch.testing.assert_close(crops[:, i], model.view(c), rtol=0, atol=0)
    assert not torch.allclose(crops[:, 0], crops[:, 3], atol=0.05)  # different parts of the photo
    # off: no crops, and the config says nothing about them
    plain = _random_bank(0)
    assert plain.bank_crop_views(x) is None and "bank_crops" not in plain.config
    # the setting is part of the weights' config
    path = save_weights(model, model.config, str(tmp_path), {"task": "test"})
    again = build_model(path, "cpu")
    assert again.config["bank_crops"] == 0.7 and again.bank_crops == 0.7
    for bad in (1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="bank_crops"):
            Restorer(**SMALL, bank=3, bank_crops=bad, pretrained=False)


def test_the_consensus_is_the_normalised_geometric_mean_of_the_views():
    model = _random_bank(1)
    n_feat = model.bank_mean.shape[0]
    torch.manual_seed(5)
    feats, crop_feats = torch.randn(2, n_feat), torch.randn(2 * 4, n_feat)
    with torch.no_grad():
        (p, s), = model._bank_probs(feats, crop_feats)
        logits, strength = model.bank_logits(feats)
        c_logits, c_strength = model.bank_logits(crop_feats)
    for b in range(2):
        views = torch.cat([logits[b:b + 1], c_logits[4 * b:4 * b + 4]])
        want = views.log_softmax(1).mean(0).exp()
        want = want / want.sum()
        torch.testing.assert_close(p[b], want[1:], rtol=0, atol=1e-6)
        s_want = torch.cat([strength[b:b + 1], c_strength[4 * b:4 * b + 4]]).sigmoid().mean(0)
        torch.testing.assert_close(s[b], s_want, rtol=0, atol=1e-6)
    # identical views: the whole view's answer, unchanged
    with torch.no_grad():
        (p1, s1), = model._bank_probs(feats)
        (p5, s5), = model._bank_probs(feats, feats.repeat_interleave(4, dim=0))
    torch.testing.assert_close(p5, p1, rtol=0, atol=1e-6)
    torch.testing.assert_close(s5, s1, rtol=0, atol=1e-6)


def test_a_filter_one_view_alone_is_sure_of_gives_way():
    """The whole view is sure of filter 1 (P 0.98); the four crops are as sure it is a
    clean photo: the consensus says clean (P 0.92 — mean logits 4 against 1)."""
    model = _random_bank(2)
    classes = model.bank_classes

    def bank_logits(feats, head=0):  # feature 0 decides: 1 → sure of filter 1, 0 → sure of none
        logits = torch.zeros(len(feats), classes)
        logits[:, 0] = 5.0 * (1 - feats[:, 0])
        logits[:, 2] = 5.0 * feats[:, 0]
        return logits, torch.zeros(len(feats), model.bank_size)

    model.bank_logits = bank_logits
    whole, crops = torch.zeros(1, 8), torch.zeros(4, 8)
    whole[0, 0] = 1.0
    (alone, _), = model._bank_probs(whole)
    (together, _), = model._bank_probs(whole, crops)
    assert float(alone[0, 1]) > 0.98
    assert float(together[0, 1]) < 0.05 and 1 - float(together.sum()) > 0.9


def test_predict_forward_and_both_restore_paths_read_the_crops():
    from chromabeam.pipelines.restore import default_weights
    from chromabeam.transforms.ops.filters import apply_filter

    model = build_model(default_weights()[0], "cpu").eval()
    model.set_bank_crops(0.7)
    x = apply_filter(as_tensor(photo("chelsea", 300, 451)), "clarendon").mul(255).round().div(255)
    im = x[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    with torch.inference_mode():
        view = model.view(x)
        with_crops = model.heads(view, *model.encode(view), crop_views=model.bank_crop_views(x))
        without = model.heads(view, *model.encode(view))
        lut, grid = model.predict(x)
    torch.testing.assert_close(lut, with_crops[0], rtol=0, atol=0)
    torch.testing.assert_close(grid, with_crops[1], rtol=0, atol=0)
    assert (lut - without[0]).abs().max() > 1e-3  # the crops changed what the bank added
    exact_seen, fast_seen = [], []
    exact = restore_pixels(model, [im], torch.device("cpu"), exact=True, recognised=exact_seen)[0]
    with torch.inference_mode():
        want = model(x)[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    assert np.abs(exact.astype(int) - want.astype(int)).max() <= 1
    restore_pixels(model, [im], torch.device("cpu"), recognised=fast_seen)
    record = {}
    with torch.inference_mode():
        model.heads(view, *model.encode(view), record=record, crop_views=model.bank_crop_views(x))
    assert exact_seen == recognition(model, record, 1)
    # the fast path's views come from Pillow's resize: the same reading, to a few hundredths
    assert fast_seen[0]["top_filter"] == exact_seen[0]["top_filter"]
    assert abs(fast_seen[0]["p_filter"] - exact_seen[0]["p_filter"]) < 0.05


def test_the_fast_path_reads_a_large_image_from_one_reduced_copy_and_recognises_the_same():
    # 720 px short side: the views and crops come from a 2× block-averaged copy
    from chromabeam.pipelines.restore import default_weights
    from chromabeam.transforms.ops.filters import apply_filter
    from chromabeam.transforms.restore_handler import REDUCE_GAP, fast_views

    model = build_model(default_weights()[0], "cpu").eval()
    assert model.bank_crops and 720 // (REDUCE_GAP * model.view_size) == 2
    x = apply_filter(as_tensor(photo("chelsea", 1080, 720)), "nashville").mul(255).round().div(255)
    im = x[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    views = fast_views(model, im)
    assert len(views) == 5 and all(v.shape == (model.view_size, model.view_size, 3) for v in views)
    with torch.inference_mode():  # the fast path's whole view is the exact path's, to a few levels
        exact_view = model.view(x)[0].permute(1, 2, 0).mul(255).numpy()
    assert np.abs(views[0].astype(float) - exact_view).mean() < 1.0
    exact_seen, fast_seen = [], []
    restore_pixels(model, [im], torch.device("cpu"), exact=True, recognised=exact_seen)
    restore_pixels(model, [im], torch.device("cpu"), recognised=fast_seen)
    assert fast_seen[0]["top_filter"] == exact_seen[0]["top_filter"] == "nashville"
    assert abs(fast_seen[0]["p_filter"] - exact_seen[0]["p_filter"]) < 0.05
