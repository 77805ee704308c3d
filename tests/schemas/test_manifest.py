"""The schema module is the one source of manifest columns: check its contracts."""
import io

import pyarrow.parquet as pq
import pytest

from chromabeam.schemas.manifest import (
    COMMON, SCHEMA_VERSION, TASKS, ManifestRow, check_table, manifest_schema, rows_to_table, to_json,
)

DESIGN_COMMON = ["key", "source_uri", "output_uri", "status", "error", "width", "height", "task",
                 "model_name", "model_sha256", "params", "schema_version"]


def test_every_task_has_the_design_cards_common_columns_first():
    assert [f.name for f in COMMON] == DESIGN_COMMON
    for task in TASKS:
        assert manifest_schema(task).names[: len(DESIGN_COMMON)] == DESIGN_COMMON


def test_task_extras():
    assert {"psnr", "ssim", "delta_e2000", "lpips"} <= set(manifest_schema("evaluate").names)
    assert {"pair_index", "input_uri", "target_uri", "transform"} <= set(manifest_schema("synth-pairs").names)
    assert "psnr" not in manifest_schema("synth-pairs").names
    assert "style" in manifest_schema("stylize").names
    with pytest.raises(ValueError, match="unknown task"):
        manifest_schema("nope")


def test_error_rows_need_a_reason_and_status_is_checked():
    with pytest.raises(ValueError, match="needs a reason"):
        ManifestRow(key="a", task="evaluate", status="error")
    with pytest.raises(ValueError, match="status"):
        ManifestRow(key="a", task="evaluate", status="maybe")


def test_parquet_round_trip_sorted_and_validated():
    rows = [
        ManifestRow(key="b", task="synth-pairs", pair_index=1, transform=to_json({"z": 1, "a": [1, 2]})),
        ManifestRow(key="b", task="synth-pairs", pair_index=0),
        ManifestRow.error_row("a", "synth-pairs", "cannot decode", pair_index=0),
    ]
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows, "synth-pairs"), buf)
    table = pq.read_table(io.BytesIO(buf.getvalue()))
    assert check_table(table) == "synth-pairs"
    got = table.to_pylist()
    assert [(r["key"], r["pair_index"]) for r in got] == [("a", 0), ("b", 0), ("b", 1)]
    assert got[2]["transform"] == '{"a":[1,2],"z":1}'
    assert all(r["schema_version"] == SCHEMA_VERSION for r in got)
    assert got[0]["status"] == "error" and got[0]["error"] == "cannot decode"


def test_check_table_rejects_other_versions():
    table = rows_to_table([ManifestRow(key="a", task="restore")], "restore")
    old = table.replace_schema_metadata({b"chromabeam.schema_version": b"0", b"chromabeam.task": b"restore"})
    with pytest.raises(ValueError, match="schema version 0"):
        check_table(old)
