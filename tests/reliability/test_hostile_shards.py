"""Hostile and broken shards through a real `chromabeam synth-pairs` run: path-traversal
and absolute member names, duplicate keys, non-image members, a truncated tar, Parquet with
a missing column, extra columns, null or non-bytes images and traversal keys. Each gives
its own error row (or one row naming the shard); the good records around them all come
out; nothing is written outside OUTPUT. (read_shard's handling of each case alone is in
tests/transforms/test_read.py; this checks the whole job.)"""
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import corpus
from chromabeam.pipelines.cli import main

pytestmark = pytest.mark.timeout(180)

IMG = corpus.jpeg(48, 32, seed=3)

# key → (status, words in the error) for every manifest row the inputs must produce
EXPECTED = {
    # hostile.tar (corpus.hostile_tar)
    "good1": ("ok", None),
    "../evil": ("error", "path traversal"),
    "/abs/evil": ("error", "absolute path"),
    "dir/nested": ("error", "path separator"),
    "notes": ("error", "no image member"),
    "dup": ("ok", None),  # + a second "dup" row: duplicate key (checked below)
    "good2": ("ok", None),
    # trunc.tar: two samples, then cut inside the third's data
    "t0": ("ok", None),
    "t1": ("ok", None),
    "trunc": ("error", "unreadable tar shard: after 2 samples"),
    # noimage.parquet: no `image` column
    "noimage": ("error", "lacks column(s) ['image']"),
    # extra.parquet: extra columns, null image, null key, traversal keys, a dotted key
    "p0": ("ok", None),
    "p1": ("error", "image column is null"),
    "extra-row2": ("error", "empty key"),
    "../../escape": ("error", "path traversal"),
    "/etc/evil": ("error", "absolute path"),
    "dots.in.key": ("ok", None),
    # ints.parquet: an `image` column of integers
    "i0": ("error", "image column holds int, not bytes"),
    "i1": ("error", "image column holds int, not bytes"),
    # a plain file
    "plain": ("ok", None),
}


def _inputs(folder):
    folder.mkdir()
    (folder / "hostile.tar").write_bytes(corpus.hostile_tar(IMG))
    samples = [(f"t{i}", corpus.jpeg(40, 32, seed=10 + i)) for i in range(4)]
    (folder / "trunc.tar").write_bytes(corpus.truncated_tar(samples, cut_in=2, where="data"))
    (folder / "noimage.parquet").write_bytes(corpus.parquet_shard([("n0", IMG)], image_column="img"))
    rows = [("p0", IMG), ("p1", None), (None, IMG), ("../../escape", IMG), ("/etc/evil", IMG), ("dots.in.key", IMG)]
    (folder / "extra.parquet").write_bytes(corpus.parquet_shard(
        rows, image_first=True, extra_columns={"caption": ["c"] * len(rows), "score": list(range(len(rows)))}))
    pq.write_table(pa.table({"key": ["i0", "i1"], "image": [1, 2]}), str(folder / "ints.parquet"))
    (folder / "plain.jpg").write_bytes(corpus.jpeg(40, 40, seed=20))
    return folder


def _tree(root):
    return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


@pytest.mark.parametrize("layout", ["webdataset", "files"])
def test_hostile_inputs_give_error_rows_and_write_only_inside_output(tmp_path, layout):
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "job" / "out"
    out.parent.mkdir()
    (out.parent / "sibling.txt").write_text("untouched")
    before = _tree(tmp_path)
    code = main(["synth-pairs", str(inputs), str(out), "--format", layout, "--max-error-rate", "1"])
    assert code == 0

    rows = pq.read_table(str(out / "manifest")).to_pylist()
    by_key = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    assert set(by_key) == set(EXPECTED), sorted(set(by_key) ^ set(EXPECTED))
    assert len(rows) == len(EXPECTED) + 1  # the second "dup"
    for key, (status, words) in EXPECTED.items():
        if key == "dup":
            continue
        (row,) = by_key[key]
        assert row["status"] == status, (key, row["error"])
        if words:
            assert words in row["error"], (key, row["error"])
        else:
            assert row["error"] is None and row["input_uri"] and row["target_uri"]
    dups = sorted(by_key["dup"], key=lambda r: r["status"])
    assert [d["status"] for d in dups] == ["error", "ok"]
    assert "duplicate key 'dup'" in dups[0]["error"]
    assert by_key["trunc"][0]["source_uri"].endswith("trunc.tar")  # the row names the shard

    # Every new file is under OUTPUT; nothing appeared beside it or where the keys point.
    new = _tree(tmp_path) - before
    assert new and all(p.startswith(str(out) + os.sep) for p in new), sorted(new)
    assert (out.parent / "sibling.txt").read_text() == "untouched"
    for escaped in ("/abs/evil.jpg", "/etc/evil", str(tmp_path / "evil.jpg"), str(tmp_path / "escape")):
        assert not os.path.exists(escaped)
    # Output names are plain: no separators or '..' in tar members or file names.
    for path in _tree(out / "images"):
        names = [os.path.basename(path)]
        if path.endswith(".tar"):
            with tarfile.open(path) as tar:
                names = tar.getnames()
        for name in names:
            assert "/" not in name and not name.startswith(".."), name
    uris = [r[c] for r in rows for c in ("input_uri", "target_uri") if r[c]]
    assert uris and all(u.startswith(str(out / "images") + os.sep) for u in uris)
