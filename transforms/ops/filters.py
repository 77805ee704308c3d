"""Instagram-style filters (pilgram2's CSSgram ports) as fast batched torch ops.

pilgram2 (pip ``pilgram2``, import ``pilgram2``) works on PIL images, one at a time, in
uint8 with many intermediate passes. Here every filter becomes:

* global filters (a pure per-pixel colour map — measured, see
  ``measure_position_independence``): the whole pilgram filter captured once per
  process as a 3D LUT by running it on a lattice image, then ``apply_lut``;
* spatial filters (vignettes, radial/linear gradients): the spatial front of the
  recipe (blend of the image with position-dependent layers) in torch, with the layers
  themselves rendered by pilgram's own gradient code once per image size (so masks are
  exact, including its square-image special case), followed by the filter's global
  tail (sepia/contrast/brightness/... and blends with constant colours) as a LUT
  captured from pilgram's css ops.

LUT size, by measurement (PSNR vs pilgram on three 96x128 photos, worst filter/photo):
size 33 → 42.5 dB, 52 → 43.1 dB, 65 → 42.6 dB, 86 → 43.1 dB; typical filters gain
~1.5 dB from 33 to 52. 52 is chosen because 255 = 51·5 puts every node on an 8-bit
code, so the table holds pilgram's exact outputs at the nodes (65 does not, and is
worse than 52); 86 costs 5x the capture and ~12% more apply time for < 1.5 dB. The
residual is pilgram's own 8-bit rounding between its steps, amplified by its contrast
and saturation boosts, which a float pipeline does not reproduce.
Measured position independence (``measure_position_independence``) splits the 40
pilgram filters into 25 global and the 15 in ``SPATIAL_FILTERS``; the test-suite
re-measures it. ``apply_filter_exact`` runs pilgram itself (CPU, PIL, per image) and
is the reference and fallback.
"""
from __future__ import annotations

import functools
import threading
from typing import Callable

import numpy as np
import torch
from PIL import Image

import pilgram2
from pilgram2 import css, util

from .lut import LUT3D, apply_lut, identity_table

__all__ = [
    "FILTER_NAMES",
    "IFFI_FILTERS",
    "SPATIAL_FILTERS",
    "FILTER_LUT_SIZE",
    "apply_filter",
    "apply_filter_exact",
    "filter_lut",
    "measure_position_independence",
]

IFFI_FILTERS: tuple[str, ...] = (
    "1977", "amaro", "brannan", "clarendon", "gingham", "hefe", "hudson", "lofi",
    "mayfair", "nashville", "perpetua", "sutro", "toaster", "valencia", "willow", "xpro2",
)

# canonical name -> pilgram2 function (pilgram spells 1977 as _1977)
_PILGRAM: dict[str, Callable[[Image.Image], Image.Image]] = {
    ("1977" if fn_name == "_1977" else fn_name): getattr(pilgram2, fn_name)
    for fn_name in pilgram2.__all__
}
FILTER_NAMES: tuple[str, ...] = tuple(sorted(_PILGRAM))
assert set(IFFI_FILTERS) <= set(FILTER_NAMES), "pilgram2 lacks an IFFI filter"

# 255 = 51 * 5: every node of a 52-lattice is an exact 8-bit code value.
FILTER_LUT_SIZE = 52


# --------------------------------------------------------------------------- PIL bridge
# PILGRAM FALLBACK / CAPTURE ONLY: these leave torch (numpy, PIL); never used per pixel
# in apply_filter's hot path except by apply_filter_exact.

def _to_pil(image: torch.Tensor) -> Image.Image:
    arr = (image.detach().to("cpu", torch.float32).clamp(0, 1) * 255.0).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy(), "RGB")


def _from_pil(im: Image.Image) -> torch.Tensor:
    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _lattice_pil(size: int) -> Image.Image:
    """Every node of an S-lattice once, as an (S*S) x S uint8 RGB image."""
    codes = np.rint(identity_table(size).reshape(size * size, size, 3) * 255.0).astype(np.uint8)
    return Image.fromarray(codes, "RGB")


def _capture(fn: Callable[[Image.Image], Image.Image], size: int, title: str) -> LUT3D:
    out = np.asarray(fn(_lattice_pil(size)).convert("RGB"), dtype=np.float32) / 255.0
    return LUT3D(out.reshape(size, size, size, 3), title=title)


def measure_position_independence(name: str, shape: tuple[int, int] = (48, 64), seed: int = 0) -> bool:
    """Run pilgram's filter on a random 8-bit image and on a pixel-shuffled copy:
    the filter is a pure colour map iff filtering commutes with the shuffle exactly."""
    fn = _pilgram(name)
    rng = np.random.default_rng(seed)
    h, w = shape
    img = rng.integers(0, 256, size=(h * w, 3), dtype=np.uint8)
    perm = rng.permutation(h * w)
    out = np.asarray(fn(Image.fromarray(img.reshape(h, w, 3), "RGB"))).reshape(-1, 3)
    out_perm = np.asarray(fn(Image.fromarray(img[perm].reshape(h, w, 3), "RGB"))).reshape(-1, 3)
    return bool(np.array_equal(out[perm], out_perm))


def _pilgram(name: str) -> Callable[[Image.Image], Image.Image]:
    try:
        return _PILGRAM[name]
    except KeyError:
        raise ValueError(f"unknown filter {name!r}; known: {', '.join(FILTER_NAMES)}") from None


# --------------------------------------------------------------------------- torch blends
# W3C compositing formulas on floats in [0, 1] (pilgram evaluates the same in uint8).

def _overlay(cb, cs):
    return torch.where(cb <= 0.5, 2.0 * cb * cs, 1.0 - 2.0 * (1.0 - cb) * (1.0 - cs))


def _screen(cb, cs):
    return cb + cs - cb * cs


def _soft_light(cb, cs):
    d = torch.where(cb <= 0.25, ((16.0 * cb - 12.0) * cb + 4.0) * cb, cb.clamp(min=0).sqrt())
    return torch.where(cs <= 0.5, cb - (1.0 - 2.0 * cs) * cb * (1.0 - cb), cb + (2.0 * cs - 1.0) * (d - cb))


def _color_burn(cb, cs):
    burn = 1.0 - torch.clamp((1.0 - cb) / cs.clamp(min=1e-6), max=1.0)
    return torch.where(cb >= 1.0, torch.ones_like(cb), torch.where(cs <= 0.0, torch.zeros_like(cb), burn))


def _mix(a, b, t):
    """a where t == 0, b where t == 1 (PIL's blend(a, b, t) / composite(b, a, t))."""
    return a + (b - a) * t


def _alpha(a: float) -> float:
    """pilgram's fill(): alpha = round(a * 255) / 255 (Python rounding)."""
    return int(round(a * 255)) / 255.0


def _rgb(*values, like):
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(3, 1, 1) / 255.0


# --------------------------------------------------------------------------- spatial layers

def _rgm(**kw):
    return lambda size: util.radial_gradient_mask(size, **kw)


def _rg(colors, positions=None):
    # pilgram's fill() mutates its colour lists: hand it fresh copies every time
    return lambda size: util.radial_gradient(size, [list(c) for c in colors], positions)


_LAYERS: dict[str, Callable[[tuple[int, int]], Image.Image]] = {
    "aden": lambda size: util.linear_gradient_mask(size, start=0.2),
    "brooklyn": _rgm(length=0.7),
    "earlybird": _rg([(208, 186, 142), (54, 3, 9), (29, 2, 16)], [0.2, 0.85, 1]),
    "hefe": _rg([[0, 0, 0, 0], [0, 0, 0, 0.25]]),
    "hudson": _rg([(166, 177, 255), (52, 33, 52)], [0.5, 1]),
    "lofi": _rgm(length=0.7, scale=1.5),
    "mayfair1": _rgm(scale=0.3, center=(0.4, 0.4)),
    "mayfair2": _rgm(length=0.3, scale=0.6, center=(0.4, 0.4)),
    "perpetua": lambda size: util.linear_gradient(size, [0, 91, 154], [230, 193, 61], False),
    "poprocket": _rg([[206, 39, 70, 0.65], [0, 0, 0, 0.0]], [0.4, 1.0]),
    "rise1": _rgm(length=0.55),
    "rise2": _rgm(scale=0.9),
    "sierra": _rg([[128, 78, 15, 0.5], [0, 0, 0, 0.65]]),
    "sutro": _rg([[0, 0, 0, 0], [0, 0, 0, 0.50]], [0.5, 0.9]),
    "toaster": _rg([(128, 78, 15), (59, 0, 59)]),
    "willow": _rg([(212, 169, 175), (0, 0, 0)], [0.55, 1.5]),
    "xpro2": _rgm(length=0.4, scale=1.1),
}


@functools.lru_cache(maxsize=32)
def _layer_cpu(key: str, height: int, width: int) -> torch.Tensor:
    # PILGRAM CAPTURE: rendered once per (layer, size), kept as uint8 (C, H, W) — the
    # layers are 8-bit images, so this is exact at a quarter of the float memory
    arr = np.asarray(_LAYERS[key]((width, height)), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _layer(key: str, like: torch.Tensor) -> torch.Tensor:
    layer = _layer_cpu(key, like.shape[-2], like.shape[-1])
    return layer.to(device=like.device, non_blocking=True).to(like.dtype).div_(255.0)


# Spatial fronts: cb (N, 3, H, W) -> (N, 3, H, W), mirroring each pilgram recipe up to
# the point where only global operations remain.

def _front_aden(cb):
    return _mix(cb, torch.minimum(cb, _rgb(66, 10, 14, like=cb)), _layer("aden", cb))


def _front_brooklyn(cb):
    cm1 = _mix(cb, _overlay(cb, _rgb(168, 223, 193, like=cb)), _alpha(0.4))
    cm2 = _overlay(cb, _rgb(196, 183, 200, like=cb))
    return _mix(cm2, cm1, _layer("brooklyn", cb))


def _front_earlybird(cb):
    return _overlay(cb, _layer("earlybird", cb))


def _front_hefe(cb):  # multiply with black at the gradient's alpha
    return cb * (1.0 - _layer("hefe", cb)[3:4])


def _front_hudson(cb):
    return _mix(cb, cb * _layer("hudson", cb), 0.5)


def _front_lofi(cb):
    return _mix(cb * _rgb(34, 34, 34, like=cb), cb, _layer("lofi", cb))


def _front_mayfair(cb):
    cm1 = _mix(cb, _overlay(cb, _rgb(255, 255, 255, like=cb)), _alpha(0.8))
    cm2 = _mix(cb, _overlay(cb, _rgb(255, 200, 200, like=cb)), _alpha(0.6))
    cm3 = _overlay(cb, _rgb(17, 17, 17, like=cb))
    cs = _mix(cm2, cm1, _layer("mayfair1", cb))
    cs = _mix(cm3, cs, _layer("mayfair2", cb))
    return _mix(cb, cs, 0.4)


def _front_perpetua(cb):
    return _mix(cb, _soft_light(cb, _layer("perpetua", cb)), 0.5)


def _front_poprocket(cb):
    layer = _layer("poprocket", cb)
    return _mix(cb, _screen(cb, layer[:3]), layer[3:4])


def _front_rise(cb):
    cm1 = _mix(cb, cb * _rgb(236, 205, 169, like=cb), _alpha(0.15))
    cm2 = _mix(cb, cb * _rgb(50, 30, 7, like=cb), _alpha(0.4))
    cm = _mix(cm2, cm1, _layer("rise1", cb))
    cm3 = _mix(cm, _overlay(cm, _rgb(232, 197, 152, like=cb)), _alpha(0.8))
    cm_ = _mix(cm, cm3, _layer("rise2", cb))
    return _mix(cm, cm_, 0.6)


def _front_sierra(cb):
    layer = _layer("sierra", cb)
    return _mix(cb, _screen(cb, layer[:3]), layer[3:4])


def _front_sutro(cb):  # darken with black at the gradient's alpha
    return cb * (1.0 - _layer("sutro", cb)[3:4])


def _front_toaster(cb):
    return _screen(cb, _layer("toaster", cb))


def _front_willow(cb):
    return _overlay(cb, _layer("willow", cb))


def _front_xpro2(cb):
    mask = _layer("xpro2", cb)
    cs2 = _mix(cb, _rgb(43, 42, 161, like=cb), 0.6)
    cs = _mix(cs2, _rgb(230, 231, 224, like=cb), mask)
    cm1 = _color_burn(cb, cs)
    cm2 = _mix(cb, cm1, 0.6)
    return _mix(cm2, cm1, mask)


def _fill(rgb):
    return lambda im: Image.new("RGB", im.size, tuple(rgb))


# name -> (torch spatial front, pilgram global tail applied to the front's output)
_SPATIAL: dict[str, tuple[Callable, Callable[[Image.Image], Image.Image] | None]] = {
    "aden": (_front_aden, lambda im: css.brightness(css.saturate(css.contrast(css.hue_rotate(im, -20), 0.9), 0.85), 1.2)),
    "brooklyn": (_front_brooklyn, lambda im: css.brightness(css.contrast(im, 0.9), 1.1)),
    "earlybird": (_front_earlybird, lambda im: css.sepia(css.contrast(im, 0.9), 0.2)),
    "hefe": (_front_hefe, lambda im: css.hue_rotate(css.saturate(css.brightness(css.contrast(css.sepia(im, 0.4), 1.5), 1.2), 1.4), -10)),
    "hudson": (_front_hudson, lambda im: css.saturate(css.contrast(css.brightness(im, 1.2), 0.9), 1.1)),
    "lofi": (_front_lofi, lambda im: css.contrast(css.saturate(im, 1.1), 1.5)),
    "mayfair": (_front_mayfair, lambda im: css.saturate(css.contrast(im, 1.1), 1.1)),
    "perpetua": (_front_perpetua, None),
    "poprocket": (_front_poprocket, lambda im: css.brightness(css.sepia(im, 0.15), 1.2)),
    "rise": (_front_rise, lambda im: css.saturate(css.contrast(css.sepia(css.brightness(im, 1.05), 0.2), 0.9), 0.9)),
    "sierra": (_front_sierra, lambda im: css.hue_rotate(css.brightness(css.contrast(css.sepia(im, 0.25), 1.5), 0.9), -15)),
    "sutro": (_front_sutro, lambda im: css.hue_rotate(css.saturate(css.brightness(css.contrast(css.sepia(im, 0.4), 1.2), 0.9), 1.4), -10)),
    "toaster": (_front_toaster, lambda im: css.brightness(css.contrast(im, 1.5), 0.9)),
    "willow": (_front_willow, lambda im: css.brightness(css.contrast(css.grayscale(css.blending.color(im, _fill((216, 205, 203))(im)), 0.5), 0.95), 0.9)),
    "xpro2": (_front_xpro2, lambda im: css.sepia(im, 0.3)),
}
SPATIAL_FILTERS: tuple[str, ...] = tuple(sorted(_SPATIAL))

_capture_lock = threading.Lock()
_LUTS: dict[tuple[str, int], LUT3D | None] = {}


def filter_lut(name: str, size: int = FILTER_LUT_SIZE) -> LUT3D | None:
    """The captured LUT of a filter (cached per process): the whole filter for a
    global one, the global tail for a spatial one (None if it has no tail)."""
    fn = _pilgram(name)
    key = (name, int(size))
    if key not in _LUTS:
        with _capture_lock:
            if key not in _LUTS:
                if name in _SPATIAL:
                    tail = _SPATIAL[name][1]
                    _LUTS[key] = None if tail is None else _capture(tail, size, f"{name} (global tail)")
                else:
                    if not measure_position_independence(name):
                        raise RuntimeError(f"filter {name!r} is spatial but has no torch recipe")
                    _LUTS[key] = _capture(fn, size, name)
    return _LUTS[key]


def _check(images: torch.Tensor, strength: float, fname: str) -> float:
    if not isinstance(images, torch.Tensor) or images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"{fname}: images must be a tensor of shape (*, 3, H, W), got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise ValueError(f"{fname}: images must be floating point in [0, 1], got {images.dtype}")
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"{fname}: strength must be in [0, 1], got {strength}")
    return strength


def apply_filter(images: torch.Tensor, name: str, strength: float = 1.0, *, lut_size: int = FILTER_LUT_SIZE) -> torch.Tensor:
    """Apply pilgram filter ``name`` to ``images`` ``(*, 3, H, W)`` float in [0, 1];
    returns the same shape. ``strength`` in [0, 1] blends with the input (0: identity).
    Batched torch on the images' device; the LUTs and per-size layers are prepared once."""
    strength = _check(images, strength, "apply_filter")
    _pilgram(name)
    x = images.clamp(0.0, 1.0)
    if strength == 0.0 or images.numel() == 0:
        return x
    lut = filter_lut(name, lut_size)
    if name in _SPATIAL:
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        out = _SPATIAL[name][0](flat).clamp_(0.0, 1.0)
        out = apply_lut(out, lut) if lut is not None else out
        out = out.reshape(*lead, *x.shape[-3:])
    else:
        out = apply_lut(x, lut)
    if strength != 1.0:
        out = torch.lerp(x, out, strength)
    return out


def apply_filter_exact(images: torch.Tensor, name: str, strength: float = 1.0) -> torch.Tensor:
    """PILGRAM FALLBACK (CPU, per image, via PIL and numpy): pilgram's own output after
    8-bit quantisation of the input; the reference ``apply_filter`` is measured against."""
    strength = _check(images, strength, "apply_filter_exact")
    fn = _pilgram(name)
    x = images.clamp(0.0, 1.0)
    flat = x.reshape(-1, *x.shape[-3:])
    outs = [_from_pil(fn(_to_pil(img))) for img in flat]
    out = torch.stack(outs).to(device=x.device, dtype=x.dtype).reshape(x.shape) if outs else x
    return torch.lerp(x, out, strength) if strength != 1.0 else out
