"""Neural Preset's DNCM colour-style model (Ke et al., CVPR 2023), over a curve basis.

One encoder (ImageNet-pretrained EfficientNet-Lite0; the paper used B0) sees a 256×256
downsample of an image and predicts two k×k matrices: ``d`` (how to *normalise* this
image's colours) and ``r`` (how to *re-create* its style). Two deterministic colour maps,
each with its own learnt P and Q, are then applied at the image's own resolution:

    nDNCM:  Z = φ(content) · P_n · d_content · Q_n       (colour-normalised content)
    sDNCM:  y = φ(Z)       · P_s · r_style   · Q_s       (stylised output)

Z and r are each computed once, so any content can be combined with any style.

Two measured departures from the linear paper model (docs/stylize.md has the numbers):

- ``φ`` lifts each pixel into a per-channel piecewise-linear basis with ``knots`` knots
  (``transforms.ops.style``): the map folds to 9 channel-to-channel curves instead of one
  3×3 matrix, so tone curves, fades and per-channel curves become expressible (the paper's
  linear map caps our quality check near the 3×3 oracle). ``knots=0`` is the paper's
  linear ``x·P·T·Q`` exactly. Cost stays linear in pixels with flat memory.
- The heads see, besides the encoder's pooled features, the view's colour statistics:
  per-channel soft histograms (``hist_bins`` bins) and a 4×4×4 joint soft histogram.
  ImageNet features are trained to be fairly colour-invariant; the histogram is what a
  colour style *is*, and it lets a short CPU training run learn ``r`` at all.

Initialisation: with T = I each map is the identity (P = E·R, Q = Rᵀ with R orthonormal
rows and φ(x)·E = x), and the heads start at T ≈ I (bias = I, small weights).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from chromabeam.models.efficientnet_lite import efficientnet_lite0
from chromabeam.transforms.ops.colour_stats import colour_statistics
from chromabeam.transforms.ops.dncm import dncm_apply
from chromabeam.transforms.ops.style import curve_dncm_apply, identity_curve_embedding

__all__ = ["DNCM", "colour_statistics"]

_JOINT_BINS = 4
_HIDDEN = 512


def _check_images(x: torch.Tensor, fname: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"DNCM.{fname}: expected float RGB images (B, 3, H, W) in [0, 1], got {got}")


def _orthonormal_rows(rows: int, cols: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(cols, rows))
    return q.T.contiguous()  # (rows, cols) with orthonormal rows


class DNCM(nn.Module):
    """``DNCM(k=16, encoder_size=256, knots=8, hist_bins=16, pretrained=True)``.

    - ``encode(x) -> (d, r)``: ``x`` ``(B, 3, H, W)`` in [0, 1] → two ``(B, k, k)``;
      the encoder sees a bilinear, antialiased resize to ``encoder_size``².
    - ``normalize(x, d) -> Z`` and ``stylize(Z, r) -> y``: ``(B, 3, H, W)`` at the input's
      resolution; ``d``/``r`` of batch 1 broadcast over B. Not clamped (Z lives in a
      learnt space; y is clamped by ``forward`` in eval mode only, so training losses
      keep their gradients).
    - ``forward(content, style) -> y``: stylise ``content`` ``(B, 3, H, W)`` with the
      style of ``style`` ``(B or 1, 3, H', W')``.
    - ``freeze_encoder(blocks)``: stop training the stem and the first ``blocks`` MBConv
      blocks (kept in eval mode, run without autograd) — a CPU training budget choice.
    """

    def __init__(self, k: int = 16, encoder_size: int = 256, knots: int = 8, hist_bins: int = 16,
                 pretrained: bool = True):
        super().__init__()
        if k < 3:
            raise ValueError(f"DNCM: k must be >= 3 (the embedding must hold RGB), got {k}")
        if knots == 1 or knots < 0:
            raise ValueError(f"DNCM: knots must be 0 (linear, as in the paper) or >= 2, got {knots}")
        if hist_bins < 0 or hist_bins == 1:
            raise ValueError(f"DNCM: hist_bins must be 0 (no colour statistics) or >= 2, got {hist_bins}")
        self.k, self.encoder_size, self.knots, self.hist_bins = int(k), int(encoder_size), int(knots), int(hist_bins)
        self.frozen_blocks = -1
        self.encoder = efficientnet_lite0(pretrained, include_top=False).train()
        n_stats = 3 * hist_bins + _JOINT_BINS ** 3 if hist_bins else 0
        self.head = nn.Sequential(nn.Linear(1280 + n_stats, _HIDDEN), nn.ReLU(inplace=True), nn.Linear(_HIDDEN, 2 * k * k))
        nn.init.normal_(self.head[2].weight, std=1e-3)
        with torch.no_grad():
            self.head[2].bias.copy_(torch.eye(k).flatten().repeat(2))
        basis = identity_curve_embedding(knots) if knots else torch.eye(3)
        for stage in ("n", "s"):
            R = _orthonormal_rows(3, k)
            P = basis @ R + (0.01 * torch.randn(basis.shape[0], k) if knots else 0.0)
            setattr(self, f"P_{stage}", nn.Parameter(P))
            setattr(self, f"Q_{stage}", nn.Parameter(R.T.clone()))

    @property
    def config(self) -> dict:
        """Constructor arguments (what the weight registry stores to rebuild the model)."""
        return {"model": "dncm", "k": self.k, "encoder_size": self.encoder_size,
                "knots": self.knots, "hist_bins": self.hist_bins}

    def freeze_encoder(self, blocks: int) -> "DNCM":
        """Freeze the stem and the first ``blocks`` encoder blocks (-1: freeze nothing)."""
        n = len(self.encoder._blocks)
        if not -1 <= blocks <= n:
            raise ValueError(f"DNCM.freeze_encoder: blocks must be in [-1, {n}], got {blocks}")
        self.frozen_blocks = int(blocks)
        frozen = self._frozen_modules()
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        for m in frozen:
            for p in m.parameters():
                p.requires_grad_(False)
        return self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_blocks < 0:
            return []
        return [self.encoder._conv_stem, self.encoder._bn0, *self.encoder._blocks[: self.frozen_blocks]]

    def train(self, mode: bool = True) -> "DNCM":
        super().train(mode)
        for m in self._frozen_modules():  # frozen BatchNorms keep their ImageNet statistics
            m.eval()
        return self

    def encoder_view(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input: ``x`` resized to ``(B, 3, encoder_size, encoder_size)``."""
        s = self.encoder_size
        if x.shape[-2:] == (s, s):
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)

    def _features(self, view: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        if self.frozen_blocks < 0:
            return enc.features(view)
        with torch.no_grad():
            y = enc._stem(view)
            for block in enc._blocks[: self.frozen_blocks]:
                y = block(y)
        for block in enc._blocks[self.frozen_blocks:]:
            y = block(y)
        return enc._head(y)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` → ``(d, r)``, each ``(B, k, k)``."""
        _check_images(x, "encode")
        view = self.encoder_view(x)
        feats = self._features(view).mean(dim=(2, 3))
        if self.hist_bins:
            feats = torch.cat([feats, colour_statistics(view, self.hist_bins)], dim=1)
        b, k = x.shape[0], self.k
        out = self.head(feats).view(b, 2, k, k)
        return out[:, 0], out[:, 1]

    def _map(self, x: torch.Tensor, P: torch.Tensor, T: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        if self.knots:
            return curve_dncm_apply(x, P, T, Q)
        return dncm_apply(x, P, T, Q)

    def normalize(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """nDNCM: ``(B, 3, H, W)`` with ``d`` ``(B or 1, k, k)`` → ``Z`` ``(B, 3, H, W)``."""
        _check_images(x, "normalize")
        return self._map(x, self.P_n, d, self.Q_n)

    def stylize(self, Z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """sDNCM: ``Z`` ``(B, 3, H, W)`` with ``r`` ``(B or 1, k, k)`` → ``(B, 3, H, W)``."""
        _check_images(Z, "stylize")
        return self._map(Z, self.P_s, r, self.Q_s)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``content`` ``(B, 3, H, W)``, ``style`` ``(B or 1, 3, H', W')`` → ``(B, 3, H, W)``."""
        _check_images(content, "forward")
        _check_images(style, "forward")
        d, _ = self.encode(content)
        _, r = self.encode(style)
        y = self.stylize(self.normalize(content, d), r)
        return y if self.training else y.clamp(0.0, 1.0)
