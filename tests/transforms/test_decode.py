"""Decode step: ImageRecord → DecodedImage, failures → ReadError rows with the reason.

Reference pixels come from Pillow directly (``Image.open(...).convert('RGB')``).
"""
from __future__ import annotations

import io

import apache_beam as beam
import corpus
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from chromabeam.schemas.manifest import STATUS_ERROR
from chromabeam.schemas.records import DecodedImage, ImageRecord, ReadError
from chromabeam.transforms.decode import DecodeFn, decode_record, error_row

JPG = corpus.jpeg(40, 30)


def test_good_record_decodes_with_provenance():
    meta = {"member": "k.jpg", "json": "{}"}
    record = ImageRecord("k", "memory://b/s.tar#k.jpg", JPG, meta)
    out = decode_record(record)
    assert isinstance(out, DecodedImage)
    assert (out.key, out.source_uri, out.meta) == ("k", "memory://b/s.tar#k.jpg", meta)
    assert out.meta is not record.meta  # a copy: later steps may add to it
    assert (out.width, out.height) == (40, 30)
    np.testing.assert_array_equal(out.pixels, np.asarray(Image.open(io.BytesIO(JPG)).convert("RGB")))


def test_oriented_record_reports_upright_size():
    out = decode_record(ImageRecord("o", "file:///o.jpg", corpus.oriented_jpeg(8)))
    assert (out.width, out.height) == (24, 40)


def test_bad_record_becomes_read_error_with_reason():
    out = decode_record(ImageRecord("h", "gs://b/h.jpg", corpus.html_error_page()))
    assert isinstance(out, ReadError)
    assert (out.key, out.source_uri) == ("h", "gs://b/h.jpg")
    assert "HTML" in out.reason


def test_read_error_passes_through_unchanged():
    err = ReadError("x", "gs://b/s.tar", "unreadable tar shard: at the start")
    assert decode_record(err) is err


def test_max_pixels_is_passed_on():
    record = ImageRecord("k", "u", corpus.png(64, 48))
    assert isinstance(decode_record(record, max_pixels=64 * 48), DecodedImage)
    out = decode_record(record, max_pixels=64 * 48 - 1)
    assert isinstance(out, ReadError) and "64x48" in out.reason and "limit" in out.reason


def test_error_row():
    row = error_row(ReadError("k", "gs://b/k.jpg", "truncated image data: 10 bytes"), "restore")
    assert (row.key, row.task, row.status, row.error, row.source_uri) == (
        "k",
        "restore",
        STATUS_ERROR,
        "truncated image data: 10 bytes",
        "gs://b/k.jpg",
    )


def test_decode_fn_in_pipeline_counts_errors():
    from chromabeam.pipelines.job import make_pipeline

    records = [
        ImageRecord("good-jpg", "u0", JPG),
        ImageRecord("good-cmyk", "u1", corpus.cmyk_jpeg(16, 16)),
        ImageRecord("empty", "u2", corpus.EMPTY),
        ImageRecord("bomb", "u3", corpus.png_bomb()),
        ReadError("shard", "u4", "unreadable tar shard: at the start"),
    ]
    p = make_pipeline([])
    out = (
        p
        | beam.Create(records)
        | beam.ParDo(DecodeFn())
        | beam.Map(lambda r: (r.key, type(r).__name__, r.pixels.shape if isinstance(r, DecodedImage) else r.reason.split(":")[0]))
    )
    assert_that(
        out,
        equal_to(
            [
                ("good-jpg", "DecodedImage", (30, 40, 3)),
                ("good-cmyk", "DecodedImage", (16, 16, 3)),
                ("empty", "ReadError", "empty file"),
                ("bomb", "ReadError", "image over the pixel limit"),
                ("shard", "ReadError", "unreadable tar shard"),
            ]
        ),
    )
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("decode_errors"))["counters"]
    # Upstream read errors pass through and are counted too: three error rows leave this step.
    assert sum(c.committed for c in counters) == 3
