"""Colour-space conversions for sRGB images: pure, batched, differentiable torch ops.

Images are ``(*, 3, H, W)`` tensors; device and dtype follow the input. The constants
are the ones colour-science uses, so results agree with ``colour.sRGB_to_XYZ`` (which
applies the sRGB decoding CCTF by default) and ``colour.XYZ_to_Lab``:

- sRGB → XYZ uses the IEC 61966-2-1 matrix rounded to 4 decimals (colour's
  ``RGB_COLOURSPACES['sRGB'].matrix_RGB_to_XYZ``), so sRGB white maps to
  XYZ (0.9505, 1.0, 1.089);
- XYZ → sRGB uses the exact inverse of that matrix, so conversions round-trip; colour's
  ``XYZ_to_sRGB`` instead uses the separately rounded IEC inverse (differs by ≤3e-4);
- Lab uses the D65 white from its chromaticity (0.3127, 0.3290) → (0.95047, 1.0, 1.08883).
  The two whites differ in the 5th decimal, so sRGB white is L*=100, a*≈0.0077, b*≈0.0035,
  exactly as in colour-science.

Every power/root is evaluated on a clamped argument inside ``torch.where`` so that the
branch that is not selected never produces NaN or infinite gradients (e.g. at 0).
Values outside [0, 1] are not clipped: both transfer functions extend linearly below
their knee and as a power above 1, which colour-grade code relies on.
"""
from __future__ import annotations

import torch

__all__ = [
    "srgb_to_linear",
    "linear_to_srgb",
    "rgb_to_xyz",
    "xyz_to_rgb",
    "xyz_to_lab",
    "lab_to_xyz",
    "rgb_to_lab",
    "lab_to_rgb",
    "rgb_to_luma",
]

# IEC 61966-2-1 linear sRGB → XYZ (D65), as stored by colour-science.
_RGB_TO_XYZ = (
    (0.4124, 0.3576, 0.1805),
    (0.2126, 0.7152, 0.0722),
    (0.0193, 0.1192, 0.9505),
)
_RGB_TO_XYZ_T = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)
_XYZ_TO_RGB_T = torch.linalg.inv(_RGB_TO_XYZ_T)

# CIE 1931 2° D65 white point (x, y) = (0.3127, 0.3290) as XYZ with Y = 1.
_D65_XY = (0.3127, 0.3290)
D65_WHITE = (_D65_XY[0] / _D65_XY[1], 1.0, (1.0 - _D65_XY[0] - _D65_XY[1]) / _D65_XY[1])

# CIE 1976 constants in their exact rational form: epsilon = (6/29)^3, kappa/116 = 841/108.
_LAB_EPS = (24.0 / 116.0) ** 3
_LAB_SLOPE = 841.0 / 108.0
_LAB_DELTA = 24.0 / 116.0  # f(epsilon): the inverse function's knee

# Rec. 709 / sRGB luma weights (the Y row of the sRGB matrix).
_LUMA = _RGB_TO_XYZ[1]

_SRGB_KNEE_LIN = 0.0031308  # linear value where the OETF switches to the power law
# Encoded knee as colour-science defines it (= OETF(0.0031308) = 0.040449936), not the
# rounded 0.04045 of the standard; the curves differ there by ~1e-8 either way.
_SRGB_KNEE_ENC = 12.92 * _SRGB_KNEE_LIN


def _check_float(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_image(x: torch.Tensor, name: str = "image") -> None:
    _check_float(x, name)
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name} must have shape (*, 3, H, W), got {tuple(x.shape)}")


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3×3 matrix over the channel axis of a ``(*, 3, H, W)`` tensor."""
    m = m.to(device=x.device, dtype=x.dtype)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def _white(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(D65_WHITE, device=x.device, dtype=x.dtype).view(3, 1, 1)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB decoding (EOTF, IEC 61966-2-1), elementwise: encoded → linear, any shape.

    Below the knee (≈0.04045) the curve is linear, so negative inputs stay finite.
    """
    _check_float(x, "x")
    power = ((x.clamp(min=_SRGB_KNEE_ENC) + 0.055) / 1.055) ** 2.4
    return torch.where(x <= _SRGB_KNEE_ENC, x / 12.92, power)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """sRGB encoding (inverse EOTF), elementwise: linear → encoded, any shape."""
    _check_float(x, "x")
    power = 1.055 * x.clamp(min=_SRGB_KNEE_LIN) ** (1.0 / 2.4) - 0.055
    return torch.where(x <= _SRGB_KNEE_LIN, x * 12.92, power)


def rgb_to_xyz(rgb: torch.Tensor) -> torch.Tensor:
    """Encoded sRGB ``(*, 3, H, W)`` in [0, 1] → CIE XYZ (D65, Y of white = 1), same shape.

    Applies the decoding CCTF first, like ``colour.sRGB_to_XYZ`` does by default.
    """
    _check_image(rgb, "rgb")
    return _mix(_RGB_TO_XYZ_T, srgb_to_linear(rgb))


def xyz_to_rgb(xyz: torch.Tensor) -> torch.Tensor:
    """CIE XYZ (D65) ``(*, 3, H, W)`` → encoded sRGB, same shape; not clipped to [0, 1]."""
    _check_image(xyz, "xyz")
    return linear_to_srgb(_mix(_XYZ_TO_RGB_T, xyz))


def xyz_to_lab(xyz: torch.Tensor) -> torch.Tensor:
    """CIE XYZ ``(*, 3, H, W)`` (Y in [0, 1]) → CIELAB (L* in [0, 100]) for the D65 white."""
    _check_image(xyz, "xyz")
    t = xyz / _white(xyz)
    f = torch.where(
        t > _LAB_EPS,
        t.clamp(min=_LAB_EPS) ** (1.0 / 3.0),  # clamped: cube root has infinite slope at 0
        _LAB_SLOPE * t + 16.0 / 116.0,
    )
    fx, fy, fz = f.unbind(-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_xyz(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB ``(*, 3, H, W)`` (D65 white) → CIE XYZ with Y of white = 1, same shape."""
    _check_image(lab, "lab")
    L, a, b = lab.unbind(-3)
    fy = (L + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, fy - b / 200.0), dim=-3)
    t = torch.where(f > _LAB_DELTA, f**3, (f - 16.0 / 116.0) / _LAB_SLOPE)
    return t * _white(lab)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Encoded sRGB ``(*, 3, H, W)`` in [0, 1] → CIELAB ``(*, 3, H, W)`` (L*, a*, b*), D65.

    Equals ``colour.XYZ_to_Lab(colour.sRGB_to_XYZ(rgb))`` (channels last there).
    """
    return xyz_to_lab(rgb_to_xyz(rgb))


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB ``(*, 3, H, W)`` (D65) → encoded sRGB, same shape.

    Out-of-gamut colours come back outside [0, 1]; clip them if you need a displayable image.
    """
    return xyz_to_rgb(lab_to_xyz(lab))


def rgb_to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """Rec. 709 luma Y' = 0.2126 R' + 0.7152 G' + 0.0722 B' of encoded sRGB.

    ``(*, 3, H, W)`` → ``(*, 1, H, W)``. Computed on the gamma-encoded values (luma, not
    relative luminance; for luminance use ``rgb_to_xyz(rgb)[..., 1:2, :, :]``).
    """
    _check_image(rgb, "rgb")
    w = torch.tensor(_LUMA, device=rgb.device, dtype=rgb.dtype)
    return torch.einsum("c,...chw->...hw", w, rgb).unsqueeze(-3)
