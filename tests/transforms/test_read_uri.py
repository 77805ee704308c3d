"""read_uri / read_uris: the image a manifest URI names (plain URL, SHARD.tar#member,
FILE.parquet#row=N), on local files, memory:// and the GCS emulator.

The expected bytes are the ones the test put into the shard (built with tests/corpus.py,
tarfile and pyarrow), and every ``source_uri`` that ``read_shard`` hands out must resolve
back to that record's bytes.
"""
from __future__ import annotations

import io
import time
import uuid

import corpus
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chromabeam.schemas.records import ImageRecord
from chromabeam.transforms.read import read_shard, read_uri, read_uris
from chromabeam.transforms.storage import StorageError

IMAGES = {f"k{i}": corpus.jpeg(32, 24, seed=i) for i in range(5)}


def _parquet(rows, row_group_size=None) -> bytes:
    table = pa.table({"key": pa.array([k for k, _ in rows], pa.string()),
                      "image": pa.array([v for _, v in rows], pa.binary())})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path):
    tar = tmp_path / "shard-0.tar"
    tar.write_bytes(corpus.wds_tar(list(IMAGES.items()), extra={"k1": {"json": b'{"a": 1}'}}))
    parquet = tmp_path / "shard-1.parquet"
    parquet.write_bytes(_parquet(list(IMAGES.items()) + [("null", None)], row_group_size=2))
    (tmp_path / "plain.png").write_bytes(corpus.png(20, 10))
    return tmp_path


def test_plain_tar_member_and_parquet_row(shards):
    assert read_uri(str(shards / "plain.png")) == corpus.png(20, 10)
    assert read_uri(f"file://{shards}/plain.png") == corpus.png(20, 10)
    assert read_uri(f"{shards}/shard-0.tar#k3.jpg") == IMAGES["k3"]
    assert read_uri(f"{shards}/shard-0.tar#k1.json") == b'{"a": 1}'
    # rows 0..4 span three row groups of 2; each is read from its own group
    for i, key in enumerate(IMAGES):
        assert read_uri(f"{shards}/shard-1.parquet#row={i}") == IMAGES[key]


def test_every_source_uri_from_read_shard_resolves_to_its_bytes(shards):
    for shard in ("shard-0.tar", "shard-1.parquet", "plain.png"):
        records = [r for r in read_shard(str(shards / shard)) if isinstance(r, ImageRecord)]
        assert records
        got = read_uris([r.source_uri for r in records])
        for r in records:
            assert got[r.source_uri] == r.data, r.source_uri


def test_absent_members_and_rows_are_value_errors_naming_them(shards):
    with pytest.raises(ValueError, match=r"no member 'k9.jpg'"):
        read_uri(f"{shards}/shard-0.tar#k9.jpg")
    with pytest.raises(ValueError, match=r"has 6 rows; no row 6"):
        read_uri(f"{shards}/shard-1.parquet#row=6")
    with pytest.raises(ValueError, match=r"image is NoneType"):
        read_uri(f"{shards}/shard-1.parquet#row=5")
    with pytest.raises(ValueError, match=r"expected '#row=N'"):
        read_uri(f"{shards}/shard-1.parquet#k1")
    with pytest.raises(ValueError, match=r"over the limit"):
        read_uri(f"{shards}/shard-0.tar#k2.jpg", max_bytes=100)


def test_missing_objects_are_storage_errors(shards):
    with pytest.raises(StorageError, match="does not exist"):
        read_uri(f"{shards}/nope.jpg")
    with pytest.raises(StorageError, match="does not exist"):
        read_uri(f"{shards}/nope.tar#k1.jpg")


def test_damaged_shards_give_reasons(tmp_path):
    samples = list(IMAGES.items())
    cut = tmp_path / "cut.tar"
    cut.write_bytes(corpus.truncated_tar(samples, cut_in=2))
    assert read_uri(f"{cut}#k0.jpg") == IMAGES["k0"]  # before the cut: fine
    with pytest.raises(ValueError, match="unreadable tar shard"):
        read_uri(f"{cut}#k2.jpg")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ValueError, match="unreadable Parquet file"):
        read_uri(f"{bad}#row=0")


def test_read_uris_groups_by_shard_and_honours_the_deadline(shards):
    uris = [f"{shards}/shard-0.tar#{k}.jpg" for k in reversed(IMAGES)] + [f"{shards}/shard-0.tar#k9.jpg"]
    got = read_uris(uris + uris[:2])  # repeats are read once and answered for each
    assert set(got) == set(uris)
    assert [got[u] for u in uris[:-1]] == [IMAGES[k] for k in reversed(IMAGES)]
    assert isinstance(got[uris[-1]], ValueError)
    late = read_uris(uris[:2], deadline=time.monotonic() - 1)
    assert all(isinstance(v, TimeoutError) for v in late.values())


def test_key_with_hash_and_memory_urls():
    root = f"memory://chromabeam-test-{uuid.uuid4().hex}"
    try:
        with fsspec.open(f"{root}/a#b/s.tar", "wb") as fh:  # '#' in a folder name: the .tar# split still finds the shard
            fh.write(corpus.tar_bytes([("x#1.jpg", IMAGES["k0"])]))
        assert read_uri(f"{root}/a#b/s.tar#x#1.jpg") == IMAGES["k0"]
    finally:
        fsspec.filesystem("memory").rm(root, recursive=True)


@pytest.mark.objectstore
@pytest.mark.timeout(60)
def test_gcs_emulator(gcs_emulator):
    bucket = gcs_emulator.create_bucket()
    gcs_emulator.write_object(f"{bucket}/in/s.tar", corpus.wds_tar(list(IMAGES.items())))
    gcs_emulator.write_object(f"{bucket}/in/p.parquet", _parquet(list(IMAGES.items())))
    assert read_uri(f"{bucket}/in/s.tar#k4.jpg") == IMAGES["k4"]
    assert read_uri(f"{bucket}/in/p.parquet#row=1") == IMAGES["k1"]
    with pytest.raises(StorageError, match="does not exist"):
        read_uri("gs://no-such-bucket-x/in/s.tar#k4.jpg")
