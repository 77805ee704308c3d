"""Shard reading: WebDataset tars, Parquet key/image shards, image files, listing.

Shards come from tests/corpus.py; the ``webdataset`` library reads the same tars back as
an independent check that they are real WebDataset shards.
"""
from __future__ import annotations

import uuid

import apache_beam as beam
import corpus
import fsspec
import pytest
from apache_beam.testing.util import assert_that, equal_to

from chromabeam.schemas.records import ImageRecord, ReadError
from chromabeam.transforms.read import ReadImages, key_problem, list_shards, read_shard, shard_format
from chromabeam.transforms.storage import StorageError

JPG = corpus.jpeg(32, 24)
PNG = corpus.png(32, 24, seed=1)


def kinds(records) -> list[tuple[str, str]]:
    return [(type(r).__name__, r.key) for r in records]


def write(path, data: bytes) -> str:
    with fsspec.open(str(path), "wb") as fh:
        fh.write(data)
    return str(path)


@pytest.fixture
def mem():
    """A fresh memory:// folder, removed afterwards (the memory filesystem is global)."""
    root = f"memory://chromabeam-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


# --------------------------------------------------------------------------- keys, formats, listing


@pytest.mark.parametrize(
    "key, webdataset, needle",
    [
        ("", False, "empty key"),
        (None, False, "empty key"),
        ("a/b", False, "path separator"),
        ("a\\b", False, "path separator"),
        ("a..b", False, "'..'"),
        ("..", False, "'..'"),
        (".", False, "'.'"),
        ("a\x00b", False, "NUL"),
        ("../x", True, "path traversal"),
        ("/abs/x", True, "absolute path"),
        ("a.b", True, "WebDataset key 'a.b' contains '.'"),
        ("x" * 513, False, "limit 512"),
    ],
)
def test_key_problem_rejects(key, webdataset, needle):
    problem = key_problem(key, webdataset=webdataset)
    assert problem is not None and needle in problem, problem


@pytest.mark.parametrize("key, webdataset", [("a.b", False), ("img_000017", True), ("x" * 512, True), ("ünï-cödé", True)])
def test_key_problem_accepts(key, webdataset):
    assert key_problem(key, webdataset=webdataset) is None


def test_shard_format():
    assert shard_format("gs://b/x/shard-0001.TAR") == "webdataset"
    assert shard_format("s3://b/part.parquet") == "parquet"
    for name in ("a.jpg", "a.JPEG", "a.png", "a.webp", "a.tif", "a.tiff"):
        assert shard_format(f"memory://b/{name}") == "image"
    with pytest.raises(ValueError, match="unsupported extension"):
        shard_format("memory://b/notes.txt")


def test_list_shards_folder_sorted_and_filtered(tmp_path):
    for name in ("b.tar", "a.parquet", "sub/c.jpg", "notes.txt", "d.PNG"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    shards = list_shards(str(tmp_path))
    assert shards == sorted(str(tmp_path / n) for n in ("a.parquet", "b.tar", "d.PNG", "sub/c.jpg"))
    assert list_shards(str(tmp_path / "*.tar")) == [str(tmp_path / "b.tar")]


def test_list_shards_empty_or_missing_raises(tmp_path, mem):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "readme.txt").write_text("hi")
    for url in (str(tmp_path / "empty"), str(tmp_path / "only-text"), str(tmp_path / "missing")):
        with pytest.raises(StorageError, match="no input found|does not exist"):
            list_shards(url)
    fsspec.filesystem("memory").mkdir(f"{mem}/empty")
    with pytest.raises(StorageError):
        list_shards(f"{mem}/empty")


# --------------------------------------------------------------------------- WebDataset tars


def test_tar_groups_samples_in_order(tmp_path):
    samples = [("s000", JPG), ("s001", PNG), ("s002", JPG)]
    tar = corpus.wds_tar(
        samples,
        extra={"s000": {"json": b'{"caption": "first"}', "txt": b"t"}, "s002": {"cls": b"3"}},
    )
    url = write(tmp_path / "shard.tar", tar)
    records = list(read_shard(url))
    assert kinds(records) == [("ImageRecord", "s000"), ("ImageRecord", "s001"), ("ImageRecord", "s002")]
    assert [r.data for r in records] == [JPG, PNG, JPG]
    assert records[0].meta == {"member": "s000.jpg", "json": '{"caption": "first"}'}
    assert records[1].meta == {"member": "s001.jpg"}
    assert records[0].source_uri == f"{url}#s000.jpg"


def test_tar_image_member_picked_by_extension(tmp_path):
    tar = corpus.tar_bytes(
        [("a.json", b"{}"), ("a.png", PNG), ("a.txt", b"hello"), ("b.txt", b"x"), ("b.webp", b"WEBPDATA")]
    )
    records = list(read_shard(write(tmp_path / "s.tar", tar)))
    assert kinds(records) == [("ImageRecord", "a"), ("ImageRecord", "b")]
    assert records[0].data == PNG and records[0].meta == {"member": "a.png", "json": "{}"}
    assert records[1].data == b"WEBPDATA" and records[1].source_uri.endswith("#b.webp")


def test_tar_hostile_members_become_errors(tmp_path):
    url = write(tmp_path / "hostile.tar", corpus.hostile_tar(JPG))
    records = list(read_shard(url))
    assert kinds(records) == [
        ("ImageRecord", "good1"),
        ("ReadError", "../evil"),
        ("ReadError", "/abs/evil"),
        ("ReadError", "dir/nested"),
        ("ReadError", "notes"),
        ("ImageRecord", "dup"),
        ("ImageRecord", "good2"),
        ("ImageRecord", "dup"),
    ]
    errors = {r.key: r.reason for r in records if isinstance(r, ReadError)}
    assert "'..'" in errors["../evil"] and "traversal" in errors["../evil"]
    assert "absolute path" in errors["/abs/evil"]
    assert "path separator" in errors["dir/nested"]
    assert errors["notes"] == "sample has no image member (members: txt)"
    # No record ever carries a key that could escape an output folder.
    for r in records:
        if isinstance(r, ImageRecord):
            assert "/" not in r.key and ".." not in r.key
    # Duplicate keys both come out, each with its own bytes (dedup is the writer's job).
    assert [r.data for r in records if r.key == "dup"] == [JPG, JPG + b"\x00"]


def test_tar_adjacent_duplicate_members_both_come_out(tmp_path):
    tar = corpus.tar_bytes([("a.jpg", b"first"), ("a.jpg", b"second"), ("b.jpg", b"third")])
    records = list(read_shard(write(tmp_path / "d.tar", tar)))
    assert [(r.key, r.data) for r in records] == [("a", b"first"), ("a", b"second"), ("b", b"third")]


def test_tar_sample_without_image_lists_members(tmp_path):
    tar = corpus.tar_bytes([("a.txt", b"x"), ("a.json", b"{}"), ("b.jpg", JPG)])
    records = list(read_shard(write(tmp_path / "t.tar", tar)))
    assert kinds(records) == [("ReadError", "a"), ("ImageRecord", "b")]
    assert records[0].reason == "sample has no image member (members: json, txt)"


def test_tar_member_over_max_bytes(tmp_path):
    tar = corpus.tar_bytes([("big.jpg", b"x" * 5000), ("small.jpg", b"y" * 10)])
    records = list(read_shard(write(tmp_path / "m.tar", tar), max_bytes=1000))
    assert kinds(records) == [("ReadError", "big"), ("ImageRecord", "small")]
    assert "5000 bytes, over the limit" in records[0].reason


SAMPLES = [(f"k{i}", corpus.jpeg(16, 16, seed=i)) for i in range(4)]


@pytest.mark.parametrize("where", ["data", "header", "boundary"])
def test_truncated_tar_keeps_earlier_samples_and_names_shard(tmp_path, where):
    url = write(tmp_path / "cut.tar", corpus.truncated_tar(SAMPLES, cut_in=2, where=where))
    records = list(read_shard(url))
    assert kinds(records) == [("ImageRecord", "k0"), ("ImageRecord", "k1"), ("ReadError", "cut")]
    assert [r.data for r in records[:2]] == [SAMPLES[0][1], SAMPLES[1][1]]
    err = records[-1]
    assert err.source_uri == url
    assert "tar shard" in err.reason and "after 2 samples" in err.reason and "later samples lost" in err.reason


def test_tar_with_garbled_header_is_reported(tmp_path):
    full = bytearray(corpus.wds_tar(SAMPLES))
    _, header, _ = corpus.member_offsets(bytes(full))[3]
    full[header : header + 512] = b"\x07" * 512
    records = list(read_shard(write(tmp_path / "g.tar", bytes(full))))
    assert kinds(records) == [("ImageRecord", f"k{i}") for i in range(3)] + [("ReadError", "g")]
    assert "corrupt member header" in records[-1].reason


@pytest.mark.parametrize("data, needle", [(b"", "empty file"), (b"not a tar at all" * 64, "unreadable tar shard")])
def test_unreadable_tar_is_one_error(tmp_path, data, needle):
    records = list(read_shard(write(tmp_path / "bad.tar", data)))
    assert kinds(records) == [("ReadError", "bad")]
    assert needle in records[0].reason and "at the start" in records[0].reason


def test_webdataset_library_reads_corpus_tars(tmp_path):
    import webdataset as wds

    samples = [("a0", JPG), ("b1", PNG), ("c2", JPG)]
    path = write(tmp_path / "w.tar", corpus.wds_tar(samples, extra={"b1": {"json": b'{"x": 1}'}}))
    got = list(wds.WebDataset(path, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in got] == ["a0", "b1", "c2"]
    assert [s["jpg"] for s in got] == [JPG, PNG, JPG]
    assert got[1]["json"] == b'{"x": 1}'
    assert [r.key for r in read_shard(path)] == [s["__key__"] for s in got]


# --------------------------------------------------------------------------- Parquet


def test_parquet_rows_in_order_across_batches(tmp_path):
    rows = [(f"r{i:03d}", corpus.encode(corpus.solid(4, 4, (i, 0, 0)), "PNG")) for i in range(40)]
    url = write(tmp_path / "p.parquet", corpus.parquet_shard(rows, extra_columns={"caption": ["c"] * 40}))
    records = list(read_shard(url))
    assert [(r.key, r.data) for r in records] == rows  # 40 rows span two 32-row batches
    assert all(isinstance(r, ImageRecord) for r in records)
    assert records[33].source_uri == f"{url}#row=33"


def test_parquet_column_order_does_not_matter(tmp_path):
    rows = [("a", JPG), ("b", PNG)]
    records = list(read_shard(write(tmp_path / "p.parquet", corpus.parquet_shard(rows, image_first=True))))
    assert [(r.key, r.data) for r in records] == rows


def test_parquet_null_image_and_null_key(tmp_path):
    rows = [("a", JPG), ("b", None), (None, PNG), ("c/d", PNG), ("e", PNG)]
    url = write(tmp_path / "n.parquet", corpus.parquet_shard(rows))
    records = list(read_shard(url))
    assert kinds(records) == [
        ("ImageRecord", "a"),
        ("ReadError", "b"),
        ("ReadError", "n-row2"),
        ("ReadError", "c/d"),
        ("ImageRecord", "e"),
    ]
    assert records[1].reason == "image column is null" and records[1].source_uri == f"{url}#row=1"
    assert records[2].reason == "empty key" and records[2].source_uri == f"{url}#row=2"
    assert "path separator" in records[3].reason


def test_parquet_missing_image_column_is_one_error(tmp_path):
    url = write(tmp_path / "m.parquet", corpus.parquet_shard([("a", JPG), ("b", PNG)], image_column="img"))
    records = list(read_shard(url))
    assert kinds(records) == [("ReadError", "m")]
    assert "['image']" in records[0].reason and "['key', 'img']" in records[0].reason


def test_parquet_corrupt_file_is_one_error(tmp_path):
    good = corpus.parquet_shard([("a", JPG)])
    records = list(read_shard(write(tmp_path / "c.parquet", good[: len(good) // 2])))
    assert kinds(records) == [("ReadError", "c")]
    assert "unreadable Parquet shard" in records[0].reason


# --------------------------------------------------------------------------- image files, memory://


def test_image_file_key_is_stem(tmp_path):
    url = write(tmp_path / "photo.v2.jpg", JPG)
    (rec,) = read_shard(url)
    assert isinstance(rec, ImageRecord)
    assert (rec.key, rec.source_uri, rec.data, rec.meta) == ("photo.v2", url, JPG, {})
    (err,) = read_shard(write(tmp_path / "big.png", PNG), max_bytes=10)
    assert isinstance(err, ReadError) and err.key == "big" and "over the size limit" in err.reason and "limit 10" in err.reason


def test_all_formats_from_memory_urls(mem):
    write(f"{mem}/in/a.tar", corpus.wds_tar([("t0", JPG), ("t1", PNG)]))
    write(f"{mem}/in/b.parquet", corpus.parquet_shard([("p0", PNG)]))
    write(f"{mem}/in/img/f0.png", PNG)
    shards = list_shards(f"{mem}/in")
    assert shards == [f"{mem}/in/a.tar", f"{mem}/in/b.parquet", f"{mem}/in/img/f0.png"]
    got = [(r.key, r.data, r.source_uri) for s in shards for r in read_shard(s)]
    assert got == [
        ("t0", JPG, f"{mem}/in/a.tar#t0.jpg"),
        ("t1", PNG, f"{mem}/in/a.tar#t1.jpg"),
        ("p0", PNG, f"{mem}/in/b.parquet#row=0"),
        ("f0", PNG, f"{mem}/in/img/f0.png"),
    ]
    # A truncated tar in memory is reported like one on disk.
    write(f"{mem}/cut.tar", corpus.truncated_tar(SAMPLES, cut_in=1))
    assert kinds(read_shard(f"{mem}/cut.tar")) == [("ImageRecord", "k0"), ("ReadError", "cut")]


# --------------------------------------------------------------------------- Beam


def test_read_images_transform(tmp_path):
    from chromabeam.pipelines.job import make_pipeline

    write(tmp_path / "shard-0.tar", corpus.wds_tar([("a0", JPG), ("a1", PNG)]))
    write(tmp_path / "shard-1.tar", corpus.tar_bytes([("b0.jpg", JPG), ("b1.txt", b"no image")]))
    write(tmp_path / "rows.parquet", corpus.parquet_shard([("c0", JPG), ("c1", PNG), ("c2", None)]))
    for name in ("d0.jpg", "d1.png", "d2.webp"):
        write(tmp_path / "files" / name, corpus.webp() if name.endswith("webp") else JPG)
    write(tmp_path / "files" / "README.txt", b"ignored")

    read = ReadImages(str(tmp_path))
    assert len(read.shards) == 6  # listed once, at construction
    p = make_pipeline([])
    out = p | read | beam.Map(lambda r: (type(r).__name__, r.key, len(getattr(r, "data", b""))))
    ok = [("ImageRecord", k) for k in ("a0", "a1", "b0", "c0", "c1", "d0", "d1", "d2")]
    expected = ok + [("ReadError", "b1"), ("ReadError", "c2")]
    assert_that(out | beam.Map(lambda t: (t[0], t[1])), equal_to(expected))
    assert_that(out | beam.Filter(lambda t: t[0] == "ImageRecord" and t[2] == 0), equal_to([]), label="NoEmptyImages")
    p.run().wait_until_finish()


def test_read_images_bad_url_fails_at_construction(tmp_path):
    with pytest.raises(StorageError, match="no input found"):
        ReadImages(str(tmp_path))
