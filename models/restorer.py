"""Blind filter-removal restorer: an image-adaptive colour mapping predicted from a
low-resolution view and applied at full resolution.

Instagram-style filters are mostly global tone/colour curves plus smooth spatial parts
(vignettes, gradients). So, from a ``view_size``² view, an encoder predicts

(a) a global 3D LUT (``lut_size``³, trilinear): the identity plus an image-dependent
    mix of ``lut_basis`` learnt basis LUTs (as in image-adaptive 3D LUTs, Zeng et al. 2020)
    — it undoes non-linear curves, channel mixing and hue shifts that a 3×3 matrix
    (which is what linear DNCM folds to) cannot;
(b) a bilateral grid (HDRNet, Gharbi et al. 2017) of 3×4 affine colour transforms,
    ``grid_size``² cells × ``grid_bins`` guide bins, sliced per pixel with a learnt
    1×1 guide (initialised to Rec. 709 luma) — local, intensity-dependent corrections
    that vignettes and gradients need.

(c) optionally (``bank=N``) a filter bank: N fixed LUTs, each the inverse of a known
    filter fitted on training photos, weighted by a classifier on the view's colour
    statistics — P(filter f) · predicted strength, class 0 "no filter" — and added to
    the LUT of (a). Blind removal is then mostly *recognising* the filter, which the
    colour statistics do far better than they regress a whole inverse; and "no filter"
    is a class, so clean photos come back (nearly) unchanged. With
    ``bank_consistency`` the classifier also sees how far the view is from each
    filter's range (undo f, redo f, compare). With ``bank_other`` a last class, "another
    look" (a grade, any look not in the bank), takes what class 0 would otherwise hold
    besides clean photos; it adds no inverse. With ``bank_shading`` the classifier also
    sees the view's shading statistics (``transforms.ops.shading_stats``: how local
    log-intensity variation behaves per luminance — tone curves change it whatever the
    scene). With ``bank_heads=K`` K classifiers
    (trained on different shuffles) average their weights. With ``bank_grids`` each
    filter also has a fixed bilateral grid, fitted with its LUT
    (``train_restorer.fit_bank_grids``), added to the grid of (b) with the same weight:
    the filter's vignette or gradient undone where a LUT alone, blind to position,
    cannot. With ``bank_casts`` a second small head on the same inputs says whether the
    view is a white-balance cast (per-channel gains, which no filter inverse undoes) and
    regresses its log gains; the cast's inverse (a per-channel scale, as a LUT) is added
    with weight P(cast) × (1 − the top filter's probability), and the filters' weights
    are scaled by 1 − that weight (``cast_weight``); with ``bank_cast_heads=K`` K such
    heads, trained on different draws of looks, average what they say. With
    ``bank_verify=K`` a verifier gets a second opinion: the K most probable filters and "no bank entry" each restore
    the view, the verifier scores the restorations, and those candidates' mass is shared
    again as P · exp(β · score) (``verify_probs``; measured, not shipped: docs/restorer.md).
    With ``bank_crops=f`` (0 < f < 1) the classifiers also read four corner crops of the
    image, each ``f`` of its height and width (``bank_crop_views``), and their class
    probabilities are the normalised geometric mean over the whole view and the crops: a
    filter is the same in every part of a photo while the scene is not, so a class that
    only one part's colours suggest loses its weight (docs/restorer.md measures it). It is
    a reading at inference (``predict``, ``restore_pixels``): the trainer reads the whole
    view, and ``calibrate_restorer --bank-crops`` sets it on trained weights.
    With ``bank_commit=ε`` (an inference setting too; measured, not shipped) the bank's
    weights are the action with the best expected PSNR over "no bank entry" and the
    most probable filters (``commit_weights``) instead of the probability-weighted blend.
    With ``bank_quantiles=Q`` the bank's heads read each statistic by its rank among the
    classifier's training looks (``quantile_normal``, fitted by ``train_bank``) instead of
    by its mean and spread (measured, not shipped).
    The bank is trained apart from the rest (``train_restorer.train_bank``,
    ``train_restorer.train_cast_head``, ``models.bank_verify``).

At full resolution each pixel goes through the sliced affine first (undo the spatial
part), then the LUT (undo the global curve). Both are applied in row chunks, so memory
is the input, the output and ~1 Mpx of temporaries at any size; the cost per pixel is a
trilinear read of 12 coefficients and of 3 LUT channels.

Encoder (``encoder=``):

- ``"stats"`` (the shipped default): no CNN. The global path sees the view's colour
  distribution (``transforms.ops.colour_stats.global_colour_features``: histograms,
  per-channel quantiles, each luminance band's tint, channel moments), the local path
  each grid cell's mean colour, its offset from the image mean and its luminance spread.
  A look *is* a change of these statistics; measured on held-out photos (docs/restorer.md)
  this generalises where ImageNet features memorise the few training photos, and a step
  costs a fraction of a CNN pass, so a CPU can train on hundreds of thousands of
  freshly filtered crops.
- ``"efficientnet"``: the ImageNet-pretrained EfficientNet-Lite0 (stride-16 features for
  the grid, pooled head features plus optional soft histograms for the global path).

Initialisation: the last layer of both heads is zero, so the untrained model is the
identity mapping (to float rounding): identity pairs come back unchanged and training
starts from "change nothing".
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from chromabeam.models.efficientnet_lite import PYRAMID_CHANNELS, efficientnet_lite0
from chromabeam.transforms.ops.colour_stats import (
    CELL_FEATURES,
    cell_colour_features,
    global_colour_features,
    global_feature_count,
)
from chromabeam.transforms.ops.dncm import (
    DEFAULT_CHUNK_PIXELS,
    affine_identity_grid,
    bilateral_grid_apply,
    lut3d_apply,
    lut3d_identity,
    map_row_chunks,
)
from chromabeam.transforms.ops.shading_stats import shading_feature_count, shading_statistics

__all__ = ["Restorer", "quantile_normal", "soft_histogram"]

_LUMA_709 = (0.2126, 0.7152, 0.0722)
ENCODERS = ("efficientnet", "stats")
_STATS_HIDDEN = 256
_BANK_HIDDEN = 512
# the strength the bank's regression reads without bias (held-out photos: true 0.75 → read
# 0.76, 1 → 0.91, 0.5 → 0.59): what ``calibrate_bank``'s strength stretch is centred on
STRENGTH_CENTRE = 0.75
# ``commit_weights``: the filters it weighs besides "no bank entry", the side (px) of the
# copy of the view its candidates restore, and its solver's steps and step size
COMMIT_CANDIDATES = 4
COMMIT_SIDE = 64
COMMIT_STEPS = 60
COMMIT_STEP = 0.25
_CAST_HIDDEN = 256
_VERIFY_HIDDEN = 256


# quantile_normal: values at or beyond a feature's outermost knot map to these levels, so
# the normal scores stay within ±5.2 (scikit-learn's QuantileTransformer does the same)
_QUANTILE_BOUND = 1e-7


def quantile_normal(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Each feature's quantile transform to a standard normal score: ``x`` ``(B, F)``,
    ``knots`` ``(F, Q)`` (non-decreasing rows: the feature's values at levels
    0, 1/(Q−1), …, 1 in the data it was fitted on) → ``(B, F)``. A value's level is read
    off its row by linear interpolation — a value on a run of equal knots gets the run's
    middle level, as scikit-learn's ``QuantileTransformer`` does it —, values at or past
    the outer knots get level 0 or 1, and the level goes through Φ⁻¹, clipped to ±5.2.
    A fixed monotone map per feature: a photo whose statistics fall far out in a tail
    reaches the classifier as a bounded score, not as many standard deviations (measured
    in docs/restorer.md, "Features by their rank")."""
    if x.ndim != 2 or knots.ndim != 2 or knots.shape[0] != x.shape[1] or knots.shape[1] < 2:
        raise ValueError(f"quantile_normal: expected x (B, F) and knots (F, Q >= 2), got {tuple(x.shape)} and "
                         f"{tuple(knots.shape)}")
    q = knots.to(torch.float64)
    v = x.to(torch.float64).T.contiguous()  # (F, B): one sorted row of knots per feature
    n = q.shape[1]

    def level(right: bool) -> torch.Tensor:
        hi = torch.searchsorted(q, v, right=right).clamp(1, n - 1)
        lo = hi - 1
        q_lo, q_hi = q.gather(1, lo), q.gather(1, hi)
        t = ((v - q_lo) / (q_hi - q_lo).clamp_min(1e-300)).clamp(0, 1)
        return (lo + t) / (n - 1)

    u = 0.5 * (level(True) + level(False))
    u = torch.where(v - _QUANTILE_BOUND < q[:, :1], torch.zeros_like(u), u)
    u = torch.where(v + _QUANTILE_BOUND > q[:, -1:], torch.ones_like(u), u)
    z = torch.special.ndtri(u.clamp(_QUANTILE_BOUND, 1 - _QUANTILE_BOUND))
    return z.T.to(x.dtype)


def soft_histogram(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-channel histograms of ``x`` ``(B, 3, H, W)`` in [0, 1] with triangular (linear
    interpolation) bins centred on ``linspace(0, 1, bins)``: ``(B, 3 * bins)``, each
    channel's bins summing to 1. Differentiable in ``x``."""
    centres = torch.linspace(0.0, 1.0, bins, device=x.device, dtype=x.dtype)
    d = (x.clamp(0.0, 1.0).unsqueeze(2) - centres.view(1, 1, bins, 1, 1)).abs() * (bins - 1)
    return F.relu(1.0 - d).mean(dim=(3, 4)).flatten(1)


class Restorer(nn.Module):
    """``Restorer(lut_size=17, lut_basis=8, grid_size=16, grid_bins=8, view_size=256,
    width=64, hist_bins=0, encoder="efficientnet", pretrained=True, bank=0,
    bank_consistency=False, bank_other=False, bank_heads=1, bank_shading=False,
    bank_grids=False, bank_casts=False, bank_cast_heads=1, bank_verify=0)``. With the
    EfficientNet encoder, ``hist_bins > 0`` adds colour statistics of the view to the
    heads (per-channel soft histograms for the global path, each grid cell's mean colour
    for the local path); with ``encoder="stats"`` the heads see colour statistics only
    (``hist_bins`` bins, 16 when 0).

    - ``forward(x) -> restored``: ``(B, 3, H, W)`` in [0, 1] → ``(B, 3, H, W)``; clamped
      to [0, 1] in eval mode only (training losses keep their gradients);
    - ``predict(x) -> (lut (B,3,S,S,S), grid (B,12,D,G,G))`` from the low-res view;
    - ``apply(x, lut, grid) -> (B, 3, H, W)`` at ``x``'s resolution (not clamped).
    """

    def __init__(
        self,
        lut_size: int = 17,
        lut_basis: int = 8,
        grid_size: int = 16,
        grid_bins: int = 8,
        view_size: int = 256,
        width: int = 64,
        hist_bins: int = 0,
        encoder: str = "efficientnet",
        pretrained: bool = True,
        bank: int = 0,
        bank_consistency: bool = False,
        bank_other: bool = False,
        bank_heads: int = 1,
        bank_shading: bool = False,
        bank_grids: bool = False,
        bank_casts: bool = False,
        bank_cast_heads: int = 1,
        bank_verify: int = 0,
        bank_crops: float = 0.0,
        bank_commit: float = 0.0,
        bank_quantiles: int = 0,
    ):
        super().__init__()
        if (lut_size < 2 or lut_basis < 1 or grid_size < 1 or grid_bins < 1 or view_size < 32 or width < 1
                or hist_bins < 0 or hist_bins == 1):
            raise ValueError(
                "Restorer: need lut_size >= 2, lut_basis >= 1, grid_size >= 1, grid_bins >= 1, "
                f"view_size >= 32, width >= 1, hist_bins 0 or >= 2; got {lut_size}, {lut_basis}, {grid_size}, "
                f"{grid_bins}, {view_size}, {width}, {hist_bins}"
            )
        if encoder not in ENCODERS:
            raise ValueError(f"Restorer: encoder must be one of {ENCODERS}, got {encoder!r}")
        if bank_quantiles < 0 or bank_quantiles == 1:
            raise ValueError(f"Restorer: bank_quantiles must be 0 (off) or >= 2, got {bank_quantiles}")
        if bank < 0 or bank_heads < 1 or bank_cast_heads < 1 or bank_verify < 0:
            raise ValueError(f"Restorer: bank and bank_verify must be >= 0, bank_heads and bank_cast_heads >= 1, "
                             f"got {bank}, {bank_verify}, {bank_heads}, {bank_cast_heads}")
        bank_crops = self._off_or_unit("bank_crops", bank_crops, "a fraction")
        bank_commit = self._off_or_unit("bank_commit", bank_commit, "an error floor")
        self.encoder_kind = encoder
        self.lut_size, self.lut_basis_count = int(lut_size), int(lut_basis)
        self.grid_size, self.grid_bins = int(grid_size), int(grid_bins)
        self.view_size, self.width = int(view_size), int(width)
        self.hist_bins = int(hist_bins)
        self.chunk_pixels = DEFAULT_CHUNK_PIXELS

        if encoder == "stats":
            self.encoder = None
            self.hist_bins = self.hist_bins or 16
            n_global = global_feature_count(self.hist_bins)
            self.global_fc = nn.Sequential(
                nn.Linear(n_global, _STATS_HIDDEN), nn.ReLU(), nn.Linear(_STATS_HIDDEN, width), nn.ReLU()
            )
            local_in = CELL_FEATURES
        else:
            self.encoder = efficientnet_lite0(pretrained, include_top=False).train()
            c16, c32 = PYRAMID_CHANNELS[2], PYRAMID_CHANNELS[3]
            # Global path → LUT mixing weights (and context for the local path).
            # Optional colour statistics of the view (per-channel soft histograms): ImageNet
            # features are trained to ignore colour casts, the histograms are not.
            self.global_fc = nn.Sequential(nn.Linear(c32 + 3 * self.hist_bins, width), nn.ReLU())
            local_in = c16 + (3 if self.hist_bins else 0)
        self.lut_weights = nn.Linear(width, lut_basis)
        # Small random bases: with zero mixing weights the LUT is still the identity, and the
        # weights get a gradient at once (all-zero bases would never learn).
        self.lut_basis = nn.Parameter(torch.randn(lut_basis, 3, lut_size, lut_size, lut_size) * 1e-2)
        # Local path → bilateral grid of affine deltas (HDRNet's local + global fusion).
        self.local = nn.Sequential(
            nn.Conv2d(local_in, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1)
        )
        self.global_to_local = nn.Linear(width, width)
        self.grid_head = nn.Conv2d(width, 12 * grid_bins, 1)
        for last in (self.lut_weights, self.grid_head):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        # Per-pixel guide for slicing the grid's intensity axis.
        self.guide = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.guide.weight.copy_(torch.tensor(_LUMA_709).view(1, 3, 1, 1))
            self.guide.bias.zero_()
        self.bank_size = int(bank)
        self.bank_consistency = bool(bank_consistency) and self.bank_size > 0
        self.bank_other = bool(bank_other) and self.bank_size > 0
        self.bank_head_count = int(bank_heads) if self.bank_size else 1
        self.bank_shading = bool(bank_shading) and self.bank_size > 0
        self.bank_grids = bool(bank_grids) and self.bank_size > 0
        self.bank_casts = bool(bank_casts) and self.bank_size > 0
        self.bank_cast_head_count = int(bank_cast_heads) if self.bank_casts else 1
        self.bank_verify = min(int(bank_verify), self.bank_size)
        self.bank_crops = bank_crops if self.bank_size else 0.0
        self.bank_commit = bank_commit if self.bank_size else 0.0
        self.bank_quantiles = int(bank_quantiles) if self.bank_size else 0
        if self.bank_size:
            # The filter bank: fixed inverse LUTs (as residuals from the identity) and a
            # classifier on the view's standardised colour statistics → "which filter, how
            # strong" (class 0: none). Set by ``set_bank``; trained apart (train_restorer).
            # With ``bank_consistency`` the classifier also sees, per filter, how far the
            # view is from that filter's range (``bank_check_features``).
            n_feat = (global_feature_count(self.hist_bins or 16) + (2 * self.bank_size if self.bank_consistency else 0)
                      + (shading_feature_count() if self.bank_shading else 0))
            self.register_buffer("bank_luts", torch.zeros(self.bank_size, 3, lut_size, lut_size, lut_size))
            if self.bank_consistency:
                self.register_buffer("bank_forward", torch.zeros(self.bank_size, 3, lut_size, lut_size, lut_size))
            if self.bank_grids:  # residuals from the identity grid, like bank_luts
                self.register_buffer("bank_grid_deltas",
                                     torch.zeros(self.bank_size, 12, grid_bins, grid_size, grid_size))
            if self.bank_quantiles:  # each feature's values at quantile levels 0, 1/(Q-1), ..., 1
                self.register_buffer("bank_knots", torch.linspace(0, 1, self.bank_quantiles).repeat(n_feat, 1))
            self.register_buffer("bank_mean", torch.zeros(n_feat))
            self.register_buffer("bank_scale", torch.ones(n_feat))
            self.bank_classes = 1 + self.bank_size + int(self.bank_other)
            heads = [self._new_bank_head(n_feat) for _ in range(self.bank_head_count)]
            # one head keeps the single-head layout (``bank_head.N.*``) of earlier weights
            self.bank_head = heads[0] if self.bank_head_count == 1 else nn.ModuleList(heads)
            if self.bank_casts:
                casts = [self._new_cast_head(n_feat) for _ in range(self.bank_cast_head_count)]
                # one head keeps the layout (``bank_cast_head.N.*``) of earlier weights
                self.bank_cast_head = casts[0] if self.bank_cast_head_count == 1 else nn.ModuleList(casts)
            if self.bank_verify:
                self.bank_verify_head = self._new_verify_head(n_feat)
                # how much the verifier's score counts against the classifier's log P
                self.register_buffer("bank_verify_beta", torch.ones(()))
        self.register_buffer("_lut_identity", lut3d_identity(lut_size).unsqueeze(0), persistent=False)
        self.register_buffer(
            "_grid_identity", affine_identity_grid(grid_bins, grid_size, grid_size), persistent=False
        )

    def _new_bank_head(self, n_feat: int) -> nn.Module:
        head = nn.Sequential(
            nn.Linear(n_feat, _BANK_HIDDEN), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(_BANK_HIDDEN, _BANK_HIDDEN), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(_BANK_HIDDEN, self.bank_classes + self.bank_size),
        )
        nn.init.zeros_(head[-1].weight)
        with torch.no_grad():  # untrained: "no filter" with certainty → the bank adds nothing
            head[-1].bias.zero_()
            head[-1].bias[0] = 20.0
        return head

    @staticmethod
    def _new_cast_head(n_feat: int) -> nn.Module:
        # a head of its own, not a class of the filter classifier: it is added to trained
        # weights without retraining (or disturbing) the classifier
        head = nn.Sequential(
            nn.Linear(n_feat, _CAST_HIDDEN), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(_CAST_HIDDEN, _CAST_HIDDEN), nn.ReLU(),
            nn.Linear(_CAST_HIDDEN, 4),  # cast logit, log gains (r, g, b)
        )
        nn.init.zeros_(head[-1].weight)
        with torch.no_grad():  # untrained: "not a cast" with certainty → nothing changes
            head[-1].bias.zero_()
            head[-1].bias[0] = -20.0
        return head

    @staticmethod
    def _new_verify_head(n_feat: int) -> nn.Module:
        # sees a candidate's restoration (its standardised bank inputs) and how they moved
        # from the input's; says how good that restoration is (a score in log-odds units)
        head = nn.Sequential(
            nn.Linear(2 * n_feat, _VERIFY_HIDDEN), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(_VERIFY_HIDDEN, _VERIFY_HIDDEN), nn.ReLU(),
            nn.Linear(_VERIFY_HIDDEN, 1),
        )
        nn.init.zeros_(head[-1].weight)  # untrained: every candidate scores 0 → the classifier decides
        nn.init.zeros_(head[-1].bias)
        return head

    def bank_head_list(self) -> list[nn.Module]:
        """The bank's classifiers (one unless ``bank_heads`` > 1)."""
        return list(self.bank_head) if isinstance(self.bank_head, nn.ModuleList) else [self.bank_head]

    def bank_cast_head_list(self) -> list[nn.Module]:
        """The bank's cast heads (one unless ``bank_cast_heads`` > 1; none without ``bank_casts``)."""
        if not self.bank_casts:
            return []
        head = self.bank_cast_head
        return list(head) if isinstance(head, nn.ModuleList) else [head]

    @property
    def config(self) -> dict:
        """Constructor arguments (what the weight registry stores to rebuild the model)."""
        return {
            "model": "restorer",
            "lut_size": self.lut_size,
            "lut_basis": self.lut_basis_count,
            "grid_size": self.grid_size,
            "grid_bins": self.grid_bins,
            "view_size": self.view_size,
            "width": self.width,
            "hist_bins": self.hist_bins,
            "encoder": self.encoder_kind,
            **({"bank": self.bank_size} if self.bank_size else {}),
            **({"bank_consistency": True} if self.bank_consistency else {}),
            **({"bank_other": True} if self.bank_other else {}),
            **({"bank_heads": self.bank_head_count} if self.bank_head_count > 1 else {}),
            **({"bank_shading": True} if self.bank_shading else {}),
            **({"bank_grids": True} if self.bank_grids else {}),
            **({"bank_casts": True} if self.bank_casts else {}),
            **({"bank_cast_heads": self.bank_cast_head_count} if self.bank_cast_head_count > 1 else {}),
            **({"bank_verify": self.bank_verify} if self.bank_verify else {}),
            **({"bank_crops": self.bank_crops} if self.bank_crops else {}),
            **({"bank_commit": self.bank_commit} if self.bank_commit else {}),
            **({"bank_quantiles": self.bank_quantiles} if self.bank_quantiles else {}),
        }

    @staticmethod
    def _check(x: torch.Tensor, fname: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            got = (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Restorer.{fname}: expected float RGB images (B, 3, H, W) in [0, 1], got {got}")

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → the encoder's ``(B, 3, view_size, view_size)`` view (the whole
        image, resized with antialiasing; the aspect ratio is not kept)."""
        self._check(x, "view")
        s = self.view_size
        if x.shape[-2:] == (s, s):
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)

    @staticmethod
    def _off_or_unit(name: str, value: float, what: str) -> float:
        """An inference setting that is 0 (off) or a ``what`` in (0, 1)."""
        if not (value == 0 or 0 < value < 1):
            raise ValueError(f"Restorer: {name} must be 0 (off) or {what} in (0, 1), got {value}")
        return float(value)

    def set_bank_crops(self, fraction: float) -> None:
        """Read ``fraction`` corner crops from now on (0: the whole view alone); the
        weights' config carries it once saved."""
        if not self.bank_size:
            raise ValueError("Restorer.set_bank_crops: this model has no filter bank")
        self.bank_crops = self._off_or_unit("bank_crops", fraction, "a fraction")

    def set_bank_commit(self, floor: float) -> None:
        """Decide the bank's weights by ``commit_weights`` with this error floor from now on
        (0: the probability-weighted blend); the weights' config carries it once saved."""
        if not self.bank_size:
            raise ValueError("Restorer.set_bank_commit: this model has no filter bank")
        self.bank_commit = self._off_or_unit("bank_commit", floor, "an error floor")

    def bank_crop_views(self, x: torch.Tensor) -> torch.Tensor | None:
        """``(B, 3, H, W)`` → the four corner crops the bank's classifiers also read
        (``bank_crops`` of each side), each resized like ``view``: ``(B, 4, 3, s, s)``;
        None when ``bank_crops`` is off."""
        if not self.bank_crops:
            return None
        self._check(x, "bank_crop_views")
        boxes = self.bank_crop_boxes(*x.shape[-2:])
        return torch.stack([self.view(x[..., t:t + ch, l:l + cw]) for t, l, ch, cw in boxes], dim=1)

    def bank_crop_boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The four corner crops of a ``height`` × ``width`` image that ``bank_crops``
        reads, as (top, left, crop height, crop width)."""
        ch, cw = max(1, int(height * self.bank_crops)), max(1, int(width * self.bank_crops))
        return [(t, l, ch, cw) for t in (0, height - ch) for l in (0, width - cw)]

    def encode(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder features of a view: stride-16 map ``(B, 112, h, w)`` and the pooled head
        ``(B, 1280)`` (``"stats"``: cell statistics ``(B, 7, G, G)`` and global statistics
        ``(B, F)``). With a frozen encoder a trainer may compute these once per image."""
        if self.encoder is None:
            return cell_colour_features(view, self.grid_size), global_colour_features(view, self.hist_bins)
        _, _, f16, f32 = self.encoder.pyramid(view)
        return f16, f32.mean(dim=(2, 3))

    def heads(self, view: torch.Tensor, f16: torch.Tensor, pooled: torch.Tensor, *,
              known_bank: torch.Tensor | None = None, record: dict | None = None,
              crop_views: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """View + encoder features → LUT ``(B, 3, S, S, S)`` and grid ``(B, 12, D, G, G)``.
        ``known_bank`` ``(B, bank)``: the bank entries' weights to use instead of what the
        classifier recognises, and no cast — the model told the look (a diagnostic: how much
        of blind removal is recognition). ``record`` (a dict): filled with what the bank
        recognised — ``bank_probs`` / ``bank_strength`` ``(B, bank)`` (averaged over the
        classifiers, after the verifier), with a cast head ``cast_weight`` ``(B,)`` (the
        weight the cast's inverse got: ``cast_weight``'s, or with ``bank_commit`` the
        decision's) and ``cast_log_gains`` ``(B, 3)`` — for a manifest to report per image.
        ``crop_views`` ``(B, n, 3, s, s)`` (``bank_crop_views``): more views of each image for the
        classifiers (``_bank_probs``); without them they read the whole view alone."""
        stats = self.encoder is None
        if self.hist_bins and not stats:
            pooled = torch.cat([pooled, soft_histogram(view, self.hist_bins)], dim=1)
        g = self.global_fc(pooled)
        w = self.lut_weights(g)  # (B, n_basis)
        lut = self._lut_identity + torch.einsum("bn,ncdhw->bcdhw", w, self.lut_basis)

        gs = self.grid_size
        if f16.shape[-2:] != (gs, gs):
            f16 = F.interpolate(f16.to(view.dtype), size=(gs, gs), mode="bilinear", align_corners=False, antialias=True)
        if self.hist_bins and not stats:  # each cell's mean colour: what a vignette or gradient changes
            f16 = torch.cat([f16.to(view.dtype), F.adaptive_avg_pool2d(view, gs)], dim=1)
        local = self.local(f16) + self.global_to_local(g)[:, :, None, None]
        delta = self.grid_head(F.relu(local))  # (B, 12*D, G, G)
        grid = self._grid_identity + delta.view(view.shape[0], 12, self.grid_bins, gs, gs)
        if not self.bank_size:
            return lut, grid

        if known_bank is not None:
            bank_w = known_bank.to(lut)
        else:
            feats = self.bank_inputs(view, pooled if stats else None)
            crop_feats = None if crop_views is None else self.bank_inputs(crop_views.flatten(0, 1))
            # once: the filters' and the cast's weights both need them
            probs = self._bank_probs(feats, crop_feats)
            if self.bank_verify:
                probs = self.verify_probs(view, f16, pooled, feats, probs)
            cast = self.cast_weight(feats, probs) if self.bank_casts else None  # (weight, log gains)
            if self.bank_commit and not self.training:
                bank_w, cast_w = self.commit_weights(view, lut, grid, probs, cast)
            else:  # the blend; the filters make room for the cast's share
                bank_w, cast_w = self.bank_weights(feats, probs), None
                if cast is not None:
                    cast_w = cast[0]
                    bank_w = bank_w * (1.0 - cast_w)[:, None]
            if record is not None:
                record["bank_probs"] = torch.stack([p for p, _ in probs]).mean(dim=0)
                record["bank_strength"] = torch.stack([s for _, s in probs]).mean(dim=0)
            if cast is not None:
                if record is not None:
                    record["cast_weight"], record["cast_log_gains"] = cast_w, cast[1]
                lut = lut + cast_w[:, None, None, None, None] * self.cast_inverse_delta(cast[1])
        lut = lut + torch.einsum("bn,ncdhw->bcdhw", bank_w, self.bank_luts)
        if self.bank_grids:
            grid = grid + torch.einsum("bn,ncdhw->bcdhw", bank_w, self.bank_grid_deltas)
        return lut, grid

    def bank_inputs(self, view: torch.Tensor, global_features: torch.Tensor | None = None) -> torch.Tensor:
        """What the bank's classifier sees for a view ``(B, 3, s, s)``: its global colour
        features (``global_features`` when already computed), then with
        ``bank_consistency`` the ``bank_check_features``, then with ``bank_shading`` the
        ``shading_statistics``."""
        parts = [global_features if global_features is not None else global_colour_features(view, self.hist_bins or 16)]
        if self.bank_consistency:
            parts.append(self.bank_check_features(view))
        if self.bank_shading:
            parts.append(shading_statistics(view))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def bank_check_features(self, view: torch.Tensor) -> torch.Tensor:
        """Per bank filter f, how well the view fits f's range: undo f, redo f, compare —
        ``(B, 2·bank)``: the mean |forward_f(inverse_f(x)) − x| and the share of pixels off
        by more than 3/255, on a 32² downscale. A filter that lifts blacks or mutes colours
        cannot have made an image that holds deep blacks or vivid colours: those come back
        changed. Colour statistics alone confuse similar looks; this separates them."""
        x = F.interpolate(view, size=(32, 32), mode="area") if view.shape[-1] != 32 else view
        b, n = x.shape[0], self.bank_size
        xs = x.unsqueeze(1).expand(b, n, *x.shape[1:]).reshape(b * n, *x.shape[1:])
        inv = (self.bank_luts + self._lut_identity).unsqueeze(0).expand(b, -1, -1, -1, -1, -1).flatten(0, 1)
        fwd = self.bank_forward.unsqueeze(0).expand(b, -1, -1, -1, -1, -1).flatten(0, 1)
        back = lut3d_apply(lut3d_apply(xs, inv, chunk_pixels=None).clamp(0, 1), fwd, chunk_pixels=None)
        err = (back - xs).abs().amax(dim=1).view(b, n, -1)
        return torch.cat([err.mean(dim=2), (err > 3 / 255).float().mean(dim=2)], dim=1)

    def bank_standardise(self, feats: torch.Tensor) -> torch.Tensor:
        """``bank_inputs`` ``(B, F)`` → what the bank's heads read ``(B, F)``: with
        ``bank_quantiles`` each feature first goes through its quantile transform
        (``quantile_normal``), then every feature is standardised by ``bank_mean`` /
        ``bank_scale``."""
        if self.bank_quantiles:
            feats = quantile_normal(feats, self.bank_knots)
        return (feats - self.bank_mean) / self.bank_scale

    def bank_logits(self, feats: torch.Tensor, head: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``bank_inputs`` ``(B, F)`` → one classifier's (class logits ``(B, classes)``:
        class 0 = no filter, 1..bank the filters, then "another look" with ``bank_other``;
        strength logits ``(B, bank)``)."""
        out = self.bank_head_list()[head](self.bank_standardise(feats))
        return out[:, : self.bank_classes], out[:, self.bank_classes:]

    def _bank_probs(self, feats: torch.Tensor,
                    crop_feats: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(B, F)`` → per classifier (P(filter) ``(B, bank)``, predicted strength ``(B, bank)``).
        With ``crop_feats`` ``(B·n, F)`` (n more views of each image, image-major), the
        class probabilities are the normalised geometric mean over the n + 1 views (the
        mean of their log-probabilities, softmaxed again) and the strengths their mean."""
        out = []
        for h in range(self.bank_head_count):
            logits, strength = self.bank_logits(feats, h)
            if crop_feats is None:
                p, s = logits.softmax(dim=1), torch.sigmoid(strength)
            else:
                b = logits.shape[0]
                c_logits, c_strength = self.bank_logits(crop_feats, h)
                logp = torch.cat([logits[:, None], c_logits.view(b, -1, logits.shape[1])], 1).log_softmax(dim=2)
                p = logp.mean(dim=1).softmax(dim=1)
                s = torch.cat([strength[:, None], c_strength.view(b, -1, strength.shape[1])], 1).sigmoid().mean(dim=1)
            out.append((p[:, 1:1 + self.bank_size], s))
        return out

    def bank_weights(self, feats: torch.Tensor,
                     probs: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """``(B, F)`` → each bank LUT's weight ``(B, bank)``: P(filter) · predicted strength,
        averaged over the classifiers (``probs``: ``_bank_probs(feats)`` when already computed)."""
        weights = [p * s for p, s in (probs or self._bank_probs(feats))]
        return weights[0] if len(weights) == 1 else torch.stack(weights).mean(dim=0)

    def commit_weights(self, view: torch.Tensor, lut: torch.Tensor, grid: torch.Tensor,
                       probs: list[tuple[torch.Tensor, torch.Tensor]],
                       cast: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The bank's weights ``(B, bank)`` (and the cast inverse's ``(B,)``, None without
        ``cast``) as the action that maximises the expected PSNR of the result, not as the
        probability-weighted blend (``bank_weights``, the cast's weight on top).

        Candidates: "no bank entry" and the ``COMMIT_CANDIDATES`` most probable filters,
        each restoring the view at its predicted strength (``lut``/``grid``: the learnt
        path's, which every candidate shares), and with ``cast`` (``cast_weight``'s weight
        and log gains) the cast's inverse as one more, with that weight as its
        probability (the others' scaled by 1 − it, as the blend scales them). With π
        their probabilities (renormalised) and m_k(w) the mean squared difference between
        the mix Σ_j w_j·y_j and candidate k's restoration y_k, the weights minimise
        Σ_k π_k·log(m_k(w) + ε), ε = ``bank_commit`` (the error a right candidate still
        leaves): the expected −PSNR if candidate k is the truth. The blend minimises the
        expected squared error instead; the mean PSNR over images rewards committing to the
        likely candidate when the candidates' restorations are far apart, and hedging when
        they are close or the probabilities are (docs/restorer.md "Committing"). The
        objective has a local minimum near each candidate far from the others, so it is
        solved by exponentiated gradient on the simplex from the blend and from near each
        candidate alone, and the best of those, the blend and each candidate alone is kept.
        ε → ∞ gives the blend back."""
        p = torch.stack([q for q, _ in probs]).mean(dim=0)
        s = torch.stack([t for _, t in probs]).mean(dim=0)
        b = p.shape[0]
        k = min(COMMIT_CANDIDATES, self.bank_size)
        top = p.topk(k, dim=1).indices  # (B, k)
        pi = torch.cat([(1.0 - p.sum(dim=1, keepdim=True)).clamp_min(0.0), p.gather(1, top)], dim=1)
        pi = pi / pi.sum(dim=1, keepdim=True).clamp_min(1e-12)  # (B, k + 1)
        # each candidate's restoration of the view: the learnt path + that one bank entry
        st = s.gather(1, top)  # (B, k)
        luts = [lut[:, None], lut[:, None] + st[:, :, None, None, None, None] * self.bank_luts[top]]
        if cast is not None:
            pi = torch.cat([pi * (1.0 - cast[0])[:, None], cast[0][:, None]], dim=1)
            luts.append((lut + self.cast_inverse_delta(cast[1]))[:, None])
        luts = torch.cat(luts, dim=1)
        n = luts.shape[1]  # candidates
        grids = grid[:, None].expand(b, n, *grid.shape[1:])
        if self.bank_grids:
            grids = grids.clone()
            grids[:, 1:k + 1] += st[:, :, None, None, None, None] * self.bank_grid_deltas[top]
        small = view
        if view.shape[-1] > COMMIT_SIDE:
            small = F.interpolate(view, size=(COMMIT_SIDE, COMMIT_SIDE), mode="area")
        views = small[:, None].expand(b, n, *small.shape[1:]).flatten(0, 1)
        y = self.apply(views, luts.flatten(0, 1), grids.flatten(0, 1)).clamp(0, 1)
        y = (torch.round(y * 255) / 255).view(b, n, -1).double()
        gram = y @ y.transpose(1, 2) / y.shape[-1]  # (B, n, n)
        diag = gram.diagonal(dim1=1, dim2=2)
        eps, pi = self.bank_commit, pi.double()

        def objective(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # w (B, M, n)
            gw = w @ gram  # (B, M, n): (G w)_k
            m = ((gw * w).sum(-1, keepdim=True) - 2 * gw + diag[:, None]).clamp_min(0.0)
            return (pi[:, None] * torch.log(m + eps)).sum(-1), m

        # the objective has a local minimum near each candidate that is far from the others:
        # descend from the blend and from near each candidate alone, keep the best
        eye = torch.eye(n, dtype=gram.dtype, device=gram.device).expand(b, n, n)
        w = torch.cat([pi[:, None], 0.9 * eye + 0.1 * pi[:, None]], dim=1)  # (B, n + 1, n)
        for _ in range(COMMIT_STEPS):
            _, m = objective(w)
            coef = pi[:, None] / (m + eps)  # (B, starts, n)
            # d m_k / d w_j = 2 (G w)_j − 2 G_kj
            grad = 2 * (w @ gram) * coef.sum(dim=-1, keepdim=True) - 2 * coef @ gram
            step = COMMIT_STEP * grad / grad.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
            w = w.clamp_min(1e-9) * torch.exp(-step)
            w = w / w.sum(dim=-1, keepdim=True)
        # the best of those, the blend and each candidate alone
        tried = torch.cat([w, pi[:, None], eye], dim=1)
        w = tried.gather(1, objective(tried)[0].argmin(dim=1)[:, None, None].expand(b, 1, n))[:, 0]
        out = torch.zeros_like(p)
        bank_w = out.scatter(1, top, (w[:, 1:k + 1] * st.double()).to(p.dtype))
        return bank_w, (w[:, k + 1].to(p.dtype) if cast is not None else None)

    def candidate_views(self, view: torch.Tensor, f16: torch.Tensor, pooled: torch.Tensor,
                        candidates: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """The view restored by each candidate alone: ``candidates`` ``(B, K)`` bank indices
        (−1: no bank entry), ``strength`` ``(B, bank)`` → ``(B, K, 3, s, s)``, each the
        model with that one bank entry at its predicted strength (no cast), rounded to 8
        bits as a saved file would be."""
        b, k = candidates.shape
        out = []
        for j in range(k):
            c = candidates[:, j]
            known = torch.zeros(b, self.bank_size, dtype=view.dtype, device=view.device)
            rows = torch.nonzero(c >= 0)[:, 0]
            known[rows, c[rows]] = strength[rows, c[rows]].to(view.dtype)
            restored = self.apply(view, *self.heads(view, f16, pooled, known_bank=known)).clamp(0, 1)
            out.append(torch.round(restored * 255) / 255)
        return torch.stack(out, dim=1)

    def verify_candidates(self, view: torch.Tensor, f16: torch.Tensor, pooled: torch.Tensor, feats: torch.Tensor,
                          candidates: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """The verifier's scores ``(B, K)`` of the ``candidate_views`` (seen through
        ``bank_inputs``, beside the input's ``feats``)."""
        views = self.candidate_views(view, f16, pooled, candidates, strength)
        b, k = candidates.shape
        seen = self.bank_inputs(views.flatten(0, 1))
        return self.verify_score(seen, feats.repeat_interleave(k, dim=0)).view(b, k)

    def verify_score(self, restored_feats: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """``bank_inputs`` of a candidate's restoration and of the input ``(B, F)`` → the
        verifier's score ``(B,)`` (higher: a better restoration)."""
        r, x = self.bank_standardise(restored_feats), self.bank_standardise(feats)
        return self.bank_verify_head(torch.cat([r, r - x], dim=1))[:, 0]

    def verify_probs(self, view: torch.Tensor, f16: torch.Tensor, pooled: torch.Tensor, feats: torch.Tensor,
                     probs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Second opinion on the classifiers' ``probs`` (``_bank_probs``): the ``bank_verify``
        most probable filters and "no bank entry" each restore the view, the verifier
        scores the restorations (``verify_candidates``), and those candidates' probability
        mass is shared again in proportion to P · exp(β · score) (β:
        ``bank_verify_beta``). The other filters keep theirs. Recognition by what the
        result looks like, not only by what the input looks like: a wrong inverse leaves
        a look, or makes one."""
        p_mean = torch.stack([p for p, _ in probs]).mean(dim=0)
        s_mean = torch.stack([s for _, s in probs]).mean(dim=0)
        top = p_mean.topk(self.bank_verify, dim=1).indices
        none = torch.full_like(top[:, :1], -1)
        candidates = torch.cat([none, top], dim=1)
        scores = self.verify_candidates(view, f16, pooled, feats, candidates, s_mean)
        out = []
        for p, s in probs:
            cand_p = torch.cat([(1.0 - p.sum(dim=1, keepdim=True)).clamp_min(0.0), p.gather(1, top)], dim=1)
            mass = cand_p.sum(dim=1, keepdim=True)
            shared = mass * (torch.log(cand_p.clamp_min(1e-12)) + self.bank_verify_beta * scores).softmax(dim=1)
            out.append((p.scatter(1, top, shared[:, 1:]), s))
        return out

    def bank_cast(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``bank_inputs`` ``(B, F)`` → (P(the view is a white-balance cast) ``(B,)``, the
        cast's predicted log gains ``(B, 3)``: encoded value × exp(gain) per channel). With
        several cast heads: their mean P, and their gains weighted by each head's P (a head's
        gains are trained on casts only, so they count as much as it believes in one)."""
        z = self.bank_standardise(feats)
        outs = torch.stack([head(z) for head in self.bank_cast_head_list()])  # (K, B, 4)
        p = torch.sigmoid(outs[..., 0])
        if len(outs) == 1:
            return p[0], outs[0, :, 1:4]
        gains = (p[..., None] * outs[..., 1:4]).sum(0) / p.sum(0).clamp_min(1e-12)[:, None]
        return p.mean(0), gains

    def cast_weight(self, feats: torch.Tensor,
                    probs: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``bank_inputs`` ``(B, F)`` → (the cast inverse's weight ``(B,)``, log gains
        ``(B, 3)``). The weight is P(cast) × (1 − the classifiers' top filter probability):
        a filter the classifier is sure of keeps its inverse (1977's pink reads as a cast
        to the cast head a quarter of the time), a photo it reads as clean or as a
        hedge between filters gets the cast's share; the filters' weights are scaled by
        1 − that weight (``probs``: ``_bank_probs(feats)`` when already computed)."""
        p_cast, log_gains = self.bank_cast(feats)
        top = torch.stack([p for p, _ in (probs or self._bank_probs(feats))]).mean(dim=0).amax(dim=1)
        return p_cast * (1.0 - top), log_gains

    def cast_inverse_delta(self, log_gains: torch.Tensor) -> torch.Tensor:
        """Log gains ``(B, 3)`` → the cast's inverse as a residual LUT ``(B, 3, S, S, S)``:
        each channel of the identity table scaled by exp(−gain), minus the identity."""
        scale = torch.exp(-log_gains) - 1.0
        return self._lut_identity * scale[:, :, None, None, None]

    def calibrate_bank(self, temperature: float = 1.0, none_shift: float = 0.0, cast_shift: float = 0.0,
                       strength_shift: float = 0.0, strength_stretch: float = 1.0) -> None:
        """Rescale what the classifiers say, in their last layer (so the weights file carries
        it): class 0's ("no filter") logit − ``none_shift`` (> 0: fewer photos read as
        clean), then the class logits ÷ ``temperature`` (< 1 commits harder to the top
        class); the strength logits stretched by ``strength_stretch`` about
        ``STRENGTH_CENTRE``'s logit (> 1: strong looks read stronger and mild ones milder —
        the regression, trained on strengths 0.4–1, compresses what it reads toward the
        middle: docs/restorer.md "Strength"), then + ``strength_shift`` (> 0: every filter
        read as stronger); with ``bank_casts`` the cast logit + ``cast_shift`` (> 0: more
        views read as casts). Gains are left alone. Chosen on held-out photos
        (``benchmarks/restore_quick.py --photos holdout:F``)."""
        if not self.bank_size:
            raise ValueError("Restorer.calibrate_bank: this model has no filter bank")
        if not temperature > 0:
            raise ValueError(f"Restorer.calibrate_bank: temperature must be > 0, got {temperature}")
        if not strength_stretch > 0:
            raise ValueError(f"Restorer.calibrate_bank: strength_stretch must be > 0, got {strength_stretch}")
        n = self.bank_classes
        centre = math.log(STRENGTH_CENTRE / (1.0 - STRENGTH_CENTRE))
        with torch.no_grad():
            for head in self.bank_head_list():
                last = head[-1]
                last.bias[0] -= none_shift
                last.weight[:n] /= temperature
                last.bias[:n] /= temperature
                # z → c + k·(z − c): a linear map of the logit, so it folds into the layer
                last.weight[n:] *= strength_stretch
                last.bias[n:] = strength_stretch * last.bias[n:] + (1.0 - strength_stretch) * centre
                last.bias[n:] += strength_shift
            if cast_shift:
                if not self.bank_casts:
                    raise ValueError("Restorer.calibrate_bank: cast_shift needs a model with bank_casts")
                for head in self.bank_cast_head_list():
                    head[-1].bias[0] += cast_shift

    def set_bank(self, tables: torch.Tensor, forward: torch.Tensor | None = None,
                 grids: torch.Tensor | None = None) -> None:
        """Install the bank's LUTs: ``tables`` ``(bank, 3, S, S, S)`` full inverse LUTs
        (``lut3d_apply``'s layout; stored as residuals from the identity), with
        ``bank_consistency`` the filters themselves as ``forward`` LUTs of the same shape,
        and with ``bank_grids`` each filter's full bilateral ``grids``
        ``(bank, 12, D, G, G)`` (``predict``'s layout; identity grids when omitted).
        (The classifier's feature standardisation is set by ``train_restorer.train_bank``.)"""
        s = self.lut_size
        shape = (self.bank_size, 3, s, s, s)
        if tuple(tables.shape) != shape:
            raise ValueError(f"Restorer.set_bank: tables must be {shape}, got {tuple(tables.shape)}")
        if self.bank_consistency and (forward is None or tuple(forward.shape) != shape):
            raise ValueError(f"Restorer.set_bank: this bank checks consistency: forward must be {shape}, "
                             f"got {None if forward is None else tuple(forward.shape)}")
        if grids is not None:
            gshape = (self.bank_size, 12, self.grid_bins, self.grid_size, self.grid_size)
            if not self.bank_grids or tuple(grids.shape) != gshape:
                raise ValueError(f"Restorer.set_bank: grids need a model with bank_grids and shape {gshape}, "
                                 f"got bank_grids={self.bank_grids} and {tuple(grids.shape)}")
        with torch.no_grad():
            if self.bank_consistency:
                self.bank_forward.copy_(forward)
            self.bank_luts.copy_(tables.to(self.bank_luts) - self._lut_identity)
            if self.bank_grids:
                deltas = 0.0 if grids is None else grids.to(self.bank_grid_deltas) - self._grid_identity
                self.bank_grid_deltas.copy_(deltas)

    def predict(self, x: torch.Tensor, *, known_bank: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` → LUT ``(B, 3, S, S, S)`` and grid ``(B, 12, D, G, G)``
        (``known_bank``: see ``heads``)."""
        view = self.view(x)
        crops = self.bank_crop_views(x) if known_bank is None else None
        return self.heads(view, *self.encode(view), known_bank=known_bank, crop_views=crops)

    def apply(
        self, x: torch.Tensor, lut: torch.Tensor, grid: torch.Tensor, *, window: tuple[int, int, int, int] | None = None
    ) -> torch.Tensor:
        """Apply a predicted ``lut``/``grid`` to ``x`` ``(B, 3, H, W)`` at full resolution,
        in row chunks. ``window=(top, left, full_h, full_w)`` says ``x`` is that crop of a
        larger image (the grid spans the larger image). Returns ``(B, 3, H, W)``, not clamped."""
        self._check(x, "apply")
        h, w = x.shape[-2:]
        top, left, full_h, full_w = window or (0, 0, h, w)

        def rows(r0: int, r1: int) -> torch.Tensor:
            xc = x[:, :, r0:r1]
            local = bilateral_grid_apply(
                xc, grid, self.guide(xc), row_offset=top + r0, full_height=full_h,
                col_offset=left, full_width=full_w, chunk_pixels=None,
            )
            return lut3d_apply(local, lut, chunk_pixels=None)

        return map_row_chunks(rows, h, w, self.chunk_pixels)

    def apply_local(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The grid's local affine part alone (what ``apply`` does before the LUT), at
        ``x``'s resolution: ``(B, 3, H, W)`` → ``(B, 3, H, W)``, not clamped."""
        self._check(x, "apply_local")
        h, w = x.shape[-2:]

        def rows(r0: int, r1: int) -> torch.Tensor:
            xc = x[:, :, r0:r1]
            return bilateral_grid_apply(xc, grid, self.guide(xc), row_offset=r0, full_height=h, chunk_pixels=None)

        return map_row_chunks(rows, h, w, self.chunk_pixels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → restored ``(B, 3, H, W)``."""
        y = self.apply(x, *self.predict(x))
        return y if self.training else y.clamp(0.0, 1.0)
