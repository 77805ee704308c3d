"""8-bit colour-map primitives in Pillow's C code, for CPU paths where float torch per
pixel costs more than the JPEG decode and encode around it.

- ``lut_uint8(pixels, table)``: a 3D LUT (trilinear, Pillow's 16-bit fixed point) on
  uint8 ``(H, W, 3)``; ``table`` is ``(S, S, S, 3)`` indexed ``[b, g, r]`` (the ``.cube``
  order, r fastest) with S ≤ 65;
- ``LookApplier(table)``: the same LUT for many images: Pillow until the look has mapped
  2²⁴ pixels, then every 8-bit colour's result is tabulated once (Pillow's own output on
  all 2²⁴ colours, 64 MB) and each image is one gather — bit-identical, ~5× faster at 4K (benchmarks/stylize_speed.py (c));
- ``resize_uint8(pixels, (w, h))``: antialiased bilinear resize.

(The restorer's per-image map, a residual plus a LUT, has its own compiled kernel:
``lut_kernel.residual_lut_uint8``.)
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["MAX_LUT", "lut_uint8", "LookApplier", "reduce_uint8", "resize_uint8"]

MAX_LUT = 65  # Pillow's Color3DLUT size limit


def _check_pixels(pixels: np.ndarray, fname: str) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"{fname}: expected uint8 (H, W, 3) pixels, got {getattr(pixels, 'shape', type(pixels))}")


def lut_uint8(pixels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` through the LUT ``table`` ``(S, S, S, 3)`` (``[b, g, r]``, values
    clipped to [0, 1]) → uint8 ``(H, W, 3)``."""
    _check_pixels(pixels, "lut_uint8")
    t = np.asarray(table, dtype=np.float32)
    if t.ndim != 4 or t.shape[3] != 3 or not (t.shape[0] == t.shape[1] == t.shape[2]) or not 2 <= t.shape[0] <= MAX_LUT:
        raise ValueError(f"lut_uint8: table must be (S, S, S, 3) with 2 <= S <= {MAX_LUT}, got {t.shape}")
    flt = ImageFilter.Color3DLUT(t.shape[0], np.clip(t, 0.0, 1.0).reshape(-1))
    return np.asarray(Image.fromarray(pixels, "RGB").filter(flt))


class LookApplier:
    """``LookApplier(table)(pixels)`` = ``lut_uint8(pixels, table)`` for uint8 ``(H, W, 3)``.

    Applying one LUT to many images, the trilinear interpolation per pixel is the cost.
    Once this look has mapped ``switch_pixels`` pixels (default 2²⁴, what tabulating
    costs, so the total is at most twice the cheaper choice), the result for every 8-bit
    colour is tabulated — by running Pillow's own LUT over an image holding all 2²⁴
    colours, so outputs stay bit-identical — and each image becomes one gather from that
    64 MB table. ``switch_pixels=None`` never tabulates."""

    def __init__(self, table: np.ndarray, *, switch_pixels: int | None = 1 << 24):
        t = np.asarray(table, dtype=np.float32)
        if t.ndim != 4 or t.shape[3] != 3 or not (t.shape[0] == t.shape[1] == t.shape[2]) or not 2 <= t.shape[0] <= MAX_LUT:
            raise ValueError(f"LookApplier: table must be (S, S, S, 3) with 2 <= S <= {MAX_LUT}, got {t.shape}")
        self.table = t
        self.switch_pixels = switch_pixels
        self.mapped_pixels = 0
        self._all_colours: np.ndarray | None = None  # uint32 (2²⁴,): RGBX of each colour r<<16 | g<<8 | b

    @property
    def tabulated(self) -> bool:
        return self._all_colours is not None

    def _tabulate(self) -> None:
        c = np.arange(1 << 24, dtype=np.uint32)
        every = np.empty((1 << 24, 3), np.uint8)
        every[:, 0], every[:, 1], every[:, 2] = c >> 16, (c >> 8) & 255, c & 255
        mapped = lut_uint8(every.reshape(4096, 4096, 3), self.table).reshape(-1, 3)
        del every
        rgbx = np.zeros((1 << 24, 4), np.uint8)
        rgbx[:, :3] = mapped
        self._all_colours = rgbx.view(np.uint32).reshape(-1)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        _check_pixels(pixels, "LookApplier")
        if self._all_colours is None:
            self.mapped_pixels += pixels.shape[0] * pixels.shape[1]
            if self.switch_pixels is None or self.mapped_pixels <= self.switch_pixels:
                return lut_uint8(pixels, self.table)
            self._tabulate()
        index = pixels[..., 0].astype(np.uint32) << 16
        index |= pixels[..., 1].astype(np.uint32) << 8
        index |= pixels[..., 2]
        return np.take(self._all_colours, index).view(np.uint8).reshape(*pixels.shape[:2], 4)[..., :3]


def resize_uint8(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` → uint8 ``(h, w, 3)`` for ``size=(w, h)`` (Pillow bilinear,
    antialiased when shrinking)."""
    _check_pixels(pixels, "resize_uint8")
    if (pixels.shape[1], pixels.shape[0]) == tuple(size):
        return pixels
    return np.asarray(Image.fromarray(pixels, "RGB").resize(tuple(size), Image.BILINEAR))


def reduce_uint8(pixels: np.ndarray, factor: int) -> np.ndarray:
    """uint8 ``(H, W, 3)`` → uint8 ``(⌈H/factor⌉, ⌈W/factor⌉, 3)``: the mean of each
    ``factor``² block (Pillow's ``Image.reduce``; the last row and column of blocks are
    partial) — a cheap first step before several resizes of the same image."""
    _check_pixels(pixels, "reduce_uint8")
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"reduce_uint8: factor must be an integer >= 1, got {factor!r}")
    if factor == 1:
        return pixels
    return np.asarray(Image.fromarray(pixels, "RGB").reduce(factor))
