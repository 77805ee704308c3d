"""End-to-end `chromabeam evaluate` on local folders: metrics agree with scikit-image and
colour-science, every key yields one row, resume and re-run behave."""
import io
import json
import os

import colour
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from chromabeam.pipelines.cli import main
from chromabeam.schemas.manifest import check_table, manifest_schema


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def pair_folders(tmp_path):
    rng = np.random.default_rng(0)
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir(), target.mkdir()
    images = {}
    for i in range(5):
        h, w = 64 + 8 * i, 96 - 4 * i
        t = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        noise = rng.integers(-12, 13, t.shape)
        p = np.clip(t.astype(int) + noise, 0, 255).astype(np.uint8)
        (target / f"img{i}.png").write_bytes(_png(t))
        (pred / f"img{i}.png").write_bytes(_png(p))
        images[f"img{i}"] = (p, t)
    (pred / "only-pred.png").write_bytes(_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    (target / "img-size.png").write_bytes(_png(np.zeros((40, 40, 3), np.uint8)))
    (pred / "img-size.png").write_bytes(_png(np.zeros((40, 41, 3), np.uint8)))
    (pred / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (target / "broken.png").write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    return pred, target, images


def _manifest(out):
    table = pq.read_table(str(out / "manifest"))
    return table, {r["key"]: r for r in table.to_pylist()}


def test_evaluate_metrics_match_reference_implementations(pair_folders, tmp_path):
    pred, target, images = pair_folders
    out = tmp_path / "out"
    assert main(["evaluate", str(pred), str(target), str(out)]) == 0
    table, rows = _manifest(out)
    assert table.schema.names == manifest_schema("evaluate").names
    assert set(rows) == {*images, "only-pred", "img-size", "broken"}
    for key, (p, t) in images.items():
        row = rows[key]
        assert row["status"] == "ok" and row["error"] is None
        assert (row["width"], row["height"]) == (t.shape[1], t.shape[0])
        # scikit-image / colour-science are the independent references.
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(t, p, data_range=255), abs=1e-3)
        ref_ssim = structural_similarity(
            t.astype(float) / 255, p.astype(float) / 255, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=2,
        )
        assert row["ssim"] == pytest.approx(ref_ssim, abs=1e-4)
        lab = lambda a: colour.XYZ_to_Lab(colour.sRGB_to_XYZ(a.astype(float) / 255))  # noqa: E731
        assert row["delta_e2000"] == pytest.approx(float(np.mean(colour.delta_E(lab(p), lab(t), method="CIE 2000"))), abs=1e-3)
        assert row["lpips"] is None  # no LPIPS weights configured
    assert rows["only-pred"]["status"] == "error" and "no reference image" in rows["only-pred"]["error"]
    assert "size mismatch" in rows["img-size"]["error"]
    assert rows["broken"]["error"].startswith("prediction: ")
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["counts"] == {"records": 8, "rows": 8, "ok": 5, "error": 3}
    assert "lpips" in summary["notes"]
    assert (out / "report.html").read_text().count("<table") >= 2


def test_rerun_is_noop_and_overwrite_redoes(pair_folders, tmp_path, capsys):
    pred, target, _ = pair_folders
    out = tmp_path / "out"
    assert main(["evaluate", str(pred), str(target), str(out)]) == 0
    first = (out / "manifest" / "part-00000-of-00001.parquet").read_bytes()
    mtime = os.path.getmtime(out / "_SUCCESS")
    capsys.readouterr()
    assert main(["evaluate", str(pred), str(target), str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert os.path.getmtime(out / "_SUCCESS") == mtime
    assert main(["evaluate", str(pred), str(target), str(out), "--overwrite"]) == 0
    assert (out / "manifest" / "part-00000-of-00001.parquet").read_bytes() == first


def test_resume_skips_published_parts_and_matches_full_run(pair_folders, tmp_path):
    pred, target, _ = pair_folders
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(["evaluate", str(pred), str(target), str(full), "--shard-size", "2"]) == 0
    parts = sorted(p.name for p in (full / "manifest").iterdir())
    assert len(parts) == 4 and all(p.endswith("-of-00004.parquet") for p in parts)
    # Simulate a crash after two parts were published: only those exist, no _SUCCESS.
    (resumed / "manifest").mkdir(parents=True)
    kept = parts[:2]
    for name in kept:
        (resumed / "manifest" / name).write_bytes(b"sentinel: must not be rewritten")
    assert main(["evaluate", str(pred), str(target), str(resumed), "--shard-size", "2"]) == 2  # sentinel is not Parquet
    for name in kept:
        (resumed / "manifest" / name).write_bytes((full / "manifest" / name).read_bytes())
        os.utime(resumed / "manifest" / name, (1, 1))
    assert main(["evaluate", str(pred), str(target), str(resumed), "--shard-size", "2"]) == 0
    for name in parts:
        assert (resumed / "manifest" / name).read_bytes() == (full / "manifest" / name).read_bytes()
    for name in kept:
        assert os.path.getmtime(resumed / "manifest" / name) == 1  # not redone
    table = pq.read_table(str(resumed / "manifest"))
    check_table(pq.read_table(str(resumed / "manifest" / parts[0])))
    assert table.num_rows == 8 and len(set(table.column("key").to_pylist())) == 8


def test_max_error_rate_sets_exit_status_after_writing(pair_folders, tmp_path, capsys):
    pred, target, _ = pair_folders
    out = tmp_path / "out"
    assert main(["evaluate", str(pred), str(target), str(out), "--max-error-rate", "0.2"]) == 1
    assert "3 of 8 rows failed" in capsys.readouterr().err
    assert (out / "_SUCCESS").exists() and pq.read_table(str(out / "manifest")).num_rows == 8


def test_bad_url_fails_in_one_line(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "nope"), str(tmp_path), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
