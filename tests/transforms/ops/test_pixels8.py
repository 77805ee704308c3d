"""transforms.ops.pixels8 — Pillow's 8-bit LUT against the float trilinear LUT, the
tabulated look, and input checks."""
import numpy as np
import pytest
import torch

from chromabeam.transforms.ops.dncm import lut3d_apply
from chromabeam.transforms.ops.lut import identity_table
from chromabeam.transforms.ops.pixels8 import lut_uint8, reduce_uint8, resize_uint8


def _pixels(h=37, w=53, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_lut_uint8_matches_float_trilinear_within_one_level():
    s = 9
    g = torch.linspace(0, 1, s)
    b, gg, r = torch.meshgrid(g, g, g, indexing="ij")
    lut = torch.stack([r ** 0.7, (gg * 0.9 + 0.05), (b ** 1.3) * 0.8 + 0.1 * r])  # (3, b, g, r), channel-mixing
    px = _pixels()
    got = lut_uint8(px, lut.permute(1, 2, 3, 0).numpy())
    x = torch.from_numpy(px).permute(2, 0, 1)[None].float() / 255
    want = (lut3d_apply(x, lut[None])[0].permute(1, 2, 0) * 255).round().clamp(0, 255).numpy()
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert got.shape == px.shape and got.dtype == np.uint8


def test_resize_and_checks():
    px = _pixels(30, 40)
    assert resize_uint8(px, (20, 15)).shape == (15, 20, 3)
    assert resize_uint8(px, (40, 30)) is px
    with pytest.raises(ValueError, match="uint8"):
        lut_uint8(px.astype(np.float32), np.zeros((2, 2, 2, 3)))
    with pytest.raises(ValueError, match=r"\(S, S, S, 3\)"):
        lut_uint8(px, np.zeros((2, 3, 2, 3)))


def test_reduce_is_the_mean_of_each_block():
    px = _pixels(31, 45, seed=2)
    got = reduce_uint8(px, 3)
    assert got.shape == (11, 15, 3) and got.dtype == np.uint8  # the last row of blocks is partial
    want = px[:30].reshape(10, 3, 15, 3, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(got[:10].astype(float) - want).max() < 1  # Pillow's fixed-point mean: within a level
    partial = px[30].reshape(15, 3, 3).astype(float).mean(axis=1)  # the last row's blocks: one pixel row
    assert np.abs(got[10].astype(float) - partial).max() < 1
    assert reduce_uint8(px, 1) is px
    with pytest.raises(ValueError, match="factor"):
        reduce_uint8(px, 0)


def test_look_applier_is_pillow_then_a_bit_identical_table():
    from chromabeam.transforms.ops.pixels8 import LookApplier

    rng = np.random.default_rng(3)
    table = np.clip(identity_table(9) ** 0.8 + rng.normal(0, 0.03, (9, 9, 9, 3)), 0, 1).astype(np.float32)
    images = [rng.integers(0, 256, (40 + i, 30, 3), dtype=np.uint8) for i in range(3)]
    look = LookApplier(table, switch_pixels=2000)  # the first image stays under the switch, the second passes it
    outs = [look(im) for im in images]
    assert look.tabulated and look.mapped_pixels == 40 * 30 + 41 * 30
    for im, out in zip(images, outs):
        assert out.shape == im.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, lut_uint8(im, table))
    never = LookApplier(table, switch_pixels=None)
    never(images[0]), never(images[1])
    assert not never.tabulated
    with pytest.raises(ValueError, match="table must be"):
        LookApplier(np.zeros((2, 2, 3)))
