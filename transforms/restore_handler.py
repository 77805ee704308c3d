"""Beam ``ModelHandler`` for the filter-removal Restorer (``chromabeam restore``).

Examples are ``RestoreInput``s (decoded uint8 pixels + key); predictions are
``PredictionResult``s whose ``inference`` is the restored uint8 ``(H, W, 3)`` array at the
image's own resolution, in the batch's order.

Batching: the Restorer's encoder always sees a fixed ``view_size``² view, so the views of
a whole batch go through the encoder as one tensor whatever the images' sizes, and only
the per-pixel apply runs image by image — no size buckets are needed; each image's float
copy is freed as soon as it is mapped. Which is faster on CPU, a batch of views or one
image per call, is measured by benchmarks/restore_speed.py (docs/restorer.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from chromabeam.transforms.devices import resolve_device
from chromabeam.transforms.ops.imageio import to_uint8
from chromabeam.transforms.ops.lut_kernel import residual_lut_uint8
from chromabeam.transforms.ops.pixels8 import reduce_uint8, resize_uint8

__all__ = ["RestoreInput", "RestoreModelHandler", "fast_views", "low_copy", "recognition", "reduced_copy",
           "restore_pixels", "restore_pixels_fast"]


@dataclasses.dataclass
class RestoreInput:
    """One image to restore: ``pixels`` uint8 ``(H, W, 3)``; ``reference`` (same shape)
    when metrics are wanted; the URIs are carried through to the manifest row."""

    key: str
    source_uri: str
    pixels: np.ndarray
    reference_uri: str | None = None
    reference: np.ndarray | None = None


LOW_SIDE = 128  # the fast path's exact low-resolution pass (long side)
# the fast path resizes from a block-averaged copy whose short side is at least this many
# times the size it resizes to (``reduced_copy``; Pillow's thumbnail uses the same gap)
REDUCE_GAP = 2


def recognition(model: torch.nn.Module, record: dict, count: int) -> list[dict | None]:
    """What the bank recognised in each image (``Restorer.heads``' ``record``), for the
    manifest's ``params``: ``filter`` (the most probable filter, or null where P(no bank
    filter) is larger), ``top_filter``, ``p_filter`` and ``strength`` (the most probable
    filter, its probability and predicted strength), ``p_none``, and with a cast head the cast inverse's
    ``cast_weight`` and ``cast_gains`` (×, per channel). ``None`` for each of the
    ``count`` images of a model without a bank."""
    if "bank_probs" not in record:
        return [None] * count
    names = getattr(model, "_bank_filter_names", None)
    if names is None:
        from chromabeam.models.train_restorer import bank_filter_names

        names = model._bank_filter_names = bank_filter_names(model)
    probs, strength = record["bank_probs"].float().cpu(), record["bank_strength"].float().cpu()
    top = probs.argmax(dim=1)
    out = []
    for i, t in enumerate(top.tolist()):
        p_top, p_none = float(probs[i, t]), max(0.0, 1.0 - float(probs[i].sum()))
        entry = {"filter": names[t] if p_top > p_none else None, "top_filter": names[t], "p_filter": round(p_top, 4),
                 "strength": round(float(strength[i, t]), 4), "p_none": round(p_none, 4)}
        if "cast_weight" in record:
            entry["cast_weight"] = round(float(record["cast_weight"][i]), 4)
            entry["cast_gains"] = [round(float(g), 4) for g in record["cast_log_gains"][i].float().exp().cpu()]
        out.append(entry)
    return out


def restore_pixels(model: torch.nn.Module, images: Sequence[np.ndarray], device: torch.device,
                   *, exact: bool | None = None, recognised: list | None = None) -> list[np.ndarray]:
    """Restore uint8 ``(H, W, 3)`` images of any (mixed) sizes with one encoder call for
    all their views; each image is mapped at its own resolution. Returns uint8 arrays;
    a ``recognised`` list gets each image's ``recognition`` appended.

    ``exact`` (default: exact on CUDA, fast on CPU): the fast path (``restore_pixels_fast``)
    runs the global LUT in Pillow's C code on the uint8 pixels and adds the local grid's
    correction as a smooth residual computed exactly at ``LOW_SIDE`` px."""
    if not images:
        return []
    for im in images:
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"restore_pixels: expected uint8 (H, W, 3) arrays, got {getattr(im, 'shape', type(im))}")
    if exact is None:
        exact = device.type != "cpu"
    if not exact:
        return restore_pixels_fast(model, images, device, recognised=recognised)
    out, record = [], {} if recognised is not None else None
    with torch.inference_mode():
        xs = [_float(im, device) for im in images]
        views = torch.cat([model.view(x) for x in xs])
        luts, grids = model.heads(views, *model.encode(views), record=record, crop_views=_crop_views(model, xs))
        if recognised is not None:
            recognised.extend(recognition(model, record, len(images)))
        for i, x in enumerate(xs):
            y = model.apply(x, luts[i:i + 1], grids[i:i + 1])
            del x
            out.append(to_uint8(y[0]))
            xs[i] = None
    return out


def _crop_views(model: torch.nn.Module, xs: list[torch.Tensor]) -> torch.Tensor | None:
    """The bank classifiers' extra views of each image (``Restorer.bank_crop_views``),
    stacked; None for a model without ``bank_crops``."""
    crops = [model.bank_crop_views(x) for x in xs]
    return None if crops[0] is None else torch.cat(crops)


def _float(im: np.ndarray, device: torch.device) -> torch.Tensor:
    # uint8 crosses to the device (a quarter of float32's bytes); to_float's copy rule
    a = im if im.flags.writeable and im.flags.c_contiguous else np.array(im)
    return torch.from_numpy(a).to(device).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def reduced_copy(im: np.ndarray, side: int) -> np.ndarray:
    """uint8 ``(H, W, 3)`` block-averaged by the largest integer factor that keeps its short
    side at least ``REDUCE_GAP · side`` (the image itself when none does): what the fast
    path resizes its views, crops and low-resolution copy from — one pass over the
    full-size pixels instead of one per resize, and the same reading (docs/restorer.md
    "Speed" measures both). Reducing a reduced copy again changes nothing."""
    return reduce_uint8(im, max(1, min(im.shape[:2]) // (REDUCE_GAP * side)))


def fast_views(model: torch.nn.Module, im: np.ndarray) -> list[np.ndarray]:
    """What the fast path shows the model of one uint8 image: its view, then with
    ``bank_crops`` the four corner crops (``Restorer.bank_crop_boxes``), each resized by
    Pillow from the image's ``reduced_copy`` — one resample of the whole image, as the
    exact path's ``Restorer.view`` makes them from the full-size pixels, so both paths
    recognise the same look."""
    s = model.view_size
    im = reduced_copy(im, s)
    boxes = model.bank_crop_boxes(*im.shape[:2]) if model.bank_crops else []
    return [resize_uint8(im, (s, s))] + [resize_uint8(im[t:t + ch, l:l + cw], (s, s)) for t, l, ch, cw in boxes]


def low_copy(reduced: np.ndarray, shape: tuple[int, int], low_side: int = LOW_SIDE) -> np.ndarray:
    """The fast path's low-resolution copy of an image of ``shape`` (H, W): its
    ``reduced_copy`` resized to ``low_side`` px long side (the image as it is when no
    larger)."""
    h, w = shape
    scale = low_side / max(h, w)
    if scale >= 1.0:
        return reduced
    return resize_uint8(reduced, (max(1, round(w * scale)), max(1, round(h * scale))))


def restore_pixels_fast(model: torch.nn.Module, images: Sequence[np.ndarray], device: torch.device,
                        low_side: int = LOW_SIDE, *, recognised: list | None = None) -> list[np.ndarray]:
    """The 8-bit CPU path of ``restore_pixels``: the views of ``fast_views`` and the
    ``low_side`` copy, both resized from the image's ``reduced_copy``; per image
    ``LUT(x + up(A(x_low) − x_low))`` — the grid's local affine ``A`` computed exactly at
    ``low_side`` px and its correction upsampled (vignettes and gradients vary slowly),
    then the residual's bilinear upsample and the LUT in one compiled pass over the
    full-size uint8 pixels (``lut_kernel.residual_lut_uint8``). Images no larger
    than ``low_side`` are mapped exactly. docs/restorer.md measures speed and the
    difference to the exact path."""
    smalls, seen = [], []
    for im in images:
        reduced = reduced_copy(im, max(model.view_size, low_side))
        smalls.append(low_copy(reduced, im.shape[:2], low_side))
        seen.append(fast_views(model, reduced))
    out, record = [], {} if recognised is not None else None
    with torch.inference_mode():
        seen = torch.stack([torch.cat([_float(v, device) for v in views]) for views in seen])
        views, crops = seen[:, 0], (seen[:, 1:] if seen.shape[1] > 1 else None)  # (B, 3, s, s), (B, 4, 3, s, s)
        luts, grids = model.heads(views, *model.encode(views), record=record, crop_views=crops)
        if recognised is not None:
            recognised.extend(recognition(model, record, len(images)))
        for i, (im, small) in enumerate(zip(images, smalls)):
            lut, grid = luts[i:i + 1], grids[i:i + 1]
            h, w = im.shape[:2]
            if max(h, w) <= low_side:
                out.append(to_uint8(model.apply(_float(im, device), lut, grid)[0]))
                continue
            table = lut[0].permute(1, 2, 3, 0).cpu().numpy()  # (3, b, g, r) → (b, g, r, 3)
            xs = _float(small, device)
            local = (model.apply_local(xs, grid) - xs)[0].permute(1, 2, 0).cpu().numpy()
            out.append(residual_lut_uint8(im, table, local if np.abs(local).max() >= 0.5 / 255 else None))
    return out


class RestoreModelHandler(ModelHandler[RestoreInput, PredictionResult, torch.nn.Module]):
    """Loads the Restorer from the weight registry once per worker (sha256-checked) on
    an explicit device; ``run_inference`` → ``PredictionResult(example, (restored uint8
    (H, W, 3), recognition dict or None))`` per input, in order."""

    def __init__(
        self,
        *,
        weights_url: str,
        expected_sha256: str | None = None,
        device: str = "auto",
        max_batch_size: int = 1,
        exact: bool | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"RestoreModelHandler: max_batch_size must be >= 1, got {max_batch_size}")
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self._weights_url = weights_url
        self._expected_sha256 = expected_sha256
        self._device = device
        self.max_batch_size = max_batch_size
        self._exact = exact  # None: exact on CUDA, the 8-bit fast path on CPU

    def load_model(self) -> torch.nn.Module:
        from chromabeam.models.registry import build_model

        device = resolve_device(self._device)  # CUDA asked for but absent: DeviceError
        model = build_model(self._weights_url, device, expected_sha256=self._expected_sha256)
        if model.weights_config.get("model") != "restorer":
            raise ValueError(f"{self._weights_url} holds a {model.weights_config.get('model')!r} model, not a restorer")
        return model

    def run_inference(
        self, batch: Sequence[RestoreInput], model: torch.nn.Module, inference_args: Optional[dict[str, Any]] = None
    ) -> Iterable[PredictionResult]:
        device = next(model.parameters()).device
        recognised: list = []
        restored = restore_pixels(model, [e.pixels for e in batch], device, exact=self._exact, recognised=recognised)
        name = getattr(model, "weights_card", {}).get("name")
        return [PredictionResult(e, (r, info), name) for e, r, info in zip(batch, restored, recognised)]

    def get_num_bytes(self, batch: Sequence[RestoreInput]) -> int:
        # The default pickles the whole batch just to count it.
        return sum(int(e.pixels.nbytes) for e in batch)

    def get_metrics_namespace(self) -> str:
        return "chromabeam_restore"

