"""Colour statistics of an image view: what a colour look changes, as fixed-size vectors.

A filter or grade is a change of the colour distribution — lifted blacks, tinted
shadows, compressed highlights, crossed channel curves. These functions describe that
distribution (no learnt parameters), so a small head can infer the look from them and
generalise across content far better than from ImageNet features, which are trained to
ignore colour casts.

- ``colour_statistics(view, bins)``: per-channel soft histograms + a 4×4×4 joint
  histogram → ``(B, 3·bins + 64)``;
- ``global_colour_features(view, bins)``: the above + per-channel quantiles, the mean
  colour offset of each luminance band (how shadows, mid-tones and highlights are tinted)
  and the channel means/covariance → ``(B, global_feature_count(bins))``;
- ``cell_colour_features(view, grid)``: per cell of a ``grid``² partition, the mean
  colour, its offset from the image mean and the luminance spread → ``(B, 7, grid, grid)``
  (what vignettes and gradients change).

All take ``(B, 3, H, W)`` float in [0, 1] and are differentiable in the view.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .color import rgb_to_luma
from .style import curve_basis

__all__ = [
    "colour_statistics",
    "global_colour_features",
    "global_feature_count",
    "cell_colour_features",
    "CELL_FEATURES",
]

_JOINT_BINS = 4
_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
_LUMA_BANDS = 8
CELL_FEATURES = 7


def _check(view: torch.Tensor, fname: str) -> None:
    if not isinstance(view, torch.Tensor) or view.ndim != 4 or view.shape[1] != 3 or not view.is_floating_point():
        got = (tuple(view.shape), view.dtype) if isinstance(view, torch.Tensor) else type(view).__name__
        raise ValueError(f"{fname}: expected float RGB images (B, 3, H, W) in [0, 1], got {got}")


def _sample(view: torch.Tensor, side: int) -> torch.Tensor:
    """A strided sample of at most about ``side``² pixels: plenty for a distribution."""
    step = max(1, min(view.shape[-2:]) // side)
    return view.clamp(0, 1)[..., ::step, ::step]


def _quantiles(flat: torch.Tensor, q: tuple[float, ...]) -> torch.Tensor:
    """``(B, C, N)`` → ``(B, C, len(q))``: ``torch.quantile``'s linear interpolation
    between order statistics. On CPU without autograd the sort is numpy's (far faster
    than torch's CPU sort at these sizes: docs/restorer.md "Speed"); elsewhere, and where
    gradients flow, torch's."""
    n = flat.shape[-1]
    pos = torch.tensor(q, dtype=torch.float64) * (n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(n - 1)
    frac = (pos - lo.double()).to(flat.dtype).to(flat.device)
    if flat.device.type == "cpu" and not flat.requires_grad:
        ordered = torch.from_numpy(np.sort(flat.detach().numpy(), axis=-1))
    else:
        ordered = flat.sort(dim=-1).values
    return ordered[..., lo.to(flat.device)] * (1 - frac) + ordered[..., hi.to(flat.device)] * frac


def _channel_histograms(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] → ``(B, 3·bins)``: each channel's mean of the ``bins``
    hat functions (``curve_basis(x, bins).mean(dim=(2, 3))``), by scattering each pixel's
    two weights instead of building the ``(B, 3·bins, H, W)`` lift."""
    b = x.shape[0]
    t = x.reshape(b * 3, -1) * (bins - 1)
    i = t.floor().clamp(0, bins - 2)
    f = t - i
    i = i.long()
    h = torch.zeros(b * 3, bins, dtype=x.dtype, device=x.device)
    h = h.scatter_add(1, i, 1 - f).scatter_add(1, i + 1, f)
    return h.view(b, 3 * bins) / t.shape[1]


def colour_statistics(view: torch.Tensor, bins: int) -> torch.Tensor:
    """Soft colour histograms of ``view`` ``(B, 3, H, W)`` in [0, 1] → ``(B, 3·bins + 64)``:
    per-channel histograms with ``bins`` linear-interpolation bins, then the 4×4×4 joint
    histogram; each scaled by its bin count so a flat histogram reads 1."""
    _check(view, "colour_statistics")
    x = _sample(view, 64)
    b = x.shape[0]
    per = _channel_histograms(x, bins) * bins  # (B, 3·bins)
    j = curve_basis(x, _JOINT_BINS).view(b, 3, _JOINT_BINS, -1)  # (B, 3, 4, HW)
    joint = torch.einsum("bip,bjp,bkp->bijk", j[:, 0], j[:, 1], j[:, 2]).reshape(b, -1)
    joint = joint / j.shape[-1] * _JOINT_BINS ** 3
    return torch.cat([per, joint], dim=1)


def global_feature_count(bins: int) -> int:
    return 3 * bins + _JOINT_BINS ** 3 + 3 * len(_QUANTILES) + 4 * _LUMA_BANDS + 9


def global_colour_features(view: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """``(B, 3, H, W)`` → ``(B, global_feature_count(bins))``: ``colour_statistics``, the
    per-channel quantiles (black/white points, mid-tones), each luminance band's mass and
    mean colour minus its luminance (×4 so tints read on the histogram's scale), and the
    channel means and covariance (upper triangle)."""
    _check(view, "global_colour_features")
    hist = colour_statistics(view, bins)
    x = _sample(view, 64)
    b = x.shape[0]
    flat = x.reshape(b, 3, -1)
    quant = _quantiles(flat, _QUANTILES).reshape(b, -1)  # (B, 3·nq)
    y = rgb_to_luma(x).reshape(b, 1, -1)
    centres = torch.arange(_LUMA_BANDS, dtype=x.dtype, device=x.device).view(1, -1, 1)
    bands = F.relu(1.0 - (y * (_LUMA_BANDS - 1) - centres).abs())  # (B, L, N) soft memberships
    mass = bands.mean(dim=2)  # (B, L)
    tint = torch.einsum("bln,bcn->blc", bands, flat - y) / (bands.sum(dim=2, keepdim=True) + 1e-3)
    mean = flat.mean(dim=2)
    centred = flat - mean[:, :, None]
    cov = torch.einsum("bcn,bdn->bcd", centred, centred) / flat.shape[-1]
    iu = torch.triu_indices(3, 3, device=x.device)
    moments = torch.cat([mean, cov[:, iu[0], iu[1]] * 10.0], dim=1)
    return torch.cat([hist, quant, mass * _LUMA_BANDS, tint.reshape(b, -1) * 4.0, moments], dim=1)


def cell_colour_features(view: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, 3, H, W)`` → ``(B, 7, grid, grid)``: each cell's mean RGB, that minus the
    image's mean RGB, and its luminance standard deviation."""
    _check(view, "cell_colour_features")
    if grid < 1:
        raise ValueError(f"cell_colour_features: grid must be >= 1, got {grid}")
    x = view.clamp(0, 1)
    mean = F.adaptive_avg_pool2d(x, grid)
    y = rgb_to_luma(x)
    spread = (F.adaptive_avg_pool2d(y * y, grid) - F.adaptive_avg_pool2d(y, grid) ** 2).clamp_min(0).sqrt()
    offset = mean - x.mean(dim=(2, 3), keepdim=True)
    return torch.cat([mean, offset * 4.0, spread * 4.0], dim=1)
