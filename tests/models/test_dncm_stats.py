"""DNCM with ``encoder="stats"``: the heads see only ``global_colour_features`` (no CNN).

Checks shapes, the identity start, that the encoder's input is exactly the features of
the ``encoder_size`` view, gradients, dropout only in training, and the config's round
trip through the weight registry (old configs without ``encoder`` still mean the CNN).
"""
import json
import os

import pytest
import torch

from chromabeam.models.dncm import DNCM, StatsEncoder
from chromabeam.models.registry import build_model, load_weights, save_weights
from chromabeam.transforms.ops.colour_stats import global_colour_features, global_feature_count


def _stats(**kw):
    torch.manual_seed(0)
    return DNCM(**{"k": 8, "encoder": "stats", "encoder_size": 64, **kw})


def test_shapes_and_head_layout():
    m = _stats(stats_hidden=32, stats_layers=3, dropout=0.2).eval()
    assert isinstance(m.encoder, StatsEncoder) and m.encoder.out_features == global_feature_count(16) == 180
    linears = [mod for mod in m.head if isinstance(mod, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(180, 32), (32, 32), (32, 32), (32, 128)]
    assert sum(isinstance(mod, torch.nn.Dropout) for mod in m.head) == 2  # between hidden layers only
    g = torch.Generator().manual_seed(1)
    content, style = torch.rand(2, 3, 131, 97, generator=g), torch.rand(1, 3, 50, 300, generator=g)
    with torch.inference_mode():
        d, r = m.encode(content)
        y = m(content, style)
    assert d.shape == r.shape == (2, 8, 8) and y.shape == (2, 3, 131, 97)
    assert y.min() >= 0 and y.max() <= 1
    # no CNN at all: only the MLP and the four P/Q matrices carry parameters
    assert {n.split(".")[0] for n, _ in m.named_parameters()} == {"head", "P_n", "Q_n", "P_s", "Q_s"}


def test_identity_start():
    m = _stats().eval()
    eye = torch.eye(8)
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(2))
    d, r = m.encode(x)
    assert (d - eye).abs().max() < 0.2 and (r - eye).abs().max() < 0.2
    # with T = I the curve-basis maps are the identity up to P's small symmetry-breaking noise
    torch.testing.assert_close(m.normalize(x, eye), x, rtol=0, atol=0.05)
    out = m.stylize(m.normalize(x, d), r)
    assert (out - x).abs().mean() < 0.05


def test_encoder_input_is_the_features_of_the_view():
    m = _stats().eval()
    seen = []
    hook = m.encoder_entry.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    x = torch.rand(2, 3, 200, 150, generator=torch.Generator().manual_seed(3))
    try:
        feats_seen = m.encoder(m.encoder_view(x))
        seen.clear()
        m.encode(x)
    finally:
        hook.remove()
    assert len(seen) == 1 and seen[0].shape == (2, 3, 64, 64)
    torch.testing.assert_close(feats_seen, global_colour_features(m.encoder_view(x), 16))
    # the head's first layer sees exactly these features
    first = m.head[0]
    captured = []
    h = first.register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
    try:
        m.encode(x)
    finally:
        h.remove()
    torch.testing.assert_close(captured[0], feats_seen)


def test_gradients_reach_the_mlp_and_maps_but_not_through_features():
    m = _stats(dropout=0.1).train()
    g = torch.Generator().manual_seed(4)
    base = torch.rand(2, 3, 32, 40, generator=g)
    I_i, I_j = base ** 1.3, (base * torch.tensor([1.0, 0.9, 0.8]).view(1, 3, 1, 1))
    d, r = m.encode(torch.cat([I_i, I_j]))
    Z_i, Z_j = m.normalize(I_i, d[:2]), m.normalize(I_j, d[2:])
    loss = (m.stylize(Z_j, r[:2]) - I_i).abs().mean() + 10 * (Z_i - Z_j).square().mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # the features of an input that needs a gradient are differentiable (the op is)
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    m.encode(x)[1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dropout_only_in_training():
    m = _stats(dropout=0.5)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        m.head[-1].weight.normal_(std=0.1)
        m.eval()
        torch.testing.assert_close(m.encode(x)[1], m.encode(x)[1], rtol=0, atol=0)
        m.train()
        torch.manual_seed(6)
        a = m.encode(x)[1]
        torch.manual_seed(7)
        b = m.encode(x)[1]
    assert (a - b).abs().max() > 1e-3


def test_freeze_encoder_is_a_no_op():
    m = _stats()
    before = [n for n, p in m.named_parameters() if p.requires_grad]
    assert m.freeze_encoder(13) is m
    assert [n for n, p in m.named_parameters() if p.requires_grad] == before and m.frozen_blocks == -1


def test_config_checks():
    with pytest.raises(ValueError, match="encoder must be one of"):
        DNCM(encoder="resnet", pretrained=False)
    with pytest.raises(ValueError, match="needs hist_bins >= 2"):
        DNCM(encoder="stats", hist_bins=0)
    with pytest.raises(ValueError, match="dropout"):
        DNCM(encoder="stats", dropout=1.0)
    with pytest.raises(ValueError, match="stats_hidden"):
        DNCM(encoder="stats", stats_layers=0)


def test_config_round_trip_through_the_registry(tmp_path):
    m = _stats(stats_hidden=48, stats_layers=2, dropout=0.1, knots=4, hist_bins=8)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.eval()
    assert m.config == {"model": "dncm", "k": 8, "encoder_size": 64, "knots": 4, "hist_bins": 8,
                        "encoder": "stats", "stats_hidden": 48, "stats_layers": 2, "dropout": 0.1}
    url = save_weights(m, m.config, str(tmp_path), {"steps": 1, "training_data": ["x"]})
    _, config, _ = load_weights(url)
    assert config == m.config
    card = json.loads(open(url[: -len(".safetensors")] + ".json").read())
    assert card["config"]["encoder"] == "stats"
    rebuilt = build_model(url, "cpu")
    assert rebuilt.encoder_kind == "stats" and rebuilt.config == m.config
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x, x.flip(-1)), m(x, x.flip(-1)), rtol=0, atol=0)


def test_old_configs_without_encoder_mean_efficientnet(tmp_path):
    torch.manual_seed(9)
    m = DNCM(k=6, encoder_size=64, knots=4, hist_bins=4, pretrained=False).eval()
    assert "encoder" not in m.config  # old weight files stay byte-compatible
    url = save_weights(m, m.config, str(tmp_path), {"steps": 0})
    rebuilt = build_model(url, "cpu")
    assert rebuilt.encoder_kind == "efficientnet" and hasattr(rebuilt.encoder, "_conv_stem")
    assert rebuilt.encoder_entry is rebuilt.encoder._conv_stem


def test_shipped_weights_transfer_a_look_between_two_eval_photos():
    """The shipped default carries the stats encoder; with a look taken from one held-out
    photo (scikit-image's coffee, never trained on) applied to another (astronaut), it
    reproduces the look better than leaving the content alone, on average over the
    seven IFFI filters of the quality check."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from chromabeam.transforms.ops.filters import apply_filter
    from chromabeam.transforms.ops.metrics import psnr
    from chromabeam.transforms.stylize_handler import default_weights

    url = default_weights()
    model = build_model(url, "cpu")
    assert model.encoder_kind == "stats" and os.path.basename(url).startswith("dncm-")

    def small(a):
        im = Image.fromarray(a)
        im.thumbnail((192, 192), Image.LANCZOS)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255)[None]

    X, Y = small(skimage.data.astronaut()), small(skimage.data.coffee())
    gains = []
    with torch.inference_mode():
        Z = model.normalize(X, model.encode(X)[0])
        for name in ("1977", "amaro", "brannan", "clarendon", "gingham", "nashville", "valencia"):
            S, target = apply_filter(Y, name).clamp(0, 1), apply_filter(X, name).clamp(0, 1)
            out = model.stylize(Z, model.encode(S)[1]).clamp(0, 1)
            gains.append(float(psnr(out, target)) - float(psnr(X, target)))
    assert np.mean(gains) > 1.0, gains
