"""Beam's portability layer, the contract Flink, Spark and Dataflow runners use: the
synth-pairs example through ``PortableRunner`` (embedded job service) with its DoFns run
by SDK workers that ``apache_beam.runners.worker.worker_pool_main`` starts as separate
processes. Everything they need is pickled in the driver and imported in the workers.

Reference: each pair is regenerated in the test process from the manifest's transform
JSON (``ops.synth.render`` + Pillow JPEG) and compared byte for byte; targets must be the
source photos byte for byte.
"""
import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from chromabeam.pipelines import run_yaml
from chromabeam.transforms.ops import synth
from chromabeam.transforms.ops.imageio import encode_image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHOTOS = os.path.join(REPO, "chromabeam", "data", "demo", "photos")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker pool exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"worker pool not listening on {port} after {timeout} s")


def _member(uri: str) -> bytes:
    shard, name = uri.split("#", 1)
    with tarfile.open(shard) as tar:
        return tar.extractfile(name).read()


@pytest.mark.timeout(300)
def test_synth_pairs_on_portable_runner_with_external_worker_pool(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):  # the smallest three: keep it quick
        shutil.copy(os.path.join(PHOTOS, name), photos / name)
    out = tmp_path / "out"
    port = _free_port()
    # The pool starts each SDK worker as `python -c ...` from PATH: put this interpreter first.
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    log_path = tmp_path / "pool.log"
    with open(log_path, "w") as log:
        pool = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_listening(port, pool)
        parser = argparse.ArgumentParser()
        run_yaml.add_run_arguments(parser)
        args, beam_args = parser.parse_known_args([
            "examples/synth-pairs.yaml", "--jinja_variables", json.dumps({"input": str(photos), "output": str(out)}),
            "--runner=PortableRunner", "--job_endpoint=embed",
            "--environment_type=EXTERNAL", f"--environment_config=localhost:{port}",
        ])
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            rc = run_yaml.run_command(args, beam_args)
        finally:
            os.chdir(cwd)
    finally:
        os.killpg(pool.pid, signal.SIGTERM)  # the pool and the SDK workers it started
        pool.wait(timeout=30)
    pool_log = log_path.read_text()
    assert rc == 0, pool_log[-3000:]

    # SDK workers were started by the pool, and the task ran there (ProgressFn writes
    # its first line from the worker's stderr, which the pool's workers inherit).
    assert pool_log.count("Starting worker with command") >= 1, pool_log[-2000:]
    assert "chromabeam synth-pairs: 1 rows from 3 records" in pool_log

    rows = sorted(pq.read_table(str(out / "pairs" / "manifest")).to_pylist(), key=lambda r: (r["key"], r["pair_index"]))
    assert [(r["key"], r["pair_index"]) for r in rows] == [(k, i) for k in ("chelsea", "coffee", "rocket") for i in (0, 1)]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        source = (photos / f"{r['key']}.jpg").read_bytes()
        spec = json.loads(r["transform"])
        assert _member(r["target_uri"]) == source
        pixels = np.array(Image.open(io.BytesIO(source)).convert("RGB"))
        assert _member(r["input_uri"]) == encode_image(synth.render(pixels, spec["input"]), "jpg", 95)
    summary = json.loads((out / "pairs" / "_SUCCESS").read_text())  # written by a worker, last
    assert summary["counts"] == {"records": 3, "rows": 6, "ok": 6, "error": 0}
    index = [json.loads(line) for f in sorted(out.glob("pairs-index.json-*")) for line in f.read_text().splitlines()]
    assert sorted((x["key"], x["pair_index"]) for x in index) == [(r["key"], r["pair_index"]) for r in rows]
