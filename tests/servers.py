"""Real object stores on loopback for tests: the Python GCS emulator and moto's S3 server.

Each server is a child process bound to 127.0.0.1 on a free port, started once per test
session (``gcs_emulator_process``, ``s3_server_process``). The function-scoped fixtures
``gcs_emulator`` and ``s3_server`` point the environment at it for one test
(``STORAGE_EMULATOR_HOST``; ``AWS_ENDPOINT_URL`` with dummy credentials) and clear
fsspec's instance caches before and after, so gcsfs/s3fs build clients for the endpoint.
Buckets are created over plain HTTP, independently of the code under test; each call
makes a new uniquely named bucket so tests never see each other's objects.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Iterator

import pytest

START_DEADLINE_S = 30.0  # typical start is ~1 s; the deadline only bounds a broken start
PORT_ATTEMPTS = 3  # a free port can be taken between probing it and the child binding it

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def clear_fsspec_instance_caches() -> None:
    """Forget cached gcsfs/s3fs instances so the next one reads the current environment."""
    for module, name in (
        ("gcsfs.core", "GCSFileSystem"),
        ("gcsfs.extended_gcsfs", "ExtendedGcsFileSystem"),
        ("s3fs.core", "S3FileSystem"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            cls.clear_instance_cache()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
          timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _DIRECT.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # an HTTP answer, just not 2xx
        return exc.code, exc.read()


class LoopbackServer:
    """A server child process on 127.0.0.1; ``start`` returns once it answers HTTP."""

    name = "server"
    probe_path = "/"

    def __init__(self) -> None:
        self.port = 0
        self.endpoint = ""
        self._proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"chromabeam-{self.name}-", suffix=".log")

    def argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def _log_tail(self, limit: int = 2000) -> str:
        self._log.flush()
        with open(self._log.name, "rb") as fh:
            return fh.read().decode("utf-8", "replace")[-limit:]

    def start(self) -> "LoopbackServer":
        problems = []
        for _ in range(PORT_ATTEMPTS):
            port = _free_port()
            self._proc = subprocess.Popen(
                self.argv(port), stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self.port, self.endpoint = port, f"http://127.0.0.1:{port}"
            problem = self._wait_ready()
            if problem is None:
                return self
            problems.append(problem)
            self.stop()
        raise RuntimeError(f"{self.name} did not start on 127.0.0.1: " + " | ".join(problems))

    def _wait_ready(self) -> str | None:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return (f"exited with code {self._proc.returncode} on port {self.port}; "
                        f"log: {self._log_tail()}")
            try:
                status, _ = _http("GET", self.endpoint + self.probe_path, timeout=1.0)
                if status < 500:
                    return None
            except OSError:  # refused / reset while it is still starting
                pass
            time.sleep(0.05)
        return (f"no HTTP answer on port {self.port} within {START_DEADLINE_S:.0f} s; "
                f"log: {self._log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        self._log.close()

    @staticmethod
    def new_bucket_name() -> str:
        return f"cb-{uuid.uuid4().hex[:12]}"

    @staticmethod
    def _split(url: str) -> tuple[str, str]:
        bucket, _, key = url.split("://", 1)[1].partition("/")
        return bucket, key

    def _check(self, what: str, status: int, body: bytes) -> bytes:
        if status != 200:
            raise RuntimeError(f"{self.name}: {what} failed: HTTP {status} {body[:300]!r}")
        return body


class GcsEmulator(LoopbackServer):
    """``gcp-storage-emulator`` (in-memory) speaking the GCS JSON API."""

    name = "gcp-storage-emulator"
    probe_path = "/storage/v1/b?project=chromabeam-test"

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                f"--port={port}", "--in-memory", "--quiet"]

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default); returns ``gs://name``."""
        name = name or self.new_bucket_name()
        status, body = _http("POST", f"{self.endpoint}/storage/v1/b?project=chromabeam-test",
                             json.dumps({"name": name}).encode(),
                             {"Content-Type": "application/json"})
        self._check(f"create bucket {name}", status, body)
        return f"gs://{name}"

    def read_object(self, url: str) -> bytes:
        """Bytes of ``gs://bucket/key``, fetched with a plain HTTP GET (not gcsfs)."""
        bucket, key = self._split(url)
        q = urllib.parse.quote(key, safe="")
        return self._check(f"GET {url}", *_http(
            "GET", f"{self.endpoint}/download/storage/v1/b/{bucket}/o/{q}?alt=media"))

    def write_object(self, url: str, data: bytes) -> None:
        """Upload ``data`` to ``gs://bucket/key`` with a plain HTTP POST (not gcsfs)."""
        bucket, key = self._split(url)
        q = urllib.parse.quote(key, safe="")
        self._check(f"upload {url}", *_http(
            "POST", f"{self.endpoint}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={q}",
            data, {"Content-Type": "application/octet-stream"}))


class S3Server(LoopbackServer):
    """moto's S3-compatible server (``python -m moto.server``)."""

    name = "moto-server"
    probe_path = "/"  # S3 ListBuckets
    region = "us-east-1"
    _client = None

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default); returns ``s3://name``."""
        name = name or self.new_bucket_name()
        status, body = _http("PUT", f"{self.endpoint}/{name}", b"")
        self._check(f"create bucket {name}", status, body)
        return f"s3://{name}"

    def client(self):
        """A boto3 S3 client for this server (dummy credentials), independent of s3fs;
        moto refuses unsigned reads of private objects, so plain HTTP will not do."""
        if self._client is None:
            import boto3  # only S3 tests pay for the import

            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint, region_name=self.region,
                aws_access_key_id="testing", aws_secret_access_key="testing")
        return self._client

    def read_object(self, url: str) -> bytes:
        """Bytes of ``s3://bucket/key``, fetched with boto3 (not s3fs)."""
        bucket, key = self._split(url)
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def write_object(self, url: str, data: bytes) -> None:
        """Upload ``data`` to ``s3://bucket/key`` with boto3 (not s3fs)."""
        bucket, key = self._split(url)
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    @contextlib.contextmanager
    def enforce_auth(self) -> Iterator[None]:
        """Make moto check credentials like AWS does (unknown keys get HTTP 403)."""
        self._set_auth_count(b"0")
        try:
            yield
        finally:
            self._set_auth_count(b"inf")

    def _set_auth_count(self, count: bytes) -> None:
        # text/plain: with urllib's default form type Flask would swallow the body
        status, body = _http("POST", f"{self.endpoint}/moto-api/reset-auth", count,
                             {"Content-Type": "text/plain"})
        self._check("reset-auth", status, body)


@pytest.fixture(scope="session")
def gcs_emulator_process() -> Iterator[GcsEmulator]:
    """The session's GCS emulator, environment untouched (use ``gcs_emulator`` in tests)."""
    server = GcsEmulator().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server_process() -> Iterator[S3Server]:
    """The session's moto S3 server, environment untouched (use ``s3_server`` in tests)."""
    server = S3Server().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def gcs_emulator(gcs_emulator_process: GcsEmulator, monkeypatch) -> Iterator[GcsEmulator]:
    """The GCS emulator with ``STORAGE_EMULATOR_HOST`` set for this test (anonymous)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator_process.endpoint)
    # gcsfs reads this once at import; child processes that import it fresh need it too.
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    monkeypatch.setenv("NO_GCE_CHECK", "true")  # never probe the GCE metadata server
    clear_fsspec_instance_caches()
    yield gcs_emulator_process
    clear_fsspec_instance_caches()


@pytest.fixture
def s3_server(s3_server_process: S3Server, monkeypatch) -> Iterator[S3Server]:
    """moto with ``AWS_ENDPOINT_URL``, dummy credentials and region set for this test."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    missing = os.path.join(tempfile.gettempdir(), f"chromabeam-no-aws-{uuid.uuid4().hex}")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)  # ignore any ~/.aws of the machine
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3Server.region)
    monkeypatch.setenv("AWS_REGION", S3Server.region)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server_process.endpoint)
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    monkeypatch.setenv("NO_PROXY", no_proxy)
    clear_fsspec_instance_caches()
    yield s3_server_process
    clear_fsspec_instance_caches()
