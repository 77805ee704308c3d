"""Real jobs from and to object storage: the GCS emulator and moto's S3 server on loopback."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import corpus
from chromabeam.pipelines.cli import main
from chromabeam.transforms import storage

pytestmark = [pytest.mark.objectstore, pytest.mark.timeout(120)]


def _upload_pairs(server, bucket: str) -> dict:
    keys = {}
    for i in range(3):
        clean = corpus.photo(64, 48, seed=i)
        noisy = np.clip(clean.astype(int) + (i + 1) * 3, 0, 255).astype(np.uint8)
        server.write_object(f"{bucket}/clean/k{i}.png", corpus.encode(clean, "PNG"))
        server.write_object(f"{bucket}/pred/k{i}.png", corpus.encode(noisy, "PNG"))
        keys[f"k{i}"] = 20 * np.log10(255 / (i + 1) / 3)  # uniform offset of 3(i+1) levels (no clipping here)
    return keys


def _check_output(server, bucket: str, expected: dict) -> None:
    out = f"{bucket}/eval"
    summary = json.loads(server.read_object(f"{out}/_SUCCESS"))
    assert summary["counts"]["ok"] == 3
    with storage.open_url(f"{out}/manifest/part-00000-of-00001.parquet") as fh:
        rows = {r["key"]: r for r in pq.read_table(fh).to_pylist()}
    assert set(rows) == set(expected)
    for key, value in expected.items():
        assert rows[key]["status"] == "ok"
        assert rows[key]["reference_uri"] == f"{bucket}/clean/{key}.png"
        assert rows[key]["psnr"] == pytest.approx(value, abs=0.2)
    assert b"<html>" in server.read_object(f"{out}/report.html")


def test_evaluate_on_gcs_emulator(gcs_emulator):
    bucket = gcs_emulator.create_bucket()
    expected = _upload_pairs(gcs_emulator, bucket)
    assert main(["evaluate", f"{bucket}/pred/*.png", f"{bucket}/clean/", f"{bucket}/eval"]) == 0
    _check_output(gcs_emulator, bucket, expected)


def test_evaluate_on_s3_server(s3_server):
    bucket = s3_server.create_bucket()
    expected = _upload_pairs(s3_server, bucket)
    assert main(["evaluate", f"{bucket}/pred", f"{bucket}/clean", f"{bucket}/eval"]) == 0
    _check_output(s3_server, bucket, expected)


def test_missing_bucket_fails_fast_with_one_line(gcs_emulator, capsys):
    code = main(["evaluate", "gs://no-such-bucket-x/pred", "gs://no-such-bucket-x/clean", "gs://no-such-bucket-x/out"])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-bucket-x" in err and "Traceback" not in err


def test_synth_pairs_from_and_to_gcs_emulator(gcs_emulator, tmp_path):
    """The issue's command, with only STORAGE_EMULATOR_HOST set: pairs, manifest and
    _SUCCESS read back from the bucket."""
    import webdataset as wds

    bucket = gcs_emulator.create_bucket()
    for s in range(2):
        samples = [(f"s{s}k{i}", corpus.jpeg(80, 64, seed=10 * s + i)) for i in range(3)]
        gcs_emulator.write_object(f"{bucket}/in/shard-{s}.tar", corpus.wds_tar(samples))
    out = f"{bucket}/out"
    assert main(["synth-pairs", f"{bucket}/in/*.tar", out, "--pairs-per-image", "2", "--seed", "7"]) == 0
    summary = json.loads(gcs_emulator.read_object(f"{out}/_SUCCESS"))
    assert summary["counts"] == {"records": 6, "rows": 12, "ok": 12, "error": 0}
    with storage.open_url(f"{out}/manifest/part-00000-of-00001.parquet") as fh:
        rows = pq.read_table(fh).to_pylist()
    assert len(rows) == 12 and {r["source_uri"].split("#")[0] for r in rows} == {
        f"{bucket}/in/shard-0.tar", f"{bucket}/in/shard-1.tar"}
    local = tmp_path / "part.tar"
    local.write_bytes(gcs_emulator.read_object(f"{out}/images/part-00000-of-00001.tar"))
    samples = {s["__key__"]: s for s in wds.WebDataset(str(local), shardshuffle=False)}
    for row in rows:
        name = f"{row['key']}_{row['pair_index']:03d}"
        assert row["input_uri"] == f"{out}/images/part-00000-of-00001.tar#{name}.input.jpg"
        assert samples[name]["input.jpg"][:2] == b"\xff\xd8" and samples[name]["target.jpg"][:2] == b"\xff\xd8"
    assert len(samples) == 12
