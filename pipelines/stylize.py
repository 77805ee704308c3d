"""``chromabeam stylize INPUT OUTPUT --style REF[,REF…] [--method look|dncm]``: colour style transfer.

``--method look`` (the default; ``transforms.look_handler``): each style is fitted once
as a look LUT — the map from the restorer's estimate of the reference without its look
to the reference — or read from a ``.cube``; content images need no model:

    --style refs ─ Create ─ RunInference(LookHandler) ─ {style key: look LUT} ──┐ side input (AsDict)
    INPUT ─ read ─ decode ─────────────────────────────────────────────── StylizeFn ─ N rows per image

``--method dncm``: Neural Preset's DNCM, two-stage as the paper intends:

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
from chromabeam.transforms.ops.imageio import DEFAULT_MAX_PIXELS, encode_image, extension, to_float, to_uint8
from chromabeam.transforms.ops.pixels8 import LookApplier
from chromabeam.transforms.ops.style import apply_curves
from chromabeam.transforms.look_handler import LookHandler
from chromabeam.transforms.read import ReadImages
from chromabeam.transforms.stylize_handler import (
    ContentHandler, StyleHandler, StyleSource, apply_dncm_lut, apply_folded, default_weights, style_source,
    weights_sha256,
)

TASK = "stylize"
METHODS = ("look", "dncm")
TABULATED_LOOKS = 8  # per worker: a tabulated look holds 64 MB (pixels8.LookApplier)


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
    method: str = "look"  # weights: the restorer for "look", the DNCM for "dncm"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise JobError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.styles:
            raise JobError("--style needs at least one reference image or preset")
        keys = [s.key for s in self.styles]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise JobError(f"--style: several styles share the key(s) {dup} (keys are file stems); rename one")
        if self.batch_size < 1:
            raise JobError("--batch-size must be at least 1")


def apply_look_exact(pixels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``--exact``: uint8 ``(H, W, 3)`` through a look ``(S, S, S, 3)`` trilinearly in float
    torch, rounded once at the end (the default path is ``pixels8.LookApplier``)."""
    from chromabeam.transforms.ops.lut import apply_lut

    with torch.inference_mode():
        return to_uint8(apply_lut(to_float(pixels).unsqueeze(0), torch.as_tensor(lut), method="volume")[0])


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

    def __init__(self, *, style_keys: tuple[str, ...], sha256: str | None, model_name: str):
        self._keys, self._sha, self._model_name = style_keys, sha256, model_name

    def process(self, failure: ReadError):
        for key in self._keys:
            yield TaskResult(ManifestRow.error_row(
                failure.key, TASK, failure.reason, source_uri=failure.source_uri, style=key,
                model_name=self._model_name, model_sha256=self._sha))


class StylizeFn(beam.DoFn):
    """DNCM: a PredictionResult (DecodedImage, M_n or Z); look: a DecodedImage — with the
    styles side input → one TaskResult per style."""

    def __init__(self, *, image_format: str, quality: int, weights_name: str, model_name: str = "dncm",
                 model_sha256: str | None = None, exact: bool = False):
        self._ext, self._quality, self._weights_name = extension(image_format), quality, weights_name
        self._model_name, self._sha, self._exact = model_name, model_sha256, exact
        self._outputs = beam.metrics.Metrics.counter("chromabeam", "stylized_images")
        self._looks: dict[str, LookApplier] = {}

    def _look(self, key: str, lut: np.ndarray) -> LookApplier:
        """One applier per style and worker: the look is tabulated once enough pixels went
        through it (only for the first TABULATED_LOOKS styles: memory)."""
        if key not in self._looks:
            switch = 1 << 24 if len(self._looks) < TABULATED_LOOKS else None
            self._looks[key] = LookApplier(lut, switch_pixels=switch)
        return self._looks[key]

    def process(self, result, styles: dict):
        image: DecodedImage = result if isinstance(result, DecodedImage) else result.example
        sha = self._sha if isinstance(result, DecodedImage) else result.model_id
        for key in sorted(styles):
            entry = styles[key]
            if entry.lut is not None and self._exact:
                pixels = apply_look_exact(image.pixels, entry.lut)
            elif entry.lut is not None:
                pixels = self._look(key, entry.lut)(image.pixels)
            else:
                pixels = stylize_pixels(image.pixels, result.inference, entry.M)
            data = encode_image(pixels, self._ext, self._quality)
            params = {"style": key, "style_kind": entry.kind, "style_uri": storage.redact(entry.uri),
                      "weights": self._weights_name}
            row = ManifestRow(
                key=image.key, task=TASK, source_uri=image.source_uri, width=image.width, height=image.height,
                model_name=self._model_name, model_sha256=sha, params=to_json(params), style=key,
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
        look = o.method == "look"
        handler_kw = dict(weights=o.weights, expected_sha256=o.weights_sha256, device=o.device, batch_size=o.batch_size)
        styles = (
            units.pipeline
            | "Styles" >> beam.Create(list(o.styles))
            | ("FitLooks" if look else "EncodeStyles") >> RunInference(
                LookHandler(**handler_kw) if look else StyleHandler(**handler_kw))
            | "StyleByKey" >> beam.Map(lambda pr: (pr.inference.key, pr.inference))
        )
        split = units | "Decode" >> beam.ParDo(SplitDecodedFn(max_pixels=o.max_pixels)).with_outputs("errors", main="ok")
        model_name = o.method  # the manifest's model_name: "look" or "dncm"
        errors = split.errors | "ErrorRows" >> beam.ParDo(
            ErrorRowsFn(style_keys=tuple(s.key for s in o.styles), sha256=o.weights_sha256, model_name=model_name))
        contents = split.ok if look else (
            split.ok | "Normalize" >> RunInference(ContentHandler(output="z" if o.exact else "curves", **handler_kw)))
        stylized = contents | "ApplyStyles" >> beam.ParDo(
            StylizeFn(image_format=o.image_format, quality=o.quality, weights_name=storage.basename(o.weights),
                      model_name=model_name, model_sha256=o.weights_sha256, exact=o.exact),
            styles=beam.pvalue.AsDict(styles))
        return (stylized, errors) | "AllRows" >> beam.Flatten()


def parse_styles(text: str, method: str = "dncm") -> tuple[StyleSource, ...]:
    refs = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not refs:
        raise JobError("--style needs at least one reference image or preset")
    try:
        return tuple(style_source(ref, method) for ref in refs)
    except (ValueError, OSError) as exc:
        raise JobError(f"--style: {exc}") from None


def resolve_weights(url: str | None, method: str = "dncm") -> tuple[str, str | None]:
    """``--weights`` (default: the shipped DNCM, or for ``look`` the shipped restorer) →
    (URL, expected full sha256 or None)."""
    if url is None and method == "look":
        from chromabeam.pipelines.restore import default_weights as restorer_weights

        return restorer_weights()
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
                   help="reference image URLs, looks (.cube; --method look), DNCM presets (.json; --method dncm) "
                        "or shipped preset names (warm, teal-orange, faded, mono)")
    g.add_argument("--method", choices=METHODS, default="look",
                   help="look: fit each reference's look with the restorer, apply it as a LUT (default; "
                        "docs/stylize.md measures both); dncm: Neural Preset's DNCM")
    g.add_argument("--weights", metavar="URL", default=None,
                   help="the restorer (look) or DNCM (dncm) safetensors (default: the shipped weights)")
    g.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)} (cuda[:N]); CUDA where none exists is an error")
    g.add_argument("--batch-size", type=int, default=8, help="images per encoder batch")
    g.add_argument("--exact", action="store_true",
                   help="apply in float at full resolution (look: the LUT in torch; dncm: Z, then sDNCM) instead "
                        "of a LUT on the 8-bit pixels in Pillow (faster; within a few levels)")


def options_from_args(args: argparse.Namespace) -> StylizeOptions:
    try:
        resolve_device(args.device)
    except DeviceError as exc:
        raise JobError(str(exc)) from None
    method = getattr(args, "method", "look")
    weights, sha = resolve_weights(args.weights, method)
    return StylizeOptions(
        styles=parse_styles(args.style, method), weights=weights, weights_sha256=sha, device=args.device, method=method,
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
        "device": args.device, "batch_size": options.batch_size, "method": options.method,
        "image_format": options.image_format, "quality": options.quality, "exact": options.exact,
    }
    config = JobConfig(output=args.output.rstrip("/"), task=TASK, layout=getattr(args, "layout", "webdataset"),
                       shard_size=getattr(args, "shard_size", 256), max_error_rate=getattr(args, "max_error_rate", 0.5),
                       overwrite=getattr(args, "overwrite", False), params=params)
    summary = run(args.input, config, options, beam_args)
    c = summary["counts"]
    print(f"stylize: {c['rows']} rows ({c['ok']} ok, {c['error']} error) → {storage.redact(config.output)}")
    return exit_status(summary, config.max_error_rate)


DEMO_REFERENCE = ("chelsea.jpg", "1977")  # a bundled photo and the IFFI filter that makes the demo's reference


def demo(output: str, beam_args: list[str]) -> dict:
    """Stylize the bundled demo photos with the shipped looks (.cube presets) and with the
    look of one reference image — a bundled photo through an IFFI filter, written to
    OUTPUT/styles/ — fitted by the restorer; returns the summary."""
    from chromabeam.pipelines.demo import photos_url
    from chromabeam.pipelines.preset import shipped_presets
    from chromabeam.transforms.ops import synth
    from chromabeam.transforms.ops.imageio import decode_image

    photo, filter_name = DEMO_REFERENCE
    spec = {"family": "filter", "id": filter_name, "strength": 1.0, "params": None, "perturb": []}
    reference = storage.join(output, "styles", f"{filter_name}-look.jpg")
    pixels = synth.render(decode_image(storage.read_bytes(storage.join(photos_url(), photo))), spec)
    storage.put_atomic(reference, encode_image(pixels, "jpg", 95))
    weights, sha = resolve_weights(None, "look")
    styles = tuple(style_source(url, "look") for url in [*shipped_presets("look"), reference])
    options = StylizeOptions(styles=styles, weights=weights, weights_sha256=sha, device="cpu", method="look")
    config = JobConfig(output=storage.join(output, "stylized"), task=TASK, overwrite=True,
                       params={"demo": True, "styles": [s.key for s in styles], "method": "look"})
    summary = run(photos_url(), config, options, beam_args)
    summary["output_name"] = "stylized"
    return summary
