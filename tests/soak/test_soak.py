"""Memory under load: stream a few thousand small images through a real job and check
that peak RSS stays flat as the image count grows (printed as a table).

Each size runs in a fresh `python -m chromabeam` process; its peak RSS is the kernel's
``ru_maxrss`` for that child (os.wait4). The job is `restore` when the CLI has it and
its weights are shipped, else `synth-pairs` (the same reader, decoder, writer and
driver; only the per-image transform differs)."""
import os
import subprocess
import sys
import time

import pytest

import corpus

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]

SIZES = (500, 1500, 3000)
PER_SHARD = 250
PIXELS = 64
# Allowed growth of peak RSS per extra image between the two largest runs, once the
# per-process caches (captured filter LUTs; the 256-entry procedural-grade LUT cache in
# transforms/ops/grades.py, ~1 MB per entry) are full. Keeping each image's decoded pair
# (2 x 64x64x3 float32 = 96 KiB, plus its uint8 decode) would exceed it. Run-to-run noise
# of peak RSS (allocator arenas, GC timing) is about +-100 MiB on a loaded machine, i.e.
# +-70 KiB per image over 1500 images, so the bound cannot be much tighter at 64 px.
MAX_GROWTH_PER_IMAGE_KB = 128


def _job() -> list[str]:
    from chromabeam.pipelines import cli

    if "restore" in cli.COMMANDS:
        try:
            from chromabeam.pipelines.restore import default_weights

            default_weights()
            return ["restore"]
        except Exception:
            pass
    return ["synth-pairs", "--pairs-per-image", "1", "--seed", "1"]


def _make_input(folder, n: int):
    folder.mkdir()
    for s in range(0, n, PER_SHARD):
        samples = [(f"img{i:05d}", corpus.jpeg(PIXELS, PIXELS, seed=i, quality=90)) for i in range(s, min(n, s + PER_SHARD))]
        (folder / f"shard-{s // PER_SHARD:04d}.tar").write_bytes(corpus.wds_tar(samples))


def _peak_rss_kb(cmd: list[str], log_path) -> tuple[int, float]:
    """(peak RSS in KiB, seconds) of one child process, which must succeed."""
    started = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, open(log_path, encoding="utf-8", errors="replace").read()[-2000:]
    return usage.ru_maxrss, time.monotonic() - started


def test_peak_rss_stays_flat_as_image_count_grows(tmp_path):
    job = _job()
    figures = []
    for n in SIZES:
        inputs = tmp_path / f"in{n}"
        _make_input(inputs, n)
        out = tmp_path / f"out{n}"
        cmd = [sys.executable, "-m", "chromabeam", job[0], str(inputs), str(out), *job[1:]]
        rss, seconds = _peak_rss_kb(cmd, tmp_path / f"log{n}.txt")
        figures.append((n, rss, seconds))
        assert (out / "_SUCCESS").exists()
    print(f"\nsoak: {job[0]}, {PIXELS}x{PIXELS} px JPEGs in WebDataset shards of {PER_SHARD}")
    print(f"{'images':>8} {'peak RSS MiB':>13} {'seconds':>8} {'images/s':>9}")
    for n, rss, seconds in figures:
        print(f"{n:>8} {rss / 1024:>13.1f} {seconds:>8.1f} {n / seconds:>9.1f}")
    (_, rss_small, _), (n0, rss0, _), (n1, rss1, _) = figures
    growth = (rss1 - rss0) / (n1 - n0)
    print(f"growth {n0} -> {n1}: {growth:.1f} KiB per extra image (bound {MAX_GROWTH_PER_IMAGE_KB}); "
          f"{SIZES[0]} -> {n0}: {(rss0 - rss_small) / 1024:.0f} MiB (caches filling)")
    assert growth < MAX_GROWTH_PER_IMAGE_KB, figures
