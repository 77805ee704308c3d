"""``chromabeam stylize INPUT OUTPUT --style REF[,REF…]``: DNCM colour style transfer.

Two-stage, as Neural Preset intends:

    --style refs ─ Create ─ RunInference(StyleHandler) ─ {style key: r, M_s} ──┐ side input (AsDict)
    INPUT ─ read ─ decode ─ RunInference(ContentHandler) ─ M_n (or Z) per image ─ StylizeFn ─ N rows per image

Each style's r is computed once (reference images through the encoder; presets as
saved), each content image is encoded and normalised once, and every (image, style)
combination is one application: by default nDNCM∘sDNCM folded into one 65³ LUT applied
to the decoded 8-bit pixels by Pillow (``stylize_handler.apply_dncm_lut``); with
``--exact`` Z at full resolution in float, then sDNCM. N styles give N output images and
manifest rows per input, each with ``style`` set and the weights' sha256. A record that
cannot be read gives one error row per style.
"""
from __future__ import annotations

import argparse
import dataclasses

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import RunInference

from chromabeam.pipelines.job import JobConfig, JobError, exit_status, run_job
from chromabeam.schemas.manifest import ManifestRow, to_json
from chromabeam.schemas.records import DecodedImage, OutputImage, ReadError, TaskResult
from chromabeam.transforms import storage
from chromabeam.transforms.decode import decode_record
from chromabeam.transforms.devices import DEVICES, DeviceError, resolve_device
from chromabeam.transforms.ops.dncm import apply_color_matrix
from chromabeam.transforms.ops.imageio import DEFAULT_MAX_PIXELS, encode_image, extension, to_uint8
from chromabeam.transforms.ops.style import apply_curves
from chromabeam.transforms.read import ReadImages
from chromabeam.transforms.stylize_handler import (
    ContentHandler, StyleHandler, StyleSource, apply_dncm_lut, apply_folded, default_weights, style_source,
    weights_sha256,
)

TASK = "stylize"
MODEL_NAME = "dncm"


@dataclasses.dataclass(frozen=True)
class StylizeOptions:
    styles: tuple[StyleSource, ...]
    weights: str
    weights_sha256: str | None = None
    device: str = "auto"
    batch_size: int = 8
    image_format: str = "jpg"
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    exact: bool = False

    def __post_init__(self) -> None:
        if not self.styles:
            raise JobError("--style needs at least one reference image or preset")
        keys = [s.key for s in self.styles]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise JobError(f"--style: several styles share the key(s) {dup} (keys are file stems); rename one")
        if self.batch_size < 1:
            raise JobError("--batch-size must be at least 1")


def stylize_pixels(pixels: np.ndarray, content, M_s: np.ndarray) -> np.ndarray:
    """One (image, style) output as uint8 ``(H, W, 3)``: ``content`` is the content
    handler's result — ``M_n`` (numpy, the default: the folded nDNCM∘sDNCM LUT on the
    8-bit pixels) or ``Z`` (torch ``(3, H, W)``, ``--exact``: sDNCM in float)."""
    if isinstance(content, np.ndarray):
        return apply_dncm_lut(pixels, content, M_s)
    with torch.inference_mode():
        return to_uint8(stylize_z(content, M_s))


def stylize_z(Z: torch.Tensor, M: np.ndarray) -> torch.Tensor:
    """sDNCM from a folded map: ``Z`` (3, H, W), ``M`` (3K, 3) curves or (3, 3) linear →
    (3, H, W) clamped to [0, 1]."""
    Mt = torch.as_tensor(M, dtype=Z.dtype, device=Z.device)
    x = Z.unsqueeze(0)
    y = apply_color_matrix(x, Mt) if Mt.shape[0] == 3 else apply_curves(x, Mt)
    return y[0].clamp_(0, 1)


class SplitDecodedFn(beam.DoFn):
    """(key, ImageRecord | ReadError) → DecodedImage (main) or ReadError (tag ``errors``)."""

    def __init__(self, *, max_pixels: int):
        self._max_pixels = max_pixels

    def process(self, unit):
        out = decode_record(unit[1], max_pixels=self._max_pixels)
        yield beam.pvalue.TaggedOutput("errors", out) if isinstance(out, ReadError) else out


class ErrorRowsFn(beam.DoFn):
    """ReadError → one error row per style (every (image, style) has a row)."""

    def __init__(self, *, style_keys: tuple[str, ...], sha256: str | None):
        self._keys, self._sha = style_keys, sha256

    def process(self, failure: ReadError):
        for key in self._keys:
            yield TaskResult(ManifestRow.error_row(
                failure.key, TASK, failure.reason, source_uri=failure.source_uri, style=key,
                model_name=MODEL_NAME, model_sha256=self._sha))


class StylizeFn(beam.DoFn):
    """(DecodedImage, Z) with the styles side input → one TaskResult per style."""

    def __init__(self, *, image_format: str, quality: int, weights_name: str):
        self._ext, self._quality, self._weights_name = extension(image_format), quality, weights_name
        self._outputs = beam.metrics.Metrics.counter("chromabeam", "stylized_images")

    def process(self, result, styles: dict):
        image: DecodedImage = result.example
        for key in sorted(styles):
            entry = styles[key]
            data = encode_image(stylize_pixels(image.pixels, result.inference, entry.M), self._ext, self._quality)
            params = {"style": key, "style_kind": entry.kind, "style_uri": storage.redact(entry.uri),
                      "weights": self._weights_name}
            row = ManifestRow(
                key=image.key, task=TASK, source_uri=image.source_uri, width=image.width, height=image.height,
                model_name=MODEL_NAME, model_sha256=result.model_id, params=to_json(params), style=key,
            )
            self._outputs.inc()
            yield TaskResult(row, (OutputImage(self._ext, data),))


class Stylize(beam.PTransform):
    """units (key, ImageRecord | ReadError) → TaskResults; builds the style side input in
    the same pipeline."""

    def __init__(self, options: StylizeOptions):
        super().__init__()
        self._o = options

    def expand(self, units):
        o = self._o
        handler_kw = dict(weights=o.weights, expected_sha256=o.weights_sha256, device=o.device, batch_size=o.batch_size)
        styles = (
            units.pipeline
            | "Styles" >> beam.Create(list(o.styles))
            | "EncodeStyles" >> RunInference(StyleHandler(**handler_kw))
            | "StyleByKey" >> beam.Map(lambda pr: (pr.inference.key, pr.inference))
        )
        split = units | "Decode" >> beam.ParDo(SplitDecodedFn(max_pixels=o.max_pixels)).with_outputs("errors", main="ok")
        errors = split.errors | "ErrorRows" >> beam.ParDo(
            ErrorRowsFn(style_keys=tuple(s.key for s in o.styles), sha256=o.weights_sha256))
        stylized = (
            split.ok
            | "Normalize" >> RunInference(ContentHandler(output="z" if o.exact else "curves", **handler_kw))
            | "ApplyStyles" >> beam.ParDo(
                StylizeFn(image_format=o.image_format, quality=o.quality, weights_name=storage.basename(o.weights)),
                styles=beam.pvalue.AsDict(styles))
        )
        return (stylized, errors) | "AllRows" >> beam.Flatten()


def parse_styles(text: str) -> tuple[StyleSource, ...]:
    refs = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not refs:
        raise JobError("--style needs at least one reference image or preset")
    try:
        return tuple(style_source(ref) for ref in refs)
    except (ValueError, OSError) as exc:
        raise JobError(f"--style: {exc}") from None


def resolve_weights(url: str | None) -> tuple[str, str | None]:
    """``--weights`` (default: the shipped weights) → (URL, expected full sha256 or None)."""
    if url is None:
        try:
            url = default_weights()
        except FileNotFoundError as exc:
            raise JobError(str(exc)) from None
    if not storage.exists(url):
        raise JobError(f"--weights {storage.redact(url)}: not found")
    return url, weights_sha256(url)


def run(input_url: str, config: JobConfig, options: StylizeOptions, beam_args: list[str]) -> dict:
    reader = ReadImages(input_url)

    def read(p: beam.Pipeline):
        return p | "Read" >> reader | "ByKey" >> beam.Map(lambda r: (r.key, r))

    return run_job(config, beam_args, read, Stylize(options))


# --------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``stylize``'s own options (INPUT/OUTPUT and the common job options are there)."""
    g = parser.add_argument_group("stylize options")
    g.add_argument("--style", required=True, metavar="REF[,REF...]",
                   help="reference image URLs, preset .json files or shipped preset names (warm, teal-orange, faded, mono)")
    g.add_argument("--weights", metavar="URL", default=None, help="DNCM safetensors (default: the shipped weights)")
    g.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)} (cuda[:N]); CUDA where none exists is an error")
    g.add_argument("--batch-size", type=int, default=8, help="images per encoder batch")
    g.add_argument("--exact", action="store_true",
                   help="apply the model in float at full resolution (Z, then sDNCM) instead of folding "
                        "content and style into one 65³ LUT on the 8-bit pixels (faster; within a few levels)")


def options_from_args(args: argparse.Namespace) -> StylizeOptions:
    try:
        resolve_device(args.device)
    except DeviceError as exc:
        raise JobError(str(exc)) from None
    weights, sha = resolve_weights(args.weights)
    return StylizeOptions(
        styles=parse_styles(args.style), weights=weights, weights_sha256=sha, device=args.device,
        batch_size=args.batch_size, image_format=getattr(args, "image_format", "jpg"),
        quality=getattr(args, "quality", 95), max_pixels=getattr(args, "max_pixels", DEFAULT_MAX_PIXELS),
        exact=bool(getattr(args, "exact", False)),
    )


def command(args: argparse.Namespace, beam_args: list[str]) -> int:
    """Run ``chromabeam stylize`` from parsed arguments; returns the exit status."""
    options = options_from_args(args)
    params = {
        "input": storage.redact(args.input), "styles": [s.key for s in options.styles],
        "style_uris": [storage.redact(s.uri) for s in options.styles],
        "weights": storage.basename(options.weights), "weights_sha256": options.weights_sha256,
        "device": args.device, "batch_size": options.batch_size,
        "image_format": options.image_format, "quality": options.quality, "exact": options.exact,
    }
    config = JobConfig(output=args.output.rstrip("/"), task=TASK, layout=getattr(args, "layout", "webdataset"),
                       shard_size=getattr(args, "shard_size", 256), max_error_rate=getattr(args, "max_error_rate", 0.5),
                       overwrite=getattr(args, "overwrite", False), params=params)
    summary = run(args.input, config, options, beam_args)
    c = summary["counts"]
    print(f"stylize: {c['rows']} rows ({c['ok']} ok, {c['error']} error) → {storage.redact(config.output)}")
    return exit_status(summary, config.max_error_rate)


def demo(output: str, beam_args: list[str]) -> dict:
    """Stylize the bundled demo photos with the shipped presets and weights; returns the summary."""
    from chromabeam.pipelines.demo import photos_url
    from chromabeam.pipelines.preset import shipped_presets

    weights, sha = resolve_weights(None)
    styles = tuple(style_source(url) for url in shipped_presets())
    options = StylizeOptions(styles=styles, weights=weights, weights_sha256=sha, device="cpu")
    config = JobConfig(output=storage.join(output, "stylized"), task=TASK, overwrite=True,
                       params={"demo": True, "styles": [s.key for s in styles]})
    summary = run(photos_url(), config, options, beam_args)
    summary["output_name"] = "stylized"
    return summary
