"""chromabeam.transforms.storage against a local folder (plain path and file://), memory://,
the Python GCS emulator (gs://) and moto's S3 server (s3://), all real, on loopback.

Objects written through storage are checked with the servers' plain HTTP APIs
(tests/servers.py), not with gcsfs/s3fs, so a wrong endpoint or path cannot pass.
"""
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import fsspec
import pytest

from chromabeam.transforms import storage
from chromabeam.transforms.storage import StorageError
from servers import clear_fsspec_instance_caches

pytestmark = pytest.mark.timeout(60)

FAST_S = 5.0  # a permanent failure must surface within this
OBJECT_STORES = [pytest.param("gs", marks=pytest.mark.objectstore),
                 pytest.param("s3", marks=pytest.mark.objectstore)]
BACKENDS = ["local", "file", "memory", *OBJECT_STORES]
SERVER_FIXTURE = {"gs": "gcs_emulator", "s3": "s3_server"}


@pytest.fixture(autouse=True)
def no_storage_options(monkeypatch):
    """Each test starts without options; monkeypatch removes whatever the test sets."""
    monkeypatch.setenv(storage.OPTIONS_ENV, "")


@pytest.fixture
def root(request, tmp_path):
    """A fresh, empty base URL on the backend named by the test's ``backend`` parameter."""
    backend = request.param
    if backend == "local":
        yield str(tmp_path / "store")
    elif backend == "file":
        yield f"file://{tmp_path}/store"
    elif backend == "memory":
        # memory:// is one store per process: use a unique root and remove it afterwards
        name = f"/cb-test-{uuid.uuid4().hex}"
        yield f"memory:/{name}"
        fs = fsspec.filesystem("memory")
        if fs.exists(name):
            fs.rm(name, recursive=True)
        left = [p for p in [*fs.store, *fs.pseudo_dirs] if p.startswith(name)]
        assert not left, f"memory:// paths left behind: {left}"
    else:
        server = request.getfixturevalue(SERVER_FIXTURE[backend])
        yield server.create_bucket() + "/run"


def _server(request, url):
    proto = storage.protocol(url)
    return request.getfixturevalue(SERVER_FIXTURE[proto]) if proto in SERVER_FIXTURE else None


def _scheme_prefix(url):
    return url.split("://", 1)[0] + "://" if "://" in url else "/"


@pytest.mark.parametrize("root", BACKENDS, indirect=True)
def test_put_atomic_then_read_bytes_round_trip(root, request):
    url = storage.join(root, "pairs", "x.bin")
    first = bytes(range(256)) * 8 + os.urandom(100)
    start = time.monotonic()
    storage.put_atomic(url, first)
    assert storage.read_bytes(url) == first
    storage.put_atomic(url, b"second")  # replacing is atomic too
    assert storage.read_bytes(url) == b"second"
    assert time.monotonic() - start < 10.0, "round trip took too long (gcsfs bucket probe?)"
    server = _server(request, root)
    if server is not None:  # the bytes really are on the server, read back over plain HTTP
        assert server.read_object(url) == b"second"
    if storage.protocol(root) == "file":  # no temporary names left next to it
        folder = storage.filesystem(url)[1].rsplit("/", 1)[0]
        assert os.listdir(folder) == ["x.bin"]


LAYOUT = {
    "shards/a-000.tar": b"0",
    "shards/a-001.tar": b"1",
    "shards/notes.txt": b"n",
    "shards/IMG_7.JPG": b"j",
    "shards/sub/a-002.tar": b"2",
    "other/z.tar": b"z",
}


def _write_layout(root):
    for rel, data in LAYOUT.items():
        storage.put_atomic(storage.join(root, rel), data)


@pytest.mark.parametrize("root", BACKENDS, indirect=True)
def test_expand_folder_glob_file_and_extensions(root):
    _write_layout(root)
    url = lambda rel: storage.join(root, rel)  # noqa: E731
    folder = [url(r) for r in ("shards/IMG_7.JPG", "shards/a-000.tar", "shards/a-001.tar",
                               "shards/notes.txt", "shards/sub/a-002.tar")]
    assert storage.expand(url("shards")) == folder  # recursive, sorted
    assert storage.expand(url("shards") + "/") == folder
    assert storage.expand(url("shards/*.tar")) == [url("shards/a-000.tar"), url("shards/a-001.tar")]
    assert storage.expand(url("shards/a-00?.tar")) == [url("shards/a-000.tar"), url("shards/a-001.tar")]
    assert storage.expand(url("shards/notes.txt")) == [url("shards/notes.txt")]
    assert storage.expand(url("shards"), [".tar"]) == [
        url("shards/a-000.tar"), url("shards/a-001.tar"), url("shards/sub/a-002.tar")]
    assert storage.expand(url("shards"), [".jpg", "txt"]) == [url("shards/IMG_7.JPG"), url("shards/notes.txt")]
    assert storage.expand(url("shards/*.zip")) == []
    everything = storage.expand(root)
    assert len(everything) == len(LAYOUT) and everything == sorted(everything)
    assert all(u.startswith(_scheme_prefix(root)) for u in everything)
    # what expand returns can be read back as-is
    assert storage.read_bytes(url("shards/sub/a-002.tar")) == b"2"
    assert [storage.read_bytes(u) for u in storage.expand(url("*/z.tar"))] == [b"z"]


@pytest.mark.parametrize("root", BACKENDS, indirect=True)
def test_exists_list_names_and_missing_paths(root):
    _write_layout(root)
    assert storage.exists(storage.join(root, "shards/a-000.tar"))
    assert storage.exists(storage.join(root, "shards"))
    assert not storage.exists(storage.join(root, "shards/nope.tar"))
    assert storage.list_names(storage.join(root, "shards")) == [
        "IMG_7.JPG", "a-000.tar", "a-001.tar", "notes.txt", "sub"]
    assert storage.list_names(storage.join(root, "no-such-folder")) == []
    for call in (storage.read_bytes, storage.expand):
        missing = storage.join(root, "no-such-folder", "x.tar")
        with pytest.raises(StorageError, match="does not exist") as err:
            call(missing)
        assert storage.redact(missing) in str(err.value)


@pytest.mark.parametrize("root", OBJECT_STORES, indirect=True)
def test_listings_see_objects_written_by_another_client(root, request):
    """Listings are not served from a stale cache: other workers write concurrently."""
    server = _server(request, root)
    storage.put_atomic(storage.join(root, "out/part-0.parquet"), b"p0")
    assert storage.list_names(storage.join(root, "out")) == ["part-0.parquet"]
    assert not storage.exists(storage.join(root, "out/_SUCCESS"))
    server.write_object(storage.join(root, "out/_SUCCESS"), b"{}")
    server.write_object(storage.join(root, "out/part-1.parquet"), b"p1")
    assert storage.exists(storage.join(root, "out/_SUCCESS"))
    assert storage.list_names(storage.join(root, "out")) == ["_SUCCESS", "part-0.parquet", "part-1.parquet"]
    assert storage.expand(storage.join(root, "out"), [".parquet"]) == [
        storage.join(root, "out/part-0.parquet"), storage.join(root, "out/part-1.parquet")]


@pytest.mark.parametrize("proto", OBJECT_STORES)
def test_missing_bucket_raises_storage_error_fast(proto, request):
    request.getfixturevalue(SERVER_FIXTURE[proto])
    bucket = f"{proto}://cb-missing-{uuid.uuid4().hex[:10]}"
    calls = {
        "read_bytes": lambda: storage.read_bytes(bucket + "/a/x.tar"),
        "put_atomic": lambda: storage.put_atomic(bucket + "/a/x.tar", b"x"),
        "expand file": lambda: storage.expand(bucket + "/a/x.tar"),
        "expand glob": lambda: storage.expand(bucket + "/a/*.tar"),
        "expand bucket": lambda: storage.expand(bucket),
        "list_names": lambda: storage.list_names(bucket + "/a"),
        "open_url": lambda: storage.open_url(bucket + "/a/x.tar"),
    }
    for name, call in calls.items():
        start = time.monotonic()
        with pytest.raises(StorageError) as err:
            call()
        elapsed = time.monotonic() - start
        assert elapsed < FAST_S, f"{name} took {elapsed:.1f} s to fail"
        assert bucket in str(err.value), f"{name}: {err.value}"
    assert storage.exists(bucket + "/a/x.tar") is False


def test_s3_permission_denied_is_fast_and_leaks_no_credential(s3_server):
    url = s3_server.create_bucket() + "/private/x.tar"
    s3_server.write_object(url, b"x")
    key_id, secret = "AKIACHROMABEAMTEST01", "chromabeam/Not+A+Real+Secret/0123456789"
    storage.set_storage_options({"s3": {"key": key_id, "secret": secret}})
    signed = url + "?X-Amz-Signature=deadbeefcafe"
    with s3_server.enforce_auth():  # moto now answers unknown access keys with HTTP 403
        for call in (storage.read_bytes, storage.expand, storage.exists, storage.list_names,
                     lambda u: storage.put_atomic(u, b"y")):
            start = time.monotonic()
            with pytest.raises(StorageError, match="permission denied") as err:
                call(url)
            assert time.monotonic() - start < FAST_S
            message = str(err.value)
            assert url in message
            assert secret not in message and key_id not in message
        with pytest.raises(StorageError) as err:
            storage.read_bytes(signed)
        assert "deadbeefcafe" not in str(err.value) and secret not in str(err.value)
    assert s3_server.read_object(url) == b"x"  # the denied write did not happen


def test_s3_endpoint_from_storage_options_only(s3_server, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    clear_fsspec_instance_caches()
    url = s3_server.create_bucket() + "/opts/y.bin"
    storage.set_storage_options({"s3": {"endpoint_url": s3_server.endpoint}})
    storage.put_atomic(url, b"via options")
    assert s3_server.read_object(url) == b"via options"
    assert storage.expand(url.rsplit("/", 1)[0]) == [url]
    # worker processes receive the options as JSON in the environment (e.g. from the CLI)
    assert json.loads(os.environ[storage.OPTIONS_ENV]) == {"s3": {"endpoint_url": s3_server.endpoint}}
    storage.set_storage_options(None)
    monkeypatch.setenv(storage.OPTIONS_ENV, json.dumps({"s3a": {"endpoint_url": s3_server.endpoint}}))
    assert storage.read_bytes(url) == b"via options"


def test_gcs_endpoint_from_storage_options_only(gcs_emulator, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    clear_fsspec_instance_caches()
    url = gcs_emulator.create_bucket() + "/opts/y.bin"
    storage.set_storage_options({"gcs": {"endpoint_url": gcs_emulator.endpoint, "token": "anon"}})
    storage.put_atomic(url, b"via options")
    assert gcs_emulator.read_object(url) == b"via options"
    assert storage.read_bytes(url) == b"via options"


def test_gcsfs_against_emulator_does_not_stall(gcs_emulator, monkeypatch):
    """Worst case in a fresh process: the HNS switch unset and gcsfs imported before
    chromabeam, so ``gcsfs.GCSFileSystem`` is the class whose gRPC bucket probe stalls
    60 s per operation against an emulator."""
    monkeypatch.delenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
    bucket = gcs_emulator.create_bucket()
    script = textwrap.dedent(f"""
        import time, gcsfs
        assert gcsfs.GCSFileSystem.__name__ == "ExtendedGcsFileSystem", gcsfs.GCSFileSystem
        from chromabeam.transforms import storage
        start = time.monotonic()
        url = "{bucket}/round/trip.bin"
        storage.put_atomic(url, b"payload")
        assert storage.read_bytes(url) == b"payload"
        assert storage.expand("{bucket}/round/*.bin") == [url]
        assert storage.exists(url) and storage.list_names("{bucket}/round") == ["trip.bin"]
        print(type(storage.filesystem(url)[0]).__module__, time.monotonic() - start)
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=45, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        pytest.fail("gs:// round trip against the emulator stalled (gcsfs gRPC bucket probe)")
    assert done.returncode == 0, done.stderr[-2000:]
    module, seconds = done.stdout.split()
    assert module == "gcsfs.core"
    assert float(seconds) < 10.0, f"gs:// round trip took {seconds} s"


def test_redact():
    assert storage.redact("s3://AKIAX:s3cr3t@bucket/x.tar") == "s3://***@bucket/x.tar"
    assert storage.redact("https://u:pw@host/p/x.tar?X-Goog-Signature=ab&x=1#frag") == "https://***@host/p/x.tar"
    assert storage.redact("https://host?sig=1") == "https://host"
    assert storage.redact("gs://b/x.tar?token=abc") == "gs://b/x.tar"
    assert storage.redact("gs://b/shard-?.tar") == "gs://b/shard-?.tar"  # a glob, not a query
    assert storage.redact("gs://bucket/prefix/") == "gs://bucket/prefix/"
    assert storage.redact("/data/in/x.png") == "/data/in/x.png"


def test_join_basename_protocol_has_magic():
    assert storage.join("gs://b/", "/x/", "y.tar") == "gs://b/x/y.tar"
    assert storage.join("s3://b/run", "out", "", "_SUCCESS") == "s3://b/run/out/_SUCCESS"
    assert storage.join("memory://", "a", "b") == "memory://a/b"
    assert storage.join("/tmp/out", "m.parquet") == "/tmp/out/m.parquet"
    assert storage.basename("gs://b/x/y.tar") == "y.tar"
    assert storage.basename("s3://b/x/") == "x"
    assert storage.basename("/tmp/a.png") == "a.png"
    assert [storage.protocol(u) for u in ("gcs://b", "s3a://b", "/x", "file:///x", "memory://x")] == [
        "gs", "s3", "file", "file", "memory"]
    assert storage.has_magic("gs://b/*.tar") and storage.has_magic("gs://b/[ab].tar")
    assert not storage.has_magic("gs://b/x.tar")


def test_local_put_atomic_failure_leaves_nothing(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"file, not folder")
    with pytest.raises(StorageError, match="cannot write"):
        storage.put_atomic(str(tmp_path / "f.bin" / "child.bin"), b"x")
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]
    # an in-flight temporary name is never listed
    (tmp_path / ".tmp-0123-part.tar").write_bytes(b"partial")
    (tmp_path / "done.tar").write_bytes(b"whole")
    assert storage.expand(str(tmp_path), [".tar"]) == [str(tmp_path / "done.tar")]
    assert storage.list_names(str(tmp_path)) == ["done.tar", "f.bin"]


def test_bad_storage_options_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="protocol"):
        storage.set_storage_options({"s3": "http://127.0.0.1:1"})
    monkeypatch.setenv(storage.OPTIONS_ENV, "{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        storage.filesystem("s3://b/x")


def test_error_messages_never_quote_url_credentials(s3_server):
    bucket = s3_server.create_bucket()[len("s3://"):]
    for url in (f"memory://cb-none-{uuid.uuid4().hex}/x.tar?X-Goog-Signature=SIGSECRET1",
                f"s3://AKIDLEAK:SECRETLEAK@{bucket}/x.tar"):
        for call in (storage.read_bytes, storage.expand):
            with pytest.raises(StorageError) as err:
                call(url)
            message = str(err.value)
            assert storage.redact(url) in message
            assert not any(s in message for s in ("SIGSECRET1", "SECRETLEAK", "AKIDLEAK")), message
