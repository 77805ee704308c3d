"""``chromabeam evaluate PRED TARGET OUTPUT``: join two image sets by key, write metrics.

A key present on one side only, or twice on a side, is an error row; so are images of
different sizes (metrics need pixel correspondence) and anything that fails to decode.
"""
from __future__ import annotations

import apache_beam as beam
import torch

from chromabeam.pipelines.job import JobConfig, run_job
from chromabeam.schemas.manifest import ManifestRow
from chromabeam.schemas.records import ReadError, TaskResult
from chromabeam.transforms.decode import decode_record
from chromabeam.transforms.ops import metrics
from chromabeam.transforms.ops.imageio import DEFAULT_MAX_PIXELS, to_float
from chromabeam.transforms.read import ReadImages

TASK = "evaluate"


def single_record(records: list, side: str, key: str):
    """The single record of one side, or a reason why there is not exactly one."""
    if not records:
        return None, f"no {side} image with key {key!r}"
    if len(records) > 1:
        sources = ", ".join(sorted(r.source_uri for r in records)[:3])
        return None, f"{len(records)} {side} images share key {key!r} ({sources})"
    return records[0], None


class EvaluateFn(beam.DoFn):
    """(key, {'pred': [...], 'target': [...]}) → TaskResult with PSNR/SSIM/ΔE2000/LPIPS."""

    def __init__(self, *, max_pixels: int = DEFAULT_MAX_PIXELS, device: str = "cpu"):
        self._max_pixels = max_pixels
        self._device = device

    def setup(self):
        self._lpips, self._lpips_reason = metrics.lpips_model(self._device)

    def process(self, unit):
        key, sides = unit
        pred, why = single_record(list(sides["pred"]), "prediction", key)
        target, why_t = single_record(list(sides["target"]), "reference", key)
        source = pred.source_uri if pred else None
        reference = target.source_uri if target else None
        if why or why_t:
            yield TaskResult(ManifestRow.error_row(key, TASK, why or why_t, source_uri=source, reference_uri=reference))
            return
        a = decode_record(pred, max_pixels=self._max_pixels)
        b = decode_record(target, max_pixels=self._max_pixels)
        for side, dec in (("prediction", a), ("reference", b)):
            if isinstance(dec, ReadError):
                yield TaskResult(ManifestRow.error_row(key, TASK, f"{side}: {dec.reason}", source_uri=source, reference_uri=reference))
                return
        if a.pixels.shape != b.pixels.shape:
            reason = f"size mismatch: prediction {a.width}x{a.height}, reference {b.width}x{b.height}"
            yield TaskResult(ManifestRow.error_row(key, TASK, reason, source_uri=source, reference_uri=reference))
            return
        with torch.inference_mode():
            x = to_float(a.pixels).unsqueeze(0).to(self._device)
            y = to_float(b.pixels).unsqueeze(0).to(self._device)
            values = metrics.compute_metrics(x, y, lpips_model=self._lpips)
        row = ManifestRow(
            key=key, task=TASK, source_uri=source, reference_uri=reference, width=a.width, height=a.height,
            **{k: (None if v is None else float(v[0])) for k, v in values.items()},
        )
        yield TaskResult(row)


def build(pred: str, target: str, config: JobConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS):
    pred_read = ReadImages(pred)
    target_read = ReadImages(target)

    def read(p: beam.Pipeline):
        preds = p | "ReadPred" >> pred_read | "KeyPred" >> beam.Map(lambda r: (r.key, r))
        targets = p | "ReadTarget" >> target_read | "KeyTarget" >> beam.Map(lambda r: (r.key, r))
        return {"pred": preds, "target": targets} | "JoinByKey" >> beam.CoGroupByKey()

    return read, beam.ParDo(EvaluateFn(max_pixels=max_pixels))


def run(pred: str, target: str, config: JobConfig, beam_args: list[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    read, task = build(pred, target, config, max_pixels=max_pixels)
    _, reason = metrics.lpips_model("cpu")
    notes = {"notes": {"lpips": reason}} if reason else {}
    return run_job(config, beam_args, read, task, extra_summary=lambda: notes)
