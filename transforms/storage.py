"""Every byte chromabeam reads or writes goes through here, addressed by fsspec URL.

- ``gs://`` uses gcsfs; with ``STORAGE_EMULATOR_HOST`` set it talks to that endpoint
  anonymously and turns off gcsfs's gRPC bucket-type probe (which stalls ~60 s per
  bucket against emulators).
- ``s3://`` uses s3fs; ``AWS_ENDPOINT_URL`` (or storage options) picks the endpoint.
- local paths and ``file://``, ``memory://`` work as-is.

Storage options for a protocol can also come from ``CHROMABEAM_STORAGE_OPTIONS`` (JSON:
``{"s3": {...}, "gs": {...}}``) or ``set_storage_options``; the CLI's
``--storage-options`` sets them. Options never reach manifests, logs or reports.
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any, Iterable

import fsspec

_OPTIONS: dict[str, dict[str, Any]] = {}


class StorageError(RuntimeError):
    """A URL could not be listed/read/written; the message says which URL and what to do."""


def set_storage_options(options: dict[str, dict[str, Any]] | None) -> None:
    """Per-protocol fsspec options (e.g. ``{"s3": {"endpoint_url": ...}}``) for this process."""
    _OPTIONS.clear()
    for proto, opts in (options or {}).items():
        _OPTIONS[_canonical_protocol(proto)] = dict(opts)
    os.environ["CHROMABEAM_STORAGE_OPTIONS"] = json.dumps(_OPTIONS)


def _canonical_protocol(proto: str) -> str:
    return {"gcs": "gs", "s3a": "s3", "local": "file", "": "file"}.get(proto, proto)


def protocol(url: str) -> str:
    return _canonical_protocol(url.split("://", 1)[0] if "://" in url else "file")


def _options_for(proto: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if proto == "gs":
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            opts.update(endpoint_url=os.environ["STORAGE_EMULATOR_HOST"], token="anon")
    elif proto == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
    env = os.environ.get("CHROMABEAM_STORAGE_OPTIONS")
    if env and not _OPTIONS:
        try:
            _OPTIONS.update({_canonical_protocol(k): v for k, v in json.loads(env).items()})
        except ValueError as exc:
            raise StorageError(f"CHROMABEAM_STORAGE_OPTIONS is not valid JSON: {exc}") from None
    opts.update(_OPTIONS.get(proto, {}))
    return opts


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path-within-it) for ``url``."""
    proto = protocol(url)
    try:
        fs = fsspec.filesystem(proto, **_options_for(proto))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open storage for {redact(url)}: {exc}") from None
    return fs, fs._strip_protocol(url)


def to_url(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Turn a filesystem path back into a URL with ``like``'s scheme."""
    if "://" not in like:
        return path
    scheme = like.split("://", 1)[0]
    return f"{scheme}://{path.lstrip('/') if scheme != 'file' else path}"


def join(url: str, *parts: str) -> str:
    base = url.rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


def basename(url: str) -> str:
    return posixpath.basename(url.split("://", 1)[-1].rstrip("/"))


def has_magic(url: str) -> bool:
    return any(ch in url for ch in "*?[")


def expand(url: str, extensions: Iterable[str] | None = None) -> list[str]:
    """List the files a URL names — a file, a folder (recursive) or a glob — once, sorted.

    ``extensions`` (lower-case, with dot) keeps only matching names.
    """
    fs, path = filesystem(url)
    try:
        if has_magic(path):
            paths = fs.glob(path)
        elif fs.isdir(path):
            paths = fs.find(path)
        elif fs.exists(path):
            paths = [path]
        else:
            raise StorageError(f"{redact(url)} does not exist (check the bucket, prefix and spelling)")
        paths = [p for p in paths if not fs.isdir(p)] if has_magic(path) else paths
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageError(f"{redact(url)} does not exist (check the bucket, prefix and spelling)") from None
    except PermissionError as exc:
        raise StorageError(f"permission denied listing {redact(url)}: {exc}") from None
    if extensions is not None:
        exts = tuple(extensions)
        paths = [p for p in paths if p.lower().endswith(exts)]
    return sorted(to_url(fs, p, url) for p in paths)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def open_url(url: str, mode: str = "rb", **kw: Any):
    fs, path = filesystem(url)
    return fs.open(path, mode, **kw)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise StorageError(f"{redact(url)} does not exist") from None


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if protocol(url) in ("file", "memory"):
        fs.makedirs(path, exist_ok=True)


def put_atomic(url: str, data: bytes) -> None:
    """Publish ``data`` at ``url`` so readers see all of it or nothing.

    Object stores publish on upload completion, so a single PUT is atomic; on file
    systems we write a sibling temporary name and rename it into place.
    """
    fs, path = filesystem(url)
    if protocol(url) == "file":
        parent = posixpath.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def list_names(url: str) -> list[str]:
    """Base names of the objects directly under a folder URL (empty if it does not exist)."""
    fs, path = filesystem(url)
    try:
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def redact(url: str) -> str:
    """A URL safe to print: drops ``user:password@`` and query strings (signed URLs)."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc, _, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    tail = tail.split("?", 1)[0]
    return f"{scheme}://{netloc}/{tail}" if tail or rest.endswith("/") else f"{scheme}://{netloc}"
