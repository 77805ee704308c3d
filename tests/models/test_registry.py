"""chromabeam.models.registry — safetensors weights named by sha256, model cards, refusals.

Hashes are recomputed here with hashlib from the bytes on disk; the safetensors files are
also read back with the safetensors library's own ``load_file`` as an independent reader.
"""
import hashlib
import json
import os
import pickle

import fsspec
import pytest
import torch
from safetensors.torch import load_file

from chromabeam.models.dncm import DNCM
from chromabeam.models.registry import WeightsError, build_model, load_weights, save_weights
from chromabeam.models.restorer import Restorer

CARD = {
    "training_data": ["gs://bucket/coco-train2017/*.tar", "LUT bank v1 (5000 .cube)"],
    "steps": 1200,
    "metrics": {"psnr": 31.2, "delta_e2000": 3.4},
}


def sha256_of(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture(scope="module")
def dncm():
    torch.manual_seed(0)
    m = DNCM(k=8, encoder_size=64, pretrained=False)
    with torch.no_grad():  # not the init values, so a round trip that drops weights shows
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def saved(dncm, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    return save_weights(dncm, dncm.config, str(out), CARD)


def test_name_is_model_and_sha256_prefix(saved):
    sha = sha256_of(saved)
    assert os.path.basename(saved) == f"dncm-{sha[:12]}.safetensors"


def test_card_sidecars(saved):
    sha = sha256_of(saved)
    stem = saved[: -len(".safetensors")]
    card = json.loads(open(stem + ".json").read())
    assert card["sha256"] == sha
    assert card["config"] == {"model": "dncm", "k": 8, "encoder_size": 64, "knots": 8, "hist_bins": 16}
    assert card["training_data"] == CARD["training_data"] and card["steps"] == 1200
    assert card["metrics"] == CARD["metrics"]
    assert card["architecture"] == "chromabeam.models.dncm.DNCM" and card["parameters"] > 3_000_000
    md = open(stem + ".md").read()
    assert sha in md and "gs://bucket/coco-train2017/*.tar" in md and "| psnr | 31.2 |" in md


def test_round_trip_gives_identical_outputs(dncm, saved):
    state, config, card = load_weights(saved, expected_sha256=sha256_of(saved))
    reference = load_file(saved)  # the safetensors library's own reader
    assert state.keys() == reference.keys() == dncm.state_dict().keys()
    for k, v in dncm.state_dict().items():
        assert torch.equal(state[k], v) and torch.equal(reference[k], v), k
    assert config == dncm.config and card["steps"] == 1200

    rebuilt = build_model(saved, "cpu")
    assert isinstance(rebuilt, DNCM) and not rebuilt.training
    assert rebuilt.weights_sha256 == sha256_of(saved)
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(rebuilt(x, x[:1]), dncm(x, x[:1]))


def test_restorer_round_trip_through_memory_url():
    torch.manual_seed(2)
    m = Restorer(lut_size=5, lut_basis=2, grid_size=4, grid_bins=3, view_size=64, width=8, pretrained=False).eval()
    with torch.no_grad():
        m.grid_head.weight.normal_(std=0.05)
        m.lut_weights.weight.normal_(std=0.5)
    url = save_weights(m, {**m.config, "lr": 1e-3}, "memory://registry-test/run1", {"steps": 3})
    assert url.startswith("memory://registry-test/run1/restorer-") and url.endswith(".safetensors")
    fs = fsspec.filesystem("memory")
    names = sorted(os.path.basename(p) for p in fs.ls("/registry-test/run1", detail=False))
    stem = os.path.basename(url)[: -len(".safetensors")]
    assert names == [stem + ".json", stem + ".md", stem + ".safetensors"]
    rebuilt = build_model(url)
    assert rebuilt.weights_config["lr"] == 1e-3  # extra keys are kept, not passed to the constructor
    x = torch.rand(1, 3, 41, 29, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        y = m(x)
        assert torch.equal(rebuilt(x), y)
        assert (y - x).abs().max() > 1e-3  # a non-trivial model went through the round trip


def test_refuses_unexpected_sha256(saved):
    actual = sha256_of(saved)
    wrong = "0" * 64
    with pytest.raises(WeightsError) as err:
        load_weights(saved, expected_sha256=wrong)
    assert actual in str(err.value) and wrong in str(err.value)
    with pytest.raises(WeightsError, match=actual):
        build_model(saved, expected_sha256=wrong)


def test_refuses_content_that_does_not_match_its_name(saved, tmp_path):
    data = bytearray(open(saved, "rb").read())
    data[-1] ^= 0xFF  # flip bits in the last tensor's data
    tampered = tmp_path / os.path.basename(saved)
    tampered.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="its name says sha256"):
        load_weights(str(tampered))


def test_refuses_torch_pickles(dncm, tmp_path):
    path = tmp_path / "dncm.pt"
    torch.save(dncm.state_dict(), path)
    with pytest.raises(WeightsError, match="not a safetensors file.*zip archive"):
        load_weights(str(path))
    # even with the right hash: the format is refused, not just unknown content
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_weights(str(path), expected_sha256=sha256_of(path))


def test_loads_weights_whose_header_length_starts_with_a_pickle_byte(dncm, tmp_path):
    """A safetensors file begins with its header length (u64, little-endian): when its low
    byte is 0x80 — a pickle's first byte — the file is still safetensors and loads."""
    for pad in range(0, 2048, 8):  # the card's length moves the header length in steps of 8
        out = tmp_path / f"try{pad}"
        url = save_weights(dncm, {"k": 8, "encoder_size": 64}, str(out), {**CARD, "note": "x" * pad})
        with open(url, "rb") as fh:
            if fh.read(1) == b"\x80":
                break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    state, _, _ = load_weights(url)
    reference = load_file(url)  # the safetensors library's own reader agrees
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_refuses_plain_pickles_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"w": _Payload(str(marker))}))
    with pytest.raises(WeightsError, match="not a safetensors file.*pickle"):
        load_weights(str(path))
    assert not marker.exists()


def test_refuses_garbage(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_weights(str(path))
    path.write_bytes(b"abc")
    with pytest.raises(WeightsError, match="only 3 bytes"):
        load_weights(str(path))


def test_save_refuses_configs_that_do_not_rebuild_the_module(dncm, tmp_path):
    with pytest.raises(WeightsError, match="does not rebuild"):
        save_weights(dncm, {"model": "dncm", "k": 4}, str(tmp_path), {})
    with pytest.raises(WeightsError, match="module is a DNCM"):
        save_weights(dncm, {"model": "restorer"}, str(tmp_path), {})
    with pytest.raises(WeightsError, match="JSON"):
        save_weights(dncm, dncm.config, str(tmp_path), {"when": object()})
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_where_there_is_none_is_an_error(saved):
    with pytest.raises(WeightsError, match="CUDA is not available"):
        build_model(saved, "cuda")


def test_a_derived_card_carries_the_sidecar_notes_and_demotes_its_benchmark(tmp_path):
    """Weights made from other weights without retraining (calibration, added heads) keep
    what was written into the source's ``.json`` sidecar after it was saved, but the
    source's benchmark measured the source: it becomes ``previous_benchmark``."""
    from chromabeam.models.registry import derived_card

    torch.manual_seed(0)
    model = Restorer(encoder="stats", view_size=64, width=8, lut_basis=2, pretrained=False)
    url = save_weights(model, model.config, str(tmp_path), {"task": "restore", "steps": 5, "training_command": ["a"]})
    sidecar = url[: -len(".safetensors")] + ".json"
    card = json.loads(open(sidecar).read())
    # the file's own note extended in the sidecar: the extended one is carried
    card.update({"benchmark": {"iffi": 28.2}, "previous_benchmark": {"iffi": 27.0}, "training_command": ["a", "b"]})
    open(sidecar, "w").write(json.dumps(card))
    loaded = build_model(url)
    assert loaded.weights_card["training_command"] == ["a"]
    derived, applied_to = derived_card(loaded, url)
    assert derived["training_command"] == ["a", "b"] and derived["steps"] == 5
    assert derived["previous_benchmark"] == {"weights": os.path.basename(url), "iffi": 28.2}
    assert "benchmark" not in derived and "sha256" not in derived and loaded.weights_sha256 in applied_to
    # a sidecar that describes other weights (its sha256 differs) is not read
    card["sha256"] = "0" * 64
    open(sidecar, "w").write(json.dumps(card))
    derived, _ = derived_card(loaded, url)
    assert derived["training_command"] == ["a"] and "previous_benchmark" not in derived
