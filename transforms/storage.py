"""Every byte chromabeam reads or writes goes through here, addressed by fsspec URL.

- ``gs://`` uses gcsfs. With ``STORAGE_EMULATOR_HOST`` set (or a ``gs`` ``endpoint_url``
  option that is not Google's) it talks to that endpoint anonymously through
  ``gcsfs.core.GCSFileSystem``. Since gcsfs 2025.x, ``gcsfs.GCSFileSystem`` (what
  ``fsspec.filesystem("gs")`` resolves to) is ``ExtendedGcsFileSystem`` unless
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` is false *when gcsfs is first imported*
  (gcsfs/__init__.py reads it once). That class asks the gRPC Storage Control API for
  each bucket's layout; against an HTTP-only emulator the probe retries for 60 s and,
  because an UNKNOWN answer is not cached, again on every operation. Picking the core
  class directly avoids it whatever the import order; we also default the variable to
  false before our first gcsfs import so child processes inherit it.
- ``s3://`` uses s3fs; ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (or options) pick
  the endpoint.
- local paths, ``file://`` and ``memory://`` work as-is.

Storage options per protocol come from ``set_storage_options`` (the CLI's
``--storage-options``), kept in ``CHROMABEAM_STORAGE_OPTIONS`` (JSON, ``{"s3": {...}}``)
so Beam worker processes inherit them. Options never reach manifests, logs or reports,
and error messages are scrubbed of their secret values and of URL credentials.

Retries (checked against gcsfs 2026.10 and s3fs 2026.9 / botocore 1.43): we add none.
- gcsfs wraps every HTTP request (``GCSFileSystem._request``) in ``retry_request``:
  6 attempts, sleeping ``min(2**(n-1) + rand, 32)`` s, on HTTP 408, 429, 500-504, 401
  "Invalid Credentials" (token refresh), aiohttp/requests connection errors and
  checksum mismatches. 404 raises FileNotFoundError and 403 OSError("Forbidden")
  at once.
- s3fs calls go through botocore's retry handler (``legacy`` mode: 5 attempts,
  exponential backoff with random base) on HTTP 429, 500, 502, 503 (incl. SlowDown),
  504, 509, throttling error codes, S3 RequestTimeout/BadDigest and socket errors
  (``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` tune it); s3fs's ``_error_wrapper`` adds 5
  attempts (``min(1.7**n * 0.1, 15)`` s) on socket timeouts, HTTP client and response-
  parse errors and "SlowDown". AccessDenied/InvalidAccessKeyId/NoSuchBucket are not
  retried.
- local and memory file systems have no transient failures.
Both put_atomic and read_bytes are one library call (one PUT / one ranged GET series),
so the libraries' retries already cover them; a second layer would only multiply
waits. Whatever still fails is raised as StorageError naming the (redacted) URL.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import sys
import uuid
from typing import Any, Iterable, Iterator

import fsspec

OPTIONS_ENV = "CHROMABEAM_STORAGE_OPTIONS"
_TMP_PREFIX = ".tmp-"  # put_atomic's in-flight names on file systems; never listed
_OBJECT_STORES = ("gs", "s3")
_SECRET_KEY = re.compile(r"key|secret|token|password|passwd|credential|session|signature", re.I)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_MIN_SECRET = 8  # shorter values ("anon", "cloud") are modes, and scrubbing them mangles text
_parsed_env: tuple[str | None, dict[str, dict[str, Any]]] = (None, {})


class StorageError(RuntimeError):
    """A URL could not be listed/read/written; the message says which URL and what to do."""


def _canonical_protocol(proto: str) -> str:
    return {"gcs": "gs", "s3a": "s3", "local": "file", "": "file"}.get(proto, proto)


def protocol(url: str) -> str:
    """Canonical protocol of ``url``: ``gs``, ``s3``, ``memory``, ``file``, ...."""
    return _canonical_protocol(url.split("://", 1)[0] if "://" in url else "file")


def set_storage_options(options: dict[str, dict[str, Any]] | None) -> None:
    """Per-protocol fsspec options (e.g. ``{"s3": {"endpoint_url": ...}}``) for this process
    and the worker processes it starts; ``None`` clears them."""
    if not options:
        os.environ.pop(OPTIONS_ENV, None)
        return
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ValueError('storage options must map a protocol to a dict, e.g. {"s3": {"endpoint_url": "..."}}')
    os.environ[OPTIONS_ENV] = json.dumps({_canonical_protocol(k): v for k, v in options.items()})


def _configured_options() -> dict[str, dict[str, Any]]:
    global _parsed_env
    raw = os.environ.get(OPTIONS_ENV)
    if raw != _parsed_env[0]:
        parsed: dict[str, dict[str, Any]] = {}
        if raw:
            try:
                loaded = json.loads(raw)
            except ValueError as exc:
                raise StorageError(f"{OPTIONS_ENV} is not valid JSON: {exc}") from None
            if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
                raise StorageError(f"{OPTIONS_ENV} must be a JSON object of objects, one per protocol")
            parsed = {_canonical_protocol(k): v for k, v in loaded.items()}
        _parsed_env = (raw, parsed)
    return _parsed_env[1]


def _emulator_host() -> str | None:
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if host in ("", "default"):
        return None
    return host if "://" in host else f"http://{host}"


def _options_for(proto: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if proto == "gs":
        host = _emulator_host()
        if host:
            opts.update(endpoint_url=host, token="anon")
    elif proto == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
    opts.update(_configured_options().get(proto, {}))
    return opts


def _custom_gcs_endpoint(opts: dict[str, Any]) -> bool:
    endpoint = opts.get("endpoint_url") or _emulator_host()
    return bool(endpoint) and "googleapis.com" not in str(endpoint)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path-within-it) for ``url``."""
    proto = protocol(url)
    opts = _options_for(proto)
    try:
        if proto == "gs" and _custom_gcs_endpoint(opts):
            if "gcsfs" not in sys.modules:  # read once, at gcsfs's import (see module doc)
                os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            from gcsfs.core import GCSFileSystem

            fs = GCSFileSystem(**opts)
        else:
            fs = fsspec.filesystem(proto, **opts)
    except (ImportError, ValueError, TypeError) as exc:
        raise StorageError(f"cannot open storage for {redact(url)}: {_cause(exc, url)}") from None
    return fs, fs._strip_protocol(url)


def to_url(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Turn a filesystem path back into a URL with ``like``'s scheme."""
    if "://" not in like:
        return path
    scheme = like.split("://", 1)[0]
    return f"{scheme}://{path if scheme == 'file' else path.lstrip('/')}"


def join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended, one ``/`` between each (``join("gs://b/", "x")``)."""
    base = url.rstrip("/") if not url.endswith("://") else url
    parts = tuple(p.strip("/") for p in parts if p.strip("/"))
    if base.endswith("://"):
        return base + "/".join(parts)
    return "/".join([base, *parts])


def basename(url: str) -> str:
    """Last path component (``gs://b/x/y.tar`` → ``y.tar``)."""
    return posixpath.basename(url.split("://", 1)[-1].rstrip("/"))


def has_magic(url: str) -> bool:
    """Whether ``url`` is a glob pattern."""
    return any(ch in url for ch in "*?[")


def redact(url: str) -> str:
    """A URL safe to print: drops ``user:password@`` and query strings (signed URLs).

    ``?`` is a glob character in storage URLs, so it starts a query only for http(s)
    or when what follows looks like ``name=value``.
    """
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    if "?" in rest:
        head, query = rest.split("?", 1)
        if scheme.lower() in ("http", "https") or "=" in query:
            rest = head
    rest = rest.split("#", 1)[0] if scheme.lower() in ("http", "https") else rest
    netloc, sep, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}://{netloc}{sep}{tail}"


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that ``redact`` drops (userinfo, query), to scrub them from
    library messages that quote the raw path."""
    if "://" not in url:
        return []
    scheme, rest = url.split("://", 1)
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    found = [netloc.rsplit("@", 1)[0]] if "@" in netloc else []
    if "?" in rest:
        query = rest.split("?", 1)[1]
        if scheme.lower() in ("http", "https") or "=" in query:
            found.append(query)
    return found


def _scrub(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` without URL credentials and query strings, ``extra`` strings or configured
    secret values (storage options named like key/secret/token, AWS secret env vars)."""
    text = _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)
    secrets = [os.environ.get(name) for name in _SECRET_ENV]
    try:
        options = _configured_options()
    except StorageError:
        options = {}
    for opts in options.values():
        secrets += [v for k, v in opts.items() if _SECRET_KEY.search(k) and isinstance(v, str)]
    drop = {s for s in secrets if s and len(s) >= _MIN_SECRET} | {s for s in extra if s}
    for secret in sorted(drop, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _cause(exc: BaseException, url: str = "") -> str:
    text = _scrub(" ".join(str(exc).split()) or "no details", _url_secrets(url))
    return f"{type(exc).__name__}: {text[:300]}"  # scrub first: a cut secret still leaks


def _library_errors() -> tuple[type[BaseException], ...]:
    """Error types of the storage libraries already loaded (never imports one)."""
    found: list[type[BaseException]] = [OSError, ValueError, TimeoutError]
    for module, names in (
        ("fsspec.exceptions", ("FSTimeoutError",)),
        ("gcsfs.retry", ("HttpError", "ChecksumError")),
        ("botocore.exceptions", ("BotoCoreError", "ClientError")),
        ("google.auth.exceptions", ("GoogleAuthError",)),
        ("aiohttp", ("ClientError",)),
    ):
        mod = sys.modules.get(module)
        found += [getattr(mod, n) for n in names if mod is not None and hasattr(mod, n)]
    return tuple(found)


@contextlib.contextmanager
def _errors(url: str, doing: str) -> Iterator[None]:
    """Raise any storage failure inside as StorageError naming the URL and the cause."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise StorageError(f"cannot {doing} {redact(url)}: it does not exist "
                           f"(check the bucket, prefix and spelling) [{_cause(exc, url)}]") from None
    except PermissionError as exc:
        raise StorageError(f"cannot {doing} {redact(url)}: permission denied "
                           f"(check credentials and access rights) [{_cause(exc, url)}]") from None
    except _library_errors() as exc:
        hint = "permission denied, " if "forbidden" in str(exc).lower() else ""
        raise StorageError(f"cannot {doing} {redact(url)}: {hint}{_cause(exc, url)}") from None


def _bucket(path: str) -> str:
    return path.lstrip("/").split("/", 1)[0]


def _check_container(fs: fsspec.AbstractFileSystem, path: str, url: str, doing: str) -> None:
    """Raise StorageError if the bucket (object stores) or the fixed base folder of ``path``
    is missing; called only when a listing came back empty, to tell "nothing there" from
    "wrong place"."""
    proto = protocol(url)
    if proto in _OBJECT_STORES:
        where = _bucket(path)
        ok = fs.exists(where)
        what = f"bucket {where!r}"
    else:
        where = path
        while has_magic(where):
            where = posixpath.dirname(where)
        ok = fs.isdir(where)
        what = f"folder {where!r}"
    if not ok:
        raise StorageError(f"cannot {doing} {redact(url)}: {what} does not exist or is not accessible")


def expand(url: str, extensions: Iterable[str] | str | None = None) -> list[str]:
    """List the files a URL names — a file, a folder (recursive) or a glob — once, sorted.

    ``extensions`` (e.g. ``[".tar"]``, case-insensitive) keeps only matching names. Returned
    URLs keep ``url``'s scheme. An empty glob gives ``[]`` but a missing bucket, folder or
    file raises StorageError.
    """
    fs, path = filesystem(url)
    with _errors(url, "list"):
        fs.invalidate_cache()  # other processes may have written since the last listing
        if has_magic(path):
            found = fs.glob(path, detail=True)
            paths = [p for p, info in found.items() if info.get("type") != "directory"]
            if not paths:
                _check_container(fs, path, url, "list")
        elif fs.info(path)["type"] == "directory":
            paths = fs.find(path)
        else:
            paths = [path]
    paths = [p for p in paths if not posixpath.basename(p).startswith(_TMP_PREFIX)]
    if extensions is not None:
        if isinstance(extensions, str):
            extensions = [extensions]
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        paths = [p for p in paths if p.lower().endswith(exts)]
    return sorted({to_url(fs, p, url) for p in paths})


def exists(url: str) -> bool:
    """Whether a file or folder exists at ``url`` (False for a missing bucket); other
    failures (permission, network) raise StorageError."""
    fs, path = filesystem(url)
    with _errors(url, "check"):
        fs.invalidate_cache(path)
        try:
            fs.info(path)
        except FileNotFoundError:
            return False
    return True


def open_url(url: str, mode: str = "rb", **kw: Any):
    """``fs.open`` for ``url``; failures to open raise StorageError."""
    fs, path = filesystem(url)
    with _errors(url, "open"):
        return fs.open(path, mode, **kw)


def read_bytes(url: str) -> bytes:
    """The whole object at ``url``."""
    fs, path = filesystem(url)
    with _errors(url, "read"):
        return fs.cat_file(path)


def makedirs(url: str) -> None:
    """Create a folder on file systems; object stores have no folders, so nothing to do."""
    fs, path = filesystem(url)
    if protocol(url) not in _OBJECT_STORES:
        with _errors(url, "create folder"):
            fs.makedirs(path, exist_ok=True)


def put_atomic(url: str, data: bytes) -> None:
    """Publish ``data`` at ``url`` so readers see all of it or nothing.

    Object stores publish on upload completion, so a single PUT (or a completed
    multipart/resumable upload) is atomic; on the local file system we write a sibling
    temporary name (skipped by ``expand``/``list_names``), fsync and rename into place.
    """
    fs, path = filesystem(url)
    with _errors(url, "write"):
        if protocol(url) != "file":
            fs.pipe_file(path, bytes(data))
            return
        parent = posixpath.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f"{_TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def list_names(url: str) -> list[str]:
    """Sorted base names of the entries directly under a folder URL.

    A folder that does not exist gives ``[]``; a missing bucket raises StorageError.
    """
    fs, path = filesystem(url)
    with _errors(url, "list"):
        fs.invalidate_cache(path)
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            entries = []
        own = path.rstrip("/")
        names = sorted({posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != own})
        if not names and protocol(url) in _OBJECT_STORES:
            _check_container(fs, path, url, "list")
    return [n for n in names if not n.startswith(_TMP_PREFIX)]


def size(url: str) -> int | None:
    """Size in bytes of the object at ``url`` (None when the store does not say)."""
    fs, path = filesystem(url)
    with _errors(url, "stat"):
        return fs.size(path)


def remove(url: str) -> None:
    """Delete a file or a whole folder/prefix; nothing to do when it does not exist."""
    fs, path = filesystem(url)
    with _errors(url, "delete"):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def remove_temporaries(url: str) -> int:
    """Delete ``put_atomic``'s leftovers (a writer killed mid-write) directly under a local
    folder; returns how many. Object stores never hold partial objects."""
    if protocol(url) != "file":
        return 0
    fs, path = filesystem(url)
    with _errors(url, "clean"):
        if not fs.isdir(path):
            return 0
        stale = [p for p in fs.ls(path, detail=False) if posixpath.basename(p).startswith(_TMP_PREFIX)]
        for p in stale:
            fs.rm(p)
    return len(stale)
