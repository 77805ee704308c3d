"""chromabeam.transforms.ops.style — curve DNCM (per-channel piecewise-linear basis).

References are independent of the fast path: the explicit lift ``φ(x)`` is checked
against numpy's ``np.interp`` (piecewise-linear interpolation of each hat function), and
the fast gather-based ``apply_curves`` against the unfolded float64 product
``φ(x)·P·T·Q``.
"""
import numpy as np
import pytest
import torch

from chromabeam.transforms.ops.dncm import dncm_apply
from chromabeam.transforms.ops.style import (
    apply_curves, curve_basis, curve_dncm_apply, fold_curves, identity_curve_embedding,
)


def _unfolded(x, P, T, Q, knots):
    """φ(x)·P·T·Q evaluated pixel by pixel in float64, no folding."""
    phi = curve_basis(x.double(), knots)  # (B, 3K, H, W)
    b, m, h, w = phi.shape
    rows = phi.permute(0, 2, 3, 1).reshape(b, h * w, m)
    T = T if T.ndim == 3 else T[None]
    out = rows @ P.double() @ T.double() @ Q.double()
    return out.reshape(b, h, w, 3).permute(0, 3, 1, 2)


def test_basis_is_hat_functions_like_numpy_interp():
    K = 6
    x = torch.rand(1, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    phi = curve_basis(x, K).numpy()
    knots = np.linspace(0, 1, K)
    for ch in range(3):
        for j in range(K):
            hat = np.interp(x[0, ch].numpy(), knots, np.eye(K)[j])
            np.testing.assert_allclose(phi[0, ch * K + j], hat, rtol=0, atol=1e-6)
    # a partition of unity: the basis reproduces constants and, with E, the identity
    np.testing.assert_allclose(phi.reshape(3, K, 7, 9).sum(1), 1.0, atol=1e-6)


def test_identity_p_t_q_gives_identity():
    torch.manual_seed(1)
    K, k = 8, 16
    R, _ = torch.linalg.qr(torch.randn(k, 3))
    P, Q = identity_curve_embedding(K) @ R.T, R  # φ(x)·E·Rᵀ·I·R = x
    x = torch.rand(2, 3, 33, 17)
    torch.testing.assert_close(curve_dncm_apply(x, P, torch.eye(k), Q), x, rtol=0, atol=2e-6)


def test_fast_apply_matches_unfolded_product_with_extrapolation():
    g = torch.Generator().manual_seed(2)
    K, k = 5, 7
    x = torch.rand(3, 3, 19, 23, generator=g) * 1.6 - 0.3  # leaves [0, 1]: end segments extrapolate
    P, T, Q = torch.randn(3 * K, k, generator=g), torch.randn(3, k, k, generator=g), torch.randn(k, 3, generator=g)
    ref = _unfolded(x, P, T, Q, K)
    out = curve_dncm_apply(x, P, T, Q, chunk_pixels=100)  # several row chunks
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    # and the folded map is exactly those curves
    torch.testing.assert_close(apply_curves(x, fold_curves(P, T, Q), chunk_pixels=None), out, rtol=1e-5, atol=1e-5)


def test_gradients_match_the_unfolded_product():
    g = torch.Generator().manual_seed(3)
    K, k = 4, 5
    x0 = torch.rand(2, 3, 6, 5, generator=g)
    P0, T0, Q0 = torch.randn(3 * K, k, generator=g), torch.randn(2, k, k, generator=g), torch.randn(k, 3, generator=g)
    w = torch.randn(2, 3, 6, 5, generator=g)

    def grads(fn, dtype):
        ts = [t.clone().to(dtype).requires_grad_(True) for t in (x0, P0, T0, Q0)]
        (fn(*ts) * w.to(dtype)).sum().backward()
        return [t.grad for t in ts]

    fast = grads(lambda x, P, T, Q: curve_dncm_apply(x, P, T, Q), torch.float64)
    ref = grads(lambda x, P, T, Q: _unfolded(x, P, T, Q, K), torch.float64)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_two_knots_span_affine_maps_and_k2_basis_matches_linear_dncm_on_lifted_input():
    # K = 2: φ(x) = [1-x, x] per channel, so the map is affine in x; a linear map M (3x3)
    # is the special case P = E·M-rows, which must agree with the paper's linear DNCM.
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 11, 13, generator=g)
    M = torch.randn(3, 3, generator=g)
    P = identity_curve_embedding(2) @ M  # (6, 3)
    out = curve_dncm_apply(x, P, torch.eye(3), torch.eye(3))
    torch.testing.assert_close(out, dncm_apply(x, M, torch.eye(3), torch.eye(3)), rtol=1e-5, atol=1e-5)


def test_batch_broadcasting_and_errors():
    g = torch.Generator().manual_seed(5)
    K, k = 4, 6
    x = torch.rand(3, 3, 8, 8, generator=g)
    P, Q = torch.randn(3 * K, k, generator=g), torch.randn(k, 3, generator=g)
    T = torch.randn(3, k, k, generator=g)
    many = curve_dncm_apply(x[:1], P, T, Q)  # one content, three styles
    for i in range(3):
        torch.testing.assert_close(many[i:i + 1], curve_dncm_apply(x[:1], P, T[i], Q))
    with pytest.raises(ValueError, match="knots"):
        curve_basis(x, 1)
    with pytest.raises(ValueError, match="batch sizes"):
        curve_dncm_apply(torch.rand(2, 3, 4, 4), P, T, Q)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        apply_curves(torch.rand(3, 4, 4), torch.randn(12, 3))
    with pytest.raises(ValueError, match="3·knots"):
        fold_curves(torch.randn(10, k), torch.eye(k), Q)
