"""Decode step: ImageRecord → DecodedImage, or an error row with the decoder's reason."""
from __future__ import annotations

import apache_beam as beam

from chromabeam.schemas.manifest import ManifestRow
from chromabeam.schemas.records import DecodedImage, ImageRecord, ReadError
from chromabeam.transforms.ops.imageio import DEFAULT_MAX_PIXELS, DecodeError, decode_image


def decode_record(record: ImageRecord | ReadError, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage | ReadError:
    """Decode one record; failures come back as ReadError with a reason a person can act on."""
    if isinstance(record, ReadError):
        return record
    try:
        pixels = decode_image(record.data, max_pixels=max_pixels)
    except DecodeError as exc:
        return ReadError(record.key, record.source_uri, str(exc))
    return DecodedImage(record.key, record.source_uri, pixels, dict(record.meta))


def error_row(failure: ReadError, task: str, **kw) -> ManifestRow:
    return ManifestRow.error_row(failure.key, task, failure.reason, source_uri=failure.source_uri, **kw)


class DecodeFn(beam.DoFn):
    """ImageRecord | ReadError → DecodedImage | ReadError, counting failures by kind."""

    def __init__(self, *, max_pixels: int = DEFAULT_MAX_PIXELS):
        self._max_pixels = max_pixels
        self._errors = beam.metrics.Metrics.counter("chromabeam", "decode_errors")

    def process(self, record):
        out = decode_record(record, max_pixels=self._max_pixels)
        if isinstance(out, ReadError):
            self._errors.inc()
        yield out
