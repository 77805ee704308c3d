"""``chromabeam train restorer PAIRS WEIGHTS_OUT``: train the filter-removal Restorer on
``synth-pairs --mode removal`` output (input = filtered, target = original), or, with
PAIRS = ``photos:CACHE``, on pairs made on the fly from the TRAIN photos (``PhotoLooks``;
what the shipped weights used). The defaults are the shipped recipe's (docs/restorer.md):
the colour-statistics encoder, batch 32 of 128² crops scored on a 64² downscale.

Loss: L1(RGB) + ``w_lab`` · L1(CIELAB)/100 (the colour term: equal steps in Lab are
roughly equal perceived differences) + ``w_ssim`` · (1 − mean SSIM map).

Crops: a random rectangle covering 40–100 % of each side, resized to ``crop``² — the
encoder then sees what it sees at inference (a whole image squeezed into its square
view), not only 1:1 details. Input and target get the same crop and resize, so they stay
aligned.

EfficientNet encoder (``--model-config '{"encoder": "efficientnet"}'``): ``--freeze all``
(default) keeps the ImageNet EfficientNet-Lite0 fixed (eval
mode, no gradients) and trains the heads, the LUT basis and the guide, with colour
statistics of the view (``hist_bins``) feeding the heads; ``early`` freezes the stem and
the first 3 blocks; ``none`` fine-tunes everything. Measured on one CPU core (session 1,
summarised in docs/restorer.md): ``all`` runs a step in about a third of the time of ``none`` and
learns faster per CPU-minute.

Checkpoints (``--checkpoint-dir``, default ``WEIGHTS_OUT/checkpoint``): ``model.safetensors``,
``optimizer.safetensors`` (Adam moments, by parameter name) and ``state.json`` (step,
config, loss history, RNG state). A rerun with the same folder resumes at the saved step.
Final weights go through ``registry.save_weights`` with a model card listing every
training photo (from the pairs' keys and models/photos.py) and the loss history.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import sys
import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

from chromabeam.models.pairs import Pair, flip_and_stack, load_pairs
from chromabeam.models.restorer import Restorer, quantile_normal
from chromabeam.transforms import storage
from chromabeam.transforms.devices import resolve_device
from chromabeam.transforms.ops.color import rgb_to_lab
from chromabeam.transforms.ops.imageio import to_float
from chromabeam.transforms.ops.metrics import ssim_map

__all__ = [
    "TrainConfig",
    "restorer_loss",
    "sample_batch",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "training_sources",
    "add_train_arguments",
    "train_command",
]

log = logging.getLogger("chromabeam.train.restorer")

FREEZE = ("none", "early", "all")
PHOTOS_PREFIX = "photos:"  # PAIRS = photos:CACHE → pairs made on the fly (PhotoLooks)
DEFAULT_PHOTO_CACHE = "/tmp/photo-cache"
_EARLY_BLOCKS = 3  # stem + blocks 0..2 (stride-4 features)


@dataclasses.dataclass
class TrainConfig:
    """Training settings (all JSON-able; stored in the checkpoint and the model card)."""

    steps: int = 4000
    batch: int = 32
    crop: int = 128
    lr: float = 2e-3
    lr_min_ratio: float = 0.05  # cosine decay to lr * this
    weight_decay: float = 0.0
    w_lab: float = 1.0
    w_ssim: float = 0.5
    freeze: str = "all"
    seed: int = 0
    device: str = "auto"
    log_every: int = 25
    checkpoint_every: int = 100
    max_side: int = 768  # pairs are decoded at most this large
    loss_size: int = 64  # > 0 (and < crop): apply and score on a downscale of the crop (see train)
    bank_lr_scale: float = 0.0  # > 0: the image loss also trains the bank's classifier, at lr * this
    # the shipped recipe's model (docs/restorer.md); {"encoder": "efficientnet"} for the CNN one
    model: dict = dataclasses.field(default_factory=lambda: {
        "encoder": "stats", "view_size": 128, "width": 128, "lut_basis": 16, "hist_bins": 16})
    pretrained: bool = True

    def __post_init__(self):
        if self.steps < 0 or self.batch < 1 or self.crop < 16 or self.lr <= 0:
            raise ValueError(f"TrainConfig: need steps >= 0, batch >= 1, crop >= 16, lr > 0; got {self}")
        if self.freeze not in FREEZE:
            raise ValueError(f"TrainConfig: freeze must be one of {FREEZE}, got {self.freeze!r}")
        if self.loss_size and self.loss_size < 16:
            raise ValueError(f"TrainConfig: loss_size must be 0 (off) or >= 16, got {self.loss_size}")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("TrainConfig: log_every and checkpoint_every must be >= 1")


def restorer_loss(pred: torch.Tensor, target: torch.Tensor, w_lab: float = 1.0, w_ssim: float = 0.5) -> tuple[torch.Tensor, dict]:
    """``(B, 3, H, W)`` × 2 (H, W ≥ 11) → (scalar loss, {term: float}).

    L1 in RGB + ``w_lab`` · L1 in CIELAB / 100 + ``w_ssim`` · (1 − mean SSIM map)."""
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"restorer_loss: pred and target must be equal (B, 3, H, W), got {tuple(pred.shape)}, {tuple(target.shape)}")
    l1 = (pred - target).abs().mean()
    # Lab of values slightly outside [0, 1] is still defined; clamp keeps the cube root's
    # gradient finite at 0.
    lab = (rgb_to_lab(pred.clamp(0.0, 1.0)) - rgb_to_lab(target)).abs().mean() / 100.0
    ss = 1.0 - ssim_map(pred, target).mean()
    total = l1 + w_lab * lab + w_ssim * ss
    terms = {"loss": total, "l1": l1, "lab": lab, "ssim": ss}
    return total, {k: float(v.detach()) for k, v in terms.items()}


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR, reducing_gap=None))


def sample_batch(pairs: list[Pair], batch: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` aligned crops (input, target), each a random rectangle covering 40–100 %
    of the image's sides resized to ``size``², random horizontal flip → two float tensors
    ``(batch, 3, size, size)`` in [0, 1]."""
    if not pairs:
        raise ValueError("sample_batch: no pairs")
    xs, ys = [], []
    for _ in range(batch):
        p = pairs[int(rng.integers(len(pairs)))]
        h, w = p.input.shape[:2]
        ch = max(1, int(round(h * rng.uniform(0.4, 1.0))))
        cw = max(1, int(round(w * rng.uniform(0.4, 1.0))))
        top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        xs.append(_resize(p.input[top:top + ch, left:left + cw], size))
        ys.append(_resize(p.target[top:top + ch, left:left + cw], size))
    return flip_and_stack(xs, ys, rng)


class FeatureCache:
    """For a frozen encoder: every pair's view (input and target, ``view_size``², as
    ``Restorer.view`` makes it at inference) and the encoder features of the input view,
    computed once. A step then costs the heads, the apply and the loss only."""

    def __init__(self, pairs: list[Pair], model: Restorer, device: torch.device, batch: int = 16):
        if not pairs:
            raise ValueError("FeatureCache: no pairs")
        views_in, views_tgt, f16s, pooled = [], [], [], []
        with torch.no_grad():
            for i in range(0, len(pairs), batch):
                chunk = pairs[i:i + batch]
                vi = torch.stack([model.view(_float(p.input)) [0] for p in chunk]).to(device)
                vt = torch.stack([model.view(_float(p.target))[0] for p in chunk])
                f16, pool = model.encode(vi)
                views_in.append(_u8(vi.cpu()))
                views_tgt.append(_u8(vt))
                f16s.append(f16.half().cpu())
                pooled.append(pool.cpu())
        self.views_in, self.views_tgt = torch.cat(views_in), torch.cat(views_tgt)
        self.f16, self.pooled = torch.cat(f16s), torch.cat(pooled)

    def __len__(self) -> int:
        return len(self.pooled)

    def sample(self, batch: int, crop: int, rng: np.random.Generator, device: torch.device):
        """→ (view, f16, pooled, input crop, target crop, window) for ``batch`` random pairs;
        the crops share one random ``crop``² window of the views."""
        idx = torch.from_numpy(rng.integers(len(self), size=batch))
        s = self.views_in.shape[-1]
        c = min(crop, s)
        top, left = int(rng.integers(s - c + 1)), int(rng.integers(s - c + 1))
        view = self.views_in[idx].to(device).float().div_(255)
        tgt = self.views_tgt[idx, :, top:top + c, left:left + c].to(device).float().div_(255)
        return (view, self.f16[idx].to(device).float(), self.pooled[idx].to(device),
                view[:, :, top:top + c, left:left + c], tgt, (top, left, s, s))


class PhotoLooks:
    """Training pairs made on the fly from the TRAIN photos of ``models.photos``: a random
    crop (30–100 % of each side, so scale and aspect vary; a quarter of the time a 2×2
    mosaic of crops of four photos, so colour distributions vary beyond the photos'
    own), a random flip, then a fresh removal-mode look from the transform library —
    all 40 filters, procedural grades, light perturbations (on ``perturb_prob`` of the
    looks), identity ``identity_prob`` of the time, half the looks at full strength, the
    rest blended 40–100 % — and 8-bit rounding of the input, as a saved file would have (on
    ``jpeg_prob`` of the pairs a JPEG round trip at quality 70–95, 4:2:0, as most catalogue
    photos are stored; the target stays the clean crop). ``cast_prob`` of the looks are
    white-balance casts instead. Every step sees new pairs, so the model cannot memorise
    (photo, look) combinations; only the photos repeat.

    ``sample(batch, size, rng) -> (input, target)`` float ``(batch, 3, size, size)``."""

    def __init__(self, images: list[np.ndarray], names: list[str], *, identity_prob: float = 0.12,
                 mosaic_prob: float = 0.25, perturb_prob: float = 1.0, cast_prob: float = 0.0,
                 jpeg_prob: float = 0.0):
        from chromabeam.transforms.ops.synth import SynthConfig

        if not images or len(images) != len(names):
            raise ValueError(f"PhotoLooks: need one name per image and at least one image, got {len(images)} / {len(names)}")
        self.images, self.names = list(images), list(names)
        self.config = SynthConfig(mode="removal", perturb="light", grade_prob=0.4, vignette_prob=0.3,
                                  identity_prob=identity_prob, lut_strength=(0.4, 1.0))
        self.mosaic_prob = float(mosaic_prob)
        if not 0.0 <= perturb_prob <= 1.0:
            raise ValueError(f"PhotoLooks: perturb_prob must be in [0, 1], got {perturb_prob}")
        self.perturb_prob = float(perturb_prob)
        if not 0.0 <= cast_prob <= 1.0:
            raise ValueError(f"PhotoLooks: cast_prob must be in [0, 1], got {cast_prob}")
        self.cast_prob = float(cast_prob)
        if not 0.0 <= jpeg_prob <= 1.0:
            raise ValueError(f"PhotoLooks: jpeg_prob must be in [0, 1], got {jpeg_prob}")
        self.jpeg_prob = float(jpeg_prob)

    @classmethod
    def from_photos(cls, cache: str, *, max_side: int = 768, limit: int | None = None, holdout: float = 0.0,
                    **kwargs) -> "PhotoLooks":
        """The TRAIN photos of ``models.photos`` (Debian packages unpacked into ``cache``),
        long side at most ``max_side``; with ``holdout`` > 0, without the photos
        ``photos.holdout_split(holdout)`` holds out."""
        from chromabeam.models import photos

        photos.fetch_debian(cache)
        train_photos = (photos.holdout_split(holdout)[0] if holdout else photos.split()[0])[:limit]
        looks = cls([photos.load(p, cache, max_side) for p in train_photos],
                    [f"{p.name} — {p.source} {p.path}" for p in train_photos], **kwargs)
        return looks

    def __len__(self) -> int:
        return len(self.images)

    def _crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        img = self.images[int(rng.integers(len(self.images)))]
        h, w = img.shape[:2]
        ch, cw = (max(1, int(round(n * rng.uniform(0.3, 1.0)))) for n in (h, w))
        top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        out = _resize(img[top:top + ch, left:left + cw], size)
        return out[:, ::-1] if rng.random() < 0.5 else out

    def clean(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """One clean ``(size, size, 3)`` uint8 training image."""
        if rng.random() >= self.mosaic_prob or size < 32:
            return self._crop(rng, size)
        b = size - size // 2
        q = [self._crop(rng, b) for _ in range(4)]
        return np.concatenate([np.concatenate(q[:2], axis=1), np.concatenate(q[2:], axis=1)], axis=0)[:size, :size]

    def sample(self, batch: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = self.sample_with_specs(batch, size, rng)
        return x, y

    def sample_with_specs(self, batch: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list]:
        """``sample`` plus each pair's transform spec (what the filter-bank classifier learns)."""
        from chromabeam.transforms.ops.synth import apply_transform, sample_transform

        xs, ys, specs = [], [], []
        for _ in range(batch):
            y = _float(self.clean(rng, size))
            spec = sample_transform(self.config, rng)
            if spec["family"] != "identity" and rng.random() < 0.5:
                spec["strength"] = 1.0
            if spec["perturb"] and rng.random() >= self.perturb_prob:
                spec["perturb"] = []
            if self.cast_prob and rng.random() < self.cast_prob:
                spec = sample_cast(rng)
                x = apply_cast(y, spec)
            else:
                x = apply_transform(y, spec)
            x = x.clamp(0, 1).mul(255).round().div(255)
            if self.jpeg_prob and rng.random() < self.jpeg_prob:
                x = jpeg_round_trip(x, int(rng.integers(*_JPEG_QUALITY)))
            xs.append(x)
            ys.append(y)
            specs.append(spec)
        return torch.cat(xs), torch.cat(ys), specs

    def sources(self) -> list[str]:
        return list(self.names)


# Qualities of the JPEG round trips (``jpeg_prob``): what catalogue photos are saved at.
_JPEG_QUALITY = (70, 96)


def jpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``(1, 3, H, W)`` in [0, 1] (8-bit values) → the image after a JPEG encode/decode at
    ``quality`` with 4:2:0 chroma, as photos arrive in practice."""
    buf = io.BytesIO()
    Image.fromarray(_u8(x[0]).permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality, subsampling=2)
    return _float(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))


# White-balance casts: per-channel gains on the encoded values, log-uniform (R ±0.3, G
# ±0.08, B ±0.4: up to ×1.35 / ×0.67). The transform library's grades shift channels by at
# most ±0.04 at mid-tones, so without these a plain warm or cool photo is a look the
# restorer never saw (and its bank reads it as whichever filter it resembles).
_CAST_LOG_RANGE = (0.3, 0.08, 0.4)


def sample_cast(rng: np.random.Generator) -> dict:
    """One white-balance cast: ``{"family": "cast", "id": "cast", "gains": [r, g, b],
    "strength": 1.0, "perturb": []}`` (not a bank filter: the bank classifier's class 0,
    or "another look" with ``bank_other``)."""
    gains = [round(float(np.exp(rng.uniform(-r, r))), 4) for r in _CAST_LOG_RANGE]
    return {"family": "cast", "id": "cast", "gains": gains, "strength": 1.0, "params": None, "perturb": []}


def apply_cast(images: torch.Tensor, spec: dict) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] times the cast's per-channel gains (not clamped)."""
    return images * torch.tensor(spec["gains"], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)


def inverse_filter_tables(images: list[np.ndarray], filters: list[str], size: int, *, side: int = 256,
                          log_fn: Callable[[str], None] | None = None, forward: bool = False):
    """For each filter, the LUT ``(3, size, size, size)`` that best maps its output back to
    the original colours over ``images`` (uint8 ``(H, W, 3)`` photos, each resized to
    ``side``², the filter at full strength, 8-bit rounded like a saved file):
    ``(len(filters), 3, size, size, size)``, the restorer's filter bank. With ``forward``,
    also the filters themselves fitted the same way: ``(inverse, forward)``.
    Only training photos go in; the benchmark's eval photos never do."""
    from chromabeam.transforms.ops.filters import apply_filter
    from chromabeam.transforms.ops.lut import fit_lut_from_pairs

    clean = torch.cat([_float(_resize(a, side)) for a in images])
    tables, forwards = [], []
    for i, name in enumerate(filters):
        filtered = apply_filter(clean, name, 1.0).clamp(0, 1).mul(255).round().div(255)
        tables.append(fit_lut_from_pairs([(filtered, clean)], size))
        if forward:
            forwards.append(fit_lut_from_pairs([(clean, filtered)], size).clamp(0, 1))
        if log_fn:
            log_fn(f"inverse of {name} fitted on {len(images)} photos ({i + 1}/{len(filters)})")
    return (torch.stack(tables), torch.stack(forwards)) if forward else torch.stack(tables)


def spread(n: int, total: int) -> list[int]:
    """``n`` indices spread evenly over ``range(total)``: photos from every source of the
    catalogue, not just the first (which photos a bank's tables and grids are fitted on)."""
    return [int(i) for i in np.linspace(0, total - 1, min(n, total)).round().astype(int)]


def bank_filter_names(model: Restorer) -> list[str]:
    """The filters of a trained model's bank, in its order: its card's ``filter_bank.filters``
    (a run that built the bank), else the trainer's own list (what ``--filter-bank`` builds;
    a run that kept an ``--init``'s bank does not list them)."""
    card = getattr(model, "weights_card", {}) or {}
    filters = (card.get("filter_bank") or {}).get("filters")
    if not filters:
        from chromabeam.transforms.ops.synth import SynthConfig

        filters = list(SynthConfig(mode="removal").filters)
    if len(filters) != model.bank_size:
        raise ValueError(f"the model has a bank of {model.bank_size} filters; its card lists {len(filters)} "
                         "(filter_bank.filters)")
    return list(filters)


def bank_tool_parser(tool: str, doc: str) -> argparse.ArgumentParser:
    """The command line every ``models.bank_*`` tool starts from: WEIGHTS OUT, ``--seed``,
    ``--cache`` (the catalogue's Debian packages) and ``--threads``; see ``bank_tool_setup``."""
    ap = argparse.ArgumentParser(prog=f"python -m chromabeam.models.{tool}", description=doc.split("\n\n")[0])
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=DEFAULT_PHOTO_CACHE, help="where the catalogue's Debian packages are unpacked")
    ap.add_argument("--threads", type=int, default=0)
    return ap


def bank_tool_setup(args: argparse.Namespace) -> None:
    """Logging to stderr at INFO, and ``--threads`` torch threads (0: torch's default)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)


def bank_model(weights: str, tool: str) -> Restorer:
    """The restorer with a filter bank at ``weights`` (CPU), or a ValueError naming ``tool``."""
    from chromabeam.models.registry import build_model

    model = build_model(weights, "cpu")
    if model.weights_config.get("model") != "restorer" or not getattr(model, "bank_size", 0):
        raise ValueError(f"{tool}: {storage.redact(weights)} is not a restorer with a filter bank")
    return model


def with_new_bank_head(base: Restorer, flags: dict, new_prefix: str, *, seed: int | None, tool: str) -> Restorer:
    """``base`` rebuilt with ``flags`` (e.g. ``{"bank_casts": True}``) that add one head
    (or buffer), whose state starts with ``new_prefix`` (a fresh one, also where ``base``
    had one): everything else is ``base``'s, bit for bit; a new head's initial weights
    come from ``seed`` (the same command makes the same file; None: nothing new is
    random). Keeps ``base``'s card (the bank's filter names)."""
    config = {k: v for k, v in base.weights_config.items() if k != "model"}
    if seed is not None:
        torch.manual_seed(seed)
    model = Restorer(**{**config, **flags}, pretrained=False).eval()
    # a head ``base`` already has under ``new_prefix`` is replaced, not carried over
    state = {k: v for k, v in base.state_dict().items() if not k.startswith(new_prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(new_prefix) for k in missing):
        raise ValueError(f"{tool}: cannot extend this model (missing {missing}, unexpected {unexpected})")
    model.chunk_pixels = base.chunk_pixels
    model.weights_card = base.weights_card
    return model


BANK_GRID_CHOICES = ("none", "grid", "grid+lut")


def fit_bank_grids(model: Restorer, images: list[np.ndarray], filters: list[str], *, side: int = 256,
                   size: int = 96, steps: int = 200, batch: int = 16, lr: float = 3e-3, validation: float = 0.2,
                   margin: float = 0.2, seed: int = 0,
                   log_fn: Callable[[str], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """For each bank filter, a bilateral grid (and maybe a refitted LUT) so that the
    model's ``apply`` (grid, then LUT) maps the filter's output back to the original.

    ``images``: uint8 ``(H, W, 3)`` TRAIN photos, long side ``side``, the filter at full
    strength, 8-bit rounded, then each whole photo squashed to ``size``² (the grid spans
    the image, as a filter's vignette does). The last ``validation`` share of them is
    held out to choose, per filter, between the bank LUT alone ("none"), a grid fitted
    in front of it ("grid") and a grid and the LUT fitted together ("grid+lut"): a grid
    is kept only when it beats the LUT alone by ``margin`` dB on the held-out photos —
    filters without a spatial layer gain nothing from one, and a refitted LUT on few
    photos can lose what the bank's least-squares fit had. Adam on L1 + 10 · MSE,
    ``steps`` steps of ``batch`` photos per fit; the model's guide is kept as it is.
    Returns full ``(tables (bank, 3, S, S, S), grids (bank, 12, D, G, G))`` for
    ``model.set_bank`` and, per filter, ``{"filter", "choice", "psnr": {choice: dB}}``."""
    from chromabeam.transforms.ops.filters import apply_filter
    from chromabeam.transforms.ops.metrics import psnr

    if not model.bank_size or len(filters) != model.bank_size:
        raise ValueError(f"fit_bank_grids: need a model with a bank of {len(filters)} filters, "
                         f"it has {model.bank_size}")
    n_val = int(round(len(images) * validation))
    if len(images) - n_val < 1 or n_val < 1:
        raise ValueError(f"fit_bank_grids: {len(images)} photos cannot be split {1 - validation:.0%} / "
                         f"{validation:.0%} into fitting and choosing")
    g = torch.Generator().manual_seed(seed)
    shrink = lambda t: torch.nn.functional.interpolate(t, size=(size, size), mode="area")  # noqa: E731
    clean = [_float(_resize_long(a, side)) for a in images]
    targets = torch.cat([shrink(c) for c in clean])
    fit, val = slice(0, len(images) - n_val), slice(len(images) - n_val, None)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)

    def fitted(inputs, lut0, grid0, joint):
        lut, grid = lut0.clone().requires_grad_(joint), grid0.clone().requires_grad_(True)
        opt = torch.optim.Adam([lut, grid] if joint else [grid], lr=lr)
        xs, ys = inputs[fit], targets[fit]
        for _ in range(steps):
            idx = torch.randint(len(xs), (min(batch, len(xs)),), generator=g)
            err = model.apply(xs[idx], lut, grid) - ys[idx]
            loss = err.abs().mean() + 10.0 * (err ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return lut.detach(), grid.detach()

    def score(inputs, lut, grid):
        with torch.no_grad():
            out = model.apply(inputs[val], lut, grid).clamp(0, 1)
        return float(psnr(out, targets[val]).mean())

    tables, grids, report = [], [], []
    try:
        for k, name in enumerate(filters):
            inputs = torch.cat([shrink(apply_filter(c, name, 1.0).clamp(0, 1).mul(255).round().div(255))
                                for c in clean])
            lut0 = model._lut_identity + model.bank_luts[k:k + 1]
            grid0 = model._grid_identity.expand(1, -1, -1, -1, -1)
            candidates = {"none": (lut0, grid0), "grid": fitted(inputs, lut0, grid0, False),
                          "grid+lut": fitted(inputs, lut0, grid0, True)}
            scores = {c: round(score(inputs, *candidates[c]), 2) for c in BANK_GRID_CHOICES}
            best = max(("grid", "grid+lut"), key=scores.get)
            choice = best if scores[best] >= scores["none"] + margin else "none"
            tables.append(candidates[choice][0][0])
            grids.append(candidates[choice][1][0])
            report.append({"filter": name, "choice": choice, "psnr": scores})
            if log_fn:
                log_fn(f"bank grid of {name} ({k + 1}/{len(filters)}): {choice}, held-out PSNR {scores}")
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return torch.stack(tables), torch.stack(grids), report


def bank_dataset(model: Restorer, looks: "PhotoLooks", filters: list[str], samples: int, crop: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``samples`` fresh looks on TRAIN crops → (what the bank's classifier sees of each
    view, ``model.bank_inputs`` ``(N, F)``, class ``(N,)`` — 1 + the filter's index; 0 for
    a clean input, and for any other look too unless the model has the ``bank_other``
    class (then 1 + bank) —, strength ``(N,)``)."""
    other = len(filters) + 1 if model.bank_other else 0

    def label(spec: dict) -> int:
        if spec["family"] == "filter":
            return filters.index(spec["id"]) + 1
        return 0 if spec["family"] == "identity" else other

    feats, labels, strengths = [], [], []
    while len(labels) < samples:
        x, _, specs = looks.sample_with_specs(min(64, samples - len(labels)), crop, rng)
        with torch.no_grad():
            feats.append(model.bank_inputs(model.view(x)))
        labels += [label(sp) for sp in specs]
        strengths += [float(sp["strength"]) for sp in specs]
    return torch.cat(feats), torch.tensor(labels), torch.tensor(strengths, dtype=torch.float32)


def fit_head(head: torch.nn.Module, fit: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor], *,
             epochs: int, lr: float, generator: torch.Generator, log_fn: Callable[[str], None] | None = None,
             label: str = "head") -> None:
    """Train one of the bank's heads: AdamW (weight decay 1e-3) on ``loss_of(indices)``
    over minibatches of 256 of the ``fit`` indices, reshuffled each epoch by
    ``generator``; the mean loss is logged every 5 epochs. Leaves ``head`` in eval mode."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-3)
    head.train()
    for epoch in range(epochs):
        perm = fit[torch.randperm(len(fit), generator=generator)]
        total = 0.0
        for i in range(0, len(perm), 256):
            b = perm[i:i + 256]
            loss = loss_of(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        if log_fn and (epoch + 1) % 5 == 0:
            log_fn(f"{label} epoch {epoch + 1}/{epochs}: loss {total / len(fit):.4f}")
    head.eval()


def train_bank(model: Restorer, feats: torch.Tensor, labels: torch.Tensor, strengths: torch.Tensor, *,
               epochs: int = 30, lr: float = 1e-3, seed: int = 0, holdout: float = 0.1,
               log_fn: Callable[[str], None] | None = None) -> dict:
    """Fit the filter-bank classifiers of ``model`` (its bank LUTs already set): feature
    standardisation from ``feats`` (with ``bank_quantiles``, each feature's quantile knots
    first), then per classifier (each on its own shuffles) cross-entropy on the class +
    5 · MSE of the predicted strength of the true filter.
    The last ``holdout`` of the samples is kept out and scored (top-1 accuracy of the
    classifiers' mean probabilities). Returns {"train_accuracy", "holdout_accuracy", ...}."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    n_hold = int(len(labels) * holdout)
    order = torch.randperm(len(labels), generator=g)
    hold, fit = order[:n_hold], order[n_hold:]
    with torch.no_grad():
        if model.bank_quantiles:  # each feature's quantiles on the fit looks, then its standardisation
            levels = torch.linspace(0, 1, model.bank_quantiles, dtype=torch.float64)
            knots = torch.quantile(feats[fit].to(torch.float64), levels, dim=0).T
            model.bank_knots.copy_(knots.cummax(dim=1).values)
            seen = quantile_normal(feats[fit], model.bank_knots)
        else:
            seen = feats[fit]
        model.bank_mean.copy_(seen.mean(0))
        model.bank_scale.copy_(seen.std(0).clamp_min(0.05))

    def accuracy(idx, heads=model.bank_head_count):  # of the first ``heads`` classifiers together
        model.bank_head.eval()
        with torch.no_grad():
            probs = torch.stack([model.bank_logits(feats[idx], h)[0].softmax(1) for h in range(heads)]).mean(0)
        return float((probs.argmax(1) == labels[idx]).float().mean()) if len(idx) else float("nan")

    for h, head in enumerate(model.bank_head_list()):
        def loss_of(b, h=h):
            logits, strength = model.bank_logits(feats[b], h)
            loss = F.cross_entropy(logits, labels[b])
            is_filter = (labels[b] > 0) & (labels[b] <= model.bank_size)
            if is_filter.any():
                s = torch.sigmoid(strength[is_filter]).gather(1, (labels[b][is_filter] - 1)[:, None])[:, 0]
                loss = loss + 5.0 * F.mse_loss(s, strengths[b][is_filter])
            return loss

        fit_head(head, fit, loss_of, epochs=epochs, lr=lr, generator=g, log_fn=log_fn,
                 label=f"bank classifier {h + 1}/{model.bank_head_count}")
        if log_fn:
            log_fn(f"bank: {h + 1} classifier(s), holdout top-1 {accuracy(hold, h + 1):.3f}")
    model.bank_head.eval()
    return {"samples": int(len(labels)), "epochs": epochs, "train_accuracy": round(accuracy(fit[:5000]), 4),
            "holdout_accuracy": round(accuracy(hold), 4)}


def cast_dataset(model: Restorer, looks: "PhotoLooks", samples: int, crop: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``samples`` fresh looks on TRAIN crops (``looks.cast_prob`` of them white-balance
    casts, the rest what ``PhotoLooks`` makes: clean, filters, grades) → (``model.bank_inputs``
    ``(N, F)``, is a cast ``(N,)`` float, the cast's log gains ``(N, 3)``, 0 for the rest)."""
    if not looks.cast_prob:
        raise ValueError("cast_dataset: the looks make no casts (cast_prob is 0)")
    feats, is_cast, gains = [], [], []
    while len(is_cast) < samples:
        x, _, specs = looks.sample_with_specs(min(64, samples - len(is_cast)), crop, rng)
        with torch.no_grad():
            feats.append(model.bank_inputs(model.view(x)))
        for sp in specs:
            cast = sp["family"] == "cast"
            is_cast.append(float(cast))
            gains.append([math.log(g) for g in sp["gains"]] if cast else [0.0, 0.0, 0.0])
    return torch.cat(feats), torch.tensor(is_cast), torch.tensor(gains, dtype=torch.float32)


def train_cast_head(model: Restorer, feats: torch.Tensor, is_cast: torch.Tensor, log_gains: torch.Tensor, *,
                    epochs: int = 30, lr: float = 1e-3, seed: int = 0, holdout: float = 0.1,
                    log_fn: Callable[[str], None] | None = None) -> dict:
    """Fit ``model.bank_cast_head`` on ``cast_dataset`` output: binary cross-entropy on
    "cast" + 10 · MSE of the log gains of the casts. The features are standardised with
    the bank's own ``bank_standardise`` (set when its classifier was trained; left as it
    is, so the classifier is unchanged). The last ``holdout`` of the samples is
    scored: accuracy at P 0.5, P(cast) on casts and on the rest, mean |log-gain error| on
    casts."""
    import torch.nn.functional as F

    if not model.bank_casts or model.bank_cast_head_count != 1:
        raise ValueError("train_cast_head: the model needs exactly one cast head (bank_casts, bank_cast_heads 1); "
                         "models.bank_casts trains several one by one")
    g = torch.Generator().manual_seed(seed)
    n_hold = int(len(is_cast) * holdout)
    order = torch.randperm(len(is_cast), generator=g)
    hold, fit = order[:n_hold], order[n_hold:]
    head = model.bank_cast_head

    def loss_of(idx):
        p_logit_gain = head(model.bank_standardise(feats[idx]))
        loss = F.binary_cross_entropy_with_logits(p_logit_gain[:, 0], is_cast[idx])
        cast = is_cast[idx] > 0
        if cast.any():
            loss = loss + 10.0 * F.mse_loss(p_logit_gain[cast, 1:4], log_gains[idx][cast])
        return loss

    fit_head(head, fit, loss_of, epochs=epochs, lr=lr, generator=g, log_fn=log_fn, label="cast head")
    with torch.no_grad():
        p, pred = model.bank_cast(feats[hold])
    cast = is_cast[hold] > 0
    report = {"samples": int(len(is_cast)), "casts": int(is_cast.sum()), "epochs": epochs,
              "holdout_accuracy": round(float(((p > 0.5).float() == is_cast[hold]).float().mean()), 4),
              "holdout_p_cast_on_casts": round(float(p[cast].mean()), 4),
              "holdout_p_cast_on_others": round(float(p[~cast].mean()), 4),
              "holdout_log_gain_mae": round(float((pred[cast] - log_gains[hold][cast]).abs().mean()), 4)}
    if log_fn:
        log_fn(f"cast head: {report}")
    return report


def _downscale(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, size=(size, size), mode="area")


def _resize_long(a: np.ndarray, side: int) -> np.ndarray:
    """``a`` with its long side at most ``side`` px, aspect kept."""
    h, w = a.shape[:2]
    if max(h, w) <= side:
        return a
    scale = side / max(h, w)
    return np.asarray(Image.fromarray(a).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                Image.Resampling.LANCZOS))


def _float(a: np.ndarray) -> torch.Tensor:
    return to_float(a).unsqueeze(0)


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def _apply_freeze(model: Restorer, freeze: str, bank_lr_scale: float = 0.0) -> None:
    enc = model.encoder
    if enc is None:  # the statistics encoder has nothing to freeze
        frozen = []
    elif freeze == "all":
        frozen = [enc]
    elif freeze == "early":
        frozen = [enc._conv_stem, enc._bn0, *enc._blocks[:_EARLY_BLOCKS]]
    else:
        frozen = []
    if model.bank_size and not bank_lr_scale:  # the bank is trained apart (train_bank); the image loss leaves it
        frozen += _bank_heads(model)
    for m in frozen:
        m.requires_grad_(False)
    model._frozen_modules = frozen


def _set_train_mode(model: Restorer) -> None:
    """Train mode, but frozen parts keep their ImageNet BatchNorm statistics."""
    model.train()
    for m in getattr(model, "_frozen_modules", []):
        m.eval()


def _lr(cfg: TrainConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, min(50, cfg.steps // 10)))
    t = min(1.0, step / max(1, cfg.steps))
    return cfg.lr * warm * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _bank_heads(model: Restorer) -> list[torch.nn.Module]:
    """The bank's trained-apart heads: the classifier(s), and the cast head and verifier if any."""
    if not model.bank_size:
        return []
    return ([model.bank_head] + model.bank_cast_head_list()
            + ([model.bank_verify_head] if model.bank_verify else []))


def _optimizer(model: Restorer, cfg: TrainConfig) -> torch.optim.Optimizer:
    bank_params = [p for m in _bank_heads(model) for p in m.parameters()]
    bank = {id(p) for p in bank_params}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in bank], "lr_scale": 1.0}]
    if cfg.bank_lr_scale and bank:
        groups.append({"params": bank_params, "lr_scale": cfg.bank_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


# ------------------------------------------------------------------ checkpoints

def save_checkpoint(ckpt_dir: str, model: Restorer, opt: torch.optim.Optimizer, state: dict) -> None:
    """Write model/optimizer tensors as safetensors and ``state`` as JSON (state last, so
    a checkpoint is complete once its state.json names the step)."""
    from safetensors.torch import save as st_save

    storage.makedirs(ckpt_dir)
    names = {id(p): n for n, p in model.named_parameters()}
    opt_tensors, opt_meta = {}, {}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v):
                    opt_tensors[f"{names[id(p)]}::{k}"] = v.detach().cpu().contiguous()
                else:
                    opt_meta[f"{names[id(p)]}::{k}"] = v
    model_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    storage.put_atomic(storage.join(ckpt_dir, "model.safetensors"), st_save(model_state))
    storage.put_atomic(storage.join(ckpt_dir, "optimizer.safetensors"),
                       st_save(opt_tensors, metadata={"scalars": json.dumps(opt_meta)}))
    storage.put_atomic(storage.join(ckpt_dir, "state.json"), (json.dumps(state, indent=1) + "\n").encode())


def load_checkpoint(ckpt_dir: str, model: Restorer, opt: torch.optim.Optimizer) -> dict | None:
    """Restore a checkpoint written by ``save_checkpoint`` into ``model``/``opt``; returns
    its state dict, or None when ``ckpt_dir`` holds no complete checkpoint."""
    from safetensors.torch import load as st_load

    state_url = storage.join(ckpt_dir, "state.json")
    if not storage.exists(state_url):
        return None
    state = json.loads(storage.read_bytes(state_url))
    model.load_state_dict(st_load(storage.read_bytes(storage.join(ckpt_dir, "model.safetensors"))), strict=True)
    raw = storage.read_bytes(storage.join(ckpt_dir, "optimizer.safetensors"))
    tensors = st_load(raw)
    n = int.from_bytes(raw[:8], "little")
    scalars = json.loads(json.loads(raw[8:8 + n]).get("__metadata__", {}).get("scalars", "{}"))
    params = dict(model.named_parameters())
    dev = next(model.parameters()).device
    for key, v in list(tensors.items()) + list(scalars.items()):
        name, k = key.split("::", 1)
        if name in params:
            opt.state[params[name]][k] = v.to(dev) if torch.is_tensor(v) else v
    return state


# ------------------------------------------------------------------ training

def _model_config(cfg: TrainConfig) -> dict:
    return {k: v for k, v in cfg.model.items()}


def train(
    pairs: "list[Pair] | PhotoLooks",
    cfg: TrainConfig,
    checkpoint_dir: str | None = None,
    *,
    on_log: Callable[[dict], None] | None = None,
    init: Restorer | None = None,
) -> tuple[Restorer, dict]:
    """Train a Restorer on ``pairs`` (loaded synth-pairs, or a ``PhotoLooks`` making
    pairs on the fly) for ``cfg.steps`` steps (resuming from
    ``checkpoint_dir`` when it holds a checkpoint; else starting from ``init``'s weights
    when given — fine-tuning — or from ``cfg.model`` with the ImageNet encoder). Returns
    (model in eval mode, state) — state: ``step``, ``history`` (logged loss terms),
    ``seconds``, ``cpu_seconds``."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if init is not None:
        kwargs = {k: v for k, v in init.config.items() if k != "model"}
        cfg = dataclasses.replace(cfg, model=dict(kwargs))  # checkpoint and card describe the model trained
        model = Restorer(**kwargs, pretrained=False).to(device)
        model.load_state_dict(init.state_dict())
        model.chunk_pixels = init.chunk_pixels
    else:
        model = Restorer(pretrained=cfg.pretrained, **_model_config(cfg)).to(device)
    _apply_freeze(model, cfg.freeze, cfg.bank_lr_scale)
    opt = _optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    state = {"step": 0, "history": [], "seconds": 0.0, "config": dataclasses.asdict(cfg)}
    if checkpoint_dir:
        saved = load_checkpoint(checkpoint_dir, model, opt)
        if saved is not None:
            state.update(saved)
            state["config"] = dataclasses.asdict(cfg)
            rng.bit_generator.state = saved["rng"]
            log.info("resumed from %s at step %d", storage.redact(checkpoint_dir), state["step"])
    _set_train_mode(model)
    cache = None
    on_the_fly = isinstance(pairs, PhotoLooks)
    if cfg.freeze == "all" and model.encoder is not None and not on_the_fly and state["step"] < cfg.steps:
        t = time.time()
        cache = FeatureCache(pairs, model, device)
        log.info("encoded %d views in %.0f s (frozen encoder)", len(cache), time.time() - t)
    running: dict[str, float] = {}
    t0, seconds0 = time.time(), state["seconds"]
    c0, cpu0 = time.process_time(), state.get("cpu_seconds", 0.0)

    def checkpoint():
        if checkpoint_dir:
            state["rng"] = rng.bit_generator.state
            state["seconds"] = seconds0 + time.time() - t0
            state["cpu_seconds"] = cpu0 + time.process_time() - c0
            save_checkpoint(checkpoint_dir, model, opt, state)

    while state["step"] < cfg.steps:
        step = state["step"]
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step) * g.get("lr_scale", 1.0)
        if cache is not None:
            view, f16, pooled, x, y, window = cache.sample(cfg.batch, cfg.crop, rng, device)
            pred = model.apply(x, *model.heads(view, f16, pooled), window=window)
        else:
            x, y = pairs.sample(cfg.batch, cfg.crop, rng) if on_the_fly else sample_batch(pairs, cfg.batch, cfg.crop, rng)
            x, y = x.to(device), y.to(device)
            if cfg.loss_size and cfg.loss_size < cfg.crop:
                # The maps are predicted from the whole crop but applied and scored on a
                # downscaled copy: LUT and grid are resolution-free, and the apply, the
                # loss and their backward pass cost (loss_size / crop)² as much.
                lut, grid = model.predict(x)
                x, y = _downscale(x, cfg.loss_size), _downscale(y, cfg.loss_size)
                pred = model.apply(x, lut, grid)
            else:
                pred = model(x)
        loss, terms = restorer_loss(pred, y, cfg.w_lab, cfg.w_ssim)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        state["step"] = step + 1
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + v
        running["n"] = running.get("n", 0) + 1
        entry = None
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
            n = running.pop("n")
            entry = {"step": state["step"], "lr": round(_lr(cfg, step), 6),
                     "elapsed_s": round(seconds0 + time.time() - t0, 1),
                     "cpu_s": round(cpu0 + time.process_time() - c0, 1),
                     **{k: round(v / n, 5) for k, v in running.items()}}
            state["history"].append(entry)
            running = {}
        if state["step"] % cfg.checkpoint_every == 0:
            checkpoint()
        if entry is not None:  # after the checkpoint: a callback that stops training loses nothing
            log.info("step %(step)d loss %(loss).4f l1 %(l1).4f lab %(lab).4f ssim %(ssim).4f", entry)
            if on_log:
                on_log(entry)
    checkpoint()
    state["seconds"] = seconds0 + time.time() - t0
    return model.eval(), state


def training_sources(pairs: list[Pair]) -> list[str]:
    """One line per distinct training image: its key and, when it is a photo of
    models/photos.py's catalogue (exported by ``photos.export``), where it came from."""
    from chromabeam.models import photos

    known = {p.name.replace("/", "--").rsplit(".", 1)[0].replace(".", "_"): p for p in photos.catalog()}
    evals = {p.name for p in photos.split()[1]}
    lines = []
    for key in sorted({p.key for p in pairs}):
        ph = known.get(key)
        if ph is None:
            lines.append(f"{key} (not in the chromabeam photo catalogue)")
        else:
            if ph.name in evals:
                raise ValueError(f"training pairs include the EVAL photo {ph.name}: eval photos must never be trained on")
            lines.append(f"{ph.name} — {ph.source} {ph.path}")
    return lines


def _family_counts(pairs: list[Pair]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pairs:
        spec = json.loads(p.transform or "{}").get("input") or {"family": "unknown"}
        name = spec["family"] if spec["family"] != "filter" else f"filter:{spec['id']}"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


# ------------------------------------------------------------------ CLI

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``chromabeam train restorer`` (PAIRS and WEIGHTS_OUT are already there)."""
    d = TrainConfig()
    g = parser.add_argument_group("restorer training")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--batch", type=int, default=d.batch)
    g.add_argument("--crop", type=int, default=d.crop, help="training crop side (px)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--freeze", choices=FREEZE, default=d.freeze, help="encoder parts kept fixed")
    g.add_argument("--hist-bins", type=int, default=d.model["hist_bins"], help="colour-statistics bins (0: off)")
    g.add_argument("--model-config", type=json.loads, default={}, metavar="JSON",
                   help='other Restorer arguments, e.g. \'{"lut_basis": 16}\'')
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    g.add_argument("--checkpoint-dir", default=None, help="default: WEIGHTS_OUT/checkpoint")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--max-side", type=int, default=d.max_side, help="decode pairs at most this large")
    g.add_argument("--loss-size", type=int, default=d.loss_size,
                   help="apply and score on a downscale of each crop to this side (0: at the crop size)")
    g.add_argument("--identity-prob", type=float, default=0.12, help="photos:CACHE only: share of unchanged inputs")
    g.add_argument("--perturb-prob", type=float, default=1.0,
                   help="photos:CACHE only: share of looks that get light Harmonizer perturbations")
    g.add_argument("--cast-prob", type=float, default=0.0,
                   help="photos:CACHE only: share of looks replaced by a white-balance cast (per-channel gains)")
    g.add_argument("--jpeg-prob", type=float, default=0.0,
                   help="photos:CACHE only: share of inputs round-tripped through a JPEG (quality 70-95, 4:2:0)")
    g.add_argument("--init", metavar="WEIGHTS", default=None,
                   help="start from these restorer weights (fine-tuning; ignored when resuming a checkpoint)")
    g.add_argument("--filter-bank", type=int, default=0, metavar="PHOTOS",
                   help="photos:CACHE only: add the filter bank — the inverse of each of the 40 filters fitted on this "
                        "many TRAIN photos, and a classifier trained apart on --bank-samples fresh looks — then train "
                        "the rest with the image loss (0: off; ignored when resuming a checkpoint)")
    g.add_argument("--bank-samples", type=int, default=30000, help="looks the bank classifier is trained on")
    g.add_argument("--bank-consistency", action="store_true",
                   help="the bank classifier also sees how far the view is from each filter's range "
                        "(Restorer bank_consistency; measured in docs/restorer.md, not shipped)")
    g.add_argument("--bank-other", action="store_true",
                   help="the bank classifier gets a class of its own for looks not in the bank (grades), instead of "
                        "counting them as 'no filter' (Restorer bank_other)")
    g.add_argument("--bank-shading", action="store_true",
                   help="the bank classifier also sees the view's shading statistics (Restorer bank_shading)")
    g.add_argument("--bank-quantiles", type=int, default=0, metavar="Q",
                   help="the bank's heads read each feature by its rank: a quantile transform to a normal score "
                        "fitted on Q quantiles of the classifier's looks (Restorer bank_quantiles; 0: off)")
    g.add_argument("--bank-heads", type=int, default=1, metavar="K",
                   help="K bank classifiers, trained on different shuffles, average their weights")
    g.add_argument("--bank-epochs", type=int, default=30)
    g.add_argument("--bank-temperature", type=float, default=1.0,
                   help="after training, divide the bank's class logits by this (Restorer.calibrate_bank)")
    g.add_argument("--bank-none-shift", type=float, default=0.0,
                   help="after training, lower the bank's 'no filter' logit by this (before the temperature)")
    g.add_argument("--holdout-photos", type=float, default=0.0, metavar="FRACTION",
                   help="photos:CACHE only: leave this seeded share of the TRAIN photos out (models.photos."
                        "holdout_split), to choose settings on them with restore_quick.py --photos holdout:FRACTION")
    g.add_argument("--bank-lr-scale", type=float, default=0.0,
                   help="> 0: the image loss also fine-tunes the bank's classifier at lr × this (0: frozen)")
    g.add_argument("--card", default=None, help="JSON file merged into the model card (e.g. benchmark results)")


def _checkpoint_step(ckpt_dir: str) -> int:
    url = storage.join(ckpt_dir, "state.json")
    return int(json.loads(storage.read_bytes(url))["step"]) if storage.exists(url) else 0


def _manifest_pairs(output: str) -> list[Pair]:
    """The ok pairs of a synth-pairs OUTPUT as keys and transforms only (no pixels)."""
    from chromabeam.pipelines.job import read_manifest

    table = read_manifest(output)
    if table is None:
        raise ValueError(f"{storage.redact(output)} has no manifest: pass a synth-pairs OUTPUT")
    empty = np.zeros((0, 0, 3), np.uint8)
    return [Pair(r["key"], r["pair_index"], empty, empty, r["transform"])
            for r in table.select(["key", "pair_index", "transform", "status"]).to_pylist() if r["status"] == "ok"]


def _with_bank(init: Restorer | None, cfg: TrainConfig, looks: PhotoLooks, args: argparse.Namespace, *,
               ckpt: str) -> tuple[Restorer, dict]:
    """``init`` (or a fresh ``cfg.model``) with a filter bank of the 40 filters: inverse
    LUTs fitted on ``args.filter_bank`` TRAIN photos spread over the catalogue (or the
    init's own, when it has a bank of the same filters), and the classifier(s) trained on
    ``args.bank_samples`` fresh looks. What was done goes to ``ckpt``/bank.json for the
    card. When resuming a checkpoint, only the shape is built (the checkpoint holds the
    rest) and the card's account is read back from bank.json."""
    filters = list(looks.config.filters)
    base = init if init is not None else Restorer(pretrained=cfg.pretrained, **_model_config(cfg))
    consistency = args.bank_consistency
    config = {k: v for k, v in base.config.items()
              if k not in ("model", "bank", "bank_consistency", "bank_other", "bank_heads", "bank_shading",
                           "bank_grids", "bank_casts", "bank_verify", "bank_quantiles")}
    keep_tables = init is not None and init.bank_size == len(filters) and not consistency
    # the init's bank grids go with its tables: kept together or not at all
    grids = keep_tables and init.bank_grids
    model = Restorer(**config, bank=len(filters), bank_consistency=consistency, bank_other=args.bank_other,
                     bank_heads=args.bank_heads, bank_shading=args.bank_shading, bank_grids=grids,
                     bank_quantiles=args.bank_quantiles, pretrained=False)
    # an init with a bank of its own gives everything but the bank, which is rebuilt here
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in base.state_dict().items() if not k.startswith("bank")}, strict=False)
    if unexpected or any(not k.startswith("bank") for k in missing):
        raise ValueError(f"--filter-bank: cannot extend this model (missing {missing}, unexpected {unexpected})")
    model.chunk_pixels = base.chunk_pixels
    chosen = spread(args.filter_bank, len(looks))
    # heads trained on the old classifier's standardisation do not fit the new one: say so
    dropped = [name for name, flag in (("cast head", "bank_casts"), ("verifier", "bank_verify"))
               if init is not None and getattr(init, flag, 0)]
    if dropped:
        log.warning("--filter-bank: the --init's %s %s not carried over (rebuilt bank); add again with "
                    "models.bank_casts / models.bank_verify", " and ".join(dropped), "is" if len(dropped) == 1 else "are")
    info = {"filters": filters, "fit_photos": [looks.names[i] for i in chosen], "fit_side": 256,
            "classifier": {"samples": args.bank_samples, "epochs": args.bank_epochs, "crop": cfg.crop,
                           "consistency_features": consistency, "other_class": args.bank_other,
                           "heads": args.bank_heads, "shading_features": args.bank_shading,
                           **({"quantiles": args.bank_quantiles} if args.bank_quantiles else {})},
            **({"dropped_from_init": dropped} if dropped else {})}
    record = storage.join(ckpt, "bank.json")
    if _checkpoint_step(ckpt) > 0:
        if storage.exists(record):
            return model, json.loads(storage.read_bytes(record))
        return model, {**info, "note": "resumed from a checkpoint without bank.json: what the bank was built from "
                                       "is in the first run's card"}
    if keep_tables:
        # the same fit on the same photos: the init's tables (and grids), not ~6 min of refitting
        model.set_bank(init.bank_luts + init._lut_identity,
                       grids=init.bank_grid_deltas + init._grid_identity if grids else None)
        del info["fit_photos"], info["fit_side"]
        info["tables"] = ("kept from the --init weights" + (", with their bank grids" if grids else "")
                          + " (their card's filter_bank says where they were fitted)")
    else:
        fitted = inverse_filter_tables([looks.images[i] for i in chosen], filters, model.lut_size,
                                       log_fn=log.info, forward=consistency)
        tables, forward = fitted if consistency else (fitted, None)
        model.set_bank(tables, forward)
    t = time.time()
    feats, labels, strengths = bank_dataset(model, looks, filters, args.bank_samples, cfg.crop,
                                            np.random.default_rng(cfg.seed + 1))
    log.info("bank: %d labelled looks in %.0f s", len(labels), time.time() - t)
    info["classifier"].update(train_bank(model, feats, labels, strengths, epochs=args.bank_epochs, seed=cfg.seed,
                                         log_fn=log.info))
    storage.makedirs(ckpt)
    storage.put_atomic(record, (json.dumps(info, indent=1) + "\n").encode())
    return model, info


def train_command(args: argparse.Namespace) -> int:
    """Run ``chromabeam train restorer``; prints the saved weights' URL; returns 0.
    Rerun with a checkpoint at ``--steps`` (or beyond), it only (re)writes the weights and
    card — e.g. with ``--card`` benchmark results — without decoding the pairs."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        steps=args.steps, batch=args.batch, crop=args.crop, lr=args.lr, freeze=args.freeze,
        seed=args.seed, device=args.device, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, max_side=args.max_side, loss_size=args.loss_size,
        bank_lr_scale=args.bank_lr_scale,
        model={**TrainConfig().model, **args.model_config, "hist_bins": args.hist_bins},
    )
    ckpt = args.checkpoint_dir or storage.join(args.weights_out, "checkpoint")
    if args.pairs.startswith(PHOTOS_PREFIX):
        pairs = PhotoLooks.from_photos(args.pairs[len(PHOTOS_PREFIX):] or DEFAULT_PHOTO_CACHE, max_side=cfg.max_side,
                                       holdout=args.holdout_photos,
                                       identity_prob=args.identity_prob, perturb_prob=args.perturb_prob,
                                       cast_prob=args.cast_prob, jpeg_prob=args.jpeg_prob)
        sources = pairs.sources()
        pair_info = {"url": storage.redact(args.pairs), "made_on_the_fly": True,
                     "synth_config": dataclasses.asdict(pairs.config), "mosaic_prob": pairs.mosaic_prob,
                     "perturb_prob": pairs.perturb_prob, "cast_prob": pairs.cast_prob,
                     **({"jpeg_prob": pairs.jpeg_prob} if pairs.jpeg_prob else {})}
    else:
        if args.holdout_photos:
            raise ValueError("--holdout-photos needs PAIRS = photos:CACHE (it holds out catalogue photos)")
        if _checkpoint_step(ckpt) >= cfg.steps:
            pairs = _manifest_pairs(args.pairs)  # nothing left to train: the card needs keys only
        else:
            pairs = load_pairs(args.pairs, max_side=cfg.max_side)
        sources = training_sources(pairs)
        pair_info = {"url": storage.redact(args.pairs), "count": len(pairs), "families": _family_counts(pairs)}
    init = None
    if args.init:
        from chromabeam.models.registry import build_model

        init = build_model(args.init, "cpu")
        if init.weights_config.get("model") != "restorer":
            raise ValueError(f"--init {storage.redact(args.init)} holds a {init.weights_config.get('model')!r} model")
    bank_info = None
    if args.filter_bank:
        if not isinstance(pairs, PhotoLooks):
            raise ValueError("--filter-bank needs PAIRS = photos:CACHE (it fits on the TRAIN photos)")
        init, bank_info = _with_bank(init, cfg, pairs, args, ckpt=ckpt)
    model, state = train(pairs, cfg, ckpt, init=init)
    calibration = None
    if args.bank_temperature != 1.0 or args.bank_none_shift:
        model.calibrate_bank(args.bank_temperature, args.bank_none_shift)
        calibration = {"temperature": args.bank_temperature, "none_shift": args.bank_none_shift}
    extra = json.loads(storage.read_bytes(args.card)) if args.card else {}
    card = {
        "task": "blind Instagram-filter / colour-grade removal",
        "steps": state["step"],
        "training_data": sources,
        "training_pairs": pair_info,
        "initialised_from": storage.redact(args.init) if args.init else None,
        "filter_bank": bank_info,
        **({"bank_calibration": calibration} if calibration else {}),
        **({"held_out_photos": args.holdout_photos} if args.holdout_photos else {}),
        "training": {**state["config"], "seconds": round(state["seconds"], 1),
                     "final_losses": state["history"][-1] if state["history"] else None},
        "loss_history": state["history"],
        **extra,
    }
    from chromabeam.models.registry import save_weights

    url = save_weights(model.cpu(), model.config, args.weights_out, card)
    print(url)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chromabeam train restorer")
    parser.add_argument("pairs")
    parser.add_argument("weights_out")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    # ``chromabeam train`` has pipelines.cli set logging up; run as a module, do it here
    # (setLevel too: importing Beam may already have configured the root logger)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger().setLevel(logging.INFO)
    return train_command(args)


if __name__ == "__main__":
    sys.exit(main())
