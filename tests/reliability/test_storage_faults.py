"""Storage faults and crashes: jobs through a fault-injecting proxy (faultproxy.py) in front
of the GCS emulator and moto's S3 server finish through the libraries' own retries with
the same output as a fault-free run; permanent failures (403, missing bucket) stop at once
with one line; a SIGKILLed job never leaves a manifest row naming a missing object."""
import io
import json
import os
import tarfile
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image

import corpus
from crash import kill_at_first_part
from chromabeam.pipelines.cli import main
from chromabeam.transforms import storage
from faultproxy import FaultProxy
from servers import clear_fsspec_instance_caches

pytestmark = [pytest.mark.objectstore, pytest.mark.timeout(180)]

ARGS = ["--pairs-per-image", "2", "--seed", "5", "--shard-size", "3"]
ENDPOINT_ENV = {"gs": "STORAGE_EMULATOR_HOST", "s3": "AWS_ENDPOINT_URL"}


def _server(request, proto):
    return request.getfixturevalue("gcs_emulator" if proto == "gs" else "s3_server")


def _upload_inputs(server, bucket):
    """Two WebDataset shards (3 + 2 samples) and one loose PNG: 6 records."""
    server.write_object(f"{bucket}/in/a.tar", corpus.wds_tar([(f"a{i}", corpus.jpeg(64, 48, seed=i)) for i in range(3)]))
    server.write_object(f"{bucket}/in/b.tar", corpus.wds_tar([(f"b{i}", corpus.jpeg(48, 64, seed=9 + i)) for i in range(2)]))
    server.write_object(f"{bucket}/in/c0.png", corpus.png(64, 64, seed=20))


def _published(server, out):
    """(manifest rows with the OUTPUT prefix removed, {image part: bytes}, _SUCCESS counts);
    object bytes are read with the servers' own clients (not the code under test)."""
    summary = json.loads(server.read_object(f"{out}/_SUCCESS"))
    rows, images = [], {}
    for url in storage.expand(f"{out}/manifest", extensions=[".parquet"]):
        table = pq.read_table(io.BytesIO(server.read_object(url)))
        for r in table.to_pylist():
            rows.append({k: v.replace(out, "OUT") if k.endswith("_uri") and v else v for k, v in r.items()})
    for url in storage.expand(f"{out}/images", extensions=[".tar"]):
        images[storage.basename(url)] = server.read_object(url)
    return sorted(rows, key=lambda r: (r["key"], r["pair_index"])), images, summary["counts"]


@pytest.mark.parametrize("proto", ["gs", "s3"])
def test_job_through_faulty_proxy_matches_fault_free_run(proto, request, monkeypatch):
    server = _server(request, proto)
    bucket = server.create_bucket()
    _upload_inputs(server, bucket)
    assert main(["synth-pairs", f"{bucket}/in", f"{bucket}/clean", *ARGS]) == 0

    with FaultProxy(server.endpoint, rate=0.2, seed=3, lifetime_s=150) as proxy:
        monkeypatch.setenv(ENDPOINT_ENV[proto], proxy.endpoint)
        clear_fsspec_instance_caches()
        started = time.monotonic()
        assert main(["synth-pairs", f"{bucket}/in", f"{bucket}/faulty", *ARGS]) == 0
        took = time.monotonic() - started
        counts = proxy.counts()
    monkeypatch.setenv(ENDPOINT_ENV[proto], server.endpoint)
    clear_fsspec_instance_caches()

    injected = counts["500"] + counts["503"] + counts["drop"]
    print(f"{proto}: {sum(counts.values())} requests, faults {dict(counts)}, job {took:.1f} s")
    assert counts["budget"] == 0
    assert injected >= 3 and sum(counts[f] > 0 for f in ("500", "503", "drop")) >= 2, counts
    assert took < 60, f"retries took {took:.0f} s"

    clean_rows, clean_images, clean_counts = _published(server, f"{bucket}/clean")
    rows, images, counts_ = _published(server, f"{bucket}/faulty")
    assert counts_ == clean_counts == {"records": 6, "rows": 12, "ok": 12, "error": 0}
    assert len({(r["key"], r["pair_index"]) for r in rows}) == 12  # nothing lost or duplicated
    assert rows == clean_rows
    assert images == clean_images  # byte for byte: a retried upload is not a different object


def _one_line(err: str) -> bool:
    lines = [line for line in err.strip().splitlines() if line.startswith("chromabeam")]
    return len(lines) == 1 and "Traceback" not in err


def test_s3_403_fails_fast_with_one_line(s3_server, monkeypatch, capsys):
    bucket = s3_server.create_bucket()
    _upload_inputs(s3_server, bucket)
    with FaultProxy(s3_server.endpoint, rate=0.2, seed=4, lifetime_s=60) as proxy, s3_server.enforce_auth():
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        clear_fsspec_instance_caches()
        started = time.monotonic()
        code = main(["synth-pairs", f"{bucket}/in", f"{bucket}/out", *ARGS])
        took = time.monotonic() - started
    clear_fsspec_instance_caches()
    err = capsys.readouterr().err
    assert code == 2 and _one_line(err), err
    assert "permission denied" in err and bucket.split("://")[1] in err, err
    assert took < 15, took


def test_s3_missing_bucket_fails_fast_with_one_line(s3_server, monkeypatch, capsys):
    with FaultProxy(s3_server.endpoint, rate=0.2, seed=5, lifetime_s=60) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        clear_fsspec_instance_caches()
        started = time.monotonic()
        code = main(["synth-pairs", "s3://no-such-bucket-q/in", "s3://no-such-bucket-q/out", *ARGS])
        took = time.monotonic() - started
    clear_fsspec_instance_caches()
    err = capsys.readouterr().err
    assert code == 2 and _one_line(err) and "no-such-bucket-q" in err, err
    assert took < 15, took


# --------------------------------------------------------------------------- crash safety


def _tar_members(path):
    with tarfile.open(path) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


@pytest.mark.timeout(240)
def test_sigkill_never_leaves_a_manifest_row_naming_a_missing_object(tmp_path):
    """The kill pattern of tests/pipelines/test_synth_pairs.py, checked differently: at the
    moment of the kill every URI in every published manifest part names an existing tar
    member (images are published before their manifest part)."""
    photos = tmp_path / "in"
    photos.mkdir()
    for i in range(18):
        Image.fromarray(corpus.photo(128, 96, seed=i)).save(photos / f"img{i}.png")
    out = tmp_path / "out"
    kill_at_first_part(["synth-pairs", str(photos), str(out), *ARGS], out)
    manifest = out / "manifest"
    assert not (out / "_SUCCESS").exists()
    parts = sorted(n for n in os.listdir(manifest) if n.startswith("part-") and n.endswith(".parquet"))
    assert parts
    checked = 0
    for name in parts:
        for row in pq.read_table(str(manifest / name)).to_pylist():
            for col in ("input_uri", "target_uri", "output_uri"):
                uri = row.get(col)
                if not uri:
                    continue
                tar_path, _, member = uri.partition("#")
                assert os.path.exists(tar_path), (name, uri)
                assert member in _tar_members(tar_path), (name, uri)
                checked += 1
    assert checked >= 2 * 2  # at least one row with both images
    # Nothing half-written is visible under its final name: every published tar reads to its end.
    for name in os.listdir(out / "images"):
        if not name.startswith(storage._TMP_PREFIX):
            _tar_members(out / "images" / name)
