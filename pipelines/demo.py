"""``chromabeam demo``: the main job on the bundled photos, offline.

Grows with the project: today it evaluates the bundled photos against JPEG re-encodes of
themselves (the whole read → decode → metrics → manifest → report path).
"""
from __future__ import annotations

import importlib.resources
import io

from PIL import Image

from chromabeam.transforms import storage


def photos_url() -> str:
    return str(importlib.resources.files("chromabeam") / "data" / "demo" / "photos")


def run(output: str, beam_args: list[str]) -> int:
    from chromabeam.pipelines import evaluate
    from chromabeam.pipelines.job import JobConfig, exit_status

    photos = photos_url()
    degraded = storage.join(output, "inputs", "jpeg-q40")
    for url in storage.expand(photos, extensions=(".jpg",)):
        buf = io.BytesIO()
        Image.open(io.BytesIO(storage.read_bytes(url))).convert("RGB").save(buf, "JPEG", quality=40)
        storage.put_atomic(storage.join(degraded, storage.basename(url)), buf.getvalue())
    config = JobConfig(output=storage.join(output, "evaluate"), task=evaluate.TASK, overwrite=True,
                       params={"pred": "jpeg-q40 re-encodes", "target": "bundled photos"})
    summary = evaluate.run(degraded, photos, config, beam_args)
    c = summary["counts"]
    print(f"demo evaluate: {c['ok']} ok, {c['error']} error → {config.output}/report.html")
    return exit_status(summary, 0.0)
