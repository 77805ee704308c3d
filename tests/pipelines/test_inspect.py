"""``chromabeam inspect`` over manifests written by the jobs' part writer, locally and on the
GCS emulator, and the CLI's "errors worth reading" (mistyped URL, missing bucket, empty
glob, bad option) exercised through ``chromabeam.pipelines.cli.main``.

Independent reference for the quantiles: numpy.percentile (linear interpolation, which is
what DuckDB's quantile_cont computes) over the values the test wrote.
"""
from __future__ import annotations

import argparse
import re

import corpus
import numpy as np
import pytest

from chromabeam.pipelines.cli import main
from chromabeam.pipelines.inspect import add_inspect_arguments, inspect_command
from chromabeam.schemas.manifest import ManifestRow, to_json
from chromabeam.schemas.records import OutputImage, TaskResult
from chromabeam.transforms.write import WriteConfig, write_part

ONE_SCREEN = 25  # lines


def inspect(argv: list[str]) -> int:
    return inspect_command(add_inspect_arguments(argparse.ArgumentParser()).parse_args(argv))


def evaluate_manifest(out: str, n: int = 40, seed: int = 0) -> dict:
    """Two parts of an evaluate manifest: n ok rows (one identical pair: PSNR ∞) + 3 errors."""
    rng = np.random.default_rng(seed)
    psnr = {f"k{i:03d}": float(rng.uniform(15, 40)) for i in range(n)}
    psnr["k000"] = float("inf")
    rows = [ManifestRow(key=k, task="evaluate", psnr=v, ssim=float(rng.uniform(0.5, 1)),
                        delta_e2000=float(rng.uniform(0, 20)), source_uri=f"{out}/src/{k}.png") for k, v in psnr.items()]
    rows += [ManifestRow.error_row(f"lonely{i}", "evaluate", f"no reference image with key 'lonely{i}'") for i in range(2)]
    rows.append(ManifestRow.error_row("odd", "evaluate", "size mismatch: prediction 3x3, reference 4x4"))
    config = WriteConfig(out, "evaluate")
    write_part(config, "part-00000-of-00002", [TaskResult(r) for r in rows[::2]])
    write_part(config, "part-00001-of-00002", [TaskResult(r) for r in rows[1::2]])
    return psnr


def quantile_table(text: str) -> dict[str, list[float]]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s+(psnr|ssim|delta_e2000)\s+(\d+)\s+(.*)$", line)
        if m:
            out[m.group(1)] = [float(v) for v in m.group(3).split()]
    return out


def test_summary_counts_errors_and_quantiles(tmp_path, capsys):
    out = str(tmp_path / "out")
    psnr = evaluate_manifest(out)
    assert inspect([out]) == 0
    text = capsys.readouterr().out
    assert "[evaluate, no _SUCCESS" in text
    assert "rows 43 · records 43 · ok 40 · error 3" in text
    assert re.search(r"2  no reference image with key …\n\s+e\.g\. lonely0: no reference image with key 'lonely0'", text)
    assert re.search(r"1  size mismatch\n\s+e\.g\. odd: size mismatch: prediction 3x3", text)
    finite = np.array([v for v in psnr.values() if np.isfinite(v)])
    expected = list(np.percentile(finite, [0, 5, 25, 50, 75, 95, 100])) + [finite.mean(), 1]  # …, mean, inf
    assert quantile_table(text)["psnr"] == pytest.approx(expected, rel=1e-3)


def test_where_limit_and_columns(tmp_path, capsys):
    out = str(tmp_path / "out")
    psnr = evaluate_manifest(out)
    matching = sorted(k for k, v in psnr.items() if v < 25)
    assert inspect([out, "--where", "psnr < 25", "--limit", "5", "--columns", "key,psnr"]) == 0
    text = capsys.readouterr().out
    assert f"{len(matching)} rows where psnr < 25, first 5 shown:" in text
    table = text.split("first 5 shown:\n", 1)[1].splitlines()
    assert table[0].split() == ["key", "psnr"]
    assert [ln.split()[0] for ln in table[1:]] == matching[:5]
    assert [float(ln.split()[1]) for ln in table[1:]] == pytest.approx([psnr[k] for k in matching[:5]], rel=1e-3)
    # a glob of the parts works too; errors listed with their reasons by default
    assert inspect([f"{out}/manifest/*.parquet", "--where", "status = 'error'"]) == 0
    text = capsys.readouterr().out
    assert "3 rows where status = 'error':" in text and "size mismatch: prediction 3x3, reference 4x4" in text


@pytest.mark.parametrize("where, problem", [
    ("psnx < 25", r'Referenced column "psnx" not found.*\(columns: key, '),
    ("psnr <", "Parser Error"),
    ("1=1) UNION SELECT * FROM read_csv('/etc/passwd') --", "disabled"),  # DuckDB file access is off
    ("   ", "--where needs an expression"),
])
def test_bad_where_is_one_line(tmp_path, capsys, where, problem):
    out = str(tmp_path / "out")
    evaluate_manifest(out, n=3)
    assert inspect([out, "--where", where]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert re.search(problem, captured.err), captured.err


def test_bad_output_and_columns_are_one_line(tmp_path, capsys):
    assert inspect([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert inspect([str(tmp_path / "empty")]) == 2
    assert "no manifest parts at" in capsys.readouterr().err
    out = str(tmp_path / "out")
    evaluate_manifest(out, n=3)
    assert inspect([out, "--where", "true", "--columns", "key,psnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown column(s) psnx; this manifest has: key, source_uri" in err


def test_pairs_and_styles_manifests(tmp_path, capsys):
    pairs = str(tmp_path / "pairs")
    results = []
    for i, fam in enumerate(["filter", "lut", "filter"]):
        spec = {"input": {"family": fam, "id": f"x{i}"}, "target": {"family": "identity", "id": None}}
        results.append(TaskResult(ManifestRow(key=f"p{i}", task="synth-pairs", pair_index=0, transform=to_json(spec)),
                                  (OutputImage("input.jpg", corpus.jpeg(16, 16), "input_uri"),
                                   OutputImage("target.jpg", corpus.jpeg(16, 16), "target_uri"))))
    write_part(WriteConfig(pairs, "synth-pairs"), "part-00000-of-00001", results)
    where = "json_extract_string(transform, '$.input.family') = 'filter'"
    assert inspect([pairs, "--where", where, "--columns", "key,input_uri"]) == 0
    text = capsys.readouterr().out
    assert "[synth-pairs" in text and f"2 rows where {where}:" in text
    assert f"{pairs}/images/part-00000-of-00001.tar#p2_000.input.jpg" in text  # URIs printed whole

    styles = str(tmp_path / "styles")
    rows = [ManifestRow(key="a", task="stylize", style=s, psnr=p) for s, p in (("warm", 20.0), ("cool", 30.0))]
    write_part(WriteConfig(styles, "stylize"), "part-00000-of-00001", [TaskResult(r) for r in rows])
    assert inspect([styles, "--where", "style = 'cool'", "--columns", "key,style,psnr"]) == 0
    assert re.search(r"\na\s+cool\s+30\n", capsys.readouterr().out)


@pytest.mark.objectstore
@pytest.mark.timeout(120)
def test_inspect_on_gcs_emulator(gcs_emulator, capsys):
    bucket = gcs_emulator.create_bucket()
    psnr = evaluate_manifest(f"{bucket}/out", n=10)
    assert inspect([f"{bucket}/out", "--where", "psnr > 30", "--columns", "key"]) == 0
    text = capsys.readouterr().out
    assert "rows 13 · records 13 · ok 10 · error 3" in text
    assert f"{sum(v > 30 for v in psnr.values())} rows where psnr > 30" in text
    assert inspect(["gs://no-such-bucket-x/out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-bucket-x" in err


# --------------------------------------------------------------------------- errors worth reading
def _one_screen(err: str) -> None:
    assert "Traceback" not in err and 0 < len(err.strip().splitlines()) <= ONE_SCREEN, err


@pytest.fixture
def photos(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(corpus.jpeg(32, 24))
    return tmp_path / "photos"


@pytest.mark.parametrize("bad_input, says", [
    ("{photos}-typo", "does not exist (check the bucket, prefix and spelling)"),  # mistyped path
    ("{photos}/*.png", "no input found at"),                                      # empty glob
    ("s4://bucket/in/*.tar", "Protocol not known: s4"),                            # mistyped scheme
    ("gs:/bucket/in/*.tar", "does not exist"),                                     # one slash: a local path
])
def test_bad_input_urls_fail_in_one_line(photos, tmp_path, capsys, bad_input, says):
    out = tmp_path / "out"
    assert main(["synth-pairs", bad_input.format(photos=photos), str(out)]) == 2
    err = capsys.readouterr().err
    _one_screen(err)
    assert err.count("\n") == 1 and says in err
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize("option, says", [
    (["--pairs-per-image", "0"], "--pairs-per-image must be at least 1"),
    (["--filters", "clarendn"], "unknown filter(s) ['clarendn']"),
    (["--max-error-rate", "2"], "--max-error-rate must be within [0, 1]"),
    (["--runner", "NoSuchRunner"], "Unexpected pipeline runner: NoSuchRunner"),
])
def test_bad_option_values_fail_in_one_line(photos, tmp_path, capsys, option, says):
    assert main(["synth-pairs", str(photos), str(tmp_path / "out"), *option]) == 2
    err = capsys.readouterr().err
    _one_screen(err)
    assert says in err


def test_unparseable_option_shows_usage_and_the_problem(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth-pairs", str(photos), str(tmp_path / "out"), "--pairs-per-image", "two"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    _one_screen(err)
    assert err.strip().splitlines()[-1] == "chromabeam synth-pairs: error: argument --pairs-per-image: invalid int value: 'two'"


def test_misspelt_option_is_rejected(photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["synth-pairs", str(photos), str(out), "--pairs-per-imge", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--pairs-per-imge" in err and "did you mean --pairs-per-image?" in err
    assert not (out / "_SUCCESS").exists()
    # Beam's own flags still pass through.
    assert main(["synth-pairs", str(photos), str(out), "--runner", "DirectRunner", "--direct_num_workers", "1"]) == 0


@pytest.mark.objectstore
@pytest.mark.timeout(120)
def test_missing_bucket_fails_in_one_line(gcs_emulator, photos, capsys):
    bucket = gcs_emulator.create_bucket()
    assert main(["synth-pairs", "gs://no-such-bucket-x/in/*.jpg", f"{bucket}/out"]) == 2  # input side
    err = capsys.readouterr().err
    _one_screen(err)
    assert err.count("\n") == 1 and "no-such-bucket-x" in err and "does not exist" in err
    assert main(["synth-pairs", str(photos), "gs://no-such-bucket-y/out"]) == 2  # output side
    err = capsys.readouterr().err
    _one_screen(err)
    assert err.count("\n") == 1 and "bucket 'no-such-bucket-y' does not exist" in err
