"""Look transfer (``chromabeam stylize --method look``, the default): a style is the colour
map that the look of the reference image *did* to it, estimated with the blind restorer.

    reference S ─ restorer ─ Ŷ ≈ S without its look ─ fit LUT: Ŷ ↦ S ─ look L (S³ table)
    content X ─ L(X) in Pillow's C 3D LUT (8-bit, no model per image)

The same two stages as Neural Preset — normalise, then re-style — with the normaliser
being the trained filter remover (``models/restorer.py``) and the style map *fitted* on
the reference's own pixels (``transforms.ops.lut.fit_lut_from_pairs``) instead of
predicted from it by an encoder. Measured on the stylize quality check
(docs/stylize.md) this transfers a grade from one photograph to another better than the
DNCM's predicted r, because the fit reproduces the reference's look exactly where the
reference has colours, and the restorer — trained on hundreds of thousands of looks — is
a better normaliser than the DNCM's own. Content images need no model at all: each
(image, style) output is one LUT application on the decoded 8-bit pixels.

A ``.cube`` file given as a style is used as the look directly.

``LookHandler`` is the Beam ModelHandler of the style stage: ``StyleSource`` batch →
``StyleEntry`` with ``lut`` (``(S, S, S, 3)`` float32, ``[b, g, r]``); it loads the
restorer once per worker (sha256-checked) on the ``--device`` asked for, and counts the
references it restores in the Beam counter ``look_references``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from chromabeam.transforms.devices import resolve_device
from chromabeam.transforms.ops.imageio import decode_image, to_float
from chromabeam.transforms.ops.lut import fit_lut_from_pairs
from chromabeam.transforms.ops.pixels8 import resize_uint8

__all__ = ["LOOK_LUT_SIZE", "REFERENCE_SIDE", "fit_look", "LookHandler"]

LOOK_LUT_SIZE = 17  # lattice of a fitted look (docs/stylize.md: 17 vs 33 measured)
REFERENCE_SIDE = 512  # the reference is restored and fitted at this long side at most


def fit_look(model: torch.nn.Module, reference: np.ndarray, *, size: int = LOOK_LUT_SIZE,
             side: int = REFERENCE_SIDE) -> np.ndarray:
    """The look of ``reference`` (uint8 ``(H, W, 3)``) as a LUT: the restorer's estimate of
    the reference without its look, and the colour map fitted from it to the reference.
    Returns float32 ``(size, size, size, 3)`` indexed ``[b, g, r]`` (``.cube`` order; what
    ``pixels8.lut_uint8`` applies), values in [0, 1]."""
    if not isinstance(reference, np.ndarray) or reference.dtype != np.uint8 or reference.ndim != 3 \
            or reference.shape[2] != 3:
        raise ValueError(f"fit_look: expected uint8 (H, W, 3) pixels, got {getattr(reference, 'shape', type(reference))}")
    h, w = reference.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        reference = resize_uint8(reference, (max(1, round(w * scale)), max(1, round(h * scale))))
    device = next(model.parameters()).device
    x = to_float(reference).unsqueeze(0).to(device)
    with torch.inference_mode():
        neutral = model.eval()(x).clamp(0, 1)
    table = fit_lut_from_pairs([(neutral.cpu(), x.cpu())], size)  # (3, S, S, S) [c, b, g, r]
    return table.permute(1, 2, 3, 0).clamp(0, 1).contiguous().numpy()


class LookHandler(ModelHandler):
    """``StyleSource`` batch → ``StyleEntry`` (``lut`` set) per style: reference images
    through the restorer and ``fit_look``; ``.cube`` looks as they are."""

    def __init__(self, *, weights: str, expected_sha256: str | None = None, device: str = "auto",
                 batch_size: int = 8, lut_size: int = LOOK_LUT_SIZE):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._weights, self._sha, self._device = weights, expected_sha256, device
        self._batch_size, self._lut_size = int(batch_size), int(lut_size)
        super().__init__()

    def load_model(self):
        from chromabeam.models.registry import build_model

        device = resolve_device(self._device)  # DeviceError before anything is read
        return build_model(self._weights, device, self._sha)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "chromabeam"

    def run_inference(self, batch: Sequence, model, inference_args=None) -> Iterable[PredictionResult]:
        from chromabeam.transforms.stylize_handler import StyleEntry

        restored = beam.metrics.Metrics.counter("chromabeam", "look_references")
        out = []
        for s in batch:
            if s.lut is not None:
                table = np.asarray(s.lut, dtype=np.float32)
            elif s.data is not None:
                table = fit_look(model, decode_image(s.data), size=self._lut_size)
                restored.inc()
            else:
                raise ValueError(f"style {s.key!r} ({s.uri}) is a DNCM preset (.json): use --method dncm, "
                                 "or give a reference image or a .cube look")
            out.append(PredictionResult(s, StyleEntry(s.key, s.uri, s.kind, None, None, lut=table),
                                        model_id=model.weights_sha256))
        return out
