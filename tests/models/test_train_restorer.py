"""chromabeam.models.train_restorer — the loss against independent implementations
(scikit-image SSIM, colour-science Lab), the identity-pair property of a tiny trained
model, checkpoint resume (same result as an uninterrupted run), the CLI's weights + card,
and the CUDA-requested-but-absent error."""
import json

import colour
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from chromabeam.models.pairs import Pair
from chromabeam.models.registry import build_model
from chromabeam.models.restorer import Restorer
from chromabeam.models.train_restorer import (
    PhotoLooks,
    TrainConfig,
    add_train_arguments,
    restorer_loss,
    sample_batch,
    train,
    train_command,
)
from chromabeam.transforms.devices import DeviceError



pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"lut_size": 5, "lut_basis": 4, "grid_size": 4, "grid_bins": 3, "view_size": 64, "width": 16, "hist_bins": 8}


def _photo(name: str, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((w, h), Image.BILINEAR))


def _tint(a: np.ndarray) -> np.ndarray:
    """A strong global look: warm cast and lifted blacks (what a blind model must undo)."""
    f = a.astype(np.float64) / 255
    out = 0.08 + 0.9 * f ** 0.8 * np.array([1.0, 0.85, 0.65])
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255


def test_loss_terms_match_skimage_and_colour_science():
    rng = np.random.default_rng(0)
    y = rng.random((2, 3, 40, 48)).astype(np.float32)
    p = np.clip(y + rng.normal(0, 0.05, y.shape), 0, 1).astype(np.float32)
    total, terms = restorer_loss(torch.from_numpy(p), torch.from_numpy(y), w_lab=0.7, w_ssim=0.3)
    l1 = np.abs(p - y).mean()
    # colour-science Lab (D65, channels last) of both images
    lab = lambda a: colour.XYZ_to_Lab(colour.sRGB_to_XYZ(a.transpose(0, 2, 3, 1).astype(np.float64)))  # noqa: E731
    lab_l1 = np.abs(lab(p) - lab(y)).mean() / 100
    # the mean of skimage's full SSIM image (its scalar SSIM leaves out a 5-px border)
    ssim = np.mean([
        structural_similarity(p[i].transpose(1, 2, 0), y[i].transpose(1, 2, 0), channel_axis=2, data_range=1.0,
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)[1].mean()
        for i in range(2)
    ])
    assert terms["l1"] == pytest.approx(l1, rel=1e-5)
    assert terms["lab"] == pytest.approx(lab_l1, rel=1e-3)
    assert terms["ssim"] == pytest.approx(1 - ssim, rel=1e-3)
    assert float(total) == pytest.approx(l1 + 0.7 * lab_l1 + 0.3 * (1 - ssim), rel=1e-3)
    zero, _ = restorer_loss(torch.from_numpy(y), torch.from_numpy(y))
    assert float(zero) == pytest.approx(0.0, abs=1e-6)


def test_sample_batch_crops_are_aligned():
    a = _photo("astronaut", 90, 120)
    pairs = [Pair("k", 0, a, a.copy(), "{}")]
    x, y = sample_batch(pairs, 4, 32, np.random.default_rng(1))
    assert x.shape == y.shape == (4, 3, 32, 32)
    assert torch.equal(x, y)  # the same crop, resize and flip on both sides
    assert x.std() > 0.05  # real image content, not a constant


def _perturbed_tiny(seed: int = 3) -> Restorer:
    """A tiny restorer whose heads are no longer zero: it changes clean images."""
    torch.manual_seed(seed)
    m = Restorer(pretrained=False, **TINY)
    with torch.no_grad():
        for last in (m.lut_weights, m.grid_head):
            last.weight.normal_(std=0.1)
            last.bias.normal_(std=0.1)
    return m.eval()


def _psnr(clean: np.ndarray, out: torch.Tensor) -> float:
    """scikit-image's PSNR (the independent measure) of a model output vs a uint8 image."""
    return peak_signal_noise_ratio(clean.astype(np.float64) / 255, out[0].permute(1, 2, 0).double().numpy(), data_range=1)


def test_training_on_identity_pairs_brings_clean_images_back_unchanged():
    start = _perturbed_tiny()
    clean = _photo("astronaut", 80, 112)  # not a training photo
    with torch.inference_mode():
        before = _psnr(clean, start(_t(clean)))
    assert before < 30, before  # the starting model really alters clean images
    pairs = [Pair(f"id{i}", 0, a, a, "{}") for i, a in
             enumerate(_photo(n, 72, 96) for n in ("chelsea", "coffee", "rocket"))]
    cfg = TrainConfig(steps=60, batch=4, crop=48, lr=1e-2, freeze="all", device="cpu", pretrained=False,
                      model=TINY, log_every=20, checkpoint_every=1000)
    model, state = train(pairs, cfg, init=start)
    assert state["step"] == 60 and [e["step"] for e in state["history"]] == [20, 40, 60]
    assert state["history"][-1]["loss"] < state["history"][0]["loss"]
    with torch.inference_mode():
        after = _psnr(clean, model(_t(clean)))
    assert after >= 38, (before, after)


def _pairs_small():
    a, b = _photo("chelsea", 64, 80), _photo("coffee", 64, 80)
    return [Pair("a", 0, _tint(a), a, "{}"), Pair("b", 0, b, b, "{}")]


@pytest.mark.parametrize("freeze", ["all", "none"])
def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tmp_path, freeze):
    pairs = _pairs_small()
    cfg = TrainConfig(steps=8, batch=2, crop=48, lr=5e-3, freeze=freeze, device="cpu", pretrained=False,
                      model=TINY, log_every=2, checkpoint_every=3)
    straight, s_state = train(pairs, cfg, str(tmp_path / "a"))

    class Interrupt(Exception):
        pass

    def stop_after_6(entry):
        if entry["step"] >= 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(pairs, cfg, str(tmp_path / "b"), on_log=stop_after_6)
    saved = json.loads((tmp_path / "b" / "state.json").read_text())
    assert saved["step"] == 6  # the checkpoint of step 6 (every 3 steps)
    resumed, r_state = train(pairs, cfg, str(tmp_path / "b"))
    assert r_state["step"] == 8
    assert [e["step"] for e in r_state["history"]] == [2, 4, 6, 8]
    for (n, p), (_, q) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)
    assert r_state["history"][-1]["loss"] == pytest.approx(s_state["history"][-1]["loss"], rel=1e-5)


def test_train_command_saves_weights_with_card(tmp_path, monkeypatch):
    import argparse

    import chromabeam.models.train_restorer as tr

    pairs = _pairs_small()
    monkeypatch.setattr(tr, "load_pairs", lambda url, max_side: pairs)  # the pair reader has its own tests
    parser = argparse.ArgumentParser()
    parser.add_argument("pairs")
    parser.add_argument("weights_out")
    add_train_arguments(parser)
    args = parser.parse_args([
        "pairs-url", str(tmp_path / "w"), "--steps", "3", "--batch", "2", "--crop", "32", "--threads", "1",
        "--model-config", json.dumps({k: v for k, v in TINY.items() if k != "hist_bins"}), "--hist-bins", "8",
    ])
    monkeypatch.setattr(tr.TrainConfig, "pretrained", False)  # no ImageNet weights needed for 3 steps
    assert train_command(args) == 0
    (card_path,) = (tmp_path / "w").glob("restorer-*.json")
    card = json.loads(card_path.read_text())
    assert card["steps"] == 3 and len(card["loss_history"]) == 1
    assert card["training_data"] == ["a (not in the chromabeam photo catalogue)", "b (not in the chromabeam photo catalogue)"]
    model = build_model(str(tmp_path / "w" / card["weights"]), expected_sha256=card["sha256"])
    assert model.config["hist_bins"] == 8 and model.config["view_size"] == 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error raised where CUDA is absent")
def test_cuda_requested_but_absent_is_an_error():
    with pytest.raises(DeviceError, match="cuda"):
        train(_pairs_small(), TrainConfig(steps=1, device="cuda", pretrained=False, model=TINY))


def _looks(**kw) -> PhotoLooks:
    names = ("chelsea", "coffee", "rocket")
    return PhotoLooks([_photo(n, 96, 128) for n in names], [f"skimage/{n}" for n in names], **kw)


def test_photo_looks_make_aligned_fresh_pairs():
    looks = _looks(identity_prob=0.0, mosaic_prob=0.0)
    x, y = looks.sample(6, 48, np.random.default_rng(0))
    assert x.shape == y.shape == (6, 3, 48, 48) and x.dtype == torch.float32
    assert torch.equal(x, x.mul(255).round().div(255))  # inputs are 8-bit, like saved files
    assert (x - y).abs().mean(dim=(1, 2, 3)).min() > 1e-3  # every input has a look applied
    x2, y2 = looks.sample(6, 48, np.random.default_rng(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded
    x3, _ = looks.sample(6, 48, np.random.default_rng(1))
    assert not torch.equal(x, x3)  # a different draw: different crops and looks
    xi, yi = _looks(identity_prob=1.0).sample(4, 40, np.random.default_rng(2))
    assert (xi - yi).abs().max() <= 0.5 / 255 + 1e-6  # identity pairs: clean in, clean out
    assert looks.sources() == ["skimage/chelsea", "skimage/coffee", "skimage/rocket"]


def test_photo_looks_mosaic_tiles_four_crops():
    looks = _looks(identity_prob=1.0, mosaic_prob=1.0)
    clean = looks.clean(np.random.default_rng(3), 50)
    assert clean.shape == (50, 50, 3) and clean.dtype == np.uint8
    with pytest.raises(ValueError, match="one name per image"):
        PhotoLooks([_photo("chelsea", 32, 32)], [])
    with pytest.raises(ValueError, match="perturb_prob"):
        _looks(perturb_prob=1.5)


def test_stats_encoder_trains_on_the_fly_with_a_downscaled_loss():
    looks = _looks(identity_prob=0.0, perturb_prob=0.0)
    x, y = looks.sample(8, 64, np.random.default_rng(123))  # a fixed check batch
    cfg = TrainConfig(steps=40, batch=8, crop=64, loss_size=32, lr=5e-3, freeze="none", device="cpu",
                      model={"encoder": "stats", "view_size": 64, "width": 16, "lut_size": 9, "grid_size": 4},
                      log_every=10, checkpoint_every=1000)
    model, state = train(looks, cfg)
    assert model.config["encoder"] == "stats" and state["step"] == 40
    before = (x - y).abs().mean().item()  # the untrained model is the identity
    with torch.inference_mode():
        after = (model(x) - y).abs().mean().item()
    assert after < 0.9 * before, (before, after)
    with pytest.raises(ValueError, match="loss_size"):
        TrainConfig(loss_size=8)


def test_train_command_holds_photos_out_and_calibrates_the_bank(tmp_path, monkeypatch):
    import argparse

    import chromabeam.models.train_restorer as tr
    from chromabeam.models.registry import save_weights

    torch.manual_seed(5)
    init = Restorer(**{**TINY, "encoder": "stats"}, bank=2, pretrained=False).eval()
    init.set_bank(torch.rand(2, 3, 5, 5, 5))
    with torch.no_grad():
        torch.nn.init.normal_(init.bank_head[-1].weight, std=0.3)
    init_url = save_weights(init, init.config, str(tmp_path / "init"), {"task": "test"})
    seen = {}

    def from_photos(cache, **kw):
        seen.update(kw, cache=cache)
        return _looks(identity_prob=kw["identity_prob"], perturb_prob=kw["perturb_prob"])

    monkeypatch.setattr(tr.PhotoLooks, "from_photos", staticmethod(from_photos))
    parser = argparse.ArgumentParser()
    parser.add_argument("pairs")
    parser.add_argument("weights_out")
    add_train_arguments(parser)
    args = parser.parse_args([
        "photos:/cache", str(tmp_path / "w"), "--init", init_url, "--steps", "2", "--batch", "2", "--crop", "32",
        "--loss-size", "0", "--threads", "1", "--holdout-photos", "0.2", "--bank-temperature", "0.5",
        "--bank-none-shift", "1.0",
    ])
    assert train_command(args) == 0
    assert seen["cache"] == "/cache" and seen["holdout"] == 0.2
    with pytest.raises(ValueError, match="--holdout-photos needs PAIRS = photos:CACHE"):
        train_command(parser.parse_args(["pairs-url", str(tmp_path / "x"), "--holdout-photos", "0.2"]))
    (card_path,) = (tmp_path / "w").glob("restorer-*.json")
    card = json.loads(card_path.read_text())
    assert card["bank_calibration"] == {"temperature": 0.5, "none_shift": 1.0} and card["held_out_photos"] == 0.2
    # the saved classifier is the trained one, calibrated: (logits − 1·e0) / 0.5
    trained = Restorer(**{**TINY, "encoder": "stats"}, bank=2, pretrained=False)
    from safetensors.torch import load_file

    trained.load_state_dict(load_file(str(tmp_path / "w" / "checkpoint" / "model.safetensors")))
    saved = build_model(str(tmp_path / "w" / card["weights"]), expected_sha256=card["sha256"]).eval()
    feats = torch.randn(4, saved.bank_mean.numel())
    with torch.no_grad():
        want = trained.eval().bank_logits(feats)[0]
        want[:, 0] -= 1.0
        torch.testing.assert_close(saved.bank_logits(feats)[0], want / 0.5, rtol=1e-5, atol=1e-5)


def _banked_run_from(init, tmp_path, monkeypatch, *, steps):
    """A ``train restorer --init INIT --filter-bank`` command line on the bundled test
    looks: (parser, argv)."""
    import argparse

    import chromabeam.models.train_restorer as tr
    from chromabeam.models.registry import save_weights

    init_url = save_weights(init, init.config, str(tmp_path / "init"), {"task": "test"})
    monkeypatch.setattr(tr.PhotoLooks, "from_photos", staticmethod(lambda cache, **kw: _looks()))
    parser = argparse.ArgumentParser()
    parser.add_argument("pairs")
    parser.add_argument("weights_out")
    add_train_arguments(parser)
    return parser, ["photos:/cache", str(tmp_path / "w"), "--init", init_url, "--filter-bank", "2",
                    "--bank-samples", "64", "--bank-epochs", "1", "--steps", str(steps), "--batch", "2", "--crop", "32",
                    "--loss-size", "0", "--threads", "1"]


def test_a_resumed_banked_run_keeps_the_banks_account_in_its_card(tmp_path, monkeypatch):
    torch.manual_seed(6)
    init = Restorer(**{**TINY, "encoder": "stats"}, bank=40, pretrained=False).eval()
    init.set_bank(torch.rand(40, 3, 5, 5, 5))  # a bank of the 40 filters: its tables are kept, not refitted
    parser, common = _banked_run_from(init, tmp_path, monkeypatch, steps=2)
    assert train_command(parser.parse_args(common)) == 0
    first = json.loads(next((tmp_path / "w").glob("restorer-*.json")).read_text())
    bank = first["filter_bank"]
    assert bank["classifier"]["samples"] == 64 and 0.0 <= bank["classifier"]["holdout_accuracy"] <= 1.0
    assert "kept from the --init" in bank["tables"] and "fit_photos" not in bank
    assert json.loads((tmp_path / "w" / "checkpoint" / "bank.json").read_text()) == bank
    for f in (tmp_path / "w").glob("restorer-*"):
        f.unlink()
    # rerun at the checkpoint's step: nothing is retrained, the card tells the same story
    assert train_command(parser.parse_args(common + ["--bank-temperature", "0.5"])) == 0
    again = json.loads(next((tmp_path / "w").glob("restorer-*.json")).read_text())
    assert again["filter_bank"] == bank and again["bank_calibration"]["temperature"] == 0.5


def test_a_banked_run_keeps_the_inits_bank_grids_with_its_tables(tmp_path, monkeypatch):
    torch.manual_seed(8)
    init = Restorer(**{**TINY, "encoder": "stats"}, bank=40, bank_grids=True, pretrained=False).eval()
    grids = init._grid_identity + 0.1 * torch.randn(40, *init._grid_identity.shape[1:])
    init.set_bank(torch.rand(40, 3, 5, 5, 5), grids=grids)
    parser, args = _banked_run_from(init, tmp_path, monkeypatch, steps=1)
    assert train_command(parser.parse_args(args)) == 0
    card = json.loads(next((tmp_path / "w").glob("restorer-*.json")).read_text())
    assert "with their bank grids" in card["filter_bank"]["tables"]
    saved = build_model(str(tmp_path / "w" / card["weights"]))
    assert saved.bank_grids
    torch.testing.assert_close(saved.bank_grid_deltas, grids - init._grid_identity, rtol=0, atol=1e-6)
    torch.testing.assert_close(saved.bank_luts, init.bank_luts, rtol=0, atol=0)


def test_a_rebuilt_bank_says_it_dropped_the_inits_cast_head_and_verifier(tmp_path, monkeypatch, caplog):
    torch.manual_seed(9)
    init = Restorer(**{**TINY, "encoder": "stats"}, bank=40, bank_casts=True, bank_verify=2, pretrained=False).eval()
    init.set_bank(torch.rand(40, 3, 5, 5, 5))
    parser, args = _banked_run_from(init, tmp_path, monkeypatch, steps=1)
    with caplog.at_level("WARNING", logger="chromabeam"):
        assert train_command(parser.parse_args(args)) == 0
    assert "cast head and verifier are not carried over" in caplog.text
    card = json.loads(next((tmp_path / "w").glob("restorer-*.json")).read_text())
    assert card["filter_bank"]["dropped_from_init"] == ["cast head", "verifier"]
    saved = build_model(str(tmp_path / "w" / card["weights"]))
    assert not saved.bank_casts and not saved.bank_verify


def test_white_balance_casts_join_the_looks_and_are_not_bank_filters():
    """``cast_prob``: a share of the looks are per-channel gains (the input is the clean
    crop times the gains, 8-bit; the target the clean crop), labelled "not a bank filter"."""
    import skimage.data
    from PIL import Image

    from chromabeam.models.restorer import Restorer
    from chromabeam.models.train_restorer import PhotoLooks, bank_dataset

    img = np.asarray(Image.fromarray(skimage.data.coffee()).resize((96, 72)))
    looks = PhotoLooks([img], ["coffee"], identity_prob=0.0, perturb_prob=0.0, cast_prob=1.0)
    x, y, specs = looks.sample_with_specs(6, 48, np.random.default_rng(3))
    assert all(s["family"] == "cast" for s in specs)
    for i, s in enumerate(specs):
        gains = torch.tensor(s["gains"]).view(3, 1, 1)
        assert all(0.6 < g < 1.5 for g in s["gains"]) and len(set(s["gains"])) > 1
        want = (y[i] * gains).clamp(0, 1).mul(255).round().div(255)
        torch.testing.assert_close(x[i], want, rtol=0, atol=1e-6)
    model = Restorer(encoder="stats", view_size=64, width=8, lut_size=9, grid_size=4, lut_basis=2, bank=40,
                     pretrained=False)
    _, labels, _ = bank_dataset(model, looks, list(looks.config.filters), 8, 48, np.random.default_rng(4))
    assert labels.tolist() == [0] * 8
    with pytest.raises(ValueError, match="cast_prob"):
        PhotoLooks([img], ["coffee"], cast_prob=1.5)


def test_jpeg_round_trips_join_the_inputs_and_leave_the_targets_clean():
    """``jpeg_prob``: that share of the inputs goes through a JPEG (quality 70–95, 4:2:0)
    after the look; the target is the clean crop either way."""
    import io

    from chromabeam.models.train_restorer import jpeg_round_trip

    img = _photo("astronaut", 96, 128)
    plain = PhotoLooks([img], ["astronaut"], identity_prob=1.0, mosaic_prob=0.0)
    jpeg = PhotoLooks([img], ["astronaut"], identity_prob=1.0, mosaic_prob=0.0, jpeg_prob=1.0)
    x0, y0 = plain.sample(3, 64, np.random.default_rng(5))
    x1, y1 = jpeg.sample(3, 64, np.random.default_rng(5))
    torch.testing.assert_close(x0, y0, rtol=0, atol=0)  # identity looks without a JPEG: the input is the target
    for i in range(3):  # with: the input is the clean target's JPEG at one of the qualities
        err = (x1[i] - y1[i]).abs()
        assert 0 < float(err.mean()) < 0.03, float(err.mean())
        assert any(torch.equal(jpeg_round_trip(y1[i:i + 1], q)[0], x1[i]) for q in range(70, 96))
    # the round trip is PIL's JPEG at that quality with 4:2:0 chroma
    buf = io.BytesIO()
    Image.fromarray((y0[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
        buf, "JPEG", quality=80, subsampling=2)
    want = torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(jpeg_round_trip(y0[:1], 80)[0], want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="jpeg_prob"):
        PhotoLooks([img], ["astronaut"], jpeg_prob=-0.1)
