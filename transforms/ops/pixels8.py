"""8-bit colour-map primitives in Pillow's C code, for CPU paths where float torch per
pixel costs more than the JPEG decode and encode around it.

- ``lut_uint8(pixels, table)``: a 3D LUT (trilinear, Pillow's 16-bit fixed point) on
  uint8 ``(H, W, 3)``; ``table`` is ``(S, S, S, 3)`` indexed ``[b, g, r]`` (the ``.cube``
  order, r fastest) with S ≤ 65;
- ``resize_uint8(pixels, (w, h))``: antialiased bilinear resize;
- ``add_smooth_residual(base, residual)``: ``base`` uint8 ``(H, W, 3)`` plus a float
  residual ``(h, w, 3)`` (in [0, 1] units, |r| < 0.5) computed at low resolution and
  upsampled bilinearly to ``base``'s size — for corrections that vary slowly across the
  image (vignettes, gradients). The residual travels as 8 bits (offset 128), so the
  result is within about one level of the float sum.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["MAX_LUT", "lut_uint8", "resize_uint8", "add_smooth_residual"]

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


def resize_uint8(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` → uint8 ``(h, w, 3)`` for ``size=(w, h)`` (Pillow bilinear,
    antialiased when shrinking)."""
    _check_pixels(pixels, "resize_uint8")
    if (pixels.shape[1], pixels.shape[0]) == tuple(size):
        return pixels
    return np.asarray(Image.fromarray(pixels, "RGB").resize(tuple(size), Image.BILINEAR))


def add_smooth_residual(base: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """``base`` uint8 ``(H, W, 3)`` + ``residual`` float ``(h, w, 3)`` upsampled to
    ``(H, W)`` → uint8 ``(H, W, 3)`` (clipped)."""
    _check_pixels(base, "add_smooth_residual")
    r = np.asarray(residual, dtype=np.float32)
    if r.ndim != 3 or r.shape[2] != 3:
        raise ValueError(f"add_smooth_residual: residual must be (h, w, 3), got {r.shape}")
    coded = np.clip(np.rint(r * 255.0) + 128.0, 0, 255).astype(np.uint8)
    up = np.asarray(Image.fromarray(coded, "RGB").resize((base.shape[1], base.shape[0]), Image.BILINEAR))
    out = base.astype(np.int16)
    out += up
    out -= 128
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)
