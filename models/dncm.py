"""Neural Preset's DNCM colour-style model (Ke et al., CVPR 2023).

One encoder (ImageNet-pretrained EfficientNet-Lite0; the paper used B0) sees a 256×256
downsample of an image and predicts two k×k matrices: ``d`` (how to *normalise* this
image's colours) and ``r`` (how to *re-create* its style). Two deterministic colour maps,
each with its own learnt P (3×k) and Q (k×3), are then applied at the image's own
resolution (``transforms.ops.dncm.dncm_apply``):

    nDNCM:  Z = content · P_n · d_content · Q_n          (colour-normalised content)
    sDNCM:  y = Z       · P_s · r_style   · Q_s          (stylised output)

Z and r are each computed once, so any content can be combined with any style.

Initialisation: P has orthonormal rows and Q = Pᵀ, and the heads start at T ≈ I (bias = I,
small weights), so both maps start near the identity — training begins from "change
nothing", the trivial mapping for the self-supervised objective's positive pairs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from chromabeam.models.efficientnet_lite import efficientnet_lite0
from chromabeam.transforms.ops.dncm import dncm_apply

__all__ = ["DNCM"]


def _check_images(x: torch.Tensor, fname: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"DNCM.{fname}: expected float RGB images (B, 3, H, W) in [0, 1], got {got}")


def _orthonormal_rows(rows: int, cols: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(cols, rows))
    return q.T.contiguous()  # (rows, cols) with orthonormal rows


class DNCM(nn.Module):
    """``DNCM(k=16, encoder_size=256, pretrained=True)``.

    - ``encode(x) -> (d, r)``: ``x`` ``(B, 3, H, W)`` in [0, 1] → two ``(B, k, k)``;
      the encoder sees a bilinear, antialiased resize to ``encoder_size``².
    - ``normalize(x, d) -> Z`` and ``stylize(Z, r) -> y``: ``(B, 3, H, W)`` at the input's
      resolution; ``d``/``r`` of batch 1 broadcast over B. Not clamped (Z lives in a
      learnt space; y is clamped by ``forward`` in eval mode only, so training losses
      keep their gradients).
    - ``forward(content, style) -> y``: stylise ``content`` ``(B, 3, H, W)`` with the
      style of ``style`` ``(B or 1, 3, H', W')``.
    """

    def __init__(self, k: int = 16, encoder_size: int = 256, pretrained: bool = True):
        super().__init__()
        if k < 3:
            raise ValueError(f"DNCM: k must be >= 3 (the embedding must hold RGB), got {k}")
        self.k, self.encoder_size = int(k), int(encoder_size)
        self.encoder = efficientnet_lite0(pretrained, include_top=False).train()
        self.head_d = nn.Linear(1280, k * k)
        self.head_r = nn.Linear(1280, k * k)
        for head in (self.head_d, self.head_r):
            nn.init.normal_(head.weight, std=1e-3)
            with torch.no_grad():
                head.bias.copy_(torch.eye(k).flatten())
        P_n, P_s = _orthonormal_rows(3, k), _orthonormal_rows(3, k)
        self.P_n, self.Q_n = nn.Parameter(P_n), nn.Parameter(P_n.T.clone())
        self.P_s, self.Q_s = nn.Parameter(P_s), nn.Parameter(P_s.T.clone())

    @property
    def config(self) -> dict:
        """Constructor arguments (what the weight registry stores to rebuild the model)."""
        return {"model": "dncm", "k": self.k, "encoder_size": self.encoder_size}

    def encoder_view(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input: ``x`` resized to ``(B, 3, encoder_size, encoder_size)``."""
        s = self.encoder_size
        if x.shape[-2:] == (s, s):
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` → ``(d, r)``, each ``(B, k, k)``."""
        _check_images(x, "encode")
        feats = self.encoder.features(self.encoder_view(x)).mean(dim=(2, 3))
        b, k = x.shape[0], self.k
        return self.head_d(feats).view(b, k, k), self.head_r(feats).view(b, k, k)

    def normalize(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """nDNCM: ``(B, 3, H, W)`` with ``d`` ``(B or 1, k, k)`` → ``Z`` ``(B, 3, H, W)``."""
        _check_images(x, "normalize")
        return dncm_apply(x, self.P_n, d, self.Q_n)

    def stylize(self, Z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """sDNCM: ``Z`` ``(B, 3, H, W)`` with ``r`` ``(B or 1, k, k)`` → ``(B, 3, H, W)``."""
        _check_images(Z, "stylize")
        return dncm_apply(Z, self.P_s, r, self.Q_s)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``content`` ``(B, 3, H, W)``, ``style`` ``(B or 1, 3, H', W')`` → ``(B, 3, H, W)``."""
        _check_images(content, "forward")
        _check_images(style, "forward")
        d, _ = self.encode(content)
        _, r = self.encode(style)
        y = self.stylize(self.normalize(content, d), r)
        return y if self.training else y.clamp(0.0, 1.0)
