"""chromabeam.transforms.ops.dncm — DNCM mapping, per-image 3D LUTs, bilateral grids.

References (independent of the code under test):
- DNCM: the paper's unfolded per-pixel product ``x · P · T · Q`` evaluated in float64
  numpy (values) and in float64 torch autograd through the HW×k intermediates (gradients);
- 3D LUTs: colour-science ``LUT3D.apply`` (trilinear);
- bilateral grids: a direct numpy trilinear interpolation written from the slicing
  formula in the docstring (cell-centre coordinates, clamped at the borders).
Tolerances: float32 results within 1e-5 of float64 references for [0, 1]-range data
(a few float32 ulps of accumulated rounding); float64 comparisons within 1e-10.
"""
import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():  # colour warns that matplotlib is absent
    warnings.simplefilter("ignore")
    import colour

from chromabeam.transforms.ops.dncm import (
    affine_identity_grid,
    apply_color_matrix,
    bilateral_grid_apply,
    dncm_apply,
    dncm_matrix,
    lut3d_apply,
    lut3d_identity,
    map_row_chunks,
)
from chromabeam.transforms.ops.lut import identity_table


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def unfolded_numpy(x, P, T, Q):
    """Per pixel: the 1×3 row through 3×k, k×k, k×3 — as written in the paper."""
    x = x.double().numpy()
    b, _, h, w = x.shape
    rows = x.reshape(b, 3, h * w).transpose(0, 2, 1)  # (B, HW, 3)
    P, T, Q = (np.broadcast_to(t.double().numpy(), (b,) + tuple(t.shape[-2:])) for t in (P, T, Q))
    out = rows @ P @ T @ Q  # (B, HW, k) → (B, HW, k) → (B, HW, 3)
    return out.transpose(0, 2, 1).reshape(b, 3, h, w)


# --------------------------------------------------------------------------- DNCM


def test_dncm_apply_matches_unfolded_product():
    g = gen(1)
    k = 16
    x = torch.rand(2, 3, 17, 23, generator=g)
    P, T, Q = torch.randn(3, k, generator=g), torch.randn(2, k, k, generator=g), torch.randn(k, 3, generator=g)
    P, T, Q = P / 4, T / 4, Q / 4  # keep values O(1) so the float32 tolerance is meaningful
    out = dncm_apply(x, P, T, Q)
    assert out.shape == (2, 3, 17, 23) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), unfolded_numpy(x, P, T, Q), rtol=0, atol=1e-5)


def test_identity_P_T_Q_gives_identity():
    g = gen(2)
    k = 16
    q, _ = torch.linalg.qr(torch.randn(k, 3, generator=g, dtype=torch.float64))
    P = q.T.float()  # orthonormal rows: P·Pᵀ = I₃
    x = torch.rand(3, 3, 31, 19, generator=g)
    out = dncm_apply(x, P, torch.eye(k).expand(3, k, k), P.T)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)
    # and the plainest identity: k = 3, everything I
    torch.testing.assert_close(dncm_apply(x, torch.eye(3), torch.eye(3)[None], torch.eye(3)), x, rtol=0, atol=0)


def test_folded_gradients_equal_unfolded_gradients():
    g = gen(3)
    k = 8
    x = torch.rand(2, 3, 9, 7, generator=g, dtype=torch.float64)
    P = torch.randn(3, k, generator=g, dtype=torch.float64)
    T = torch.randn(2, k, k, generator=g, dtype=torch.float64)
    Q = torch.randn(k, 3, generator=g, dtype=torch.float64)
    target = torch.rand(2, 3, 9, 7, generator=g, dtype=torch.float64)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (x, P, T, Q)]
        loss = (fn(*leaves) - target).abs().mean()
        return torch.autograd.grad(loss, leaves)

    def unfolded(x, P, T, Q):  # the HW×k chain, in torch so autograd differentiates it
        rows = x.flatten(2).transpose(1, 2)
        return (rows @ P @ T @ Q).transpose(1, 2).reshape(x.shape)

    for a, b in zip(grads(dncm_apply), grads(unfolded)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_batch_one_broadcasts():
    g = gen(4)
    k = 5
    x = torch.rand(3, 3, 8, 6, generator=g)
    P, Q = torch.randn(3, k, generator=g), torch.randn(k, 3, generator=g)
    T1 = torch.randn(1, k, k, generator=g)
    one_style = dncm_apply(x, P, T1, Q)  # one r for a batch of contents
    for i in range(3):
        torch.testing.assert_close(one_style[i : i + 1], dncm_apply(x[i : i + 1], P, T1, Q))
    T2 = torch.randn(2, k, k, generator=g)
    many_styles = dncm_apply(x[:1], P, T2, Q)  # one content, two styles
    assert many_styles.shape == (2, 3, 8, 6)
    torch.testing.assert_close(many_styles[1:2], dncm_apply(x[:1], P, T2[1:2], Q))


def test_apply_color_matrix_is_row_vector_convention():
    x = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    M = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # swaps G and B as x·M
    np.testing.assert_allclose(apply_color_matrix(x, M).flatten().numpy(), [0.2, 0.9, 0.5])
    assert dncm_matrix(torch.eye(3), torch.eye(3), torch.eye(3)).shape == (1, 3, 3)


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.rand(1, 2, 4, 4), torch.rand(3, 4), torch.rand(1, 4, 4), torch.rand(4, 3)), r"x must be a \(B, 3, H, W\)"),
        ((torch.rand(1, 3, 4, 4), torch.rand(4, 4), torch.rand(1, 4, 4), torch.rand(4, 3)), "P must have shape"),
        ((torch.rand(1, 3, 4, 4), torch.rand(3, 4), torch.rand(1, 5, 5), torch.rand(4, 3)), "T must have shape"),
        ((torch.rand(1, 3, 4, 4), torch.rand(3, 4), torch.rand(1, 4, 4), torch.rand(5, 3)), "Q must have shape"),
        ((torch.rand(2, 3, 4, 4), torch.rand(3, 4), torch.rand(3, 4, 4), torch.rand(4, 3)), "batch sizes must match"),
        ((torch.zeros(1, 3, 4, 4, dtype=torch.int32), torch.rand(3, 4), torch.rand(1, 4, 4), torch.rand(4, 3)), "floating point"),
    ],
)
def test_dncm_apply_rejects_bad_shapes(args, match):
    with pytest.raises(ValueError, match=match):
        dncm_apply(*args)


# --------------------------------------------------------------------------- 3D LUTs


def test_lut_identity_layout_matches_cube_tables():
    # same [b, g, r] (red fastest) layout as transforms.ops.lut / .cube files
    np.testing.assert_array_equal(lut3d_identity(5).permute(1, 2, 3, 0).numpy(), identity_table(5))


def test_lut3d_apply_matches_colour_science():
    g = gen(5)
    S = 9
    ident = lut3d_identity(S)
    # a smooth, non-trivial LUT: channel mixing + curves
    r, gg, b = ident
    lut = torch.stack([r**0.6 * 0.9 + 0.1 * b, gg**1.7, (b + 0.3 * r).clamp(0, 1) ** 1.2])
    x = torch.rand(2, 3, 13, 11, generator=g)
    out = lut3d_apply(x, torch.stack([lut, ident]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_lut = colour.LUT3D(lut.permute(3, 2, 1, 0).double().numpy(), size=S)  # colour: [r, g, b]
        ref = ref_lut.apply(x[0].permute(1, 2, 0).double().numpy())
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=1e-6)  # identity LUT, second image


def test_lut3d_apply_clamps_inputs_to_the_cube():
    lut = lut3d_identity(3) ** 2
    x = torch.tensor([-0.5, 1.5, 0.5]).view(1, 3, 1, 1)
    np.testing.assert_allclose(lut3d_apply(x, lut).flatten().numpy(), [0.0, 1.0, 0.25], atol=1e-7)


def test_lut3d_apply_gradcheck():
    g = gen(6)
    lut = (lut3d_identity(4, dtype=torch.float64) + 0.1 * torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64))
    x = torch.rand(1, 3, 3, 2, generator=g, dtype=torch.float64) * 0.9 + 0.05
    lut.requires_grad_(True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: lut3d_apply(a, b), (x, lut), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- bilateral grids


def grid_reference(x, grid, guide, row_offset=0, full_height=None):
    """Direct trilinear slicing + affine in numpy (float64)."""
    x, grid, guide = (t.double().numpy() for t in (x, grid, guide))
    b, _, h, w = x.shape
    full_height = full_height or h
    _, _, D, GH, GW = grid.shape
    jj, ii = np.meshgrid(np.arange(w), np.arange(h) + row_offset)
    out = np.empty_like(x)
    for n in range(b):
        cx = np.clip((jj + 0.5) / w * GW - 0.5, 0, GW - 1)
        cy = np.clip((ii + 0.5) / full_height * GH - 0.5, 0, GH - 1)
        cz = np.clip(guide[n, 0] * D - 0.5, 0, D - 1)
        x0, y0, z0 = (np.floor(c).astype(int) for c in (cx, cy, cz))
        x1, y1, z1 = np.minimum(x0 + 1, GW - 1), np.minimum(y0 + 1, GH - 1), np.minimum(z0 + 1, D - 1)
        fx, fy, fz = cx - x0, cy - y0, cz - z0
        A = np.zeros((12, h, w))
        for zi, wz in ((z0, 1 - fz), (z1, fz)):
            for yi, wy in ((y0, 1 - fy), (y1, fy)):
                for xi, wx in ((x0, 1 - fx), (x1, fx)):
                    A += grid[n][:, zi, yi, xi] * (wz * wy * wx)
        A = A.reshape(3, 4, h, w)
        out[n] = (A[:, :3] * x[n][None]).sum(1) + A[:, 3]
    return out


def test_bilateral_grid_apply_matches_direct_trilinear():
    g = gen(7)
    x = torch.rand(2, 3, 11, 7, generator=g)
    grid = torch.randn(2, 12, 4, 3, 5, generator=g) * 0.3 + affine_identity_grid(4, 3, 5)
    guide = torch.rand(2, 1, 11, 7, generator=g) * 1.2 - 0.1  # includes out-of-range guides
    out = bilateral_grid_apply(x, grid, guide)
    assert out.shape == (2, 3, 11, 7)
    np.testing.assert_allclose(out.numpy(), grid_reference(x, grid, guide), rtol=0, atol=1e-5)


def test_identity_grid_is_identity():
    g = gen(8)
    x = torch.rand(1, 3, 19, 13, generator=g)
    out = bilateral_grid_apply(x, affine_identity_grid(8, 16, 16), torch.rand(1, 1, 19, 13, generator=g))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_strips_with_row_offset_equal_the_whole_image():
    g = gen(9)
    x = torch.rand(1, 3, 20, 9, generator=g)
    grid = torch.randn(1, 12, 3, 4, 4, generator=g)
    guide = torch.rand(1, 1, 20, 9, generator=g)
    whole = bilateral_grid_apply(x, grid, guide, chunk_pixels=None)
    top = bilateral_grid_apply(x[:, :, :7], grid, guide[:, :, :7], row_offset=0, full_height=20)
    bottom = bilateral_grid_apply(x[:, :, 7:], grid, guide[:, :, 7:], row_offset=7, full_height=20)
    torch.testing.assert_close(torch.cat([top, bottom], dim=2), whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        bottom.numpy(), grid_reference(x[:, :, 7:], grid, guide[:, :, 7:], 7, 20), rtol=0, atol=1e-5
    )
    with pytest.raises(ValueError, match="do not fit"):
        bilateral_grid_apply(x, grid, guide, row_offset=5, full_height=20)


@pytest.mark.parametrize("grad", [False, True])
def test_chunked_equals_unchunked(grad):
    g = gen(10)
    x = torch.rand(2, 3, 23, 10, generator=g)
    grid = torch.randn(2, 12, 3, 4, 4, generator=g).requires_grad_(grad)
    lut = (lut3d_identity(5) + 0.05 * torch.randn(2, 3, 5, 5, 5, generator=g)).requires_grad_(grad)
    guide = torch.rand(2, 1, 23, 10, generator=g)

    def run(chunk):
        y = bilateral_grid_apply(x, grid, guide, chunk_pixels=chunk)
        return lut3d_apply(y, lut, chunk_pixels=chunk)

    with torch.set_grad_enabled(grad):
        full, chunked = run(None), run(35)  # 35 px → 3-row chunks, the last one short
    torch.testing.assert_close(chunked, full, rtol=0, atol=0)
    if grad:
        ga = torch.autograd.grad(full.square().sum(), (grid, lut))
        gb = torch.autograd.grad(chunked.square().sum(), (grid, lut))
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_map_row_chunks_covers_every_row_once():
    seen = []

    def fn(r0, r1):
        seen.append((r0, r1))
        return torch.arange(r0, r1, dtype=torch.float32).view(1, r1 - r0, 1).expand(1, r1 - r0, 4)

    out = map_row_chunks(fn, 10, 4, 12)  # 3 rows per chunk
    assert seen == [(0, 3), (3, 6), (6, 9), (9, 10)]
    torch.testing.assert_close(out[0, :, 0], torch.arange(10.0))


def test_bilateral_gradcheck():
    g = gen(11)
    x = torch.rand(1, 3, 4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    grid = torch.randn(1, 12, 2, 2, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    guide = (torch.rand(1, 1, 4, 3, generator=g, dtype=torch.float64) * 0.6 + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(bilateral_grid_apply, (x, grid, guide), eps=1e-6, atol=1e-6)


def test_bilateral_rejects_bad_shapes():
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="grid must be"):
        bilateral_grid_apply(x, torch.rand(1, 9, 2, 2, 2), torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="guide must be"):
        bilateral_grid_apply(x, torch.rand(1, 12, 2, 2, 2), torch.rand(1, 1, 4, 5))
