"""Explicit device choice for model steps: asking for CUDA where none exists is an error,
never a silent fallback to the CPU."""
from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """The requested device cannot be used here."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available else CPU; ``cuda``/``cuda:N`` must exist."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name} was requested but this machine has no usable CUDA device "
                f"(torch {torch.__version__}, cuda build: {torch.version.cuda or 'none'}); use --device cpu or auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    raise DeviceError(f"--device must be one of auto, cpu, cuda[:N]; got {name!r}")
