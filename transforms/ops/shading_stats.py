"""Shading statistics of an image view: how local intensity variation behaves at each
luminance, a fingerprint of tone curves that does not depend on what the photo shows.

Most local variation in a photograph is shading — light falling off, folds, texture under
one illuminant — and shading is multiplicative in linear light, so it stays multiplicative
after any power-law encoding (sRGB): in log space it moves all three channels together,
by about the same amount at every luminance. A look's tone curve ``f`` rescales each
channel's log-variation by its elasticity ``f'(v)·v / f(v)``: a fade (lifted blacks)
flattens the shadows' log-contrast, a per-channel curve makes one channel's log-variation
larger or smaller than another's in a luminance-dependent way. Colour histograms see
*which* colours a view holds, which depends on the scene; these statistics see how the
colours *vary*, which depends much less on it (measured in docs/restorer.md with
``benchmarks/bank_recognition.py``: the filter bank's classifier recognises the IFFI
filters on unseen photos somewhat more often with them, 0.395 → 0.429 top-1).

``shading_statistics(view)`` → ``(B, shading_feature_count())``: at the view's scale and
at ``SCALES − 1`` successive 2× downscales, over neighbouring-pixel log-differences binned
by the pair's luminance into ``BANDS`` bands,

- each band's log-contrast (RMS of the mean channel's log-difference) relative to the
  view's mean log-contrast, and that mean (``BANDS + 1``);
- each channel's regression slope on the mean channel's log-difference (1 for pure
  shading; ``3 · BANDS``);
- the log of the energy left over after those slopes (variation that is not shading:
  edges between differently coloured surfaces; ``BANDS``).

Takes ``(B, 3, H, W)`` float in [0, 1]; ``H, W`` ≥ ``2**SCALES``. Not differentiable in
the band assignment (the classifier that uses it is trained on fixed features).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .color import rgb_to_luma

__all__ = ["shading_statistics", "shading_feature_count", "BANDS", "SCALES"]

BANDS = 8
SCALES = 2
# log(x + EPS): keeps 8-bit quantisation steps in the deepest shadows from dominating.
_EPS = 1.0 / 64
_PER_SCALE = BANDS + 1 + 3 * BANDS + BANDS


def shading_feature_count() -> int:
    return SCALES * _PER_SCALE


def _one_scale(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` → ``(B, _PER_SCALE)`` at this scale."""
    lum = rgb_to_luma(x)[:, 0]  # (B, H, W)
    logs = torch.log(x + _EPS)
    diffs = torch.cat([(logs[..., :, 1:] - logs[..., :, :-1]).flatten(2),
                       (logs[..., 1:, :] - logs[..., :-1, :]).flatten(2)], dim=2)  # (B, 3, N)
    level = torch.cat([(0.5 * (lum[..., :, 1:] + lum[..., :, :-1])).flatten(1),
                       (0.5 * (lum[..., 1:, :] + lum[..., :-1, :])).flatten(1)], dim=1)  # (B, N)
    band = (level * BANDS).long().clamp(0, BANDS - 1)  # (B, N)

    def per_band(values: torch.Tensor) -> torch.Tensor:  # (B, N) → sums per band (B, K)
        return values.new_zeros(values.shape[0], BANDS).scatter_add_(1, band, values)

    common = diffs.mean(dim=1)  # (B, N): the shading estimate
    count = per_band(torch.ones_like(common)) + 1e-3
    energy = per_band(common * common)
    contrast = 0.5 * torch.log((energy + 1e-6) / count)  # (B, K)
    overall = contrast.mean(dim=1, keepdim=True)
    # small priors pull empty bands' slopes to 1 (pure shading) rather than 0/0
    cross = torch.stack([per_band(diffs[:, c] * common) for c in range(3)], dim=1)  # (B, 3, K)
    square = torch.stack([per_band(diffs[:, c] * diffs[:, c]) for c in range(3)], dim=1)
    slope = (cross + 1e-4) / (energy[:, None] + 1e-4)
    # Σ (d − s·m)² per band and channel, from the band sums (no second pass over the pixels)
    left = (square - 2 * slope * cross + slope * slope * energy[:, None]).clamp_min(0).sum(dim=1) / (energy + 1e-4)
    return torch.cat([contrast - overall, overall, slope.flatten(1), torch.log(left + 1e-3)], dim=1)


def shading_statistics(view: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] → ``(B, shading_feature_count())`` (see the module doc)."""
    if not isinstance(view, torch.Tensor) or view.ndim != 4 or view.shape[1] != 3 or not view.is_floating_point():
        got = (tuple(view.shape), view.dtype) if isinstance(view, torch.Tensor) else type(view).__name__
        raise ValueError(f"shading_statistics: expected float RGB images (B, 3, H, W) in [0, 1], got {got}")
    if min(view.shape[-2:]) < 2 ** SCALES:
        raise ValueError(f"shading_statistics: need H, W >= {2 ** SCALES}, got {tuple(view.shape[-2:])}")
    x, out = view.clamp(0, 1), []
    for _ in range(SCALES):
        out.append(_one_scale(x))
        x = F.avg_pool2d(x, 2)
    return torch.cat(out, dim=1)
