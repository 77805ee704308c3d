"""Full-reference image-quality metrics: PSNR, SSIM, CIEDE2000 and (optional) LPIPS.

Inputs are ``pred`` and ``target`` of the same shape ``(*, 3, H, W)``, floating point,
sRGB in [0, 1]; every metric returns one value per image, shape ``(*,)`` (a 0-d tensor
for a single ``(3, H, W)`` image). Device and dtype follow the inputs (float16/bfloat16
are computed in float32). Everything is batched torch, differentiable where it makes
sense, so the same functions serve manifests and training losses.

Reference implementations (the tests compare against them):
- ``psnr``  — ``skimage.metrics.peak_signal_noise_ratio``;
- ``ssim``  — ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1.0, channel_axis=...)``;
- ``delta_e2000`` — ``colour.delta_E(..., method='CIE 2000')`` on ``color.rgb_to_lab``.

LPIPS (AlexNet, v0.1 'lin' layers) is optional because its weights cannot be shipped:
``lpips_model`` loads them only from a local safetensors file named explicitly or by the
environment variable ``CHROMABEAM_LPIPS_WEIGHTS`` (never from torch hub, never a pickle).
The file holds float tensors under the names of
- torchvision's ``alexnet().state_dict()`` for the convolutions:
  ``features.{0,3,6,8,10}.{weight,bias}``;
- the ``lpips`` package's ``weights/v0.1/alex.pth``: ``lin{0..4}.model.1.weight``.
Merging those two state dicts and calling ``safetensors.torch.save_file`` produces it;
other tensors in the file (e.g. ``classifier.*``) are ignored.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from chromabeam.transforms.ops import color

__all__ = [
    "LPIPS_WEIGHTS_ENV",
    "AlexNetLPIPS",
    "LPIPSWeightsError",
    "compute_metrics",
    "delta_e2000",
    "delta_e2000_lab",
    "delta_e2000_map",
    "load_lpips",
    "lpips",
    "lpips_model",
    "psnr",
    "ssim",
    "ssim_map",
]

LPIPS_WEIGHTS_ENV = "CHROMABEAM_LPIPS_WEIGHTS"

# SSIM as in Wang et al. 2004 / skimage with gaussian_weights=True: 11 taps, sigma 1.5.
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = int(3.5 * _SSIM_SIGMA + 0.5)  # skimage: truncate=3.5 → radius 5
_SSIM_WIN = 2 * _SSIM_RADIUS + 1


# ----------------------------------------------------------------------------- checks


def _check_pair(pred: torch.Tensor, target: torch.Tensor, min_size: int = 1) -> None:
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.ndim < 3 or x.shape[-3] != 3:
            raise ValueError(f"{name} must have shape (*, 3, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < min_size:
            raise ValueError(
                f"{name} is {x.shape[-2]}×{x.shape[-1]} pixels; this metric needs at least "
                f"{min_size}×{min_size}"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if pred.dtype != target.dtype:
        raise ValueError(f"pred and target dtypes differ: {pred.dtype} vs {target.dtype}")
    if pred.device != target.device:
        raise ValueError(f"pred and target devices differ: {pred.device} vs {target.device}")


def _work_dtype(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 → float32: the variance terms of SSIM cancel badly in half."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ----------------------------------------------------------------------------- PSNR


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``(*, 3, H, W)`` × 2 → ``(*,)``.

    ``10·log10(data_range² / MSE)`` with the MSE over all channels and pixels of each image.
    Identical images have MSE 0 and give ``+inf`` (returned as is, not clipped).
    """
    _check_pair(pred, target)
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    p, t = _work_dtype(pred), _work_dtype(target)
    mse = (p - t).square().mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(data_range**2 / mse)


# ----------------------------------------------------------------------------- SSIM


def _reflect_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Indices padding a length-n axis by r with scipy.ndimage's 'reflect' (d c b a | a b c d)."""
    idx = torch.arange(-r, n + r, device=device)
    idx = torch.where(idx < 0, -idx - 1, idx)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def _gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 11-tap Gaussian (σ=1.5) of ``(B, C, H, W)``, reflect-padded like skimage."""
    r = _SSIM_RADIUS
    k = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (k / _SSIM_SIGMA) ** 2)
    k = k / k.sum()
    c, (h, w) = x.shape[1], x.shape[-2:]
    x = x.index_select(-2, _reflect_index(h, r, x.device))
    x = x.index_select(-1, _reflect_index(w, r, x.device))
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim_map(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """Per-pixel, per-channel SSIM, ``(*, 3, H, W)`` × 2 → ``(*, 3, H, W)``.

    Equals skimage's ``full=True`` image (Gaussian window 11×11, σ=1.5, K1=0.01,
    K2=0.03, population covariance, reflect padding); the border strip of width 5
    depends on the padding. Needs H, W ≥ 11. For a loss use ``1 - ssim_map(...).mean()``.
    In float32, pixels of flat regions can differ from a float64 evaluation by a few 1e-4
    (local variances are differences of moments); the image means agree to ~1e-6.
    """
    _check_pair(pred, target, min_size=_SSIM_WIN)
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    p, t = _work_dtype(pred), _work_dtype(target)
    lead, (h, w) = p.shape[:-3], p.shape[-2:]
    p, t = p.reshape(-1, 3, h, w), t.reshape(-1, 3, h, w)
    # Moments of mean-centred images: (co)variances are shift-invariant and E[x²] - E[x]²
    # cancels far less in float32 when E[x] is near 0.
    mp, mt = p.mean(dim=(-2, -1), keepdim=True), t.mean(dim=(-2, -1), keepdim=True)
    p, t = p - mp, t - mt
    # One grouped conv for the five local moments of all three channels.
    moments = _gaussian_blur(torch.cat((p, t, p * p, t * t, p * t), dim=1))
    ux, uy, uxx, uyy, uxy = moments.split(3, dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    ux, uy = ux + mp, uy + mt
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(*lead, 3, h, w)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image, ``(*, 3, H, W)`` × 2 → ``(*,)``; needs H, W ≥ 11.

    Like skimage, the map is averaged over the region that excludes the 5-pixel border
    (the window radius) and over the three channels.
    """
    r = _SSIM_RADIUS
    return ssim_map(pred, target, data_range)[..., r:-r, r:-r].mean(dim=(-3, -2, -1))


# ----------------------------------------------------------------------------- CIEDE2000


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not infinite) gradient at 0, for exact-match pixels in a loss."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), 0.0)


def _hue_deg(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Hue angle in [0, 360) degrees; 0 for a = b = 0 (CIE convention, finite gradient)."""
    zero = (a == 0) & (b == 0)
    h = torch.rad2deg(torch.atan2(b, torch.where(zero, torch.ones_like(a), a))) % 360.0
    return torch.where(zero, 0.0, h)


def delta_e2000_lab(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 (k_L = k_C = k_H = 1) between CIELAB images, ``(*, 3, H, W)`` × 2 → ``(*, H, W)``.

    Follows Sharma et al. 2005 exactly as ``colour.difference.delta_E_CIE2000`` does,
    including the hue conventions for zero chroma.
    """
    _check_pair(lab1, lab2)
    L1, a1, b1 = _work_dtype(lab1).unbind(-3)
    L2, a2, b2 = _work_dtype(lab2).unbind(-3)

    # sqrt(a² + b²) rather than hypot: hypot's gradient is NaN at a = b = 0.
    c_bar7 = ((_safe_sqrt(a1 * a1 + b1 * b1) + _safe_sqrt(a2 * a2 + b2 * b2)) / 2) ** 7
    g = 0.5 * (1 - _safe_sqrt(c_bar7 / (c_bar7 + 25.0**7)))
    ap1, ap2 = (1 + g) * a1, (1 + g) * a2
    cp1, cp2 = _safe_sqrt(ap1 * ap1 + b1 * b1), _safe_sqrt(ap2 * ap2 + b2 * b2)
    hp1, hp2 = _hue_deg(b1, ap1), _hue_deg(b2, ap2)

    cp_prod = cp1 * cp2
    achromatic = cp_prod == 0
    dh = hp2 - hp1
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(achromatic, 0.0, dh)
    dL, dC = L2 - L1, cp2 - cp1
    dH = 2 * _safe_sqrt(cp_prod) * torch.sin(torch.deg2rad(dh / 2))

    L_bar, c_bar_p = (L1 + L2) / 2, (cp1 + cp2) / 2
    h_sum = hp1 + hp2
    h_bar = torch.where(
        (hp1 - hp2).abs() <= 180,
        h_sum / 2,
        torch.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2),
    )
    h_bar = torch.where(achromatic, h_sum, h_bar)

    t = (
        1
        - 0.17 * torch.cos(torch.deg2rad(h_bar - 30))
        + 0.24 * torch.cos(torch.deg2rad(2 * h_bar))
        + 0.32 * torch.cos(torch.deg2rad(3 * h_bar + 6))
        - 0.20 * torch.cos(torch.deg2rad(4 * h_bar - 63))
    )
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    c_bar_p7 = c_bar_p**7
    r_c = 2 * _safe_sqrt(c_bar_p7 / (c_bar_p7 + 25.0**7))
    L50 = (L_bar - 50) ** 2
    s_l = 1 + 0.015 * L50 / torch.sqrt(20 + L50)
    s_c = 1 + 0.045 * c_bar_p
    s_h = 1 + 0.015 * c_bar_p * t
    r_t = -torch.sin(torch.deg2rad(2 * d_theta)) * r_c

    tl, tc, th = dL / s_l, dC / s_c, dH / s_h
    return _safe_sqrt(tl * tl + tc * tc + th * th + r_t * tc * th)


def delta_e2000_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel CIEDE2000 of sRGB images, ``(*, 3, H, W)`` × 2 → ``(*, H, W)``.

    Both images are converted with ``color.rgb_to_lab`` (sRGB D65 → CIELAB).
    """
    _check_pair(pred, target)
    p, t = _work_dtype(pred), _work_dtype(target)
    return delta_e2000_lab(color.rgb_to_lab(p), color.rgb_to_lab(t))


def delta_e2000(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CIEDE2000 over the pixels of each sRGB image, ``(*, 3, H, W)`` × 2 → ``(*,)``."""
    return delta_e2000_map(pred, target).mean(dim=(-2, -1))


# ----------------------------------------------------------------------------- LPIPS


class LPIPSWeightsError(ValueError):
    """The LPIPS weights file is missing, unreadable or does not fit the network."""


class _NetLin(nn.Module):
    """LPIPS 1×1 'lin' layer; index 1 keeps the lpips package's key ``lin{i}.model.1.weight``
    (index 0 is its dropout, which is the identity at inference)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class AlexNetLPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), inference only.

    ``forward(pred, target)``: ``(N, 3, H, W)`` × 2 in [0, 1] → ``(N,)``. Layers are
    torchvision's ``alexnet().features[0:12]`` (conv1–conv5 with their ReLUs and the two
    max-pools between them), tapped after each ReLU. Needs H, W ≥ 31.
    """

    # LPIPS ScalingLayer constants for inputs in [-1, 1]; not part of the weights file.
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)
    MIN_SIZE = 31  # smallest input for which the second max-pool still has an output
    CHANNELS = (64, 192, 384, 256, 256)
    _TAPS = (1, 4, 7, 9, 11)  # indices of relu1..relu5 in `features`

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        for i, c in enumerate(self.CHANNELS):
            self.add_module(f"lin{i}", _NetLin(c))
        self.weights_path: str | None = None
        self.weights_sha256: str | None = None

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        # [0, 1] → LPIPS input scaling; constants built in x's dtype so float64 stays exact.
        shift = torch.tensor(self.SHIFT, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        scale = torch.tensor(self.SCALE, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = ((2 * x - 1) - shift) / scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._TAPS:
                # Unit-normalize channels; vector_norm's backward is 0 (not NaN) at norm 0.
                out.append(x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-10))
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Separate passes (not one concatenated batch) so identical inputs give exactly 0.
        total = 0.0
        for i, (f0, f1) in enumerate(zip(self._taps(pred), self._taps(target))):
            total = total + getattr(self, f"lin{i}")((f0 - f1) ** 2).mean(dim=(-2, -1))
        return total.flatten()


def _resolve_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


def load_lpips(path: str | os.PathLike, device: torch.device | str = "cpu") -> AlexNetLPIPS:
    """Build ``AlexNetLPIPS`` from a local safetensors file; raise ``LPIPSWeightsError``.

    See the module docstring for the tensor names. Extra tensors are ignored; missing
    ones or wrong shapes are errors. The model is in eval mode with gradients disabled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = _resolve_device(device)
    path = Path(path)
    if not path.is_file():
        raise LPIPSWeightsError(f"LPIPS weights file not found: {path}")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise LPIPSWeightsError(f"{path} is not a readable safetensors file: {exc}") from exc

    model = AlexNetLPIPS()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise LPIPSWeightsError(
            f"LPIPS weights {path} lack {len(missing)} tensor(s): {', '.join(missing)}"
        )
    for name, ref in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(ref.shape) or not torch.is_floating_point(got):
            raise LPIPSWeightsError(
                f"LPIPS weights {path}: tensor {name} has shape {tuple(got.shape)} and dtype "
                f"{got.dtype}, expected a float tensor of shape {tuple(ref.shape)}"
            )
    model.load_state_dict({k: tensors[k].float() for k in expected})
    model.weights_path = str(path)
    model.weights_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return model.eval().requires_grad_(False).to(device)


def lpips_model(
    device: torch.device | str = "cpu", weights: str | os.PathLike | None = None
) -> tuple[AlexNetLPIPS | None, str | None]:
    """The LPIPS network, or ``(None, reason)`` when it cannot be had.

    ``weights`` is a local safetensors path; if None, ``$CHROMABEAM_LPIPS_WEIGHTS`` is
    used. Returns ``(model, None)`` on success and ``(None, reason)`` — a sentence a
    person can act on — when nothing is configured or the file is missing/invalid.
    Asking for CUDA where none exists raises ValueError (not a silent fallback).
    """
    device = _resolve_device(device)
    if weights is None:
        weights = os.environ.get(LPIPS_WEIGHTS_ENV) or None
    if weights is None:
        return None, (
            f"LPIPS disabled: no weights configured. Set {LPIPS_WEIGHTS_ENV} (or pass "
            "weights=) to a local .safetensors file holding torchvision AlexNet "
            "'features.{0,3,6,8,10}.{weight,bias}' and LPIPS v0.1 "
            "'lin{0..4}.model.1.weight' tensors"
        )
    try:
        return load_lpips(weights, device), None
    except LPIPSWeightsError as exc:
        return None, f"LPIPS disabled: {exc}"


def lpips(pred: torch.Tensor, target: torch.Tensor, model: AlexNetLPIPS) -> torch.Tensor:
    """LPIPS distance, ``(*, 3, H, W)`` × 2 in [0, 1] → ``(*,)``; 0 for identical images.

    ``model`` comes from ``lpips_model``/``load_lpips``; inputs move to its device and
    float32. Needs H, W ≥ 31.
    """
    if not isinstance(model, AlexNetLPIPS):
        raise ValueError(f"model must be an AlexNetLPIPS, got {type(model).__name__}")
    _check_pair(pred, target, min_size=AlexNetLPIPS.MIN_SIZE)
    lead, (h, w) = pred.shape[:-3], pred.shape[-2:]
    param = next(model.parameters())
    p = pred.reshape(-1, 3, h, w).to(device=param.device, dtype=param.dtype)
    t = target.reshape(-1, 3, h, w).to(device=param.device, dtype=param.dtype)
    return model(p, t).reshape(lead)


# ----------------------------------------------------------------------------- all at once


def compute_metrics(
    pred: torch.Tensor, target: torch.Tensor, lpips_model: AlexNetLPIPS | None = None
) -> dict[str, torch.Tensor | None]:
    """All manifest metrics for same-size images, ``(*, 3, H, W)`` × 2 → dict of ``(*,)``.

    Keys: ``psnr`` (dB, +inf for identical images), ``ssim``, ``delta_e2000`` and
    ``lpips``. A metric that is undefined for the image size (SSIM below 11 px, LPIPS
    below 31 px) or has no model (LPIPS) is None, so tiny images still get the others.
    Computed without autograd.
    """
    _check_pair(pred, target)
    small = min(pred.shape[-2:])
    with torch.no_grad():
        return {
            "psnr": psnr(pred, target),
            "ssim": ssim(pred, target) if small >= _SSIM_WIN else None,
            "delta_e2000": delta_e2000(pred, target),
            "lpips": lpips(pred, target, lpips_model)
            if lpips_model is not None and small >= AlexNetLPIPS.MIN_SIZE
            else None,
        }
