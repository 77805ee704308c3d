"""RunInference model handlers for DNCM stylization (Neural Preset's two stages).

- ``StyleHandler``: a batch of ``StyleSource`` (an encoded reference image, or a saved
  preset's r) → one ``StyleEntry`` per style: r and the folded stylization map
  ``M_s = P_s·r·Q_s`` (all a content image needs to take this style). Reference images go
  through the encoder once, batched; presets skip it.
- ``ContentHandler``: a batch of ``DecodedImage`` → per image, one encoder pass for the
  whole batch, then either (``output="curves"``, the default) the folded normalisation map
  ``M_n = P_n·d·Q_n`` — a few hundred floats — or (``output="z"``, the exact path) the
  colour-normalised content ``Z = nDNCM(x, d)`` at full resolution.

For a fixed (content, style) pair the whole nDNCM∘sDNCM map is a colour function, so
``dncm_lut_table(M_n, M_s)`` samples it on a lattice and ``apply_dncm_lut`` applies it to
the decoded 8-bit pixels with Pillow's C ``Color3DLUT`` (no float image at all).

Both load the weights once per worker through the registry (sha256-checked), on the
device ``resolve_device`` gives (CUDA asked for where none exists is a DeviceError), and
count every image the encoder actually sees (a hook on the encoder) in the Beam counters
``dncm_encoder_styles`` / ``dncm_encoder_contents``.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.resources
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam
import numpy as np
import torch
import torch.nn.functional as F
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from chromabeam.schemas.records import DecodedImage
from chromabeam.transforms import storage
from chromabeam.transforms.devices import resolve_device
from chromabeam.transforms.ops.imageio import decode_image, to_float
from chromabeam.transforms.ops.style import fold_curves

__all__ = [
    "StyleSource", "StyleEntry", "StyleHandler", "ContentHandler", "default_weights", "weights_sha256",
    "encoder_view", "PRESET_FORMAT", "apply_folded", "dncm_lut_table", "apply_dncm_lut", "LUT_SIZE",
]

PRESET_FORMAT = "chromabeam-dncm-preset"
_VIEW_PREREDUCE = 2  # Pillow box-reduces big images to >= 2x the encoder view before the resize
LUT_SIZE = 65  # lattice of the folded content∘style LUT (Pillow's maximum; docs/stylize.md has the error)
CONTENT_OUTPUTS = ("curves", "z")


def apply_folded(x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """A folded DNCM map on ``x`` ``(B, 3, H, W)``: ``M`` ``(3K, 3)`` curves or ``(3, 3)``
    linear (the paper's) → ``(B, 3, H, W)``, not clamped."""
    from chromabeam.transforms.ops.dncm import apply_color_matrix
    from chromabeam.transforms.ops.style import apply_curves

    M = torch.as_tensor(M, dtype=x.dtype, device=x.device)
    return apply_color_matrix(x, M) if M.shape[0] == 3 else apply_curves(x, M)


def dncm_lut_table(M_n, M_s, size: int = LUT_SIZE) -> np.ndarray:
    """The colour function ``x ↦ sDNCM(nDNCM(x))`` of folded maps ``M_n`` (content) and
    ``M_s`` (style), sampled on the ``size``³ lattice and clamped to [0, 1] → float32
    ``(size, size, size, 3)`` indexed ``[b, g, r]`` (``transforms.ops.pixels8.lut_uint8``'s
    layout). Computed in float64, so the only error left is the lattice interpolation."""
    from chromabeam.transforms.ops.lut import hald_lattice

    lattice = hald_lattice(size).double()  # (1, 3, S·S, S): rows b·S + g, columns r
    Mn, Ms = (torch.as_tensor(np.asarray(M), dtype=torch.float64) for M in (M_n, M_s))
    y = apply_folded(apply_folded(lattice, Mn), Ms).clamp(0, 1)
    return y[0].permute(1, 2, 0).reshape(size, size, size, 3).float().numpy()


def apply_dncm_lut(pixels: np.ndarray, M_n, M_s, size: int = LUT_SIZE) -> np.ndarray:
    """uint8 ``(H, W, 3)`` content stylised through the folded LUT → uint8 ``(H, W, 3)``."""
    from chromabeam.transforms.ops.pixels8 import lut_uint8

    return lut_uint8(pixels, dncm_lut_table(M_n, M_s, size))


def default_weights() -> str:
    """The shipped DNCM weights (``chromabeam/data/weights/dncm-*.safetensors``)."""
    folder = str(importlib.resources.files("chromabeam") / "data" / "weights")
    found = sorted(glob.glob(os.path.join(folder, "dncm-*.safetensors")))
    if not found:
        raise FileNotFoundError(f"no shipped DNCM weights in {folder}; pass --weights")
    return found[-1]


def weights_sha256(url: str) -> str | None:
    """The full sha256 named by the weights' ``.json`` sidecar card, if there is one."""
    side = url[: -len(".safetensors")] + ".json" if url.endswith(".safetensors") else None
    if side and storage.exists(side):
        return json.loads(storage.read_bytes(side)).get("sha256")
    return None


@dataclasses.dataclass(frozen=True)
class StyleSource:
    """A style to compute once: ``data`` (encoded reference image bytes), ``r`` (a DNCM
    preset's k×k matrix as nested lists, with the sha256 of the weights that made it) or
    ``lut`` (a ``.cube`` look: ``(S, S, S, 3)`` float32, ``[b, g, r]``)."""

    key: str
    uri: str
    data: bytes | None = None
    r: tuple | None = None
    weights_sha256: str | None = None
    lut: Any = dataclasses.field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return "image" if self.data is not None else ("cube" if self.lut is not None else "preset")


@dataclasses.dataclass(frozen=True)
class StyleEntry:
    """A computed style: DNCM's ``r`` (k, k) and folded stylization map ``M`` (3K, 3), or
    (``--method look``) the look ``lut`` ``(S, S, S, 3)`` — the others are None."""

    key: str
    uri: str
    kind: str
    r: np.ndarray | None
    M: np.ndarray | None
    lut: np.ndarray | None = None


def encoder_view(pixels: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) → float (3, size, size): Pillow box-reduces large images by an
    integer factor (keeping >= 2·size pixels a side; cheap on 4K/8K), then torch's
    antialiased bilinear resize, as in ``DNCM.encoder_view``."""
    h, w = pixels.shape[:2]
    factor = min(h, w) // (_VIEW_PREREDUCE * size)
    if factor >= 2:
        pixels = np.asarray(Image.fromarray(pixels).reduce(factor))
    x = to_float(pixels).unsqueeze(0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0]


class _DNCMHandler(ModelHandler):
    """Shared loading, batching and counting; keyword-only, picklable config."""

    _counter_name = ""

    def __init__(self, *, weights: str, expected_sha256: str | None = None, device: str = "auto",
                 batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._weights = weights
        self._sha = expected_sha256
        self._device = device
        self._batch_size = int(batch_size)
        super().__init__()

    def load_model(self):
        from chromabeam.models.registry import build_model

        device = resolve_device(self._device)  # DeviceError before anything is read
        model = build_model(self._weights, device, self._sha)
        model.encoded_images = 0

        def count(module, args):
            model.encoded_images += int(args[0].shape[0])

        # the stem convolution (the stats module) runs exactly once per image the encoder sees
        model.encoder_entry.register_forward_pre_hook(count)
        model.folded_normalize = lambda d: (fold_curves(model.P_n, d, model.Q_n)[0] if model.knots
                                            else model.P_n @ d @ model.Q_n)
        return model

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "chromabeam"

    def _encode(self, model, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = next(model.parameters()).device
        before = model.encoded_images
        d, r = model.encode(torch.stack(views).to(dev))
        beam.metrics.Metrics.counter("chromabeam", self._counter_name).inc(model.encoded_images - before)
        return d, r


class StyleHandler(_DNCMHandler):
    """``StyleSource`` batch → ``StyleEntry`` per style (see the module docstring)."""

    _counter_name = "dncm_encoder_styles"

    def run_inference(self, batch: Sequence[StyleSource], model, inference_args=None) -> Iterable[PredictionResult]:
        dev = next(model.parameters()).device
        images = [s for s in batch if s.data is not None]
        r_of: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            if images:
                views = [encoder_view(decode_image(s.data), model.encoder_size) for s in images]
                _, r = self._encode(model, views)
                r_of.update({id(s): r[i] for i, s in enumerate(images)})
            out = []
            for s in batch:
                if s.data is None:
                    check_preset_weights(s, model.weights_sha256)
                    r_s = torch.tensor(s.r, dtype=torch.float32, device=dev)
                    if r_s.shape != (model.k, model.k):
                        raise ValueError(f"style {s.key!r}: preset r is {tuple(r_s.shape)}, the model needs k={model.k}")
                else:
                    r_s = r_of[id(s)]
                M = fold_curves(model.P_s, r_s, model.Q_s)[0] if model.knots else \
                    (model.P_s @ r_s @ model.Q_s)
                entry = StyleEntry(s.key, s.uri, s.kind, r_s.float().cpu().numpy(), M.float().cpu().numpy())
                out.append(PredictionResult(s, entry, model_id=model.weights_sha256))
        return out


class ContentHandler(_DNCMHandler):
    """``DecodedImage`` batch → per image ``M_n`` float32 numpy ``(3K, 3)`` (or ``(3, 3)``
    for the linear model; ``output="curves"``) or ``Z`` (3, H, W) float32 (``output="z"``)."""

    _counter_name = "dncm_encoder_contents"

    def __init__(self, *, output: str = "curves", **kw):
        if output not in CONTENT_OUTPUTS:
            raise ValueError(f"ContentHandler: output must be one of {CONTENT_OUTPUTS}, got {output!r}")
        self._output = output
        super().__init__(**kw)

    def run_inference(self, batch: Sequence[DecodedImage], model, inference_args=None) -> Iterable[PredictionResult]:
        dev = next(model.parameters()).device
        with torch.inference_mode():
            d, _ = self._encode(model, [encoder_view(im.pixels, model.encoder_size) for im in batch])
            out = []
            for i, im in enumerate(batch):
                if self._output == "curves":
                    inference = model.folded_normalize(d[i]).float().cpu().numpy()
                else:
                    inference = model.normalize(to_float(im.pixels).unsqueeze(0).to(dev), d[i:i + 1])[0]
                out.append(PredictionResult(im, inference, model_id=model.weights_sha256))
        return out


def check_preset_weights(source: StyleSource, sha256: str) -> None:
    """A preset's r only means something with the weights that made it."""
    if source.weights_sha256 and source.weights_sha256 != sha256:
        raise ValueError(
            f"preset {source.key!r} ({storage.redact(source.uri)}) was made with DNCM weights "
            f"{source.weights_sha256[:12]}…, these are {sha256[:12]}…; re-create it with "
            "`chromabeam preset create REF OUT.json --weights URL`")


def read_preset(url: str) -> dict:
    """Load and validate a preset JSON (see ``pipelines.preset``)."""
    try:
        doc = json.loads(storage.read_bytes(url))
    except ValueError as exc:
        raise ValueError(f"{storage.redact(url)} is not a preset (not JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != PRESET_FORMAT:
        raise ValueError(f"{storage.redact(url)} is not a chromabeam DNCM preset (format != {PRESET_FORMAT!r})")
    r = np.asarray(doc.get("r"), dtype=np.float64)
    k = doc.get("k")
    if r.ndim != 2 or r.shape != (k, k) or not np.isfinite(r).all():
        raise ValueError(f"{storage.redact(url)}: preset r must be a finite {k}x{k} matrix")
    return doc


def read_look(url: str) -> np.ndarray:
    """A ``.cube`` look → float32 ``(S, S, S, 3)`` (``[b, g, r]``, unit domain, S ≤ 65)."""
    from chromabeam.transforms.ops.lut import parse_cube
    from chromabeam.transforms.ops.pixels8 import MAX_LUT

    try:
        lut = parse_cube(storage.read_bytes(url).decode("utf-8"), storage.redact(url))
    except UnicodeDecodeError:
        raise ValueError(f"{storage.redact(url)} is not a .cube file (not UTF-8 text)") from None
    table = np.asarray(lut.table, dtype=np.float32)
    if table.shape[0] > MAX_LUT:
        raise ValueError(f"{storage.redact(url)}: a {table.shape[0]}³ LUT; looks are applied by Pillow, "
                         f"which takes at most {MAX_LUT}³")
    if np.any(np.asarray(lut.domain_min) != 0) or np.any(np.asarray(lut.domain_max) != 1):
        raise ValueError(f"{storage.redact(url)}: only LUTs on the unit domain (DOMAIN_MIN 0, DOMAIN_MAX 1) are looks")
    return table


def style_source(ref: str, method: str = "dncm") -> StyleSource:
    """A ``--style`` reference → StyleSource: an image URL, a preset (``.json`` for
    ``dncm``, ``.cube`` look for ``look``), or the name of a shipped preset (``warm``,
    ``teal-orange``, …; the file for ``method``). Keys are file stems."""
    from chromabeam.pipelines.preset import shipped_preset

    url = ref
    if not storage.exists(ref):
        shipped = shipped_preset(ref, method)
        if shipped is None:
            raise ValueError(f"style {ref!r}: no such file, and not a shipped preset name")
        url = shipped
    key = storage.basename(url).rsplit(".", 1)[0]
    if url.lower().endswith(".cube"):
        if method != "look":
            raise ValueError(f"style {storage.redact(url)}: a .cube look needs --method look")
        return StyleSource(key, url, lut=read_look(url))
    if url.lower().endswith(".json") and method == "look":
        raise ValueError(f"style {storage.redact(url)}: a DNCM preset (.json) needs --method dncm "
                         "(looks are .cube files: `chromabeam preset create REF OUT.cube`)")
    if url.lower().endswith(".json"):
        doc = read_preset(url)
        r = tuple(tuple(float(v) for v in row) for row in doc["r"])
        return StyleSource(doc.get("name") or key, url, r=r, weights_sha256=doc.get("weights_sha256"))
    data = storage.read_bytes(url)
    decode_image(data)  # fail before the job starts, with the decoder's reason
    return StyleSource(key, url, data=data)
