"""Procedural random colour grades: realistic photo looks as JSON-able parameters.

A grade is a global colour map — channel mixing → per-channel curves → master tone
curve → hue rotation → saturation → split toning → fade — baked into a 3D LUT
(``grade_lut``), plus an optional vignette applied exactly per pixel in torch
(``apply_grade``). ``sample_grade`` draws moderate, mostly monotone looks: neutral
greys stay neutral through mixing and saturation, curves are monotone cubic (PCHIP)
through increasing knots, so the neutral axis stays strictly increasing and no grade
collapses an image to black or white.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any, Mapping

import numpy as np
import torch

from .lut import LUT3D, apply_lut, identity_table

__all__ = ["sample_grade", "validate_grade", "grade_function", "grade_lut", "apply_grade", "apply_vignette", "pchip"]

GRADE_VERSION = 1
_LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec.709 weights, as in CSS saturate/hue-rotate
_KNOTS_X = (0.0, 0.25, 0.5, 0.75, 1.0)


def _r(v: float) -> float:
    """Round sampled values so specs stay short in manifests (the rounded value is what
    gets applied, so regeneration from the spec is exact)."""
    return round(float(v), 6)


# --------------------------------------------------------------------------- sampling

def sample_grade(rng: np.random.Generator, vignette_prob: float = 0.3) -> dict:
    """Draw one grade's parameters (a JSON-able dict) from ``rng``."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"sample_grade: rng must be a numpy Generator, got {type(rng).__name__}")
    if not 0.0 <= vignette_prob <= 1.0:
        raise ValueError(f"sample_grade: vignette_prob must be in [0, 1], got {vignette_prob}")
    u = rng.uniform
    contrast = u(-0.06, 0.10)  # S-curve amount (negative: flatter)
    exposure = u(-0.08, 0.08)  # midtone shift
    white = u(0.90, 1.0) if rng.random() < 0.3 else 1.0
    y = [0.0, 0.25 - contrast + 0.7 * exposure, 0.5 + exposure, 0.75 + contrast + 0.7 * exposure, white]
    for i in range(1, 5):  # strictly increasing knots keep the curve monotone
        y[i] = max(y[i], y[i - 1] + 0.04)
    y = [min(v, white) if i < 4 else v for i, v in enumerate(y)]
    params: dict[str, Any] = {
        "version": GRADE_VERSION,
        "tone": [_r(v) for v in y],
        "channel_mid": [_r(u(-0.04, 0.04)) for _ in range(3)] if rng.random() < 0.6 else [0.0, 0.0, 0.0],
        "mix": _sample_mix(rng) if rng.random() < 0.4 else [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        "hue_shift": _r(u(-15.0, 15.0)) if rng.random() < 0.4 else 0.0,
        "saturation": _r(u(0.65, 1.3)),
        "split": None,
        "fade": _r(u(0.02, 0.12)) if rng.random() < 0.35 else 0.0,
        "vignette": None,
    }
    if rng.random() < 0.5:
        shadow_hue = u(0.0, 360.0)
        params["split"] = {
            "shadow_hue": _r(shadow_hue),
            "shadow_strength": _r(u(0.02, 0.12)),
            "highlight_hue": _r((shadow_hue + 180.0 + u(-40.0, 40.0)) % 360.0),
            "highlight_strength": _r(u(0.02, 0.10)),
        }
    if rng.random() < vignette_prob:
        params["vignette"] = {
            "strength": _r(u(0.15, 0.45)),
            "radius": _r(u(0.45, 0.8)),
            "softness": _r(u(0.25, 0.6)),
            "center": [_r(u(0.45, 0.55)), _r(u(0.45, 0.55))],
        }
    return params


def _sample_mix(rng) -> list[list[float]]:
    mix = []
    for row in range(3):
        off = [rng.uniform(-0.08, 0.08) if col != row else 0.0 for col in range(3)]
        off = [_r(v) for v in off]
        off[row] = _r(1.0 - sum(off))  # rows sum to 1: neutral greys stay neutral
        mix.append(off)
    return mix


# --------------------------------------------------------------------------- validation

def _num(v, what, lo=-math.inf, hi=math.inf) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"grade params: {what} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def validate_grade(params: Mapping) -> None:
    """Raise ValueError unless ``params`` is a well-formed grade (as from sample_grade)."""
    if not isinstance(params, Mapping):
        raise ValueError(f"grade params must be a mapping, got {type(params).__name__}")
    expected = {"version", "tone", "channel_mid", "mix", "hue_shift", "saturation", "split", "fade", "vignette"}
    missing, extra = expected - set(params), set(params) - expected
    if missing or extra:
        raise ValueError(f"grade params: missing {sorted(missing)}, unexpected {sorted(extra)}")
    if params["version"] != GRADE_VERSION:
        raise ValueError(f"grade params: unsupported version {params['version']!r}")
    tone = params["tone"]
    if not isinstance(tone, (list, tuple)) or len(tone) != 5:
        raise ValueError(f"grade params: tone must be 5 knot values, got {tone!r}")
    tone = [_num(v, "tone knot", 0.0, 1.0) for v in tone]
    if any(b <= a for a, b in zip(tone, tone[1:])):
        raise ValueError(f"grade params: tone knots must be strictly increasing, got {tone}")
    mid = params["channel_mid"]
    if not isinstance(mid, (list, tuple)) or len(mid) != 3:
        raise ValueError(f"grade params: channel_mid must be 3 numbers, got {mid!r}")
    for v in mid:
        _num(v, "channel_mid", -0.25, 0.25)
    mix = params["mix"]
    if not isinstance(mix, (list, tuple)) or len(mix) != 3 or any(not isinstance(r, (list, tuple)) or len(r) != 3 for r in mix):
        raise ValueError(f"grade params: mix must be a 3x3 matrix, got {mix!r}")
    for row in mix:
        for v in row:
            _num(v, "mix entry", -2.0, 3.0)
    _num(params["hue_shift"], "hue_shift", -180.0, 180.0)
    _num(params["saturation"], "saturation", 0.0, 3.0)
    _num(params["fade"], "fade", 0.0, 0.5)
    split = params["split"]
    if split is not None:
        if not isinstance(split, Mapping) or set(split) != {"shadow_hue", "shadow_strength", "highlight_hue", "highlight_strength"}:
            raise ValueError(f"grade params: bad split toning {split!r}")
        _num(split["shadow_hue"], "shadow_hue", 0.0, 360.0)
        _num(split["highlight_hue"], "highlight_hue", 0.0, 360.0)
        _num(split["shadow_strength"], "shadow_strength", 0.0, 1.0)
        _num(split["highlight_strength"], "highlight_strength", 0.0, 1.0)
    _validate_vignette(params["vignette"])


def _validate_vignette(vig) -> None:
    if vig is None:
        return
    if not isinstance(vig, Mapping) or set(vig) != {"strength", "radius", "softness", "center"}:
        raise ValueError(f"grade params: bad vignette {vig!r}")
    _num(vig["strength"], "vignette strength", 0.0, 1.0)
    _num(vig["radius"], "vignette radius", 0.0, 2.0)
    _num(vig["softness"], "vignette softness", 1e-3, 2.0)
    c = vig["center"]
    if not isinstance(c, (list, tuple)) or len(c) != 2:
        raise ValueError(f"grade params: vignette center must be [x, y], got {c!r}")
    for v in c:
        _num(v, "vignette center", 0.0, 1.0)


# --------------------------------------------------------------------------- global part

def pchip(xk, yk, x) -> np.ndarray:
    """Monotone piecewise-cubic Hermite interpolation (Fritsch–Carlson derivatives with
    the three-point end conditions — the PCHIP scheme of scipy's PchipInterpolator);
    ``x`` is clamped to [xk[0], xk[-1]]."""
    xk, yk = np.asarray(xk, np.float64), np.asarray(yk, np.float64)
    h = np.diff(xk)
    m = np.diff(yk) / h
    d = np.zeros_like(yk)
    if len(xk) == 2:
        d[:] = m[0]
    else:
        w1 = 2 * h[1:] + h[:-1]
        w2 = h[1:] + 2 * h[:-1]
        flat = (np.sign(m[1:]) != np.sign(m[:-1])) | (m[1:] == 0) | (m[:-1] == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            inner = (w1 + w2) / (w1 / m[:-1] + w2 / m[1:])
        d[1:-1] = np.where(flat, 0.0, inner)
        d[0] = _pchip_end(h[0], h[1], m[0], m[1])
        d[-1] = _pchip_end(h[-1], h[-2], m[-1], m[-2])
    x = np.clip(np.asarray(x, np.float64), xk[0], xk[-1])
    i = np.clip(np.searchsorted(xk, x, side="right") - 1, 0, len(xk) - 2)
    t = (x - xk[i]) / h[i]
    t2, t3 = t * t, t * t * t
    return (
        (2 * t3 - 3 * t2 + 1) * yk[i]
        + (t3 - 2 * t2 + t) * h[i] * d[i]
        + (-2 * t3 + 3 * t2) * yk[i + 1]
        + (t3 - t2) * h[i] * d[i + 1]
    )


def _pchip_end(h0, h1, m0, m1) -> float:
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > 3 * abs(m0):
        return 3 * m0
    return d


def _hue_matrix(degrees: float) -> np.ndarray:
    """Luma-preserving hue rotation (the W3C feColorMatrix hueRotate matrix)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    lum = np.tile([0.213, 0.715, 0.072], (3, 1))
    cos_part = np.eye(3) - lum
    sin_part = np.array([[-0.213, -0.715, 0.928], [0.143, 0.140, -0.283], [-0.787, 0.715, 0.072]])
    return lum + c * cos_part + s * sin_part


def _tint(hue_degrees: float) -> np.ndarray:
    """Zero-luma chroma offset pointing at ``hue`` (HSV hue, full saturation)."""
    h = (hue_degrees % 360.0) / 60.0
    x = 1.0 - abs(h % 2.0 - 1.0)
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h) % 6]
    rgb = np.asarray(rgb, np.float64)
    return rgb - rgb @ _LUMA


def grade_function(rgb: np.ndarray, params: Mapping) -> np.ndarray:
    """The global part of a grade on an array ``(..., 3)`` of RGB in [0, 1] (float64
    maths); returns the same shape clipped to [0, 1]."""
    validate_grade(params)
    x = np.clip(np.asarray(rgb, np.float64), 0.0, 1.0)
    x = np.clip(x @ np.asarray(params["mix"], np.float64).T, 0.0, 1.0)
    mids = params["channel_mid"]
    x = np.stack([pchip((0.0, 0.5, 1.0), (0.0, 0.5 + mids[c], 1.0), x[..., c]) for c in range(3)], axis=-1)
    x = pchip(_KNOTS_X, params["tone"], x)
    if params["hue_shift"]:
        x = np.clip(x @ _hue_matrix(params["hue_shift"]).T, 0.0, 1.0)
    luma = (x @ _LUMA)[..., None]
    x = np.clip(luma + params["saturation"] * (x - luma), 0.0, 1.0)
    split = params["split"]
    if split is not None:
        luma = np.clip(x @ _LUMA, 0.0, 1.0)[..., None]
        x = (
            x
            + split["shadow_strength"] * (1.0 - luma) ** 2 * _tint(split["shadow_hue"])
            + split["highlight_strength"] * luma**2 * _tint(split["highlight_hue"])
        )
        x = np.clip(x, 0.0, 1.0)
    fade = params["fade"]
    x = fade + (1.0 - fade) * x
    return np.clip(x, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _grade_lut_cached(key: str, size: int) -> LUT3D:
    params = json.loads(key)
    table = grade_function(identity_table(size), params).astype(np.float32)
    return LUT3D(table, title="procedural grade")


def _key(params: Mapping) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def grade_lut(params: Mapping, size: int = 33) -> np.ndarray:
    """The global part of a grade as an ``(S, S, S, 3)`` float32 table indexed ``[b, g, r]``."""
    validate_grade(params)
    return _grade_lut_cached(_key(params), int(size)).table.copy()


# --------------------------------------------------------------------------- spatial part

def apply_vignette(images: torch.Tensor, vignette: Mapping | None) -> torch.Tensor:
    """Darken towards the corners: ``images * (1 - strength * smoothstep(d))`` where ``d``
    is the elliptical distance from ``center`` (1 at the corners of a centred frame),
    ramping from ``radius`` over ``softness``. ``images``: ``(*, 3, H, W)``."""
    _validate_vignette(vignette)
    if vignette is None or vignette["strength"] == 0:
        return images
    h, w = images.shape[-2:]
    cx, cy = vignette["center"]
    ys = (torch.arange(h, device=images.device, dtype=images.dtype) + 0.5) / h
    xs = (torch.arange(w, device=images.device, dtype=images.dtype) + 0.5) / w
    d = torch.sqrt(((ys[:, None] - cy) * 2.0) ** 2 + ((xs[None, :] - cx) * 2.0) ** 2) / math.sqrt(2.0)
    t = ((d - vignette["radius"]) / vignette["softness"]).clamp_(0.0, 1.0)
    factor = 1.0 - vignette["strength"] * t * t * (3.0 - 2.0 * t)
    return images * factor


def apply_grade(images: torch.Tensor, params: Mapping, strength: float = 1.0, *, lut_size: int = 33) -> torch.Tensor:
    """Apply a grade to ``images`` ``(*, 3, H, W)`` float in [0, 1]: the global part as
    a trilinear LUT, then the vignette exactly. ``strength`` in [0, 1] blends the graded
    result with the input. Returns the same shape, clamped to [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim < 3 or images.shape[-3] != 3 or not images.is_floating_point():
        raise ValueError(f"apply_grade: images must be a float tensor of shape (*, 3, H, W), got {getattr(images, 'shape', type(images))}")
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"apply_grade: strength must be in [0, 1], got {strength}")
    validate_grade(params)
    x = images.clamp(0.0, 1.0)
    if strength == 0.0:
        return x
    out = apply_lut(x, _grade_lut_cached(_key(params), int(lut_size)))
    out = apply_vignette(out, params["vignette"])
    if strength != 1.0:
        out = torch.lerp(x, out, strength)
    return out.clamp_(0.0, 1.0)
