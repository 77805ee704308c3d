"""Weight registry: safetensors files named by content hash, with a model card.

``save_weights`` writes three objects next to each other (any fsspec URL):

- ``<model>-<sha256[:12]>.safetensors`` — the state dict, plus the config and card as
  JSON strings in the safetensors metadata, so the weights file alone rebuilds the model;
- ``<model>-<sha256[:12]>.json`` — the card with the full sha256 (machine-readable sidecar);
- ``<model>-<sha256[:12]>.md`` — the same card for people.

Never pickles: ``load_weights`` reads the safetensors header itself and refuses anything
else (e.g. a torch ``.pt``/``.pth`` zip or pickle) before any tensor is decoded, and
refuses content whose sha256 differs from the one expected (or from the one in its name).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
import struct
from datetime import datetime, timezone
from typing import Any

import torch
import torch.nn as nn

from chromabeam.models.dncm import DNCM
from chromabeam.models.restorer import Restorer
from chromabeam.transforms import storage

__all__ = ["MODELS", "WeightsError", "save_weights", "load_weights", "build_model", "weights_name", "derived_card"]

MODELS: dict[str, type[nn.Module]] = {"dncm": DNCM, "restorer": Restorer}

_NAME = re.compile(r"^(?P<model>[a-z0-9_]+)-(?P<sha>[0-9a-f]{12})\.safetensors$")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own header limit


class WeightsError(ValueError):
    """A weights file was refused (wrong hash, not safetensors, unusable config)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_name(model: str, sha256: str) -> str:
    """``<model>-<sha256[:12]>.safetensors``."""
    return f"{model}-{sha256[:12]}.safetensors"


def _model_name(module: nn.Module, config: dict) -> str:
    name = config.get("model") or next((n for n, cls in MODELS.items() if type(module) is cls), None)
    if name not in MODELS:
        raise WeightsError(f"unknown model {name!r} for {type(module).__name__}; registered: {sorted(MODELS)}")
    if type(module) is not MODELS[name]:
        raise WeightsError(f"config says model {name!r} but the module is a {type(module).__name__}")
    return name


def _build_kwargs(cls: type[nn.Module], config: dict) -> dict:
    """The constructor arguments in ``config`` (other keys, e.g. training settings, are
    kept in the card but not passed); never re-reads pretrained encoder weights."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in config.items() if k in params and k != "self"}
    if "pretrained" in params:
        kwargs["pretrained"] = False
    return kwargs


def _to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{what} must be JSON-serialisable: {exc}") from None


def _markdown(card: dict) -> str:
    cfg = card["config"]
    lines = [
        f"# {card['name']}",
        "",
        f"- sha256: `{card['sha256']}`",
        f"- architecture: {card['architecture']}",
        f"- parameters: {card['parameters']:,}",
        f"- created: {card['created']}",
        f"- training steps: {card.get('steps', 'n/a')}",
        "",
        "## Config",
        "",
        *(f"- `{k}`: `{json.dumps(v)}`" for k, v in sorted(cfg.items())),
        "",
        "## Training data",
        "",
        *([f"- {src}" for src in card.get("training_data") or []] or ["- (none recorded)"]),
        "",
        "## Metrics",
        "",
    ]
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in sorted(metrics.items()))]
    else:
        lines.append("(none recorded)")
    extra = {k: v for k, v in card.items() if k not in _CARD_FIELDS}
    if extra:
        lines += ["", "## Notes", "", *(f"- {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in sorted(extra.items()))]
    return "\n".join(lines) + "\n"


_CARD_FIELDS = {"name", "sha256", "architecture", "parameters", "created", "steps", "config",
                "training_data", "metrics", "weights"}


def derived_card(module: nn.Module, source: str) -> tuple[dict, str]:
    """For weights made from ``module`` (built by ``build_model`` from ``source``) without
    retraining it: the training card its file carries, to extend (``save_weights`` adds
    the new sha256), and the text naming what it was applied to.

    Notes added to the source's ``.json`` sidecar after it was saved (a benchmark, the
    training commands, or a note the file carries extended there) are carried over too;
    the source's ``benchmark`` becomes ``previous_benchmark`` (it measured the source, not
    the new weights)."""
    card = {k: v for k, v in module.weights_card.items() if k not in ("sha256", "benchmark")}
    sidecar_url = source[: -len(".safetensors")] + ".json" if source.endswith(".safetensors") else None
    sidecar = json.loads(storage.read_bytes(sidecar_url)) if sidecar_url and storage.exists(sidecar_url) else {}
    if sidecar.get("sha256") == module.weights_sha256:  # a sidecar of other weights says nothing of these
        # the sidecar is the file's card as later extended (a training command appended to
        # the list the file carries): where both have a note, the sidecar's is the newer
        for k, v in sidecar.items():
            if k not in _CARD_FIELDS and k not in ("benchmark", "previous_benchmark"):
                card[k] = v
        if "benchmark" in sidecar:
            card["previous_benchmark"] = {"weights": storage.basename(source), **sidecar["benchmark"]}
    return card, f"{storage.basename(source)} (sha256 {module.weights_sha256})"


def save_weights(module: nn.Module, config: dict, out_dir_or_url: str, card: dict) -> str:
    """Save ``module``'s state dict as ``<model>-<sha256[:12]>.safetensors`` under
    ``out_dir_or_url`` (a folder path or fsspec URL), with ``config`` (constructor
    arguments; ``"model"`` names a ``MODELS`` entry, inferred from the module if absent)
    and ``card`` (free-form JSON: ``training_data`` sources, ``steps``, ``metrics``, …)
    embedded and written as ``.json``/``.md`` sidecars. Returns the weights' URL.
    The config is checked to rebuild a model with exactly this state dict's keys and shapes.
    """
    from safetensors.torch import save as st_save

    if not isinstance(config, dict) or not isinstance(card, dict):
        raise WeightsError("save_weights: config and card must be dicts")
    name = _model_name(module, config)
    config = {**config, "model": name}
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    rebuilt = MODELS[name](**_build_kwargs(MODELS[name], config)).state_dict()
    bad = sorted(
        k for k in set(rebuilt) | set(state)
        if k not in rebuilt or k not in state or tuple(rebuilt[k].shape) != tuple(state[k].shape)
    )
    if bad:
        raise WeightsError(f"save_weights: config {config} does not rebuild this module; differing keys: {bad[:20]}")
    metadata = {
        "format": "pt",
        "chromabeam_config": _to_json(config, "config"),
        "chromabeam_card": _to_json(card, "card"),
    }
    data = st_save(state, metadata=metadata)
    sha = _sha256(data)
    fname = weights_name(name, sha)
    url = storage.join(out_dir_or_url, fname)
    full_card = {
        **card,
        "name": fname,
        "sha256": sha,
        "architecture": f"{type(module).__module__}.{type(module).__name__}",
        "parameters": sum(p.numel() for p in module.parameters()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "weights": fname,
    }
    storage.put_atomic(url, data)
    stem = fname[: -len(".safetensors")]
    storage.put_atomic(storage.join(out_dir_or_url, stem + ".json"),
                       (json.dumps(full_card, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
    storage.put_atomic(storage.join(out_dir_or_url, stem + ".md"), _markdown(full_card).encode())
    return url


def _safetensors_header(data: bytes, url: str) -> dict:
    """The JSON header of a safetensors blob; refuses anything else with the reason.
    The structure is checked first: a safetensors header length is a little-endian u64
    whose low byte can be anything, 0x80 (a pickle's first byte) included."""
    what = None
    if len(data) < 8:
        what = f"only {len(data)} bytes long"
    else:
        (n,) = struct.unpack("<Q", data[:8])
        if n > min(_MAX_HEADER, len(data) - 8) or data[8:9] != b"{":
            if data[:4] == b"PK\x03\x04":
                what = "a zip archive (torch.save's .pt/.pth format, which holds a pickle)"
            elif data[:1] == b"\x80":
                what = "a Python pickle"
            else:
                what = "not a safetensors header"
        else:
            try:
                header = json.loads(data[8 : 8 + n])
            except ValueError:
                what = "a safetensors-sized header that is not JSON"
            else:
                if isinstance(header, dict):
                    return header
                what = "a header that is not a JSON object"
    raise WeightsError(
        f"refusing {storage.redact(url)}: not a safetensors file ({what}); chromabeam only "
        "loads safetensors weights, never pickles — convert with safetensors.torch.save_file"
    )


def load_weights(path: str, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read ``path`` (local path or fsspec URL) → ``(state_dict, config, card)``.

    Refuses: content whose sha256 is not ``expected_sha256`` (when given) or does not
    start with the 12 hex digits in a ``<model>-<sha12>.safetensors`` name; anything that
    is not safetensors (torch pickles included). ``card`` gains ``sha256``.
    """
    from safetensors.torch import load as st_load

    data = storage.read_bytes(path)
    sha = _sha256(data)
    if expected_sha256 is not None and sha != expected_sha256.strip().lower():
        raise WeightsError(
            f"refusing {storage.redact(path)}: sha256 is {sha}, expected {expected_sha256}"
        )
    named = _NAME.match(storage.basename(path))
    if named and not sha.startswith(named["sha"]):
        raise WeightsError(
            f"refusing {storage.redact(path)}: its name says sha256 {named['sha']}…, content hashes to {sha}"
        )
    meta = _safetensors_header(data, path).get("__metadata__") or {}
    try:
        state = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"refusing {storage.redact(path)}: corrupt safetensors data: {exc}") from None
    try:
        config = json.loads(meta.get("chromabeam_config", "{}"))
        card = json.loads(meta.get("chromabeam_card", "{}"))
    except ValueError as exc:
        raise WeightsError(f"{storage.redact(path)}: unreadable config/card metadata: {exc}") from None
    return state, config, {**card, "sha256": sha}


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WeightsError(f"device {device!r} was asked for but CUDA is not available on this machine")
    return dev


def build_model(path: str, device: str | torch.device = "cpu", expected_sha256: str | None = None) -> nn.Module:
    """Rebuild the model stored at ``path`` (see ``load_weights``) on ``device``
    (``"cpu"``, ``"cuda[:n]"`` or ``"auto"``; CUDA where there is none is an error), in eval
    mode. The module carries ``weights_sha256``, ``weights_config`` and ``weights_card``."""
    state, config, card = load_weights(path, expected_sha256)
    name = config.get("model")
    if name not in MODELS:
        raise WeightsError(f"{storage.redact(path)}: config names model {name!r}; registered: {sorted(MODELS)}")
    module = MODELS[name](**_build_kwargs(MODELS[name], config))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{storage.redact(path)}: weights do not fit {name} {config}: {exc}") from None
    module = module.to(_device(device)).eval()
    module.weights_sha256, module.weights_config, module.weights_card = card["sha256"], config, card
    return module
