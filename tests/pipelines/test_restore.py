"""``chromabeam restore`` end to end on a small WebDataset shard: one row per input, the
restored pixels are the model's (applied directly), metrics with --reference equal
``metrics.compute_metrics`` and scikit-image on the same images, error rows for keys
without a reference / broken images, the shipped default weights are found and
sha256-checked, and CUDA asked for where there is none is an error."""
import argparse
import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from chromabeam.models.registry import save_weights
from chromabeam.models.restorer import Restorer
from chromabeam.pipelines import restore
from chromabeam.transforms.devices import DeviceError
from chromabeam.transforms.ops import metrics
from chromabeam.transforms.ops.imageio import to_float
from chromabeam.transforms.restore_handler import restore_pixels



pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"lut_size": 5, "lut_basis": 2, "grid_size": 4, "grid_bins": 3, "view_size": 64, "width": 8, "hist_bins": 4}


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _photo(name: str, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((w, h), Image.BILINEAR))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny restorer whose heads are not zero (so restoring changes pixels), saved
    through the registry."""
    torch.manual_seed(0)
    m = Restorer(pretrained=False, **TINY)
    with torch.no_grad():
        for last in (m.lut_weights, m.grid_head):
            last.weight.normal_(std=0.05)
            last.bias.normal_(std=0.05)
    url = save_weights(m.eval(), m.config, str(tmp_path_factory.mktemp("w")), {"steps": 0})
    return url


@pytest.fixture()
def shard(tmp_path):
    """Inputs in one .tar shard (odd sizes, one broken, one without a reference);
    references as PNG files."""
    inputs, refs = {}, tmp_path / "ref"
    refs.mkdir()
    clean = {"cat": _photo("chelsea", 61, 97), "cup": _photo("coffee", 80, 53), "rocket": _photo("rocket", 70, 70)}
    for key, a in clean.items():
        filtered = np.clip(a.astype(int) * [1.0, 0.9, 0.7] + 12, 0, 255).astype(np.uint8)
        inputs[f"{key}.png"] = _png(filtered)
        (refs / f"{key}.png").write_bytes(_png(a))
    inputs["orphan.png"] = _png(clean["cat"][:40, :40])  # no reference with this key
    inputs["broken.png"] = b"\x89PNG\r\n\x1a\n not really"
    (refs / "broken.png").write_bytes(_png(clean["cat"]))
    _tar(tmp_path / "in-000.tar", inputs)
    return tmp_path / "in-000.tar", refs, clean, inputs


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--format", dest="layout", default="webdataset")
    p.add_argument("--image-format", default="jpg")
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--max-error-rate", type=float, default=0.5)
    p.add_argument("--max-pixels", type=int, default=100_000_000)
    p.add_argument("--overwrite", action="store_true")
    restore.add_arguments(p)
    return p.parse_args(list(argv))


def _rows(out) -> dict:
    return {r["key"]: r for r in pq.read_table(str(out / "manifest")).to_pylist()}


def _read_outputs(out) -> dict[str, np.ndarray]:
    images = {}
    for tar_path in sorted((out / "images").rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if not m.name.endswith(".png"):
                    continue  # e.g. the sample's JSON metadata
                key = m.name.rsplit(".", 1)[0]
                images[key] = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
    return images


def test_restore_shard_with_reference(tmp_path, shard, tiny_weights):
    tar, refs, clean, inputs = shard
    out = tmp_path / "out"
    args = _args(str(tar), str(out), "--weights", tiny_weights, "--reference", str(refs), "--device", "cpu",
                 "--image-format", "png", "--batch-size", "2")
    assert restore.command(args, []) == 0
    rows = _rows(out)
    assert set(rows) == {"cat", "cup", "rocket", "orphan", "broken"}  # one row per key, nothing dropped
    assert rows["orphan"]["status"] == "error" and "no reference image" in rows["orphan"]["error"]
    assert rows["broken"]["status"] == "error"
    sha = hashlib.sha256(open(tiny_weights, "rb").read()).hexdigest()
    model = restore._weights_identity(tiny_weights)
    assert model[1] == sha
    from chromabeam.models.registry import build_model

    m = build_model(tiny_weights, "cpu")
    outputs = _read_outputs(out)
    for key, ref in clean.items():
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["model_sha256"] == sha and row["model_name"] == tiny_weights.rsplit("/", 1)[1]
        assert (row["width"], row["height"]) == (ref.shape[1], ref.shape[0])
        got = outputs[key]
        assert got.shape == ref.shape  # restored at the image's own resolution
        inp = np.asarray(Image.open(io.BytesIO(inputs[f"{key}.png"])).convert("RGB"))
        direct = restore_pixels(m, [inp], torch.device("cpu"))[0]
        np.testing.assert_array_equal(got, direct)
        assert not np.array_equal(got, inp)  # the model did change the image
        want = metrics.compute_metrics(to_float(got).unsqueeze(0), to_float(ref).unsqueeze(0))
        for name in ("psnr", "ssim", "delta_e2000"):
            assert row[name] == pytest.approx(float(want[name][0]), rel=1e-6, abs=1e-9), name
        # and PSNR against scikit-image, independently
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(ref, got, data_range=255), abs=1e-4)
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["counts"] == {"records": 5, "rows": 5, "ok": 3, "error": 2}
    assert summary["model"]["sha256"] == sha


def test_batching_views_gives_the_same_pixels_as_one_image_per_call(tiny_weights):
    from chromabeam.models.registry import build_model

    m = build_model(tiny_weights, "cpu")
    images = [_photo("chelsea", 61, 97), _photo("coffee", 80, 53), _photo("astronaut", 33, 129)]
    batched = restore_pixels(m, images, torch.device("cpu"))
    for im, b in zip(images, batched):
        single = restore_pixels(m, [im], torch.device("cpu"))[0]
        assert b.shape == im.shape
        assert np.abs(b.astype(int) - single.astype(int)).max() <= 1  # float summation order only


def test_default_weights_are_shipped_and_sha_checked():
    path, sha = restore.default_weights()
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == sha
    url, sha2, name = restore._weights_identity(None)
    assert (url, sha2) == (path, sha) and name.startswith("restorer-")


def test_restore_with_shipped_weights_on_odd_size(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    a = _photo("astronaut", 57, 83)
    (src / "odd.png").write_bytes(_png(a))
    out = tmp_path / "out"
    assert restore.command(_args(str(src), str(out), "--device", "cpu", "--format", "files"), []) == 0
    (row,) = _rows(out).values()
    path, sha = restore.default_weights()
    assert row["status"] == "ok" and row["model_sha256"] == sha
    assert (row["width"], row["height"]) == (83, 57) and row["psnr"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error raised where CUDA is absent")
def test_cuda_requested_but_absent_is_an_error(tmp_path, shard, tiny_weights):
    tar, _, _, _ = shard
    with pytest.raises(DeviceError, match="cuda"):
        restore.command(_args(str(tar), str(tmp_path / "out"), "--weights", tiny_weights, "--device", "cuda"), [])
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_fast_cpu_path_agrees_with_the_exact_path():
    """The default CPU path (compiled LUT + smooth low-resolution residual) against the exact
    float path, on a model whose LUT and grid both do something."""
    torch.manual_seed(14)
    m = Restorer(pretrained=False, encoder="stats", view_size=64, width=16).eval()
    with torch.no_grad():  # a strong global LUT, a gentle local grid (what trained models predict)
        for last, std in ((m.lut_weights, 0.3), (m.grid_head, 0.005)):
            last.weight.normal_(std=std)
            last.bias.normal_(std=std)
        m.lut_basis.normal_(std=0.05)
    big, small = _photo("astronaut", 300, 420), _photo("chelsea", 90, 120)
    exact = restore_pixels(m, [big, small], torch.device("cpu"), exact=True)
    fast = restore_pixels(m, [big, small], torch.device("cpu"))
    assert peak_signal_noise_ratio(exact[0], big, data_range=255) < 33  # the model really changes it
    assert peak_signal_noise_ratio(exact[0], fast[0], data_range=255) > 38
    # no larger than the low side: mapped exactly (only the view's resampling differs)
    assert np.abs(fast[1].astype(int) - exact[1].astype(int)).max() <= 2


def test_the_manifest_says_what_the_shipped_model_recognised_in_each_image(tmp_path):
    from chromabeam.transforms.ops.filters import apply_filter

    src = tmp_path / "in"
    src.mkdir()
    clean = _photo("astronaut", 201, 157)
    x = torch.from_numpy(clean.copy()).permute(2, 0, 1)[None].float() / 255
    for f in ("nashville", "1977"):
        filtered = apply_filter(x, f, 1.0).clamp(0, 1)[0].permute(1, 2, 0).mul(255).round().byte().numpy()
        (src / f"{f}.png").write_bytes(_png(filtered))
    (src / "clean.png").write_bytes(_png(clean))
    out = tmp_path / "out"
    assert restore.command(_args(str(src), str(out), "--device", "cpu", "--format", "files"), []) == 0
    rows = _rows(out)
    seen = {k: json.loads(r["params"]) for k, r in rows.items()}
    assert all(p["device"] == "cpu" and p["exact"] is False for p in seen.values())  # the step's params stay
    # measured (fast path, restorer-82d9f99786d6; the same with d366d20a2792): nashville P 1.00, 1977 P 1.00,
    # the clean photo P(none) 0.72
    # (the next most likely reading, lofi, 0.10; 0.81 / 0.07 before its "no filter" shift of 0.5)
    for f in ("nashville", "1977"):
        rec = seen[f]["recognised"]
        assert rec["filter"] == rec["top_filter"] == f and rec["p_filter"] > 0.9 and rec["p_none"] < 0.05, rec
        assert 0.5 < rec["strength"] <= 1.0 and rec["cast_weight"] < 0.1 and len(rec["cast_gains"]) == 3, rec
    rec = seen["clean"]["recognised"]
    assert rec["filter"] is None and rec["p_none"] > 0.6 and rec["p_filter"] < 0.15, rec
    # the report groups the rows by what was recognised and captions each image with it
    html = (out / "report.html").read_text()
    for label in ("recognised: nashville", "recognised: 1977", "recognised: no filter"):
        assert label in html, label
