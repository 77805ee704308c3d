"""Beam YAML: the provider listing, `chromabeam run` (run_yaml) and examples/*.yaml.

Each example runs as-is from the repository root on the bundled photos; only OUTPUT is
moved to tmp_path with a Jinja variable. References: PSNR by scikit-image
(``skimage.metrics.peak_signal_noise_ratio``) on images decoded by Pillow; pair images
regenerated from the manifest's ``transform`` JSON (``ops.synth.render`` + Pillow JPEG)
and compared byte for byte. Runs through Beam's own ``apache_beam.yaml.main`` are marked
slow (a fresh interpreter each).
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from chromabeam.pipelines import run_yaml, yaml_provider
from chromabeam.transforms.ops import synth
from chromabeam.transforms.ops.imageio import encode_image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples")
PHOTOS = os.path.join(REPO, "chromabeam", "data", "demo", "photos")
KEYS = sorted(n.rsplit(".", 1)[0] for n in os.listdir(PHOTOS))


def chromabeam_run(*argv, cwd=REPO):
    """`chromabeam run ARGV` in this process, as pipelines/cli.py wires it."""
    parser = argparse.ArgumentParser()
    run_yaml.add_run_arguments(parser)
    args, beam_args = parser.parse_known_args(list(argv))
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return run_yaml.run_command(args, beam_args)
    finally:
        os.chdir(old)


def beam_main(example, output, timeout=240):
    """Beam's own YAML runner on an unmodified example (FnApiRunner: no Prism download)."""
    cmd = [sys.executable, "-m", "apache_beam.yaml.main", f"--yaml_pipeline_file=examples/{example}",
           "--runner=FnApiRunner", "--jinja_variables", json.dumps({"output": str(output)})]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def manifest(out):
    return sorted(pq.read_table(str(out / "manifest")).to_pylist(), key=lambda r: (r["key"], r.get("pair_index") or 0))


def json_rows(prefix):
    folder, stem = os.path.split(str(prefix))
    rows = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(stem + "-"):
            with open(os.path.join(folder, name)) as fh:
                rows += [json.loads(line) for line in fh if line.strip()]
    return rows


def member(uri):
    shard, name = uri.split("#", 1)
    with tarfile.open(shard) as tar:
        return tar.extractfile(name).read()


def rgb(data):
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def write(tmp_path, text, name="pipeline.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- listing and config errors

def test_listing_loads_every_step_by_dotted_name():
    from apache_beam.yaml.yaml_provider import load_providers

    providers = load_providers(yaml_provider.listing_path())
    provided = {t for p in providers for t in p.provided_transforms()}
    assert provided == set(yaml_provider.STEPS)
    assert os.path.samefile(os.path.join(EXAMPLES, "..", "chromabeam", "data", "providers.yaml"),
                            yaml_provider.listing_path())


PAIRS_STEP = """\
pipeline:
  transforms:
    - type: ChromabeamSynthPairs
      name: Pairs
      config:
        input: {photos}
        output: {output}
        {extra}
"""


@pytest.mark.parametrize("extra, expected", [
    ("pairs_per_imge: 2",
     'step "Pairs" (ChromabeamSynthPairs, line 3): unknown field "pairs_per_imge" (did you mean "pairs_per_image"?); '
     "expected one of input, mode, pairs_per_image,"),
    ("pairs_per_image: two", 'step "Pairs" (ChromabeamSynthPairs, line 3): field "pairs_per_image" must be an integer, got str'),
    ("overwrite: 'yes'", 'step "Pairs" (ChromabeamSynthPairs, line 3): field "overwrite" must be true or false'),
    ("mode: remove", 'field "mode" must be one of removal, preset'),
    ("grade_prob: 1", None),  # an integer where a number is expected is fine
])
def test_config_errors_are_one_line_naming_step_and_field(tmp_path, capsys, extra, expected):
    path = write(tmp_path, PAIRS_STEP.format(photos=PHOTOS, output=tmp_path / "out", extra=extra))
    rc = chromabeam_run(path, "--dry-run")
    err = capsys.readouterr().err
    if expected is None:
        assert rc == 0, err
        return
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("chromabeam run: "), err
    assert expected in err
    assert not (tmp_path / "out").exists()  # nothing was built or written


def test_missing_required_field_and_unknown_filter(tmp_path, capsys):
    path = write(tmp_path, "pipeline:\n  transforms:\n    - type: ChromabeamEvaluate\n      config: {pred: a}\n")
    assert chromabeam_run(path) == 2
    err = capsys.readouterr().err
    assert 'step "ChromabeamEvaluate" (ChromabeamEvaluate, line 3): missing required field "output"' in err

    # Checks that need the step's own logic (filter names) happen at construction, still one line.
    text = ("pipeline:\n  transforms:\n    - type: ChromabeamReadImages\n      name: Photos\n"
            f"      config: {{url: {PHOTOS}}}\n    - type: ChromabeamFilterImages\n      name: Looks\n"
            "      input: Photos\n      config: {filters: 'clarendon,sepiaa'}\n")
    assert chromabeam_run(write(tmp_path, text)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and '"Looks"' in err and "unknown filter(s) ['sepiaa']" in err, err


def test_line_numbers_are_the_files_despite_leading_comments(tmp_path, capsys):
    """Beam's Jinja step drops a file's leading comment lines; errors still point at the file."""
    text = open(os.path.join(EXAMPLES, "evaluate.yaml")).read().replace("        filters: ", "        filtres: ")
    lines = text.splitlines()
    step_line = 1 + next(i for i, ln in enumerate(lines) if "type: ChromabeamFilterImages" in ln)
    assert lines[0].startswith("#") and step_line > 10
    assert chromabeam_run(write(tmp_path, text, "examples-evaluate.yaml"), "--dry-run") == 2
    err = capsys.readouterr().err
    assert f'step "Filtered" (ChromabeamFilterImages, line {step_line}): unknown field "filtres" (did you mean "filters"?)' in err


def test_jinja_variable_missing_is_one_line(tmp_path, capsys):
    path = write(tmp_path, "pipeline:\n  transforms:\n    - type: ChromabeamReadImages\n      config: {url: '{{ photos }}'}\n")
    assert chromabeam_run(path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'photos' is undefined" in err and "--jinja_variables" in err


def test_beams_own_runner_reports_step_and_field(tmp_path):
    """Without chromabeam run, Beam wraps our message with the step's name and line."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.yaml import main

    text = f"providers:\n  - include: {yaml_provider.listing_path()}\n" + PAIRS_STEP.format(
        photos=PHOTOS, output=tmp_path / "out", extra="pairs_per_imge: 2")
    _, constructor, _ = main.build_pipeline_components_from_argv([f"--yaml_pipeline_file={write(tmp_path, text)}"])
    with pytest.raises(ValueError, match=r'"Pairs" at line 5: unknown field "pairs_per_imge" \(did you mean "pairs_per_image"\?\)'):
        constructor(beam.Pipeline(runner=FnApiRunner()))


# ---------------------------------------------------------------- examples

@pytest.fixture(scope="module")
def evaluate_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("yaml-evaluate")
    assert chromabeam_run("examples/evaluate.yaml", "--jinja_variables", json.dumps({"output": str(root)})) == 0
    return root


def test_evaluate_example_scores_filtered_photos(evaluate_out):
    rows = manifest(evaluate_out / "evaluate")
    assert [r["key"] for r in rows] == KEYS and all(r["status"] == "ok" for r in rows)
    for r in rows:
        original, name = r["source_uri"].split("#filter=")
        assert r["reference_uri"] == original
        photo = rgb(open(original, "rb").read())
        spec = {"family": "filter", "id": name, "strength": 1.0, "params": None, "perturb": []}
        filtered = rgb(encode_image(synth.render(photo, spec), "jpg", 95))
        assert r["psnr"] == pytest.approx(peak_signal_noise_ratio(photo, filtered, data_range=255), abs=1e-3)
        assert (r["width"], r["height"]) == (photo.shape[1], photo.shape[0])
    assert len({r["source_uri"].split("#filter=")[1] for r in rows}) >= 3  # filters vary by key
    summary = json.loads((evaluate_out / "evaluate" / "_SUCCESS").read_text())
    assert summary["counts"] == {"records": 7, "rows": 7, "ok": 7, "error": 0}
    # Later YAML steps saw the manifest rows: the JSON holds exactly the rows under 30 dB.
    worst = json_rows(evaluate_out / "evaluate-worst.json")
    assert sorted(w["key"] for w in worst) == [r["key"] for r in rows if r["psnr"] < 30]
    assert {w["key"]: w["psnr"] for w in worst} == pytest.approx({r["key"]: r["psnr"] for r in rows if r["psnr"] < 30})


def test_rerun_is_a_noop_that_reemits_the_manifest(evaluate_out, capsys):
    success = evaluate_out / "evaluate" / "_SUCCESS"
    before = (success.read_bytes(), os.stat(success).st_mtime_ns)
    part = next((evaluate_out / "evaluate" / "manifest").iterdir())
    part_mtime = os.stat(part).st_mtime_ns
    for f in evaluate_out.glob("evaluate-worst.json-*"):
        f.unlink()
    assert chromabeam_run("examples/evaluate.yaml", "--jinja_variables", json.dumps({"output": str(evaluate_out)})) == 0
    assert (success.read_bytes(), os.stat(success).st_mtime_ns) == before
    assert os.stat(part).st_mtime_ns == part_mtime
    assert sorted(w["key"] for w in json_rows(evaluate_out / "evaluate-worst.json")) == \
        [r["key"] for r in manifest(evaluate_out / "evaluate") if r["psnr"] < 30]
    assert "Evaluate: evaluate: 7 rows (7 ok, 0 error)" in capsys.readouterr().out


def check_pairs(out):
    """Every pair regenerates from its manifest row; targets are the photos byte for byte."""
    rows = manifest(out / "pairs")
    assert [(r["key"], r["pair_index"]) for r in rows] == [(k, i) for k in KEYS for i in (0, 1)]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        source = open(r["source_uri"], "rb").read()
        spec = json.loads(r["transform"])
        assert (spec["seed"], spec["mode"], spec["key"], spec["pair_index"]) == (7, "removal", r["key"], r["pair_index"])
        assert spec["input"]["family"] in ("filter", "grade", "identity")
        assert member(r["target_uri"]) == source
        assert member(r["input_uri"]) == encode_image(synth.render(rgb(source), spec["input"]), "jpg", 95)
    assert sum(json.loads(r["transform"])["input"]["family"] == "filter" for r in rows) >= len(rows) // 2
    index = sorted(json_rows(out / "pairs-index.json"), key=lambda x: (x["key"], x["pair_index"]))
    assert index == [{k: r[k] for k in ("key", "pair_index", "input_uri", "target_uri", "transform")} for r in rows]
    return rows


@pytest.mark.slow
def test_synth_pairs_example_both_ways_gives_the_same_pairs(tmp_path):
    assert chromabeam_run("examples/synth-pairs.yaml", "--jinja_variables", json.dumps({"output": str(tmp_path / "a")})) == 0
    beam_main("synth-pairs.yaml", tmp_path / "b")
    a, b = check_pairs(tmp_path / "a"), check_pairs(tmp_path / "b")
    strip = lambda rows, root: [{k: (v.replace(str(root), "OUT") if isinstance(v, str) else v) for k, v in r.items()}
                                for r in rows]
    assert strip(a, tmp_path / "a") == strip(b, tmp_path / "b")


@pytest.mark.slow
def test_evaluate_example_with_beams_own_runner(tmp_path, evaluate_out):
    beam_main("evaluate.yaml", tmp_path)
    ours, theirs = manifest(evaluate_out / "evaluate"), manifest(tmp_path / "evaluate")
    # Same images, same ops; float32 reductions may differ in the last bits between runners.
    assert [r["key"] for r in theirs] == [r["key"] for r in ours]
    for x, y in zip(theirs, ours):
        for m in ("psnr", "ssim", "delta_e2000"):
            assert x[m] == pytest.approx(y[m], rel=1e-5, abs=1e-6), (x["key"], m)
    assert json.loads((tmp_path / "evaluate" / "_SUCCESS").read_text())["counts"]["ok"] == 7


# ---------------------------------------------------------------- restore step

@pytest.fixture(scope="module")
def tiny_restorer(tmp_path_factory):
    """An untrained tiny restorer with non-zero heads (restoring changes pixels), saved
    through the weight registry (as tests/pipelines/test_restore.py does)."""
    import torch

    from chromabeam.models.registry import save_weights
    from chromabeam.models.restorer import Restorer

    torch.manual_seed(0)
    m = Restorer(pretrained=False, lut_size=5, lut_basis=2, grid_size=4, grid_bins=3, view_size=64, width=8, hist_bins=4)
    with torch.no_grad():
        for last in (m.lut_weights, m.grid_head):
            last.weight.normal_(std=0.05)
            last.bias.normal_(std=0.05)
    return save_weights(m.eval(), m.config, str(tmp_path_factory.mktemp("w")), {"steps": 0})


RESTORE = """\
pipeline:
  transforms:
    - type: ChromabeamReadImages
      name: Photos
      config: {{url: {photos}}}
    - type: ChromabeamFilterImages
      name: Filtered
      input: Photos
      config: {{filters: 'clarendon,lofi'}}
    - type: ChromabeamRestore
      name: Restore
      input: {{input: Filtered, reference: Photos}}
      config: {{output: {output}, weights: {weights}, device: {device}, image_format: png}}
"""


def test_restore_step_with_upstream_input_and_reference(tmp_path, tiny_restorer, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.jpg", "rocket.jpg"):
        (photos / name).write_bytes(open(os.path.join(PHOTOS, name), "rb").read())
    bad = write(tmp_path, RESTORE.format(photos=photos, output=tmp_path / "x", weights=tiny_restorer, device="cuda:99"))
    assert chromabeam_run(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and '"Restore"' in err and "cuda:99" in err, err

    out = tmp_path / "restored"
    assert chromabeam_run(write(tmp_path, RESTORE.format(photos=photos, output=out, weights=tiny_restorer, device="cpu"))) == 0
    rows = manifest(out)
    assert [r["key"] for r in rows] == ["chelsea", "rocket"]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert r["source_uri"].split("#filter=")[1] in ("clarendon", "lofi")
        restored = rgb(member(r["output_uri"]))  # PNG: the pixels the metrics saw
        photo = rgb(open(r["reference_uri"], "rb").read())
        assert r["psnr"] == pytest.approx(peak_signal_noise_ratio(photo, restored, data_range=255), abs=1e-3)
        assert r["model_name"] == os.path.basename(tiny_restorer) and len(r["model_sha256"]) == 64


@pytest.mark.slow
def test_stylize_example_both_ways(tmp_path):
    """The shipped presets (looks, the default method) on the bundled photos: 7 × 4 rows,
    sizes kept, the look method's model — the shipped restorer — by its sha256 (hashlib)
    on every row, and the same images both ways (within a few 8-bit levels, the margin
    the DNCM method needs: its batched encoder pass differs from an unbatched one in the
    last float bits)."""
    import hashlib

    from chromabeam.pipelines.restore import default_weights

    assert chromabeam_run("examples/stylize.yaml", "--jinja_variables", json.dumps({"output": str(tmp_path / "a")})) == 0
    beam_main("stylize.yaml", tmp_path / "b", timeout=400)
    sha = hashlib.sha256(open(default_weights()[0], "rb").read()).hexdigest()
    images = {}
    for side in ("a", "b"):
        rows = sorted(pq.read_table(str(tmp_path / side / "stylized" / "manifest")).to_pylist(),
                      key=lambda r: (r["key"], r["style"]))
        assert [(r["key"], r["style"]) for r in rows] == [(k, s) for k in KEYS for s in ("faded", "mono", "teal-orange", "warm")]
        for r in rows:
            assert r["status"] == "ok" and r["model_sha256"] == sha, r["error"]
            source = rgb(open(r["source_uri"], "rb").read())
            assert rgb(member(r["output_uri"])).shape == source.shape
        images[side] = [rgb(member(r["output_uri"])).astype(int) for r in rows]
        index = sorted(json_rows(tmp_path / side / "stylized-index.json"), key=lambda x: (x["key"], x["style"]))
        assert index == [{k: r[k] for k in ("key", "style", "status", "output_uri")} for r in rows]
    for x, y in zip(images["a"], images["b"]):
        assert np.abs(x - y).max() <= 4 and np.abs(x - y).mean() < 0.05


@pytest.mark.slow
def test_restore_example_both_ways(tmp_path, evaluate_out):
    """The shipped restorer on filtered bundled photos: 7 rows with metrics, the shipped
    weights' sha256 (hashlib), the same numbers both ways, on the same filtered photos as
    the evaluate example's "doing nothing" baseline. (Whether the model beats that
    baseline is a model-quality figure: benchmarks/restore_quality.py, docs/restorer.md.)"""
    import hashlib

    from chromabeam.pipelines import restore

    assert chromabeam_run("examples/restore.yaml", "--jinja_variables", json.dumps({"output": str(tmp_path / "a")})) == 0
    beam_main("restore.yaml", tmp_path / "b", timeout=400)
    path, _ = restore.default_weights()
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    a, b = manifest(tmp_path / "a" / "restored"), manifest(tmp_path / "b" / "restored")
    assert [r["key"] for r in a] == KEYS and all(r["status"] == "ok" and r["model_sha256"] == sha for r in a)
    assert len(b) == len(a)
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and x["source_uri"] == y["source_uri"]
        assert x["psnr"] == pytest.approx(y["psnr"], abs=1e-4) and x["ssim"] == pytest.approx(y["ssim"], abs=1e-6)
    assert [r["source_uri"] for r in a] == [r["source_uri"] for r in manifest(evaluate_out / "evaluate")]
    assert all(np.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 for r in a)
    worst = json_rows(tmp_path / "a" / "restored-worst.json")
    assert sorted(w["key"] for w in worst) == [r["key"] for r in a if r["psnr"] < 30]


# ---------------------------------------------------------------- finer steps

def test_read_decode_and_parquet_round_trip(tmp_path):
    """ReadImages → Decode reports each file's size (Pillow) or why it is unusable;
    ReadImages → WriteToParquet writes chromabeam's own Parquet input format."""
    from chromabeam.transforms.read import read_shard

    photos = tmp_path / "photos"
    photos.mkdir()
    good = open(os.path.join(PHOTOS, "chelsea.jpg"), "rb").read()
    (photos / "chelsea.jpg").write_bytes(good)
    (photos / "cut.jpg").write_bytes(good[:300])
    (photos / "text.png").write_bytes(b"not an image")
    text = f"""\
pipeline:
  transforms:
    - type: ChromabeamReadImages
      name: Read
      config: {{url: {photos}}}
    - type: ChromabeamDecode
      input: Read
    - type: WriteToJson
      input: ChromabeamDecode
      config: {{path: {tmp_path}/decoded.json}}
    - type: Filter
      name: Readable
      input: Read
      config: {{language: python, keep: "error is None"}}
    - type: MapToFields
      name: KeyImage
      input: Readable
      config: {{language: python, fields: {{key: key, image: image}}}}
    - type: WriteToParquet
      input: KeyImage
      config: {{path: {tmp_path}/shard, file_name_suffix: .parquet}}
"""
    assert chromabeam_run(write(tmp_path, text)) == 0
    rows = {r["key"]: r for r in json_rows(tmp_path / "decoded.json")}
    assert sorted(rows) == ["chelsea", "cut", "text"]
    w, h = Image.open(io.BytesIO(good)).size
    assert (rows["chelsea"]["status"], rows["chelsea"]["width"], rows["chelsea"]["height"]) == ("ok", w, h)
    for key in ("cut", "text"):
        assert rows[key]["status"] == "error" and rows[key]["error"] and rows[key]["width"] is None
    shards = sorted(tmp_path.glob("shard*.parquet"))
    records = [r for s in shards for r in read_shard(str(s))]
    assert {r.key: r.data for r in records} == {
        k: (photos / n).read_bytes() for k, n in (("chelsea", "chelsea.jpg"), ("cut", "cut.jpg"), ("text", "text.png"))}
