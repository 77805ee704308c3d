"""Credentials given with --storage-options never reach an output object (manifest,
images, _SUCCESS, report.html), stdout/stderr or the log, on success or on a 403."""
import io
import json
import logging

import pyarrow.parquet as pq
import pytest

import corpus
from chromabeam.pipelines.cli import main
from chromabeam.transforms import storage

pytestmark = [pytest.mark.objectstore, pytest.mark.timeout(120)]

KEY, SECRET = "AKIA-SECRET-XYZ", "s3cr3t-XYZ"


def _options(endpoint: str) -> str:
    return json.dumps({"s3": {"key": KEY, "secret": SECRET, "endpoint_url": endpoint}})


@pytest.fixture
def only_option_credentials(s3_server, monkeypatch):
    """The endpoint and credentials come from --storage-options alone."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(storage.OPTIONS_ENV, "")  # restored (removed) after the test
    yield s3_server
    storage.set_storage_options(None)


def _leaks(text: str) -> list[str]:
    return [s for s in (KEY, SECRET) if s in text]


def _object_texts(server, bucket: str, prefix: str) -> dict[str, str]:
    """Every object under ``prefix`` as text: raw bytes (latin-1) plus, for Parquet, every
    cell (compressed pages hide raw strings)."""
    client = server.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    texts = {}
    for obj in listed:
        data = server.read_object(f"s3://{bucket}/{obj['Key']}")
        text = data.decode("latin-1")
        if obj["Key"].endswith(".parquet"):
            text += json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
        texts[obj["Key"]] = text
    return texts


def test_credentials_never_reach_outputs_or_logs(only_option_credentials, capfd, caplog):
    server = only_option_credentials
    bucket = server.create_bucket()
    name = bucket.split("://", 1)[1]
    server.write_object(f"{bucket}/in/a.tar", corpus.wds_tar([(f"a{i}", corpus.jpeg(48, 32, seed=i)) for i in range(3)]))
    server.write_object(f"{bucket}/in/broken.png", b"<html>not found</html>")
    caplog.set_level(logging.DEBUG)
    code = main(["-v", "synth-pairs", f"{bucket}/in", f"{bucket}/out", "--storage-options", _options(server.endpoint)])
    assert code == 0
    texts = _object_texts(server, name, "out/")
    assert {"out/_SUCCESS", "out/report.html"} <= set(texts)
    assert any(k.startswith("out/manifest/") for k in texts) and any(k.startswith("out/images/") for k in texts)
    summary = json.loads(texts["out/_SUCCESS"])
    assert summary["counts"]["rows"] == 4  # the job really ran: 3 pairs + 1 error row
    for key, text in texts.items():
        assert not _leaks(text), key
    captured = capfd.readouterr()
    assert "synth-pairs: 4 rows" in captured.out
    log_text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "chromabeam synth-pairs:" in captured.err  # the progress lines were captured too
    assert not _leaks(captured.out + captured.err + log_text)


def test_credentials_never_reach_the_error_message_of_a_403(only_option_credentials, capfd, caplog):
    server = only_option_credentials
    bucket = server.create_bucket()
    server.write_object(f"{bucket}/in/a.png", corpus.png(32, 32))
    caplog.set_level(logging.DEBUG)
    with server.enforce_auth():  # moto now refuses the unknown key with HTTP 403
        code = main(["-v", "synth-pairs", f"{bucket}/in", f"{bucket}/out", "--storage-options", _options(server.endpoint)])
    captured = capfd.readouterr()
    assert code == 2 and "permission denied" in captured.err, captured.err
    assert not _leaks(captured.out + captured.err + caplog.text)


def test_pipeline_yaml_is_parsed_with_a_safe_loader(tmp_path):
    """A python/object tag in a pipeline file is refused, never constructed
    (pipelines/run_yaml.py parses with Beam's SafeLineLoader, a yaml.SafeLoader)."""
    from chromabeam.pipelines.run_yaml import RunError, load_spec

    marker = tmp_path / "constructed"
    path = tmp_path / "evil.yaml"
    path.write_text(
        "pipeline:\n"
        f"  hook: !!python/object/apply:os.system ['touch {marker}']\n"
        "  transforms: []\n"
    )
    with pytest.raises(RunError, match="not valid YAML"):
        load_spec(str(path))
    assert not marker.exists()
