"""Training-pair synthesis: seeded transform specs and their deterministic application.

Every random choice for pair ``pair_index`` of record ``key`` comes from
``derive_rng(seed, key, pair_index, stream)`` — a SHA-256 of those values, never
Python's ``hash()``, worker order or time — and is written into a JSON-able spec.
``apply_transform(images, spec, luts)`` needs only the spec (plus the LUT pack, looked
up by id), so any manifest row can be regenerated exactly.

A transform spec::

    {"family": "filter" | "lut" | "grade" | "identity",
     "id": filter name | LUT id | "grade" | None,
     "strength": float in [0, 1],          # blend with the input
     "params": grade parameters (grade family only, else None),
     "perturb": [{"name": ..., "amount": ...}, ...]}   # applied after the main transform

A pair spec (``make_pair``) holds both sides: ``{"version", "mode", "seed", "key",
"pair_index", "input": <transform spec>, "target": <transform spec>}``; in removal mode
the target is the identity (the original image).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .filters import FILTER_NAMES, IFFI_FILTERS, SPATIAL_FILTERS, apply_filter, filter_lut
from .grades import apply_grade, grade_lut, sample_grade, validate_grade
from .imageio import to_float, to_uint8
from .lut import LUT3D, apply_lut, identity_table
from .perturb import PERTURB_LEVELS, apply_perturbations, sample_perturbations
from .pixels8 import MAX_LUT, lut_uint8

__all__ = [
    "SPEC_VERSION",
    "FAMILIES",
    "SynthConfig",
    "derive_rng",
    "parse_filters",
    "parse_strength",
    "sample_transform",
    "apply_transform",
    "pair_spec",
    "make_pair",
    "regenerate_pair",
    "pure_lut",
    "render",
    "render_pair",
]

SPEC_VERSION = 1
FAMILIES = ("filter", "lut", "grade", "identity")
MODES = ("removal", "preset")
_PRESET_RETRIES = 8


def derive_rng(seed: int, key: str, pair_index: int, stream: str = "") -> np.random.Generator:
    """A generator determined only by (seed, key, pair_index, stream), stable across
    processes, machines and Python versions (JSON-encoded tuple → SHA-256 → PCG64)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"derive_rng: seed must be a non-negative integer, got {seed!r}")
    if not isinstance(key, str):
        raise ValueError(f"derive_rng: key must be a string, got {type(key).__name__}")
    if isinstance(pair_index, bool) or not isinstance(pair_index, (int, np.integer)) or pair_index < 0:
        raise ValueError(f"derive_rng: pair_index must be a non-negative integer, got {pair_index!r}")
    if not isinstance(stream, str):
        raise ValueError(f"derive_rng: stream must be a string, got {type(stream).__name__}")
    payload = json.dumps(["chromabeam.synth/1", int(seed), key, int(pair_index), stream], ensure_ascii=False)
    digest = hashlib.sha256(payload.encode("utf-8")).digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def parse_filters(text: str) -> tuple[str, ...]:
    """CLI ``--filters``: ``all`` | ``iffi`` | ``none`` | comma-separated names."""
    value = (text or "").strip()
    if value.lower() == "all":
        return FILTER_NAMES
    if value.lower() == "iffi":
        return IFFI_FILTERS
    if value.lower() in ("none", ""):
        return ()
    names = tuple(dict.fromkeys(n.strip().lower() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in FILTER_NAMES]
    if unknown:
        raise ValueError(f"unknown filter(s) {unknown}; known: all, iffi, none, {', '.join(FILTER_NAMES)}")
    return names


def parse_strength(text: str) -> tuple[float, float]:
    """CLI ``--lut-strength MIN[,MAX]`` → ``(min, max)`` within [0, 1]."""
    parts = [p.strip() for p in str(text).split(",")]
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"strength must be MIN or MIN,MAX, got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"strength must be numbers, got {text!r}") from None
    lo, hi = values[0], values[-1]
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"strength must satisfy 0 <= MIN <= MAX <= 1, got {text!r}")
    return (lo, hi)


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesize. ``filters``: pilgram filter names; ``luts``: ids in the LUT
    pack; ``lut_strength``: (min, max) blend-with-identity range drawn uniformly for
    every non-identity family; ``perturb``: ``none|light|full``; ``mode``: ``removal``
    (input = transformed, target = original) or ``preset`` (two different looks of the
    same image); ``identity_prob``: chance of an unchanged input (default 0.05 in
    removal mode, 0 in preset mode); ``grade_prob``: chance of a procedural grade when
    filters or LUTs are also enabled (1 when they are not); filter and LUT families
    share the rest equally."""

    filters: tuple[str, ...] = FILTER_NAMES
    luts: tuple[str, ...] = ()
    lut_strength: tuple[float, float] = (1.0, 1.0)
    perturb: str = "light"
    mode: str = "removal"
    identity_prob: float | None = None
    grade_prob: float = 0.25
    vignette_prob: float = 0.3

    def __post_init__(self):
        filters = tuple(self.filters)
        unknown = [n for n in filters if n not in FILTER_NAMES]
        if unknown:
            raise ValueError(f"SynthConfig: unknown filter(s) {unknown}; known: {', '.join(FILTER_NAMES)}")
        if len(set(filters)) != len(filters):
            raise ValueError("SynthConfig: filters contain duplicates")
        luts = tuple(self.luts)
        if any(not isinstance(n, str) or not n for n in luts) or len(set(luts)) != len(luts):
            raise ValueError(f"SynthConfig: luts must be unique non-empty ids, got {luts!r}")
        try:
            lo, hi = (float(v) for v in self.lut_strength)
        except (TypeError, ValueError):
            raise ValueError(f"SynthConfig: lut_strength must be (min, max), got {self.lut_strength!r}") from None
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"SynthConfig: lut_strength must satisfy 0 <= min <= max <= 1, got {self.lut_strength!r}")
        if self.perturb not in PERTURB_LEVELS:
            raise ValueError(f"SynthConfig: perturb must be one of {PERTURB_LEVELS}, got {self.perturb!r}")
        if self.mode not in MODES:
            raise ValueError(f"SynthConfig: mode must be one of {MODES}, got {self.mode!r}")
        identity = self.identity_prob
        if identity is None:
            identity = 0.05 if self.mode == "removal" else 0.0
        for name, p in (("identity_prob", identity), ("grade_prob", self.grade_prob), ("vignette_prob", self.vignette_prob)):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"SynthConfig: {name} must be in [0, 1], got {p!r}")
        object.__setattr__(self, "filters", filters)
        object.__setattr__(self, "luts", luts)
        object.__setattr__(self, "lut_strength", (lo, hi))
        object.__setattr__(self, "identity_prob", float(identity))
        if identity < 1.0 and not self.family_weights():
            raise ValueError("SynthConfig: nothing to synthesize: no filters, no LUTs and grade_prob == 0")

    def family_weights(self) -> dict[str, float]:
        """Probabilities of the non-identity families, given a non-identity draw."""
        others = [f for f, on in (("filter", bool(self.filters)), ("lut", bool(self.luts))) if on]
        if not others:
            return {"grade": 1.0} if self.grade_prob > 0 else {}
        weights = {f: (1.0 - self.grade_prob) / len(others) for f in others}
        if self.grade_prob > 0:
            weights["grade"] = float(self.grade_prob)
        return {f: w for f, w in weights.items() if w > 0}


def _identity_spec() -> dict:
    return {"family": "identity", "id": None, "strength": 0.0, "params": None, "perturb": []}


def sample_transform(config: SynthConfig, rng: np.random.Generator) -> dict:
    """Draw one transform spec (JSON-able) from ``rng`` according to ``config``."""
    if not isinstance(config, SynthConfig):
        raise ValueError(f"sample_transform: config must be a SynthConfig, got {type(config).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"sample_transform: rng must be a numpy Generator, got {type(rng).__name__}")
    if rng.random() < config.identity_prob:
        return _identity_spec()
    weights = config.family_weights()
    families = list(weights)
    probs = np.asarray([weights[f] for f in families], dtype=np.float64)
    family = families[int(rng.choice(len(families), p=probs / probs.sum()))]
    lo, hi = config.lut_strength
    strength = round(float(rng.uniform(lo, hi)), 6) if hi > lo else lo
    params = None
    if family == "filter":
        ident = config.filters[int(rng.integers(len(config.filters)))]
    elif family == "lut":
        ident = config.luts[int(rng.integers(len(config.luts)))]
    else:
        ident = "grade"
        params = sample_grade(rng, vignette_prob=config.vignette_prob)
    perturb = sample_perturbations(rng, config.perturb)
    return {"family": family, "id": ident, "strength": strength, "params": params, "perturb": perturb}


def _validate_spec(spec: Mapping) -> None:
    if not isinstance(spec, Mapping):
        raise ValueError(f"transform spec must be a mapping, got {type(spec).__name__}")
    expected = {"family", "id", "strength", "params", "perturb"}
    if set(spec) != expected:
        raise ValueError(f"transform spec must have keys {sorted(expected)}, got {sorted(spec)}")
    family = spec["family"]
    if family not in FAMILIES:
        raise ValueError(f"transform spec: unknown family {family!r}; known: {FAMILIES}")
    strength = spec["strength"]
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"transform spec: strength must be in [0, 1], got {strength!r}")
    if family == "filter" and spec["id"] not in FILTER_NAMES:
        raise ValueError(f"transform spec: unknown filter {spec['id']!r}")
    if family == "lut" and (not isinstance(spec["id"], str) or not spec["id"]):
        raise ValueError(f"transform spec: a LUT transform needs a LUT id, got {spec['id']!r}")
    if family == "grade":
        validate_grade(spec["params"])
    elif spec["params"] is not None:
        raise ValueError(f"transform spec: params are only for grades, got {spec['params']!r}")
    if not isinstance(spec["perturb"], (list, tuple)):
        raise ValueError(f"transform spec: perturb must be a list, got {spec['perturb']!r}")


def apply_transform(images: torch.Tensor, spec: Mapping, luts: Mapping[str, LUT3D] | None = None) -> torch.Tensor:
    """Apply a transform spec to ``images`` ``(*, 3, H, W)`` float in [0, 1]; returns the
    same shape. Deterministic: depends only on the spec and, for the ``lut`` family,
    on ``luts[spec["id"]]``."""
    _validate_spec(spec)
    if not isinstance(images, torch.Tensor) or images.ndim < 3 or images.shape[-3] != 3 or not images.is_floating_point():
        raise ValueError(f"apply_transform: images must be a float tensor of shape (*, 3, H, W), got {getattr(images, 'shape', type(images))}")
    family, strength = spec["family"], float(spec["strength"])
    x = images.clamp(0.0, 1.0)
    if family == "filter":
        out = apply_filter(x, spec["id"], strength)
    elif family == "lut":
        if luts is None or spec["id"] not in luts:
            raise ValueError(f"apply_transform: LUT id {spec['id']!r} is not in the LUT pack")
        out = apply_lut(x, luts[spec["id"]], strength)
    elif family == "grade":
        out = apply_grade(x, spec["params"], strength)
    else:
        out = x
    return apply_perturbations(out, spec["perturb"])


def _same_look(a: Mapping, b: Mapping) -> bool:
    return a["family"] == b["family"] and a["id"] == b["id"] and a["family"] != "grade"


def pair_spec(config: SynthConfig, seed: int, key: str, pair_index: int) -> dict:
    """Draw the pair spec for pair ``pair_index`` of record ``key`` (sampling only)."""
    if not isinstance(config, SynthConfig):
        raise ValueError(f"pair_spec: config must be a SynthConfig, got {type(config).__name__}")
    first = sample_transform(config, derive_rng(seed, key, pair_index, "input"))
    if config.mode == "removal":
        second = _identity_spec()
    else:
        rng = derive_rng(seed, key, pair_index, "target")
        for _ in range(_PRESET_RETRIES):
            second = sample_transform(config, rng)
            if not _same_look(first, second):
                break
    return {
        "version": SPEC_VERSION,
        "mode": config.mode,
        "seed": int(seed),
        "key": key,
        "pair_index": int(pair_index),
        "input": first,
        "target": second,
    }


def _check_pack(config: SynthConfig, luts: Mapping[str, LUT3D] | None) -> None:
    missing = [n for n in config.luts if luts is None or n not in luts]
    if missing:
        raise ValueError(f"make_pair: config names LUT ids missing from the LUT pack: {missing}")


def make_pair(
    image: torch.Tensor,
    config: SynthConfig,
    seed: int,
    key: str,
    pair_index: int,
    luts: Mapping[str, LUT3D] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Synthesize pair ``pair_index`` of ``image`` ``(*, 3, H, W)``.

    removal: ``(transformed, original, spec)``; preset: two different looks of the same
    image, ``(look_a, look_b, spec)``. ``spec`` (JSON-able) regenerates both outputs via
    ``regenerate_pair``."""
    _check_pack(config, luts)
    spec = pair_spec(config, seed, key, pair_index)
    inp, tgt = regenerate_pair(image, spec, luts)
    return inp, tgt, spec


# --------------------------------------------------------------------------- 8-bit fast path
# Most transforms are pure colour maps. For 8-bit images on the CPU they run through
# Pillow's C Color3DLUT (16-bit fixed point trilinear) straight on the uint8 pixels, which
# is ~2x the float torch path once the uint8<->float conversions are counted. Anything
# spatial or image-dependent (vignettes, spatial filters, perturbations) takes the torch path.
PILLOW_MAX_LUT = MAX_LUT


def pure_lut(spec: Mapping, luts: Mapping[str, LUT3D] | None = None) -> LUT3D | None:
    """The transform as one LUT (strength folded into the table), or None when it is not
    a pure colour map Pillow can apply."""
    _validate_spec(spec)
    if spec["perturb"]:
        return None
    family, strength = spec["family"], float(spec["strength"])
    if family == "lut":
        if luts is None or spec["id"] not in luts:
            raise ValueError(f"pure_lut: LUT id {spec['id']!r} is not in the LUT pack")
        lut = luts[spec["id"]]
        if np.any(np.asarray(lut.domain_min) != 0.0) or np.any(np.asarray(lut.domain_max) != 1.0):
            return None
        table = np.asarray(lut.table, dtype=np.float32)
    elif family == "filter" and spec["id"] not in SPATIAL_FILTERS:
        table = np.asarray(filter_lut(spec["id"]).table, dtype=np.float32)
    elif family == "grade" and not spec["params"].get("vignette"):
        table = grade_lut(spec["params"])
    else:
        return None
    size = table.shape[0]
    if size > PILLOW_MAX_LUT:
        return None
    if strength < 1.0:
        table = identity_table(size) * (1.0 - strength) + table * strength
    return LUT3D(np.clip(table, 0.0, 1.0).astype(np.float32), title=str(spec["id"]))


def render(pixels: np.ndarray, spec: Mapping, luts: Mapping[str, LUT3D] | None = None) -> np.ndarray:
    """Apply a transform spec to an 8-bit RGB image (H, W, 3) → uint8 (H, W, 3).

    Deterministic from the spec (Pillow for pure colour maps, torch otherwise); this is
    what synth-pairs writes, so ``render`` regenerates a pair's images exactly."""
    if spec.get("family") == "identity" and not spec.get("perturb"):
        return pixels
    lut = pure_lut(spec, luts)
    if lut is not None:
        return lut_uint8(pixels, lut.table)
    with torch.no_grad():
        return to_uint8(apply_transform(to_float(pixels).unsqueeze(0), spec, luts)[0])


def render_pair(pixels: np.ndarray, spec: Mapping, luts: Mapping[str, LUT3D] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(input, target)`` uint8 images of a pair spec."""
    if not isinstance(spec, Mapping) or spec.get("version") != SPEC_VERSION or spec.get("mode") not in MODES:
        raise ValueError(f"render_pair: not a version-{SPEC_VERSION} pair spec: {spec!r}")
    return render(pixels, spec["input"], luts), render(pixels, spec["target"], luts)


def regenerate_pair(image: torch.Tensor, spec: Mapping, luts: Mapping[str, LUT3D] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input, target)`` of a pair spec written by ``make_pair`` (e.g. read back from a
    manifest's JSON)."""
    if not isinstance(spec, Mapping) or spec.get("version") != SPEC_VERSION or spec.get("mode") not in MODES:
        raise ValueError(f"regenerate_pair: not a version-{SPEC_VERSION} pair spec: {spec!r}")
    return apply_transform(image, spec["input"], luts), apply_transform(image, spec["target"], luts)
