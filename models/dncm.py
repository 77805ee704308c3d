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

Two encoders (config ``encoder``):

- ``"efficientnet"`` (the paper's design, the default so older weight files load): the
  ImageNet-initialised EfficientNet-Lite0 above, its pooled features plus the colour
  statistics feed one hidden-layer head.
- ``"stats"``: no CNN. The heads see only ``global_colour_features`` of the view
  (histograms, joint histogram, quantiles, per-luminance-band tint, channel moments),
  standardised with a mean/scale fitted on training views, and are an MLP with
  ``stats_layers`` hidden layers of ``stats_hidden`` units. About 100×
  cheaper per training step, so a CPU run sees tens of thousands of looks instead of
  ~1200 and generalises to unseen photographs (docs/stylize.md has the measured numbers).

Initialisation: with T = I each map is the identity (P = E·R, Q = Rᵀ with R orthonormal
rows and φ(x)·E = x), and the heads start at T ≈ I (bias = I, small weights).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from chromabeam.models.efficientnet_lite import efficientnet_lite0
from chromabeam.transforms.ops.colour_stats import colour_statistics, global_colour_features, global_feature_count
from chromabeam.transforms.ops.dncm import dncm_apply
from chromabeam.transforms.ops.style import curve_dncm_apply, identity_curve_embedding

__all__ = ["DNCM", "colour_statistics"]

_JOINT_BINS = 4
_HIDDEN = 512
ENCODERS = ("efficientnet", "stats")


class StatsEncoder(nn.Module):
    """The ``"stats"`` encoder: ``(B, 3, H, W)`` view → standardised
    ``global_colour_features`` ``(B, global_feature_count(bins))``:
    ``(features − mean) / scale`` with ``mean``/``scale`` buffers (saved with the weights;
    0 and 1 until ``fit_standardisation`` sets them from training views). No learnt
    parameters; a module so that hooks can count the images it sees, as with the CNN."""

    def __init__(self, bins: int):
        super().__init__()
        self.bins = int(bins)
        self.out_features = global_feature_count(self.bins)
        self.register_buffer("mean", torch.zeros(self.out_features))
        self.register_buffer("scale", torch.ones(self.out_features))

    @torch.no_grad()
    def fit_standardisation(self, views: torch.Tensor, min_scale: float = 0.05) -> "StatsEncoder":
        """Set ``mean``/``scale`` to the features' mean and standard deviation over
        ``views`` ``(N, 3, H, W)`` (scale floored at ``min_scale``, so near-constant
        features are not blown up)."""
        f = global_colour_features(views, self.bins)
        self.mean.copy_(f.mean(0))
        self.scale.copy_(f.std(0).clamp_min(min_scale))
        return self

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        return (global_colour_features(view, self.bins) - self.mean) / self.scale


def _check_images(x: torch.Tensor, fname: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"DNCM.{fname}: expected float RGB images (B, 3, H, W) in [0, 1], got {got}")


def _orthonormal_rows(rows: int, cols: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(cols, rows))
    return q.T.contiguous()  # (rows, cols) with orthonormal rows


class DNCM(nn.Module):
    """``DNCM(k=16, encoder_size=256, knots=8, hist_bins=16, pretrained=True,
    encoder="efficientnet", stats_hidden=512, stats_layers=2, dropout=0.0)``.

    ``encoder="stats"``: the heads see only ``global_colour_features(view, hist_bins)``
    (``hist_bins`` >= 2), standardised by ``StatsEncoder``'s saved mean/scale, through an
    MLP of ``stats_layers`` hidden layers of ``stats_hidden`` units (dropout ``dropout`` between them, training only);
    ``freeze_encoder`` is then a no-op (there is nothing to freeze).

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
                 pretrained: bool = True, encoder: str = "efficientnet", stats_hidden: int = 512,
                 stats_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        if k < 3:
            raise ValueError(f"DNCM: k must be >= 3 (the embedding must hold RGB), got {k}")
        if knots == 1 or knots < 0:
            raise ValueError(f"DNCM: knots must be 0 (linear, as in the paper) or >= 2, got {knots}")
        if hist_bins < 0 or hist_bins == 1:
            raise ValueError(f"DNCM: hist_bins must be 0 (no colour statistics) or >= 2, got {hist_bins}")
        if encoder not in ENCODERS:
            raise ValueError(f"DNCM: encoder must be one of {ENCODERS}, got {encoder!r}")
        if encoder == "stats" and hist_bins < 2:
            raise ValueError(f"DNCM: encoder='stats' needs hist_bins >= 2, got {hist_bins}")
        if stats_hidden < 1 or stats_layers < 1:
            raise ValueError(f"DNCM: stats_hidden and stats_layers must be >= 1, got {stats_hidden}, {stats_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DNCM: dropout must be in [0, 1), got {dropout}")
        if encoder_size < 8:
            raise ValueError(f"DNCM: encoder_size must be >= 8, got {encoder_size}")
        self.k, self.encoder_size, self.knots, self.hist_bins = int(k), int(encoder_size), int(knots), int(hist_bins)
        self.encoder_kind = encoder
        self.stats_hidden, self.stats_layers, self.dropout = int(stats_hidden), int(stats_layers), float(dropout)
        self.frozen_blocks = -1
        if encoder == "efficientnet":
            self.encoder = efficientnet_lite0(pretrained, include_top=False).train()
            n_stats = 3 * hist_bins + _JOINT_BINS ** 3 if hist_bins else 0
            self.head = nn.Sequential(nn.Linear(1280 + n_stats, _HIDDEN), nn.ReLU(inplace=True), nn.Linear(_HIDDEN, 2 * k * k))
        else:
            self.encoder = StatsEncoder(hist_bins)
            layers: list[nn.Module] = []
            width = self.encoder.out_features
            for i in range(self.stats_layers):
                layers += [nn.Linear(width, self.stats_hidden), nn.ReLU(inplace=True)]
                if self.dropout and i < self.stats_layers - 1:
                    layers.append(nn.Dropout(self.dropout))
                width = self.stats_hidden
            self.head = nn.Sequential(*layers, nn.Linear(width, 2 * k * k))
        last = self.head[-1]
        nn.init.normal_(last.weight, std=1e-3)
        with torch.no_grad():
            last.bias.copy_(torch.eye(k).flatten().repeat(2))
        basis = identity_curve_embedding(knots) if knots else torch.eye(3)
        for stage in ("n", "s"):
            R = _orthonormal_rows(3, k)
            P = basis @ R + (0.01 * torch.randn(basis.shape[0], k) if knots else 0.0)
            setattr(self, f"P_{stage}", nn.Parameter(P))
            setattr(self, f"Q_{stage}", nn.Parameter(R.T.clone()))

    @property
    def config(self) -> dict:
        """Constructor arguments (what the weight registry stores to rebuild the model)."""
        cfg = {"model": "dncm", "k": self.k, "encoder_size": self.encoder_size,
               "knots": self.knots, "hist_bins": self.hist_bins}
        if self.encoder_kind != "efficientnet":  # old weight files (no key) mean efficientnet
            cfg.update(encoder=self.encoder_kind, stats_hidden=self.stats_hidden,
                       stats_layers=self.stats_layers, dropout=self.dropout)
        return cfg

    @property
    def encoder_entry(self) -> nn.Module:
        """The module that sees each encoder view exactly once (for counting hooks)."""
        return self.encoder if self.encoder_kind == "stats" else self.encoder._conv_stem

    def freeze_encoder(self, blocks: int) -> "DNCM":
        """Freeze the stem and the first ``blocks`` encoder blocks (-1: freeze nothing).
        A no-op for the ``"stats"`` encoder (no CNN)."""
        if self.encoder_kind == "stats":
            return self
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
        if self.encoder_kind == "stats":
            with torch.set_grad_enabled(torch.is_grad_enabled() and view.requires_grad):
                feats = self.encoder(view)  # parameter-free: no graph unless the view needs one
        else:
            feats = self._features(view).mean(dim=(2, 3))
        if self.hist_bins and self.encoder_kind == "efficientnet":
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
