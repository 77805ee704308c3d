"""LUT reader/writer and application, checked against colour-science (reader, writer,
trilinear and tetrahedral interpolators) and Pillow's Color3DLUT."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from chromabeam.transforms.ops.lut import (
    LUT3D,
    apply_lut,
    apply_lut_tetrahedral,
    format_cube,
    hald_lattice,
    identity_lut,
    identity_table,
    lut_from_function,
    parse_cube,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # colour warns about missing matplotlib
    import colour
    from colour.algebra import table_interpolation_tetrahedral, table_interpolation_trilinear


def _colour_table(size: int, seed: int = 0) -> np.ndarray:
    """A realistic (smooth, graded) LUT in colour-science's [r, g, b] layout."""
    t = colour.LUT3D.linear_table(size)
    mix = np.array([[0.9, 0.08, 0.02], [0.05, 0.9, 0.05], [0.0, 0.12, 0.88]])
    t = np.clip(t @ mix.T, 0, 1) ** np.array([0.85, 1.0, 1.15])
    return 0.03 + 0.94 * t


def _to_ours(colour_table: np.ndarray) -> np.ndarray:
    return colour_table.transpose(2, 1, 0, 3)


def _pixels(images: torch.Tensor) -> np.ndarray:
    return images.movedim(-3, -1).reshape(-1, 3).double().numpy()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 20, generator=g)
    x[0, :, 0, :4] = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.5], [0.0, 1.0, 0.0, 1.0]])
    return x


def test_colour_written_cube_parses_identically(tmp_path):
    table = _colour_table(17)
    lut = colour.LUT3D(table, name="graded look", domain=np.array([[0.0, -0.1, 0.0], [1.0, 1.2, 2.0]]), comments=["made by colour", "second"])
    path = tmp_path / "look.cube"
    colour.write_LUT(lut, str(path))
    ours = parse_cube(path.read_text(), name=str(path))
    assert ours.size == 17
    np.testing.assert_allclose(ours.table, _to_ours(table), atol=1e-6, rtol=0)
    assert ours.domain_min == (0.0, -0.1, 0.0) and ours.domain_max == (1.0, 1.2, 2.0)
    assert ours.title == "graded look"
    assert ours.comments == ("made by colour", "second")


@pytest.mark.parametrize("method", ["volume", "tiled"])
def test_apply_matches_colour_trilinear(images, method):
    table = _colour_table(33)
    reference = colour.LUT3D(table).apply(_pixels(images), interpolator=table_interpolation_trilinear)
    out = apply_lut(images, _to_ours(table).astype(np.float32), method=method)
    assert out.shape == images.shape and out.dtype == torch.float32
    np.testing.assert_allclose(_pixels(out), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [2, 3, 5, 17, 33])
def test_random_tables_match_colour(images, size):
    # random tables are the worst case (neighbouring nodes differ by up to 1): the
    # volume path stays at float rounding, the tiled CPU path keeps ~2e-5 of a lattice
    # step because its texel coordinates grow as S**1.5 (documented in lut.py)
    table = np.random.default_rng(size).random((size, size, size, 3)).astype(np.float32)
    ref = colour.LUT3D(table.transpose(2, 1, 0, 3).astype(np.float64))
    tri = ref.apply(_pixels(images), interpolator=table_interpolation_trilinear)
    tet = ref.apply(_pixels(images), interpolator=table_interpolation_tetrahedral)
    np.testing.assert_allclose(_pixels(apply_lut(images, table, method="volume")), tri, atol=1e-6, rtol=0)
    np.testing.assert_allclose(_pixels(apply_lut(images, table, method="tiled")), tri, atol=1e-4, rtol=0)
    np.testing.assert_allclose(_pixels(apply_lut_tetrahedral(images, table)), tet, atol=1e-6, rtol=0)


def test_domain_is_honoured_and_outside_values_clamped():
    table = _colour_table(9)
    domain = np.array([[-0.2, 0.0, 0.1], [1.0, 2.0, 0.9]])
    ref = colour.LUT3D(table, domain=domain)
    x = torch.linspace(-0.3, 1.3, 3 * 40).reshape(1, 3, 8, 5)
    # apply_lut clamps its input images to [0, 1] only through the domain; outputs to [0, 1]
    expected = np.clip(ref.apply(_pixels(x), interpolator=table_interpolation_trilinear), 0, 1)
    ours = LUT3D(_to_ours(table), tuple(domain[0]), tuple(domain[1]))
    np.testing.assert_allclose(_pixels(apply_lut(x, ours, method="volume")), expected, atol=1e-6)
    np.testing.assert_allclose(_pixels(apply_lut(x, ours)), expected, atol=1e-5)


def test_format_cube_reads_back_in_colour(tmp_path):
    table = _to_ours(_colour_table(11)).astype(np.float32)
    lut = LUT3D(table, (0.0, 0.0, -0.5), (1.0, 1.5, 1.0), title="ours", comments=("a comment",))
    path = tmp_path / "ours.cube"
    path.write_text(format_cube(lut))
    back = colour.read_LUT(str(path))
    assert isinstance(back, colour.LUT3D)
    np.testing.assert_allclose(back.table, table.transpose(2, 1, 0, 3), atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.domain, [[0, 0, -0.5], [1, 1.5, 1]])
    assert back.name == "ours" and back.comments == ["a comment"]
    again = parse_cube(format_cube(lut))
    np.testing.assert_allclose(again.table, table, atol=1e-7, rtol=0)
    assert (again.domain_min, again.domain_max, again.title) == (lut.domain_min, lut.domain_max, lut.title)


def test_cube_rows_are_red_fastest():
    text = format_cube(identity_lut(2))
    rows = [line for line in text.splitlines() if line[0].isdigit() or line[0] == "-"]
    first = [tuple(float(v) for v in row.split()) for row in rows[-8:]]
    assert first[:3] == [(0, 0, 0), (1, 0, 0), (0, 1, 0)]
    assert first[4] == (0, 0, 1)


CUBE_OK = """TITLE "t"
# comment
LUT_3D_SIZE 2
0 0 0
1 0 0
0 1 0
1 1 0
0 0 1
1 0 1
0 1 1
1 1 1
"""


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        (CUBE_OK.replace("1 1 1\n", ""), 10, "needs 8 table rows, found 7"),
        (CUBE_OK + "0.5 0.5 0.5\n", 12, "needs 8 table rows, found 9"),
        (CUBE_OK.replace("1 0 1\n", "1 zero 1\n"), 9, "not a number: 'zero'"),
        (CUBE_OK.replace("0 1 0\n", "0 1\n"), 6, "expected 3 numbers"),
        (CUBE_OK.replace("LUT_3D_SIZE 2\n", ""), 3, "before LUT_3D_SIZE"),
        ("TITLE \"x\"\n# nothing\n", 2, "no LUT_3D_SIZE"),
        (CUBE_OK.replace("LUT_3D_SIZE 2", "LUT_1D_SIZE 2"), 3, "1D .cube LUTs are not supported"),
        (CUBE_OK.replace("LUT_3D_SIZE 2", "LUT_3D_SIZE two"), 3, "LUT_3D_SIZE needs one integer"),
        (CUBE_OK.replace("LUT_3D_SIZE 2", "LUT_3D_SIZE 1"), 3, "LUT_3D_SIZE must be in [2, 256]"),
        (CUBE_OK.replace("# comment", "DOMAIN_MIN 0 0"), 2, "DOMAIN_MIN needs 3 numbers"),
        (CUBE_OK + "DOMAIN_MAX 1 1 1\n", 12, "after the table data started"),
        (CUBE_OK.replace("# comment", "LUT_SHAPE 3"), 2, "unknown keyword 'LUT_SHAPE'"),
    ],
)
def test_malformed_cube_errors_name_the_line(text, line, fragment):
    with pytest.raises(ValueError) as err:
        parse_cube(text, name="bad.cube")
    message = str(err.value)
    assert message.startswith(f"bad.cube: line {line}:"), message
    assert fragment in message


def test_resolve_input_range_and_inline_comments():
    text = CUBE_OK.replace("# comment", "LUT_3D_INPUT_RANGE 0.0 2.0").replace("1 1 1\n", "1 1 1   # white\n")
    lut = parse_cube(text)
    assert lut.domain_max == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(lut.table, identity_table(2))


def test_batched_equals_per_image(images):
    table = _to_ours(_colour_table(17)).astype(np.float32)
    batch = torch.stack([images, images.flip(-1)])  # (2, 2, 3, H, W)
    out = apply_lut(batch, table)
    for i in range(2):
        for j in range(2):
            single = apply_lut(batch[i, j], table)
            assert torch.allclose(out[i, j], single, atol=1e-6, rtol=0)
    single_tet = apply_lut_tetrahedral(batch[1, 0], table)
    assert torch.allclose(apply_lut_tetrahedral(batch, table)[1, 0], single_tet, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [2, 3, 7, 17, 33, 65])
def test_identity_of_any_size_is_identity(images, size):
    # trilinear and tetrahedral interpolation reproduce linear functions exactly
    lut = identity_lut(size)
    for method in ("volume", "tiled"):
        assert torch.allclose(apply_lut(images, lut, method=method), images, atol=2e-6, rtol=0)
    assert torch.allclose(apply_lut_tetrahedral(images, lut), images, atol=2e-6, rtol=0)


def test_numpy_tensor_and_lut3d_tables_agree(images):
    table = _to_ours(_colour_table(17)).astype(np.float32)
    expected = apply_lut(images, LUT3D(table))
    assert torch.equal(apply_lut(images, table), expected)
    assert torch.equal(apply_lut(images, torch.from_numpy(table)), expected)
    assert torch.allclose(apply_lut(images, torch.from_numpy(table).double(), method="volume"), apply_lut(images, table, method="volume"), atol=1e-6)


def test_strength_blends_with_identity(images):
    table = _to_ours(_colour_table(9)).astype(np.float32)
    full = apply_lut(images, table)
    assert torch.equal(apply_lut(images, table, strength=0.0), images)
    assert torch.allclose(apply_lut(images, table, strength=0.25), images + 0.25 * (full - images), atol=1e-6)
    with pytest.raises(ValueError, match="strength"):
        apply_lut(images, table, strength=1.5)


def test_matches_pillow_color3dlut():
    # Pillow's Color3DLUT takes the same red-fastest flat order and interpolates
    # trilinearly in 16-bit fixed point on 8-bit images
    table = _to_ours(_colour_table(17)).astype(np.float32)
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(arr).filter(ImageFilter.Color3DLUT(17, table.reshape(-1).tolist())))
    x = torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)
    ours = (apply_lut(x, table) * 255).round().permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - pil.astype(int)).max() <= 1


def test_lut_from_function_captures_on_lattice():
    lut = lut_from_function(lambda im: im**2 * torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1), size=33, title="sq")
    expected = identity_table(33) ** 2 * np.array([1.0, 0.5, 0.25], dtype=np.float32)
    np.testing.assert_allclose(lut.table, expected, atol=1e-7)
    assert lut.title == "sq"
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    # trilinear error of x**2 on a step of 1/32 is at most h**2/4 per axis
    assert torch.allclose(apply_lut(x, lut), x**2 * torch.tensor([1.0, 0.5, 0.25]).view(3, 1, 1), atol=(1 / 32) ** 2 / 4)
    lattice = hald_lattice(3)
    assert lattice.shape == (1, 3, 9, 3) and torch.equal(lattice[0, :, 5, 1], torch.tensor([0.5, 1.0, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        lut_from_function(lambda im: im[..., :2], size=5)


def test_input_validation():
    table = identity_table(5)
    with pytest.raises(ValueError, match=r"\(\*, 3, H, W\)"):
        apply_lut(torch.rand(4, 8, 8), table)
    with pytest.raises(ValueError, match="floating point"):
        apply_lut(torch.zeros(3, 4, 4, dtype=torch.uint8), table)
    with pytest.raises(ValueError, match=r"\(S, S, S, 3\)"):
        apply_lut(torch.rand(3, 4, 4), np.zeros((4, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="method"):
        apply_lut(torch.rand(3, 4, 4), table, method="cubic")
    with pytest.raises(ValueError, match="NaN"):
        LUT3D(np.full((2, 2, 2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="domain"):
        LUT3D(table, (0, 0, 0), (1, 0, 1))


def test_out_of_range_inputs_are_clamped():
    x = torch.tensor([-0.5, 1.5, 0.5]).view(3, 1, 1).expand(3, 2, 2).contiguous()
    out = apply_lut(x, identity_lut(5))
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 0.5]).view(3, 1, 1).expand(3, 2, 2), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(images):
    table = _to_ours(_colour_table(33)).astype(np.float32)
    cpu = apply_lut(images, table, method="volume")
    gpu = apply_lut(images.cuda(), table)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
    assert torch.allclose(apply_lut_tetrahedral(images.cuda(), table).cpu(), apply_lut_tetrahedral(images, table), atol=1e-5)


# --------------------------------------------------------------------------- fit_lut_from_pairs

def test_fit_lut_from_pairs_fits_the_identity_exactly_and_a_curve_closely():
    from chromabeam.transforms.ops.dncm import lut3d_apply, lut3d_identity
    from chromabeam.transforms.ops.lut import fit_lut_from_pairs

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    torch.testing.assert_close(fit_lut_from_pairs([(x, x)], 9), lut3d_identity(9), rtol=0, atol=1e-6)
    target = x ** 0.7 * torch.tensor([1.0, 0.9, 0.8]).view(1, 3, 1, 1)  # a tone curve and a tint
    table = fit_lut_from_pairs([(x[:1], target[:1]), (x[1], target[1])], 17)  # batched and (3, H, W) pairs
    assert table.shape == (3, 17, 17, 17) and table.dtype == torch.float32
    err = (lut3d_apply(x, table[None]) - target).abs()
    assert err.mean() < 2e-3 and err.max() < 0.06, (err.mean(), err.max())  # max: the steep curve near 0


def test_fit_lut_from_pairs_fills_colours_nothing_landed_near():
    from chromabeam.transforms.ops.lut import fit_lut_from_pairs

    dark = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.3
    table = fit_lut_from_pairs([(dark, dark + 0.1)], 9)  # only the dark corner is observed
    assert torch.isfinite(table).all()
    # the observed change (+0.1) is carried out to the unobserved lattice points
    torch.testing.assert_close(table[:, -1, -1, -1], torch.full((3,), 1.1), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="equal"):
        fit_lut_from_pairs([(dark, dark[:, :2])], 9)
    with pytest.raises(ValueError, match="no pixels"):
        fit_lut_from_pairs([], 9)
