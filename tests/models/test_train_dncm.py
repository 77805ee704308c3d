"""chromabeam.models.train_dncm — the self-supervised loss, the PAIRS contract, resume.

The loss is checked against the formula written out independently (two separate encoder
calls instead of the trainer's batched one); training reads a real ``synth-pairs --mode
preset`` OUTPUT made by the pipeline on two tiny images.
"""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from chromabeam.models.dncm import DNCM
from chromabeam.models.registry import load_weights
from chromabeam.models.train_dncm import (
    TrainConfig, add_train_arguments, dncm_loss, train, train_command,
)
from chromabeam.transforms.devices import DeviceError


def test_loss_matches_the_formula_written_out():
    torch.manual_seed(0)
    m = DNCM(k=6, encoder_size=64, knots=4, hist_bins=4, pretrained=False).eval()  # eval: BatchNorm per sample
    g = torch.Generator().manual_seed(1)
    I_i, I_j = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    loss, parts = dncm_loss(m, I_i, I_j, lambda_con=10.0)
    d_i, r_i = m.encode(I_i)
    d_j, r_j = m.encode(I_j)
    Z_i, Z_j = m.normalize(I_i, d_i), m.normalize(I_j, d_j)
    Y_i, Y_j = m.stylize(Z_j, r_i), m.stylize(Z_i, r_j)
    ref = (Y_i - I_i).abs().mean() + (Y_j - I_j).abs().mean() + 10.0 * (Z_i - Z_j).square().mean()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert parts["loss"] == pytest.approx(ref.item(), rel=1e-5)
    # identical views: the normalised forms agree exactly, so the consistency term is 0
    _, same = dncm_loss(m, I_i, I_i.clone())
    assert same["con"] < 1e-12


def test_cross_content_term_is_the_papers_supervised_objective():
    torch.manual_seed(6)
    m = DNCM(k=6, encoder_size=64, knots=4, hist_bins=4, pretrained=False).eval()
    g = torch.Generator().manual_seed(7)
    I_i, I_j, S = (torch.rand(2, 3, 32, 32, generator=g) for _ in range(3))
    loss, parts = dncm_loss(m, I_i, I_j, S=S)
    base, _ = dncm_loss(m, I_i, I_j)
    d_j, _ = m.encode(I_j)
    _, r_S = m.encode(S)  # S: view i's look on other photos
    cross = (m.stylize(m.normalize(I_j, d_j), r_S) - I_i).abs().mean()
    torch.testing.assert_close(loss, base + cross, rtol=1e-5, atol=1e-6)
    assert parts["cross"] == pytest.approx(cross.item(), rel=1e-5)


def test_loss_stride_uses_every_nth_pixel_for_the_maps():
    torch.manual_seed(2)
    m = DNCM(k=6, encoder_size=64, knots=4, hist_bins=4, pretrained=False).eval()
    g = torch.Generator().manual_seed(3)
    I_i, I_j = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    loss, _ = dncm_loss(m, I_i, I_j, loss_stride=4)
    d, r = m.encode(torch.cat([I_i, I_j]))  # the encoder sees the whole views
    a, b = I_i[..., ::4, ::4], I_j[..., ::4, ::4]
    Z_i, Z_j = m.normalize(a, d[:1]), m.normalize(b, d[1:])
    ref = (m.stylize(Z_j, r[:1]) - a).abs().mean() + (m.stylize(Z_i, r[1:]) - b).abs().mean() \
        + 10 * (Z_i - Z_j).square().mean()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


class FixedViews:
    """One fixed batch of two looks (a gamma curve and a warm channel gain) of random crops:
    the loss must fall when the model trains on it."""

    def __init__(self):
        g = torch.Generator().manual_seed(4)
        base = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear")
        self.a = base ** 1.6
        self.b = (base * torch.tensor([1.1, 0.95, 0.75]).view(1, 3, 1, 1)).clamp(0, 1)

    def sample(self, batch, size, rng):
        return self.a, self.b

    def sources(self):
        return ["synthetic test views"]


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    cfg = TrainConfig(steps=15, batch_size=2, crop=64, lr=5e-3, freeze_blocks=16, k=6, encoder_size=64, knots=4, hist_bins=4,
                      log_every=5, checkpoint_every=100, pretrained=False, loss_stride=2)
    result = train("fixed", None, cfg, device="cpu", checkpoint_dir=str(tmp_path / "ck"), views=FixedViews())
    log = json.loads((tmp_path / "ck" / "state.json").read_text())["log"]
    assert result["step"] == 15 and [e["step"] for e in log] == [5, 10, 15]
    assert log[-1]["rec"] < 0.6 * log[0]["rec"], log


@pytest.fixture(scope="module")
def preset_pairs(tmp_path_factory):
    """A real synth-pairs --mode preset OUTPUT of two 96 px images."""
    from chromabeam.pipelines import synth_pairs
    from chromabeam.pipelines.job import JobConfig
    from chromabeam.transforms.ops import synth

    root = tmp_path_factory.mktemp("pairs")
    src = root / "in"
    src.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((96, 80), Image.BICUBIC).save(src / f"{name}.png")
    config = synth.SynthConfig(filters=("clarendon", "gingham"), mode="preset", perturb="light")
    options = synth_pairs.PairsOptions(synth=config, pairs_per_image=2, seed=1, image_format="png")
    out = str(root / "out")
    summary = synth_pairs.run(str(src), JobConfig(output=out, task=synth_pairs.TASK), options, {}, [])
    assert summary["counts"]["ok"] == 4
    return out


def _args(pairs, weights_out, *extra):
    p = argparse.ArgumentParser()
    p.add_argument("pairs")
    p.add_argument("weights_out")
    add_train_arguments(p)
    return p.parse_args([pairs, weights_out, *extra])


def test_train_from_synth_pairs_resumes_and_saves_weights_with_card(preset_pairs, tmp_path, monkeypatch):
    import chromabeam.models.train_dncm as trainer

    # a small model keeps this test fast; everything else is the CLI path
    monkeypatch.setattr(trainer.TrainConfig, "__init__", _small_config(trainer.TrainConfig.__init__))
    out = str(tmp_path / "w")
    common = ["--crop", "64", "--batch-size", "2", "--device", "cpu", "--checkpoint-every", "1", "--freeze-blocks", "16"]
    assert train_command(_args(preset_pairs, out, "--steps", "2", "--time-limit", "0", *common)) == 0
    state = json.loads(open(os.path.join(out, "checkpoint", "state.json")).read())
    assert state["step"] == 1  # the time limit stopped it after one step, before the weights
    assert not [f for f in os.listdir(out) if f.endswith(".safetensors")]
    from safetensors.torch import load_file

    moments_1 = load_file(os.path.join(out, "checkpoint", "optimizer.safetensors"))
    assert train_command(_args(preset_pairs, out, "--steps", "3", *common)) == 0
    state = json.loads(open(os.path.join(out, "checkpoint", "state.json")).read())
    assert state["step"] == 3 and [e["step"] for e in state["log"]][-1] == 3
    moments_3 = load_file(os.path.join(out, "checkpoint", "optimizer.safetensors"))
    # Adam's step counters continued from the checkpoint (1 → 3), not from zero
    steps = {k: float(v) for k, v in moments_3.items() if k.endswith("::step")}
    assert steps and set(steps.values()) == {3.0}
    assert {float(v) for k, v in moments_1.items() if k.endswith("::step")} == {1.0}
    (weights,) = [f for f in os.listdir(out) if f.endswith(".safetensors")]
    state_dict, config, card = load_weights(os.path.join(out, weights))
    assert config["knots"] == 4 and card["steps"] == 3
    assert card["training_data"] == [f"synth-pairs {preset_pairs}: a", f"synth-pairs {preset_pairs}: b"]


def _small_config(init):
    def small(self, *a, **kw):
        init(self, *a, **kw)
        self.k, self.encoder_size, self.knots, self.hist_bins, self.pretrained = 6, 64, 4, 4, False
    return small


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no CUDA device exists")
def test_cuda_requested_without_cuda_is_an_error(tmp_path):
    with pytest.raises(DeviceError, match="no usable CUDA"):
        train("unused", None, TrainConfig(steps=1), device="cuda", views=FixedViews())


def test_stats_encoder_trains_resumes_and_saves(tmp_path):
    """--encoder stats: the feature standardisation is fitted once on training views,
    saved in the checkpoint, kept on resume, and the weights rebuild the same model."""
    from chromabeam.models.registry import build_model
    from chromabeam.models.train_dncm import load_checkpoint_model
    from chromabeam.transforms.ops.colour_stats import global_colour_features

    cfg = TrainConfig(steps=4, batch_size=2, crop=64, lr=3e-3, k=6, encoder_size=64, knots=4, hist_bins=4,
                      log_every=2, checkpoint_every=2, pretrained=False, loss_stride=2, encoder="stats",
                      stats_hidden=32, stats_layers=2, dropout=0.1, cross_weight=2.0, lr_schedule="cosine")
    views = FixedViews()
    out, ck = str(tmp_path / "w"), str(tmp_path / "ck")
    cfg.time_limit_s = 0  # stop after the first step
    first = train("fixed", out, cfg, device="cpu", checkpoint_dir=ck, views=views)
    assert first["step"] == 1 and first["weights"] is None
    m1 = load_checkpoint_model(ck)
    feats = global_colour_features(torch.cat([views.a, views.b]), 4)
    torch.testing.assert_close(m1.encoder.mean, feats.mean(0))
    # the fit saw these four views 128 times over: the population standard deviation
    torch.testing.assert_close(m1.encoder.scale, feats.std(0, correction=0).clamp_min(0.05), rtol=2e-3, atol=1e-5)
    assert (m1.encoder.scale > 0.05).sum() > 20 and m1.encoder.mean.abs().max() > 1.0
    cfg.time_limit_s = None
    result = train("fixed", out, cfg, device="cpu", checkpoint_dir=ck, views=views)
    assert result["step"] == 4 and result["weights"]
    m4 = load_checkpoint_model(ck)
    # resuming did not refit the standardisation
    torch.testing.assert_close(m4.encoder.mean, m1.encoder.mean, rtol=0, atol=0)
    _, config, card = load_weights(result["weights"])
    assert config == {"model": "dncm", "k": 6, "encoder_size": 64, "knots": 4, "hist_bins": 4, "encoder": "stats",
                      "stats_hidden": 32, "stats_layers": 2, "dropout": 0.1}
    assert card["steps"] == 4 and "stats encoder" in card["recipe"] and "2.0·L1 cross-content" not in card["recipe"]
    rebuilt = build_model(result["weights"], "cpu")
    x = torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x, x.flip(-1)), m4(x, x.flip(-1)), rtol=0, atol=0)


def test_cosine_schedule_warms_up_then_decays_to_one_percent():
    from chromabeam.models.train_dncm import learning_rate

    cfg = TrainConfig(steps=1000, lr=1e-3, lr_schedule="cosine")
    assert learning_rate(cfg, 0) == pytest.approx(1e-3 / 20)  # warm-up: 2% of the steps
    assert learning_rate(cfg, 19) == pytest.approx(1e-3)
    assert learning_rate(cfg, 20) == pytest.approx(1e-3)
    assert learning_rate(cfg, 510) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5), rel=1e-6)
    assert learning_rate(cfg, 1000) == pytest.approx(1e-5)
    assert learning_rate(TrainConfig(lr=2e-4), 500) == 2e-4  # constant (the default)
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(TrainConfig(lr_schedule="step"), 1)


def test_cli_encoder_options_reach_the_config(tmp_path, monkeypatch):
    import chromabeam.models.train_dncm as trainer

    seen = {}

    def fake_train(pairs, weights_out, cfg, **kw):
        seen["cfg"] = cfg
        return {"step": 0, "weights": None}

    monkeypatch.setattr(trainer, "train", fake_train)
    args = _args("photos:/x", str(tmp_path), "--encoder", "stats", "--stats-hidden", "64", "--dropout", "0.2",
                 "--cross-weight", "3", "--lr-schedule", "cosine", "--view-perturb", "none",
                 "--view-identity-prob", "0.25", "--view-vignette-prob", "0")
    assert train_command(args) == 0
    cfg = seen["cfg"]
    assert (cfg.encoder, cfg.encoder_size, cfg.stats_hidden, cfg.dropout, cfg.cross_weight) == ("stats", 128, 64, 0.2, 3.0)
    assert (cfg.lr_schedule, cfg.view_perturb, cfg.view_identity_prob, cfg.view_vignette_prob) == ("cosine", "none", 0.25, 0.0)
    train_command(_args("photos:/x", str(tmp_path)))
    assert seen["cfg"].encoder == "efficientnet" and seen["cfg"].encoder_size == 256
