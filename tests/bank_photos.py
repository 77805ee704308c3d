"""Small photos and a small restorer configuration shared by the filter-bank tests."""
import numpy as np
import skimage.data
import torch
from PIL import Image

# a restorer small enough to train a bank head in seconds
SMALL = {"encoder": "stats", "view_size": 64, "width": 16, "lut_size": 9, "grid_size": 8, "lut_basis": 2}
PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry", "coins")


def photo(name: str, w: int, h: int) -> np.ndarray:
    """scikit-image's ``name`` as uint8 RGB ``(h, w, 3)``."""
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((w, h), Image.BILINEAR))


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` → float ``(1, 3, H, W)`` in [0, 1]."""
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255
