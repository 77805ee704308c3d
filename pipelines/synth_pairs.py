"""``chromabeam synth-pairs INPUT OUTPUT``: reproducible training pairs from image shards.

Each record is decoded once and yields ``--pairs-per-image`` rows. Every random choice is
drawn from (seed, key, pair index) by ``transforms.ops.synth`` and written to the row's
``transform`` JSON, so any pair can be regenerated from the manifest alone, and the same
command writes the same bytes whatever the worker count or order.

Modes: ``removal`` (input = transformed image, target = original — the filter-removal
training recipe) and ``preset`` (two differently transformed views of one image, Neural
Preset's I_i / I_j).
"""
from __future__ import annotations

import dataclasses

import apache_beam as beam

from chromabeam.pipelines.job import JobConfig, JobError, run_job
from chromabeam.schemas.manifest import ManifestRow, to_json
from chromabeam.schemas.records import ImageRecord, OutputImage, ReadError, TaskResult
from chromabeam.transforms import storage
from chromabeam.transforms.decode import decode_record
from chromabeam.transforms.ops import synth
from chromabeam.transforms.ops.imageio import DEFAULT_MAX_PIXELS, encode_image, extension, is_plain_jpeg
from chromabeam.transforms.ops.lut import LUT3D, parse_cube
from chromabeam.transforms.read import ReadImages

TASK = "synth-pairs"


@dataclasses.dataclass(frozen=True)
class PairsOptions:
    synth: synth.SynthConfig
    pairs_per_image: int = 1
    seed: int = 0
    image_format: str = "jpg"
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.pairs_per_image < 1:
            raise JobError("--pairs-per-image must be at least 1")
        if not 1 <= self.quality <= 100:
            raise JobError("--quality must be within 1..100")


def load_luts(url: str | None) -> dict[str, LUT3D]:
    """Read a LUT pack (a .cube file, folder or glob on any URL) → {name: LUT3D}.

    Names are file stems; a malformed file stops the job before it starts, naming the
    file and line.
    """
    if not url:
        return {}
    urls = storage.expand(url, extensions=(".cube",))
    if not urls:
        raise JobError(f"--luts {storage.redact(url)}: no .cube files found")
    luts: dict[str, LUT3D] = {}
    for u in urls:
        name = storage.basename(u).rsplit(".", 1)[0]
        if name in luts:
            raise JobError(f"--luts: two LUT files are named {name!r}; LUT names must be unique")
        try:
            luts[name] = parse_cube(storage.read_bytes(u).decode("utf-8", "replace"), name=name)
        except ValueError as exc:
            raise JobError(f"--luts: {storage.redact(u)}: {exc}") from None
    return luts


class SynthPairsFn(beam.DoFn):
    """(key, ImageRecord | ReadError) → one TaskResult per pair."""

    def __init__(self, options: PairsOptions, luts: dict[str, LUT3D]):
        missing = sorted(set(options.synth.luts) - set(luts))
        if missing:
            raise JobError(f"LUT ids {missing} are not in the LUT pack")
        self._o = options
        self._luts = luts
        self._pairs = beam.metrics.Metrics.counter("chromabeam", "pairs")

    def _rows(self, key, source, reason, **kw):
        for i in range(self._o.pairs_per_image):
            yield TaskResult(ManifestRow.error_row(key, TASK, reason, source_uri=source, pair_index=i, **kw))

    def process(self, unit):
        key, record = unit
        decoded = decode_record(record, max_pixels=self._o.max_pixels)
        if isinstance(decoded, ReadError):
            yield from self._rows(key, decoded.source_uri, decoded.reason)
            return
        o = self._o
        ext = extension(o.image_format)
        target_bytes = None
        for i in range(o.pairs_per_image):
            spec = synth.pair_spec(o.synth, o.seed, key, i)
            try:
                inp, tgt = synth.render_pair(decoded.pixels, spec, self._luts)
            except Exception as exc:  # a transform failing on one image must not stop the job
                yield TaskResult(ManifestRow.error_row(
                    key, TASK, f"transform failed: {type(exc).__name__}: {exc}", source_uri=decoded.source_uri, pair_index=i))
                continue
            input_bytes = encode_image(inp, ext, o.quality)
            if o.synth.mode == "removal":
                # The target is the original: a plain JPEG source is kept byte for byte (no
                # generation loss); anything else is encoded once and reused for every pair.
                if target_bytes is None:
                    passthrough = ext == "jpg" and isinstance(record, ImageRecord) and is_plain_jpeg(record.data)
                    target_bytes = record.data if passthrough else encode_image(decoded.pixels, ext, o.quality)
                this_target = target_bytes
            else:
                this_target = encode_image(tgt, ext, o.quality)
            row = ManifestRow(
                key=key, task=TASK, source_uri=decoded.source_uri, pair_index=i,
                width=decoded.width, height=decoded.height, transform=to_json(spec),
            )
            self._pairs.inc()
            yield TaskResult(row, (OutputImage(f"input.{ext}", input_bytes, "input_uri"),
                                   OutputImage(f"target.{ext}", this_target, "target_uri")))


def run(input_url: str, config: JobConfig, options: PairsOptions, luts: dict[str, LUT3D], beam_args: list[str]) -> dict:
    reader = ReadImages(input_url)

    def read(p: beam.Pipeline):
        return p | "Read" >> reader | "ByKey" >> beam.Map(lambda r: (r.key, r))

    return run_job(config, beam_args, read, beam.ParDo(SynthPairsFn(options, luts)))
