"""Pure, differentiable colour-mapping ops for the DNCM and restorer models.

DNCM (Neural Preset, CVPR 2023) maps every pixel ``x`` (a 1×3 row) through
``x · P · T · Q`` with ``P`` 3×k, ``T`` k×k (predicted per image) and ``Q`` k×3. The paper
("it simply uses 3 matrix multiplications", seed 001) and DESIGN.md give no nonlinearity
between the products, and the public reimplementations are purely linear too, so that is
what is implemented. Matrix products associate, so the mapping *is* the 3×3 matrix
``M = P·T·Q``: folding it first gives identical values and gradients (tested against the
unfolded HW×k product) while the per-pixel cost is 9 multiply-adds and memory is the output
alone — an 8K image never materialises an HW×k tensor.

Also here, for the restorer:
- ``lut3d_apply``: per-image, differentiable 3D LUTs (trilinear, ``grid_sample`` on 5-D);
- ``bilateral_grid_apply``: HDRNet-style slicing of a bilateral grid of 3×4 affine colour
  transforms with a per-pixel guide, then applying the per-pixel affine.
Both process large images in row chunks so temporaries stay bounded.

Conventions: images are float ``(B, 3, H, W)``; outputs are not clamped (the normalised
DNCM space may leave [0, 1]); batch sizes of 1 broadcast against B.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "dncm_matrix",
    "apply_color_matrix",
    "dncm_apply",
    "lut3d_identity",
    "lut3d_apply",
    "affine_identity_grid",
    "bilateral_grid_apply",
    "map_row_chunks",
    "DEFAULT_CHUNK_PIXELS",
]

# Row chunks of ~1 Mpx keep the per-chunk temporaries (grid coordinates, 12 affine
# coefficients) near 64 MB in float32 whatever the image size.
DEFAULT_CHUNK_PIXELS = 1 << 20


def _shape(t) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_images(x: torch.Tensor, fname: str, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{fname}: {name} must be a (B, 3, H, W) tensor, got {_shape(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{fname}: {name} must be floating point, got {x.dtype}")


def _batched(t: torch.Tensor, rows: int | None, cols: int | None, fname: str, name: str, want: str) -> torch.Tensor:
    """``t`` as (B, rows, cols), accepting an unbatched (rows, cols) matrix."""
    if not isinstance(t, torch.Tensor) or t.ndim not in (2, 3) or not t.is_floating_point():
        raise ValueError(f"{fname}: {name} must be a float {want} tensor, got {_shape(t)}")
    t = t if t.ndim == 3 else t.unsqueeze(0)
    if (rows is not None and t.shape[1] != rows) or (cols is not None and t.shape[2] != cols):
        raise ValueError(f"{fname}: {name} must have shape {want}, got {tuple(t.shape)}")
    return t


def _common_batch(fname: str, **sizes: int) -> int:
    """The one batch size > 1 among ``sizes`` (1 broadcasts); error if they disagree."""
    big = {n: b for n, b in sizes.items() if b != 1}
    if len(set(big.values())) > 1:
        raise ValueError(f"{fname}: batch sizes must match or be 1, got {sizes}")
    return next(iter(big.values()), 1)


def dncm_matrix(P: torch.Tensor, T: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """The folded DNCM colour matrix ``M = P·T·Q``.

    ``P``: ``(3, k)`` or ``(B, 3, k)``; ``T``: ``(k, k)`` or ``(B, k, k)``; ``Q``:
    ``(k, 3)`` or ``(B, k, 3)``. Returns ``(B, 3, 3)`` (B = 1 when nothing is batched),
    computed in at least float32.
    """
    fname = "dncm_matrix"
    P = _batched(P, 3, None, fname, "P", "(3, k) or (B, 3, k)")
    k = P.shape[2]
    T = _batched(T, k, k, fname, "T", f"(k, k) or (B, k, k) with k={k}")
    Q = _batched(Q, k, 3, fname, "Q", f"(k, 3) or (B, k, 3) with k={k}")
    _common_batch(fname, P=P.shape[0], T=T.shape[0], Q=Q.shape[0])
    dt = torch.promote_types(torch.promote_types(P.dtype, T.dtype), torch.promote_types(Q.dtype, torch.float32))
    return torch.matmul(torch.matmul(P.to(dt), T.to(dt)), Q.to(dt))


def apply_color_matrix(x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``out = x · M`` (pixels as 1×3 rows). ``x``: ``(B, 3, H, W)``; ``M``:
    ``(3, 3)`` or ``(B, 3, 3)``. Returns ``(B, 3, H, W)`` in ``x``'s dtype."""
    fname = "apply_color_matrix"
    _check_images(x, fname)
    M = _batched(M, 3, 3, fname, "M", "(3, 3) or (B, 3, 3)")
    b, _, h, w = x.shape
    _common_batch(fname, x=b, M=M.shape[0])
    # (B,3,3)ᵀ @ (B,3,HW): a single batched GEMM over a view of x; the output is the only
    # full-size allocation.
    out = torch.matmul(M.to(x.dtype).transpose(-1, -2), x.reshape(b, 3, h * w))
    return out.view(out.shape[0], 3, h, w)


def dncm_apply(x: torch.Tensor, P: torch.Tensor, T: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Deterministic Neural Colour Mapping: every pixel ``x`` (1×3) → ``x · P · T · Q``.

    ``x``: ``(B, 3, H, W)`` float; ``P``: ``(3, k)`` or ``(B, 3, k)``; ``T``: ``(B, k, k)``
    or ``(k, k)``; ``Q``: ``(k, 3)`` or ``(B, k, 3)``. Returns ``(B, 3, H, W)`` (not
    clamped). Linear, as in the paper (see module docstring): evaluated as the folded 3×3
    matrix, so memory is the output only at any resolution.
    """
    _check_images(x, "dncm_apply")
    return apply_color_matrix(x, dncm_matrix(P, T, Q))


def _row_chunks(h: int, w: int, chunk_pixels: int | None) -> list[tuple[int, int]]:
    rows = h if not chunk_pixels else max(1, chunk_pixels // max(w, 1))
    return [(r, min(r + rows, h)) for r in range(0, h, rows)]


def map_row_chunks(fn: Callable[[int, int], torch.Tensor], h: int, w: int, chunk_pixels: int | None) -> torch.Tensor:
    """``fn(r0, r1)`` (the output for rows r0..r1 of an H×W image, rows on dim -2)
    over row chunks of about ``chunk_pixels`` pixels (``None``: one chunk), concatenated.
    Without autograd the chunks go straight into one preallocated output (no second
    full-size copy)."""
    chunks = _row_chunks(h, w, chunk_pixels)
    if len(chunks) == 1:
        return fn(0, h)
    first = fn(*chunks[0])
    if first.requires_grad:
        return torch.cat([first] + [fn(r0, r1) for r0, r1 in chunks[1:]], dim=-2)
    out = first.new_empty(first.shape[:-2] + (h, w))
    out[..., : chunks[0][1], :] = first
    del first
    for r0, r1 in chunks[1:]:
        out[..., r0:r1, :] = fn(r0, r1)
    return out


def lut3d_identity(size: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The identity LUT as ``(3, S, S, S)`` indexed ``[channel, b, g, r]`` (red fastest,
    the ``.cube`` order of ``transforms.ops.lut``): ``lut[c, b, g, r] = (r, g, b)[c] / (S-1)``."""
    if size < 2:
        raise ValueError(f"lut3d_identity: size must be >= 2, got {size}")
    ramp = torch.linspace(0.0, 1.0, size, device=device, dtype=dtype)
    b, g, r = torch.meshgrid(ramp, ramp, ramp, indexing="ij")
    return torch.stack([r, g, b])


def lut3d_apply(x: torch.Tensor, lut: torch.Tensor, *, chunk_pixels: int | None = DEFAULT_CHUNK_PIXELS) -> torch.Tensor:
    """Trilinear 3D-LUT lookup with per-image, differentiable tables.

    ``x``: ``(B, 3, H, W)``; ``lut``: ``(B, 3, S, S, S)`` or ``(3, S, S, S)`` indexed
    ``[channel, b, g, r]`` on the unit cube (see ``lut3d_identity``). Inputs outside
    [0, 1] are clamped to the cube's faces. Returns ``(B, 3, H, W)`` (not clamped).
    Differentiable w.r.t. ``x`` and ``lut``.
    """
    fname = "lut3d_apply"
    _check_images(x, fname)
    if lut.ndim == 4:
        lut = lut.unsqueeze(0)
    if lut.ndim != 5 or lut.shape[1] != 3 or not (lut.shape[2] == lut.shape[3] == lut.shape[4] >= 2):
        raise ValueError(f"{fname}: lut must be (B, 3, S, S, S) or (3, S, S, S), got {tuple(lut.shape)}")
    b, _, h, w = x.shape
    n = _common_batch(fname, x=b, lut=lut.shape[0])
    lut = lut.to(x.dtype).expand(n, *lut.shape[1:])

    def rows(r0: int, r1: int) -> torch.Tensor:
        # grid_sample's last coordinate axis is (W, H, D) = (r, g, b): the pixel itself.
        coords = (x[:, :, r0:r1].permute(0, 2, 3, 1) * 2 - 1).expand(n, -1, -1, -1).unsqueeze(1)
        out = F.grid_sample(lut, coords, mode="bilinear", padding_mode="border", align_corners=True)
        return out.squeeze(2)

    return map_row_chunks(rows, h, w, chunk_pixels)


def affine_identity_grid(depth: int, height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """A bilateral grid ``(1, 12, depth, height, width)`` whose every cell is the identity
    3×4 affine ``[I | 0]`` (channel ``4*c + j`` is row c, column j)."""
    eye = torch.eye(3, 4, device=device, dtype=dtype).reshape(1, 12, 1, 1, 1)
    return eye.expand(1, 12, depth, height, width).clone()


def bilateral_grid_apply(
    x: torch.Tensor,
    grid: torch.Tensor,
    guide: torch.Tensor,
    *,
    row_offset: int = 0,
    full_height: int | None = None,
    col_offset: int = 0,
    full_width: int | None = None,
    chunk_pixels: int | None = DEFAULT_CHUNK_PIXELS,
) -> torch.Tensor:
    """Slice a bilateral grid of affine colour transforms and apply it per pixel (HDRNet).

    ``x``: ``(B, 3, H, W)``; ``grid``: ``(B, 12, D, GH, GW)`` or ``(12, D, GH, GW)`` — a
    3×4 affine per cell (channel ``4*c + j``: output channel c, input j; j = 3 is the
    offset) over D guide bins × GH × GW spatial cells; ``guide``: ``(B, 1, H, W)`` in [0, 1].
    Pixel (i, j) reads the grid trilinearly at cell-centre coordinates
    ``((j+col_offset+½)/full_width·GW − ½, (i+row_offset+½)/full_height·GH − ½, guide·D − ½)``,
    clamped to the grid (``align_corners=False``, border padding); then
    ``out_c = Σ_j A[c,j]·x_j + A[c,3]``. ``row_offset``/``full_height`` and
    ``col_offset``/``full_width`` let a caller pass a window of a larger image (row strips
    at inference, training crops).
    Returns ``(B, 3, H, W)`` (not clamped); differentiable w.r.t. all three inputs.
    """
    fname = "bilateral_grid_apply"
    _check_images(x, fname)
    if grid.ndim == 4:
        grid = grid.unsqueeze(0)
    if grid.ndim != 5 or grid.shape[1] != 12:
        raise ValueError(f"{fname}: grid must be (B, 12, D, GH, GW) or (12, D, GH, GW), got {tuple(grid.shape)}")
    b, _, h, w = x.shape
    if guide.ndim != 4 or guide.shape[1] != 1 or guide.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"{fname}: guide must be (B, 1, {h}, {w}) like x, got {_shape(guide)}")
    n = _common_batch(fname, x=b, grid=grid.shape[0], guide=guide.shape[0])
    full_height = h if full_height is None else full_height
    if not (0 <= row_offset and row_offset + h <= full_height):
        raise ValueError(f"{fname}: rows {row_offset}..{row_offset + h} do not fit in full_height={full_height}")
    full_width = w if full_width is None else full_width
    if not (0 <= col_offset and col_offset + w <= full_width):
        raise ValueError(f"{fname}: columns {col_offset}..{col_offset + w} do not fit in full_width={full_width}")
    grid = grid.to(x.dtype).expand(n, *grid.shape[1:])
    dev, dt = x.device, x.dtype
    u = ((torch.arange(w, device=dev, dtype=dt) + col_offset + 0.5) / full_width) * 2 - 1

    def rows(r0: int, r1: int) -> torch.Tensor:
        hc = r1 - r0
        v = ((torch.arange(r0, r1, device=dev, dtype=dt) + row_offset + 0.5) / full_height) * 2 - 1
        z = guide[:, 0, r0:r1] * 2 - 1
        coords = torch.stack(
            [u.expand(n, hc, w), v[:, None].expand(n, hc, w), z.expand(n, hc, w)], dim=-1
        ).unsqueeze(1)  # (n, 1, hc, w, 3): (GW, GH, D) axes
        A = F.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=False)
        A = A.view(n, 3, 4, hc, w)
        xc = x[:, :, r0:r1]
        return (A[:, :, 0] * xc[:, 0:1] + A[:, :, 1] * xc[:, 1:2]) + (A[:, :, 2] * xc[:, 2:3] + A[:, :, 3])

    return map_row_chunks(rows, h, w, chunk_pixels)
