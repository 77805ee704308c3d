"""A compiled 8-bit kernel for the restorer's per-image colour map: a smooth low-resolution
residual added, then a 3D LUT, in one pass over the pixels.

A restore job applies a new LUT to every image, so tabulating the LUT over all 2²⁴
colours (``pixels8.LookApplier``) does not pay, and Pillow's ``Color3DLUT`` after a
numpy upsample-and-add of the residual reads and writes the image twice. This kernel (numba, compiled
once per process and cached on disk) reads each pixel once, adds the bilinearly
upsampled residual, and interpolates the LUT trilinearly in float32 — the exact float
path's arithmetic on 8-bit input, rounded once at the end.
``benchmarks/restore_speed.py`` measures it against Pillow.

- ``residual_lut_uint8(pixels, table, residual=None)``: uint8 ``(H, W, 3)``, ``table``
  ``(S, S, S, 3)`` indexed ``[b, g, r]`` (Pillow's ``Color3DLUT`` order, values clipped to
  [0, 1]), ``residual`` float ``(h, w, 3)`` or None → uint8 ``(H, W, 3)``.
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["residual_lut_uint8"]


def _compiled(fn):
    """``numba.njit``, cached on disk where numba finds a writable cache folder (next to
    this file, else the user's cache); on a read-only install with no writable home the
    kernel is compiled once per process instead (~1 s) rather than failing the import."""
    try:
        return numba.njit(cache=True, nogil=True, fastmath=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, nogil=True, fastmath=True)(fn)


@_compiled
def _kernel(pixels, table, residual, out):  # pragma: no cover - compiled; tested through the wrapper
    # Every per-pixel value is float32: numba promotes float32 mixed with a Python int or
    # float to float64, which cost ~25 % here (the conversions, and no fused float32 ops).
    h, w = pixels.shape[0], pixels.shape[1]
    n = table.shape[0]
    s1 = n - 1
    flat = table.reshape(-1)
    dr, dg, db = 3, 3 * n, 3 * n * n  # strides of r, g, b in the flat table
    rh, rw = residual.shape[0], residual.shape[1]
    has_res = rh > 0
    zero, one, half, k255, top = np.float32(0), np.float32(1), np.float32(0.5), np.float32(255), np.float32(s1)
    # the residual's horizontal taps per output column (align_corners=False, edges clamped)
    xi0 = np.zeros(w, np.int64)
    xi1 = np.zeros(w, np.int64)
    xw = np.zeros(w, np.float32)
    if has_res:
        for x in range(w):
            fx = min(max((x + 0.5) * rw / w - 0.5, 0.0), rw - 1.0)
            xi0[x] = int(fx)
            xi1[x] = min(xi0[x] + 1, rw - 1)
            xw[x] = fx - xi0[x]
    vals = np.empty(256, np.float32)  # each 8-bit value's lattice coordinate
    for v in range(256):
        vals[v] = v * s1 / 255.0
    row = np.zeros((max(rw, 1), 3), np.float32)
    shift = np.zeros((w, 3), np.float32)  # this row's residual at every column, in lattice units
    for y in range(h):
        if has_res:  # interpolate the residual vertically, then horizontally, once per row
            fy = min(max((y + 0.5) * rh / h - 0.5, 0.0), rh - 1.0)
            y0 = int(fy)
            y1 = min(y0 + 1, rh - 1)
            wy = np.float32(fy - y0)
            for i in range(rw):
                for c in range(3):
                    row[i, c] = (residual[y0, i, c] * (one - wy) + residual[y1, i, c] * wy) * top
            for x in range(w):
                a, i0, i1 = xw[x], xi0[x], xi1[x]
                for c in range(3):
                    shift[x, c] = row[i0, c] + (row[i1, c] - row[i0, c]) * a
        for x in range(w):  # without a residual ``shift`` stays zero
            pr = min(max(vals[pixels[y, x, 0]] + shift[x, 0], zero), top)
            pg = min(max(vals[pixels[y, x, 1]] + shift[x, 1], zero), top)
            pb = min(max(vals[pixels[y, x, 2]] + shift[x, 2], zero), top)
            ir, ig, ib = min(int(pr), s1 - 1), min(int(pg), s1 - 1), min(int(pb), s1 - 1)
            tr, tg, tb = pr - np.float32(ir), pg - np.float32(ig), pb - np.float32(ib)
            o = ((ib * n + ig) * n + ir) * 3  # the cell's corner (b, g, r) in the flat table
            for c in range(3):
                k = o + c
                c00 = flat[k] + (flat[k + dr] - flat[k]) * tr
                c01 = flat[k + dg] + (flat[k + dg + dr] - flat[k + dg]) * tr
                c10 = flat[k + db] + (flat[k + db + dr] - flat[k + db]) * tr
                c11 = flat[k + db + dg] + (flat[k + db + dg + dr] - flat[k + db + dg]) * tr
                c0 = c00 + (c01 - c00) * tg
                c1 = c10 + (c11 - c10) * tg
                v = (c0 + (c1 - c0) * tb) * k255 + half
                out[y, x, c] = np.uint8(min(max(v, zero), k255))


def residual_lut_uint8(pixels: np.ndarray, table: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    """``LUT(clip(pixels + up(residual)))`` for uint8 ``(H, W, 3)`` → uint8 ``(H, W, 3)``."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"residual_lut_uint8: expected uint8 (H, W, 3) pixels, got {getattr(pixels, 'shape', type(pixels))}")
    t = np.asarray(table, dtype=np.float32)
    if t.ndim != 4 or t.shape[3] != 3 or not (t.shape[0] == t.shape[1] == t.shape[2]) or t.shape[0] < 2:
        raise ValueError(f"residual_lut_uint8: table must be (S, S, S, 3) with S >= 2, got {t.shape}")
    if residual is None:
        res = np.zeros((0, 0, 3), dtype=np.float32)
    else:
        res = np.asarray(residual, dtype=np.float32)
        if res.ndim != 3 or res.shape[2] != 3 or 0 in res.shape:
            raise ValueError(f"residual_lut_uint8: residual must be (h, w, 3), got {res.shape}")
    out = np.empty(pixels.shape, dtype=np.uint8)
    _kernel(np.ascontiguousarray(pixels), np.ascontiguousarray(np.clip(t, 0.0, 1.0)), np.ascontiguousarray(res), out)
    return out
