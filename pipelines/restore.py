"""``chromabeam restore INPUT OUTPUT [--weights URL] [--device auto|cpu|cuda]
[--reference TARGET] [--batch-size N]``: blind filter removal at each image's own
resolution, through Beam's RunInference.

    read ─(--reference: join by key, CoGroupByKey)─ Prepare (decode) ─┬─ error rows
                                                                      └─ RunInference(RestoreModelHandler)
                                                                         └─ Finish: encode, metrics → rows

Default weights: the restorer shipped in ``chromabeam/data/weights`` (found through its
model card, sha256-verified on load). With ``--reference``, PSNR / SSIM / ΔE2000 / LPIPS
of the restored pixels (8-bit, before the output encoding) against the clean image with
the same key are computed in the same pass. As in ``evaluate``, a key on one side only,
a duplicated key or a size mismatch is an error row. Rows carry ``model_name`` and
``model_sha256``.
"""
from __future__ import annotations

import argparse
import glob
import importlib.resources
import json
import os

import apache_beam as beam
import torch
from apache_beam.ml.inference.base import RunInference

from chromabeam.pipelines.job import JobConfig, JobError, exit_status, run_job
from chromabeam.pipelines.evaluate import single_record
from chromabeam.schemas.manifest import ManifestRow, to_json
from chromabeam.schemas.records import OutputImage, ReadError, TaskResult
from chromabeam.transforms import storage
from chromabeam.transforms.decode import decode_record
from chromabeam.transforms.devices import resolve_device
from chromabeam.transforms.ops import metrics
from chromabeam.transforms.ops.imageio import DEFAULT_MAX_PIXELS, encode_image, extension, to_float
from chromabeam.transforms.read import ReadImages
from chromabeam.transforms.restore_handler import RestoreInput, RestoreModelHandler

__all__ = ["TASK", "default_weights", "build", "run", "add_arguments", "command", "demo", "DEFAULT_BATCH_SIZE"]

TASK = "restore"
# One image per RunInference call: measured faster than batching views on CPU at 1024 px
# (benchmarks/restore_speed.py, docs/restorer.md) and it keeps memory at one image.
DEFAULT_BATCH_SIZE = 1


def weights_dir() -> str:
    return str(importlib.resources.files("chromabeam") / "data" / "weights")


def default_weights(model: str = "restorer") -> tuple[str, str]:
    """(path, sha256) of the shipped ``model`` weights, from their model card
    (``<model>-<sha12>.json`` next to the safetensors file). Exactly one must be shipped."""
    cards = sorted(glob.glob(os.path.join(weights_dir(), f"{model}-*.json")))
    if len(cards) != 1:
        raise JobError(
            f"expected one shipped {model} weights card in {weights_dir()}, found {len(cards)}; pass --weights URL"
        )
    with open(cards[0], encoding="utf-8") as fh:
        card = json.load(fh)
    path = os.path.join(weights_dir(), card["weights"])
    if not os.path.exists(path):
        raise JobError(f"the card {cards[0]} names {card['weights']}, which is not shipped")
    return path, card["sha256"]


class PrepareFn(beam.DoFn):
    """(key, record) or (key, {'input': [...], 'reference': [...]}) → RestoreInput, or a
    TaskResult error row on the ``errors`` output."""

    ERRORS = "errors"

    def __init__(self, *, max_pixels: int = DEFAULT_MAX_PIXELS, with_reference: bool = False):
        self._max_pixels = max_pixels
        self._with_reference = with_reference

    def process(self, unit):
        key, payload = unit
        ref_record = None
        if self._with_reference:
            record, why = single_record(list(payload["input"]), "input", key)
            ref_record, why_r = single_record(list(payload["reference"]), "reference", key)
            if why or why_r:
                row = ManifestRow.error_row(
                    key, TASK, why or why_r, source_uri=record.source_uri if record else None,
                    reference_uri=ref_record.source_uri if ref_record else None)
                yield beam.pvalue.TaggedOutput(self.ERRORS, TaskResult(row))
                return
        else:
            record = payload
        image = decode_record(record, max_pixels=self._max_pixels)
        ref = decode_record(ref_record, max_pixels=self._max_pixels) if ref_record is not None else None
        ref_uri = ref_record.source_uri if ref_record is not None else None
        for side, dec in (("input", image), ("reference", ref)):
            if isinstance(dec, ReadError):
                reason = dec.reason if side == "input" else f"reference: {dec.reason}"
                row = ManifestRow.error_row(key, TASK, reason, source_uri=record.source_uri, reference_uri=ref_uri)
                yield beam.pvalue.TaggedOutput(self.ERRORS, TaskResult(row))
                return
        if ref is not None and ref.pixels.shape != image.pixels.shape:
            reason = f"size mismatch: input {image.width}x{image.height}, reference {ref.width}x{ref.height}"
            row = ManifestRow.error_row(key, TASK, reason, source_uri=image.source_uri, reference_uri=ref_uri)
            yield beam.pvalue.TaggedOutput(self.ERRORS, TaskResult(row))
            return
        yield RestoreInput(key, image.source_uri, image.pixels, ref_uri, None if ref is None else ref.pixels)


class FinishFn(beam.DoFn):
    """PredictionResult(RestoreInput, (restored uint8, recognition)) → TaskResult: the
    encoded image, the row with model name/sha, the job's params plus what the model
    recognised in this image (``params.recognised``: filter, P, strength, P(none), cast
    weight and gains) and, with a reference, the metrics."""

    def __init__(self, *, model_name: str, model_sha256: str, image_format: str = "jpg", quality: int = 95,
                 params: str | None = None, with_reference: bool = False):
        self._name, self._sha = model_name, model_sha256
        self._ext, self._quality = extension(image_format), quality
        self._params = params
        self._params_dict = json.loads(params) if params else {}
        self._with_reference = with_reference

    def _row_params(self, recognised: dict | None) -> str | None:
        if recognised is None:
            return self._params
        return to_json({**self._params_dict, "recognised": recognised})

    def setup(self):
        self._lpips = None
        if self._with_reference:
            self._lpips, _ = metrics.lpips_model("cpu")

    def process(self, result):
        e: RestoreInput = result.example
        restored, recognised = result.inference
        h, w = restored.shape[:2]
        values = {}
        if e.reference is not None:
            with torch.inference_mode():
                values = metrics.compute_metrics(
                    to_float(restored).unsqueeze(0), to_float(e.reference).unsqueeze(0), lpips_model=self._lpips)
            values = {k: (None if v is None else float(v[0])) for k, v in values.items()}
        row = ManifestRow(
            key=e.key, task=TASK, source_uri=e.source_uri, reference_uri=e.reference_uri, width=w, height=h,
            model_name=self._name, model_sha256=self._sha, params=self._row_params(recognised), **values,
        )
        data = encode_image(restored, self._ext, self._quality)
        yield TaskResult(row, (OutputImage(self._ext, data),))


class RestoreTask(beam.PTransform):
    """units → TaskResult (one per unit)."""

    def __init__(self, handler: RestoreModelHandler, finish: FinishFn, *, max_pixels: int, with_reference: bool):
        super().__init__()
        self._handler, self._finish = handler, finish
        self._prepare = PrepareFn(max_pixels=max_pixels, with_reference=with_reference)

    def expand(self, units):
        prepared = units | "Prepare" >> beam.ParDo(self._prepare).with_outputs(PrepareFn.ERRORS, main="ok")
        restored = (prepared.ok | "Restore" >> RunInference(self._handler)
                    | "Finish" >> beam.ParDo(self._finish))
        return (restored, prepared[PrepareFn.ERRORS]) | "AllRows" >> beam.Flatten()


def build(input_url: str, *, weights: str, sha256: str | None, model_name: str, device: str = "auto",
          reference: str | None = None, image_format: str = "jpg", quality: int = 95,
          max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = DEFAULT_BATCH_SIZE, params: dict | None = None,
          exact: bool = False):
    """(read, task) for ``run_job``."""
    reader = ReadImages(input_url)
    ref_reader = ReadImages(reference, label="reference") if reference else None

    def read(p: beam.Pipeline):
        inputs = p | "ReadInput" >> reader | "KeyInput" >> beam.Map(lambda r: (r.key, r))
        if ref_reader is None:
            return inputs
        refs = p | "ReadReference" >> ref_reader | "KeyReference" >> beam.Map(lambda r: (r.key, r))
        return {"input": inputs, "reference": refs} | "JoinByKey" >> beam.CoGroupByKey()

    handler = RestoreModelHandler(weights_url=weights, expected_sha256=sha256, device=device, max_batch_size=batch_size,
                                  exact=exact or None)
    finish = FinishFn(model_name=model_name, model_sha256=sha256 or "", image_format=image_format, quality=quality,
                      params=to_json(params or {}), with_reference=ref_reader is not None)
    return read, RestoreTask(handler, finish, max_pixels=max_pixels, with_reference=ref_reader is not None)


def _weights_identity(weights: str | None) -> tuple[str, str, str]:
    """(url, sha256, model name) of the weights to use; reads the file's header once in
    the driver so a wrong or unreadable file fails before the pipeline starts."""
    from chromabeam.models.registry import load_weights

    url, expected = (weights, None) if weights else default_weights()
    _, config, card = load_weights(url, expected)
    if config.get("model") != "restorer":
        raise JobError(f"--weights {storage.redact(url)} holds a {config.get('model')!r} model, not a restorer")
    return url, card["sha256"], card.get("name") or storage.basename(url)


def run(input_url: str, config: JobConfig, beam_args: list[str], *, weights: str | None = None, device: str = "auto",
        reference: str | None = None, image_format: str = "jpg", quality: int = 95,
        max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = DEFAULT_BATCH_SIZE, exact: bool = False) -> dict:
    """Run the restore job; returns its summary."""
    resolve_device(device)  # CUDA asked for but absent: DeviceError before anything runs
    if batch_size < 1:
        raise JobError("--batch-size must be at least 1")
    url, sha, name = _weights_identity(weights)
    params = {**config.params, "weights": storage.redact(url), "device": device,
              "reference": storage.redact(reference) if reference else None, "batch_size": batch_size, "exact": exact}
    config.params = params
    read, task = build(input_url, weights=url, sha256=sha, model_name=name, device=device, reference=reference,
                       image_format=image_format, quality=quality, max_pixels=max_pixels, batch_size=batch_size,
                       params={"device": device, "batch_size": batch_size, "exact": exact}, exact=exact)
    extra = {"model": {"name": name, "sha256": sha}}
    if reference:
        _, reason = metrics.lpips_model("cpu")
        if reason:
            extra["notes"] = {"lpips": reason}
    return run_job(config, beam_args, read, task, extra_summary=lambda: extra)


# ------------------------------------------------------------------ CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The restore subcommand's own options (INPUT/OUTPUT and job options exist)."""
    g = parser.add_argument_group("restore options")
    g.add_argument("--weights", metavar="URL", default=None,
                   help="restorer safetensors (default: the shipped weights, sha256-checked)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (cuda where there is none is an error)")
    g.add_argument("--reference", metavar="TARGET", default=None,
                   help="clean images with the same keys: PSNR/SSIM/ΔE2000/LPIPS go into the manifest")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per model call (default {DEFAULT_BATCH_SIZE}; views are batched, pixels mapped per image)")
    g.add_argument("--exact", action="store_true",
                   help="map every pixel in float on the CPU too (default there: the 8-bit fast path, "
                        "Pillow LUT + low-resolution local correction; see docs/restorer.md)")


def command(args: argparse.Namespace, beam_args: list[str]) -> int:
    """``chromabeam restore``: run the job, print a one-line summary, return the exit status."""
    params = {"input": storage.redact(args.input)}
    config = JobConfig(
        output=args.output.rstrip("/"), task=TASK, layout=getattr(args, "layout", "webdataset"),
        shard_size=args.shard_size, max_error_rate=args.max_error_rate, overwrite=args.overwrite, params=params,
    )
    summary = run(args.input, config, beam_args, weights=args.weights, device=args.device, reference=args.reference,
                  image_format=getattr(args, "image_format", "jpg"), quality=getattr(args, "quality", 95),
                  max_pixels=args.max_pixels, batch_size=args.batch_size, exact=getattr(args, "exact", False))
    c = summary["counts"]
    psnr = (summary.get("metrics") or {}).get("psnr", {}).get("mean")
    extra = f", mean PSNR {psnr:.2f} dB" if psnr is not None else ""
    print(f"restore: {c['rows']} rows ({c['ok']} ok, {c['error']} error){extra} → {storage.redact(config.output)}")
    return exit_status(summary, args.max_error_rate)


def demo(output: str, beam_args: list[str]) -> dict:
    """Restore the demo's filtered photos (OUTPUT/filtered, made here if absent) with the
    shipped weights, scored against the bundled originals → OUTPUT/restored."""
    from chromabeam.pipelines import demo as demo_mod

    filtered = storage.join(output, "filtered")
    if not storage.exists(filtered):
        filtered = demo_mod.make_filtered(output)
    config = JobConfig(output=storage.join(output, "restored"), task=TASK, overwrite=True,
                       params={"input": "demo: bundled photos through IFFI filters"})
    summary = run(filtered, config, beam_args, reference=demo_mod.photos_url(), device="auto")
    summary["output_name"] = "restored"
    return summary
