"""``chromabeam preset create REF OUT.cube|OUT.json`` and ``chromabeam preset list [DIR]``.

A preset is a style computed once and saved. Two kinds:

- a **look** (``OUT.cube``, for ``stylize --method look``, the default): the colour map
  fitted from the restorer's estimate of the reference without its look to the
  reference (``transforms.look_handler``), written as a standard ``.cube`` 3D LUT — any
  ``.cube`` file from an editor works as a look too;
- a **DNCM preset** (``OUT.json``, for ``--method dncm``): the k×k matrix ``r`` the DNCM encoder
predicts for a reference image, with the sha256 of the weights that made it (r is only
meaningful with those weights' P_s, Q_s) and where it came from::

    {"format": "chromabeam-dncm-preset", "version": 1, "name": "warm", "k": 16,
     "r": [[...16 floats...], ...], "weights": "dncm-<sha12>.safetensors",
     "weights_sha256": "<64 hex>", "source": "<reference URL>", "description": "...",
     "created": "<UTC ISO time>"}

``chromabeam stylize --style warm.json`` (or a shipped preset's bare name) reuses it
without running the encoder on the reference again.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.resources
import json
import os
from datetime import datetime, timezone

from chromabeam.transforms import storage
from chromabeam.transforms.stylize_handler import (
    PRESET_FORMAT, StyleHandler, read_preset, style_source,
)

__all__ = ["create_preset", "create_look", "list_presets", "shipped_presets", "shipped_preset", "presets_dir",
           "add_preset_arguments", "preset_command", "SHIPPED_LOOKS", "build_shipped_presets"]

PRESET_VERSION = 1


def presets_dir() -> str:
    return str(importlib.resources.files("chromabeam") / "data" / "presets")


def _suffix(method: str) -> str:
    return ".cube" if method == "look" else ".json"


def shipped_presets(method: str = "dncm") -> list[str]:
    """Paths of the presets shipped with chromabeam for ``method`` (sorted): DNCM ``.json``
    presets, or ``.cube`` looks."""
    return sorted(glob.glob(os.path.join(presets_dir(), "*" + _suffix(method))))


def shipped_preset(name: str, method: str = "dncm") -> str | None:
    path = os.path.join(presets_dir(), name + _suffix(method))
    return path if "/" not in name and os.path.isfile(path) else None


def create_look(ref: str, out: str, *, weights: str | None = None, device: str = "auto",
                name: str | None = None, description: str = "", source: str | None = None) -> dict:
    """Fit the look of the reference image ``ref`` (``transforms.look_handler``) and write
    it to ``out`` as a ``.cube`` file (any URL) — usable by ``stylize --method look`` and by
    any editor that reads .cube LUTs. Returns a summary dict."""
    from chromabeam.pipelines.restore import default_weights
    from chromabeam.transforms.look_handler import LookHandler
    from chromabeam.transforms.ops.lut import LUT3D, format_cube

    url, sha = (weights, None) if weights else default_weights()
    style = style_source(ref, "look")
    if style.data is None:
        raise ValueError(f"preset create: {storage.redact(ref)} is already a look; pass a reference image")
    handler = LookHandler(weights=url, expected_sha256=sha, device=device, batch_size=1)
    model = handler.load_model()
    (result,) = handler.run_inference([style], model)
    name = name or storage.basename(out).rsplit(".", 1)[0]
    comments = (f"chromabeam look {name!r}: fitted from {source or storage.redact(ref)}",
                f"restorer {storage.basename(url)} sha256 {model.weights_sha256}",
                *([description] if description else []),
                f"created {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    text = format_cube(LUT3D(result.inference.lut, title=name, comments=comments))
    storage.put_atomic(out, text.encode())
    return {"name": name, "size": int(result.inference.lut.shape[0]), "weights_sha256": model.weights_sha256}


def create_preset(ref: str, out: str, *, weights: str | None = None, device: str = "auto",
                  name: str | None = None, description: str = "", source: str | None = None) -> dict:
    """Encode the reference image ``ref`` once and write its preset to ``out`` (any URL).
    Returns the preset document."""
    from chromabeam.pipelines.stylize import resolve_weights

    url, sha = resolve_weights(weights)
    style = style_source(ref)
    if style.data is None:
        raise ValueError(f"preset create: {storage.redact(ref)} is already a preset; pass a reference image")
    handler = StyleHandler(weights=url, expected_sha256=sha, device=device, batch_size=1)
    model = handler.load_model()
    (result,) = handler.run_inference([style], model)
    entry = result.inference
    doc = {
        "format": PRESET_FORMAT,
        "version": PRESET_VERSION,
        "name": name or storage.basename(out).rsplit(".", 1)[0],
        "k": int(entry.r.shape[0]),
        "r": [[round(float(v), 7) for v in row] for row in entry.r],
        "weights": storage.basename(url),
        "weights_sha256": model.weights_sha256,
        "source": source or storage.redact(ref),
        "description": description,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    storage.put_atomic(out, (json.dumps(doc, indent=1) + "\n").encode())
    return doc


def _grade(**kw) -> dict:
    base = {"version": 1, "tone": [0.0, 0.25, 0.5, 0.75, 1.0], "channel_mid": [0.0, 0.0, 0.0],
            "mix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "hue_shift": 0.0, "saturation": 1.0,
            "split": None, "fade": 0.0, "vignette": None}
    return {**base, **kw}


# The shipped presets: each is the r of a TRAIN photo graded with an explicit procedural
# grade (transforms.ops.grades), so the reference is reproducible from the catalogue.
SHIPPED_REFERENCE = "lomiri-wallpapers-16.04/Bridge_by_Sander_Klootwijk.jpg"
SHIPPED_LOOKS: dict[str, tuple[str, dict]] = {
    "warm": ("warm: red midtones up, blue down, a little more saturation",
             _grade(channel_mid=[0.07, 0.015, -0.09], saturation=1.1)),
    "teal-orange": ("teal shadows, orange highlights, S-curve contrast",
                    _grade(tone=[0.0, 0.21, 0.5, 0.79, 1.0], saturation=1.1,
                           split={"shadow_hue": 190.0, "shadow_strength": 0.3,
                                  "highlight_hue": 30.0, "highlight_strength": 0.25})),
    "faded": ("faded film: lifted blacks, flat curve, muted colour",
              _grade(tone=[0.0, 0.28, 0.5, 0.72, 0.94], saturation=0.72, fade=0.14)),
    "mono": ("black and white with a gentle S-curve",
             _grade(tone=[0.0, 0.22, 0.5, 0.78, 1.0], saturation=0.0)),
}


def build_shipped_presets(out_dir: str, *, weights: str | None = None, cache: str = "/tmp/photo-cache",
                          device: str = "cpu", max_side: int = 768) -> list[str]:
    """(Re)make ``SHIPPED_LOOKS`` in ``out_dir``: as DNCM presets (``.json``, from
    ``SHIPPED_REFERENCE`` — a TRAIN photo, never an EVAL one — graded with each look) and
    as ``.cube`` looks (each grade captured on a 17³ lattice: the grades are
    position-independent). Returns the paths."""
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from chromabeam.models import photos
    from chromabeam.transforms.ops.grades import apply_grade
    from chromabeam.transforms.ops.lut import format_cube, lut_from_function

    train, _ = photos.split()
    (photo,) = [p for p in train if p.name == SHIPPED_REFERENCE]
    photos.fetch_debian(cache)
    x = torch.from_numpy(photos.load(photo, cache, max_side).copy()).permute(2, 0, 1).float().div(255)[None]
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (description, grade) in SHIPPED_LOOKS.items():
            graded = apply_grade(x, grade).clamp(0, 1)[0]
            ref = os.path.join(tmp, f"{name}.png")
            Image.fromarray((graded.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(ref)
            out = storage.join(out_dir, f"{name}.json")
            create_preset(ref, out, weights=weights, device=device, name=name, description=description,
                          source=f"{photo.name} ({photo.source}, {photo.path}) graded with {json.dumps(grade, sort_keys=True)}")
            cube = lut_from_function(lambda t, g=grade: apply_grade(t, g).clamp(0, 1), 17, title=name)
            cube = dataclasses.replace(cube, comments=(
                f"chromabeam look {name!r}: {description}",
                f"the procedural grade (transforms/ops/grades.py), captured exactly: {json.dumps(grade, sort_keys=True)}"))
            storage.put_atomic(storage.join(out_dir, f"{name}.cube"), format_cube(cube, decimals=6).encode())
            paths += [out, storage.join(out_dir, f"{name}.cube")]
    return paths


def list_presets(folder: str) -> list[dict]:
    """Every readable preset in ``folder``: DNCM ``.json`` presets (name, path, k, weights,
    source, description) and ``.cube`` looks (name, path, size, description from the
    comments); unreadable files are listed with their ``error``."""
    from chromabeam.transforms.ops.lut import parse_cube

    out = []
    for url in storage.expand(folder, extensions=(".json", ".cube")):
        try:
            if url.lower().endswith(".cube"):
                lut = parse_cube(storage.read_bytes(url).decode("utf-8"), storage.redact(url))
                out.append({"name": lut.title or storage.basename(url).rsplit(".", 1)[0], "path": url,
                            "kind": "look", "size": lut.size, "description": " / ".join(lut.comments[:1])})
                continue
            doc = read_preset(url)
        except (ValueError, UnicodeDecodeError) as exc:
            out.append({"path": url, "error": str(exc)})
            continue
        out.append({"name": doc.get("name"), "path": url, "kind": "dncm", "k": doc["k"], "weights_sha256": doc.get("weights_sha256"),
                    "source": doc.get("source"), "description": doc.get("description", "")})
    return out


def add_preset_arguments(subparsers) -> argparse.ArgumentParser:
    """Add ``preset`` (with ``create`` and ``list``) to the CLI's subparsers."""
    p = subparsers.add_parser("preset", help="Create and list DNCM style presets.",
                              description="Create and list DNCM style presets (a style's r, computed once).")
    sub = p.add_subparsers(dest="preset_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="a reference image's look as OUT.cube (look transfer) or its DNCM r as OUT.json")
    c.add_argument("ref", metavar="REF", help="reference image URL")
    c.add_argument("out", metavar="OUT.cube|OUT.json")
    c.add_argument("--weights", metavar="URL", default=None,
                   help="restorer (.cube) or DNCM (.json) safetensors (default: the shipped weights)")
    c.add_argument("--device", default="auto")
    c.add_argument("--name", default=None, help="preset name (default: OUT's file stem)")
    c.add_argument("--description", default="")
    ls = sub.add_parser("list", help="list the presets in a folder (default: the shipped presets)")
    ls.add_argument("dir", metavar="DIR", nargs="?", default=None)
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    return p


def preset_command(args: argparse.Namespace) -> int:
    from chromabeam.transforms.devices import DeviceError

    if args.preset_command == "create":
        look = args.out.lower().endswith(".cube")
        try:
            made = (create_look if look else create_preset)(args.ref, args.out, weights=args.weights, device=args.device,
                                                            name=args.name, description=args.description)
        except (ValueError, OSError, DeviceError) as exc:
            print(f"chromabeam preset create: {exc}")
            return 2
        what = (f"look {made['name']!r} ({made['size']}³ LUT, restorer {made['weights_sha256'][:12]})" if look
                else f"preset {made['name']!r} (k={made['k']}, weights {made['weights_sha256'][:12]})")
        print(f"{what} → {storage.redact(args.out)}")
        return 0
    folder = args.dir or presets_dir()
    rows = list_presets(folder)
    for row in rows:
        if args.json:
            print(json.dumps(row, sort_keys=True))
        elif "error" in row:
            print(f"{storage.basename(row['path'])}: unreadable: {row['error']}")
        elif row["kind"] == "look":
            print(f"{row['name']:<16} look {row['size']}³ .cube  {row['description']}")
        else:
            print(f"{row['name']:<16} k={row['k']:<3} weights {str(row['weights_sha256'])[:12]}  "
                  f"{row['description'] or row['source']}")
    if not rows:
        print(f"no presets in {storage.redact(folder)}")
    return 0
