"""Harmonizer-style colour perturbations (Ke et al., "Harmonizer", ECCV 2022).

Six filters, each with one argument in [-1, 1]: 0 is the identity, the sign is the
direction (positive: brighter / more contrast / more saturated / warmer / brighter
highlights / brighter shadows), |amount| = 1 is the filter's extreme. The formulas
follow the paper's released filter definitions; contrast and temperature use
per-image statistics (each image of a batch separately), the others are per pixel.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

__all__ = ["PERTURBATIONS", "PERTURB_LEVELS", "ARGUMENT_RANGES", "apply_perturbation", "apply_perturbations", "sample_perturbations"]

PERTURBATIONS = ("brightness", "contrast", "saturation", "temperature", "highlight", "shadow")
PERTURB_LEVELS = ("none", "light", "full")
# Harmonizer's regressor output ranges: perturbations of this size are natural edits.
ARGUMENT_RANGES = {"temperature": 0.3, "brightness": 0.5, "contrast": 0.5, "saturation": 0.6, "highlight": 0.4, "shadow": 0.4}
_EPS = 1e-6


def _brightness(x, a):
    # scaling HSV value with hue and saturation fixed == scaling RGB
    gain = 1.0 / max(1.0 - a, _EPS) if a >= 0 else 1.0 + a
    return x * gain


def _contrast(x, a):
    mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    k = 255.0 / (256.0 - np.floor(a * 255.0)) - 1.0 if a > 0 else a
    return x + (x - mean) * k


def _saturation(x, a):
    cmax = x.amax(dim=-3, keepdim=True)
    cmin = x.amin(dim=-3, keepdim=True)
    lightness = (cmax + cmin) * 0.5
    if a < 0:
        return lightness + (x - lightness) * (1.0 + a)
    spread, total = cmax - cmin, cmax + cmin
    s = torch.where(lightness < 0.5, spread / (total + _EPS), spread / (2.0 - total + _EPS))  # HSL saturation
    # push saturation towards 1 by `a`, never beyond full saturation
    d = torch.where(s + a > 1.0, s, torch.full_like(s, 1.0 - a))
    return x + (x - lightness) * (1.0 / (d + _EPS) - 1.0)


def _temperature(x, a):
    means = x.mean(dim=(-2, -1), keepdim=True)  # (*, 3, 1, 1)
    gray = means.mean(dim=-3, keepdim=True)
    shift = torch.tensor([abs(a) if a < 0 else 0.0, 0.5 * abs(a), abs(a) if a > 0 else 0.0], dtype=x.dtype, device=x.device).view(3, 1, 1)
    means_ = means + shift  # raising a channel's mean lowers its gain: a > 0 cools blue (warmer)
    gray_ = means_.mean(dim=-3, keepdim=True)
    coef = gray_ / (means_ + _EPS) + (1.0 - gray / (means + _EPS))
    return x * coef


# Harmonizer adds 1e-9 inside the power for gradient safety; without it black and
# white stay exactly fixed (these ops are not differentiated here).
def _highlight(x, a):
    return 1.0 - torch.pow(1.0 - x, 1.0 + a)


def _shadow(x, a):
    return torch.pow(x, 1.0 - a)


_FNS = {
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": _saturation,
    "temperature": _temperature,
    "highlight": _highlight,
    "shadow": _shadow,
}


def apply_perturbation(images: torch.Tensor, name: str, amount: float) -> torch.Tensor:
    """Apply perturbation ``name`` with ``amount`` in [-1, 1] to ``images``
    ``(*, 3, H, W)`` float in [0, 1]; returns the same shape clamped to [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim < 3 or images.shape[-3] != 3 or not images.is_floating_point():
        raise ValueError(f"apply_perturbation: images must be a float tensor of shape (*, 3, H, W), got {getattr(images, 'shape', type(images))}")
    if name not in _FNS:
        raise ValueError(f"apply_perturbation: unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float, np.floating, np.integer)):
        raise ValueError(f"apply_perturbation: amount must be a number, got {amount!r}")
    amount = float(amount)
    if not -1.0 <= amount <= 1.0:
        raise ValueError(f"apply_perturbation: amount must be in [-1, 1], got {amount}")
    x = images.clamp(0.0, 1.0)
    if amount == 0.0 or x.numel() == 0:
        return x
    return _FNS[name](x, amount).clamp_(0.0, 1.0)


def apply_perturbations(images: torch.Tensor, perturbations: Sequence[Mapping]) -> torch.Tensor:
    """Apply ``[{"name": ..., "amount": ...}, ...]`` in order."""
    out = images.clamp(0.0, 1.0)
    for item in perturbations:
        if not isinstance(item, Mapping) or set(item) != {"name", "amount"}:
            raise ValueError(f"apply_perturbations: each item must be {{'name', 'amount'}}, got {item!r}")
        out = apply_perturbation(out, item["name"], item["amount"])
    return out


def sample_perturbations(rng: np.random.Generator, level: str = "light") -> list[dict]:
    """Draw a JSON-able list of perturbations. ``light``: 1-2 filters at up to half of
    Harmonizer's argument range; ``full``: 1-4 filters over the whole range; ``none``: []."""
    if level not in PERTURB_LEVELS:
        raise ValueError(f"sample_perturbations: level must be one of {PERTURB_LEVELS}, got {level!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"sample_perturbations: rng must be a numpy Generator, got {type(rng).__name__}")
    if level == "none":
        return []
    count = int(rng.integers(1, 3 if level == "light" else 5))
    scale = 0.5 if level == "light" else 1.0
    names = rng.choice(len(PERTURBATIONS), size=count, replace=False)
    out = []
    for i in names:
        name = PERTURBATIONS[int(i)]
        limit = ARGUMENT_RANGES[name] * scale
        out.append({"name": name, "amount": round(float(rng.uniform(-limit, limit)), 6)})
    return out
