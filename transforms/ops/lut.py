"""3D colour LUTs: ``.cube`` text reader/writer and batched torch application.

Table layout (the one choice every function here shares): ``table`` has shape
``(S, S, S, 3)`` indexed ``[b, g, r]``, i.e. the C-order flattening of the table is
exactly the row order of a ``.cube`` file (red varies fastest, blue slowest), and
``table[b, g, r] = f(r / (S-1), g / (S-1), b / (S-1))`` on the unit domain.
(colour-science stores the transpose ``[r, g, b]``; ``table.transpose(2, 1, 0, 3)``
converts between the two.)

Application is trilinear (the ``.cube`` convention, and what colour-science's
``LUT3D.apply`` and Pillow's ``Color3DLUT`` do); tetrahedral is available separately.
Inputs are clamped to the LUT domain, outputs to [0, 1].
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "LUT3D",
    "parse_cube",
    "format_cube",
    "identity_lut",
    "identity_table",
    "apply_lut",
    "apply_lut_tetrahedral",
    "lut_from_function",
    "hald_lattice",
    "fit_lut_from_pairs",
]

MAX_CUBE_SIZE = 256  # the .cube specification's upper bound for LUT_3D_SIZE
_CPU_SLAB_PIXELS = 1 << 20


@dataclass(frozen=True, eq=False)
class LUT3D:
    """A 3D LUT. ``table``: float32 ``np.ndarray`` of shape ``(S, S, S, 3)`` indexed
    ``[b, g, r]`` (red fastest, as in ``.cube`` files); ``domain_min``/``domain_max``:
    the input range per channel (R, G, B) mapped onto the lattice."""

    table: np.ndarray
    domain_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    domain_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    title: str = ""
    comments: tuple[str, ...] = ()
    # per-device prepared textures; not part of the value
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        table = np.asarray(self.table, dtype=np.float32)
        if table.ndim != 4 or table.shape[3] != 3 or not (
            table.shape[0] == table.shape[1] == table.shape[2]
        ):
            raise ValueError(f"LUT3D table must have shape (S, S, S, 3), got {table.shape}")
        if not 2 <= table.shape[0] <= MAX_CUBE_SIZE:
            raise ValueError(f"LUT3D size must be in [2, {MAX_CUBE_SIZE}], got {table.shape[0]}")
        if not np.isfinite(table).all():
            raise ValueError("LUT3D table contains NaN or infinite values")
        dmin = tuple(float(v) for v in self.domain_min)
        dmax = tuple(float(v) for v in self.domain_max)
        if len(dmin) != 3 or len(dmax) != 3 or not all(a < b for a, b in zip(dmin, dmax)):
            raise ValueError(f"LUT3D domain must satisfy min < max per channel, got {dmin} .. {dmax}")
        object.__setattr__(self, "table", np.ascontiguousarray(table))
        object.__setattr__(self, "domain_min", dmin)
        object.__setattr__(self, "domain_max", dmax)
        object.__setattr__(self, "comments", tuple(self.comments))

    @property
    def size(self) -> int:
        return int(self.table.shape[0])

    @property
    def has_unit_domain(self) -> bool:
        return self.domain_min == (0.0, 0.0, 0.0) and self.domain_max == (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- .cube text

_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _cube_error(name: str, lineno: int, problem: str) -> ValueError:
    return ValueError(f"{name}: line {lineno}: {problem}")


def _floats(tokens: list[str], name: str, lineno: int, what: str) -> list[float]:
    out = []
    for tok in tokens:
        try:
            value = float(tok)
        except ValueError:
            raise _cube_error(name, lineno, f"{what}: not a number: {tok!r}") from None
        if not math.isfinite(value):
            raise _cube_error(name, lineno, f"{what}: not a finite number: {tok!r}")
        out.append(value)
    return out


def parse_cube(text: str, name: str = "<cube>") -> LUT3D:
    """Parse the text of a 3D ``.cube`` file (Adobe/IRIDAS; Resolve's
    ``LUT_3D_INPUT_RANGE`` is accepted as the domain).

    Errors are ``ValueError`` naming ``name`` and the 1-based line number. 1D LUTs
    (``LUT_1D_SIZE``) are rejected: only 3D tables are supported.
    """
    title = ""
    comments: list[str] = []
    size = None
    dmin, dmax = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    rows: list[list[float]] = []
    first_data_line = None
    last_data_line = 0
    fast = None
    all_lines = text.splitlines()
    for lineno, raw in enumerate(all_lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line[1:].strip())
            continue
        head = line.split(None, 1)[0]
        if _KEYWORD.fullmatch(head) and head.upper() not in ("NAN", "INF", "INFINITY"):
            if rows:
                raise _cube_error(name, lineno, f"keyword {head} after the table data started")
            rest = line[len(head):].split("#", 1)[0].split() if head != "TITLE" else []
            if head == "TITLE":
                title = line[len("TITLE"):].strip()
                if len(title) >= 2 and title[0] == title[-1] == '"':
                    title = title[1:-1]
            elif head in ("LUT_1D_SIZE", "LUT_1D_INPUT_RANGE"):
                raise _cube_error(name, lineno, f"{head}: 1D .cube LUTs are not supported (3D only)")
            elif head == "LUT_3D_SIZE":
                if len(rest) != 1 or not rest[0].isdigit():
                    raise _cube_error(name, lineno, f"LUT_3D_SIZE needs one integer, got {rest}")
                size = int(rest[0])
                if not 2 <= size <= MAX_CUBE_SIZE:
                    raise _cube_error(name, lineno, f"LUT_3D_SIZE must be in [2, {MAX_CUBE_SIZE}], got {size}")
            elif head in ("DOMAIN_MIN", "DOMAIN_MAX"):
                if len(rest) != 3:
                    raise _cube_error(name, lineno, f"{head} needs 3 numbers, got {len(rest)}")
                values = _floats(rest, name, lineno, head)
                if head == "DOMAIN_MIN":
                    dmin = values
                else:
                    dmax = values
            elif head == "LUT_3D_INPUT_RANGE":
                if len(rest) != 2:
                    raise _cube_error(name, lineno, f"{head} needs 2 numbers, got {len(rest)}")
                lo, hi = _floats(rest, name, lineno, head)
                dmin, dmax = [lo] * 3, [hi] * 3
            else:
                raise _cube_error(name, lineno, f"unknown keyword {head!r}")
            continue
        tokens = line.split("#", 1)[0].split()
        if len(tokens) != 3:
            raise _cube_error(name, lineno, f"expected 3 numbers per table row, got {len(tokens)}")
        if size is None:
            raise _cube_error(name, lineno, "table data before LUT_3D_SIZE (missing size declaration)")
        if first_data_line is None:
            fast = _fast_rows(all_lines[lineno - 1:], size)
            if fast is not None:
                break
        rows.append(_floats(tokens, name, lineno, "table row"))
        if first_data_line is None:
            first_data_line = lineno
        last_data_line = lineno
    if size is None:
        raise _cube_error(name, max(1, len(all_lines)), "no LUT_3D_SIZE declaration found")
    if fast is not None:
        return LUT3D(fast, tuple(dmin), tuple(dmax), title=title, comments=tuple(comments))
    expected = size**3
    if len(rows) != expected:
        where = last_data_line or max(1, len(text.splitlines()))
        raise _cube_error(
            name, where, f"LUT_3D_SIZE {size} needs {expected} table rows, found {len(rows)}"
        )
    if not all(a < b for a, b in zip(dmin, dmax)):
        raise _cube_error(name, first_data_line or 1, f"DOMAIN_MIN {dmin} must be below DOMAIN_MAX {dmax}")
    table = np.asarray(rows, dtype=np.float64).reshape(size, size, size, 3).astype(np.float32)
    return LUT3D(table, tuple(dmin), tuple(dmax), title=title, comments=tuple(comments))


def _fast_rows(block: list[str], size: int) -> np.ndarray | None:
    """Vectorised read of a well-formed table block; None sends the caller down the
    line-by-line path, which names the offending line."""
    if any("#" in line for line in block):
        return None
    try:
        values = np.loadtxt(block, dtype=np.float64, ndmin=2)
    except ValueError:
        return None
    if values.shape != (size**3, 3) or not np.isfinite(values).all():
        return None
    return values.reshape(size, size, size, 3).astype(np.float32)


def format_cube(lut: LUT3D, decimals: int = 7) -> str:
    """Render ``lut`` as ``.cube`` text (TITLE, comments, LUT_3D_SIZE, DOMAIN_MIN/MAX,
    then S³ rows ``R G B`` with red varying fastest)."""
    if not isinstance(lut, LUT3D):
        raise ValueError(f"format_cube expects a LUT3D, got {type(lut).__name__}")
    fmt = f"{{:.{decimals}f}}"
    lines = []
    if lut.title:
        if '"' in lut.title or "\n" in lut.title:
            raise ValueError(f"a .cube TITLE cannot contain quotes or newlines: {lut.title!r}")
        lines.append(f'TITLE "{lut.title}"')
    for comment in lut.comments:
        lines.extend(f"# {part}" for part in str(comment).splitlines() or [""])
    lines.append(f"LUT_3D_SIZE {lut.size}")
    lines.append("DOMAIN_MIN " + " ".join(fmt.format(v) for v in lut.domain_min))
    lines.append("DOMAIN_MAX " + " ".join(fmt.format(v) for v in lut.domain_max))
    flat = lut.table.reshape(-1).astype(np.float64)
    row = f"%.{decimals}f %.{decimals}f %.{decimals}f\n"
    return "\n".join(lines) + "\n" + (row * lut.size**3) % tuple(flat.tolist())


# --------------------------------------------------------------------------- lattices

def identity_table(size: int) -> np.ndarray:
    """``(S, S, S, 3)`` float32 identity table, indexed ``[b, g, r]``."""
    if not isinstance(size, (int, np.integer)) or not 2 <= size <= MAX_CUBE_SIZE:
        raise ValueError(f"LUT size must be an integer in [2, {MAX_CUBE_SIZE}], got {size!r}")
    axis = np.linspace(0.0, 1.0, int(size), dtype=np.float64)
    b, g, r = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def identity_lut(size: int) -> LUT3D:
    """The identity LUT of the given size on the unit domain."""
    return LUT3D(identity_table(size), title=f"identity {size}")


def hald_lattice(size: int) -> torch.Tensor:
    """Every lattice colour once, as a ``(1, 3, S*S, S)`` image (rows ``b*S + g``,
    columns ``r``) — the layout ``lut_from_function`` reads back."""
    table = identity_table(size)
    return torch.from_numpy(table.reshape(size * size, size, 3)).permute(2, 0, 1).unsqueeze(0).contiguous()


def lut_from_function(fn: Callable[[torch.Tensor], torch.Tensor], size: int = 33, title: str = "") -> LUT3D:
    """Capture a position-independent colour map ``fn`` (image ``(1, 3, H, W)`` →
    same shape) as a LUT by applying it once to the HALD-style identity lattice.

    Only correct for maps that treat every pixel independently of its position and
    neighbours; spatial effects would be baked in at lattice positions.
    """
    lattice = hald_lattice(size)
    out = fn(lattice.clone())
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(lattice.shape):
        raise ValueError(
            f"lut_from_function: fn must return a tensor of shape {tuple(lattice.shape)}, "
            f"got {getattr(out, 'shape', type(out))}"
        )
    table = out.detach().to("cpu", torch.float32)[0].permute(1, 2, 0).reshape(size, size, size, 3)
    return LUT3D(table.numpy().copy(), title=title)


def fit_lut_from_pairs(pairs, size: int = 33) -> torch.Tensor:
    """Least-squares-style fit of the colour map that takes each ``source`` to its
    ``target``: ``pairs`` is an iterable of aligned ``(source, target)`` float images
    ``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1]. Returns a ``(3, S, S, S)`` float32 table in
    the ``[c, b, g, r]`` layout of ``transforms.ops.dncm.lut3d_apply``.

    Every pixel's colour change ``target − source`` is splatted trilinearly at its
    source colour, and each lattice point gets its own colour plus the weighted mean
    change that landed near it. (Splatting the change rather than the target colour
    removes most of the pull towards the cell's interior: the identity is fitted
    exactly from any pixels.) Lattice points nothing landed near are filled outward from
    their filled neighbours (repeated 3×3×3 averaging of the change), so the table is
    defined — and smooth — everywhere. Used for oracle inverse filters and
    for the restorer's filter basis."""
    if not isinstance(size, int) or not 2 <= size <= MAX_CUBE_SIZE:
        raise ValueError(f"fit_lut_from_pairs: size must be an integer in [2, {MAX_CUBE_SIZE}], got {size!r}")
    s = size
    acc = torch.zeros(3, s ** 3, dtype=torch.float64)
    wsum = torch.zeros(s ** 3, dtype=torch.float64)
    count = 0
    for source, target in pairs:
        if source.shape != target.shape or source.ndim not in (3, 4) or source.shape[-3] != 3:
            raise ValueError(f"fit_lut_from_pairs: pair {count}: need equal (B, 3, H, W) or (3, H, W) shapes, "
                             f"got {tuple(source.shape)} and {tuple(target.shape)}")
        f = source.detach().movedim(-3, 0).reshape(3, -1).double().clamp(0, 1) * (s - 1)
        o = target.detach().movedim(-3, 0).reshape(3, -1).double() - f / (s - 1)
        base = f.floor().clamp(max=s - 2)
        frac = f - base
        base = base.long()
        for dr in (0, 1):
            for dg in (0, 1):
                for db in (0, 1):
                    w = ((frac[0] if dr else 1 - frac[0]) * (frac[1] if dg else 1 - frac[1])
                         * (frac[2] if db else 1 - frac[2]))
                    idx = ((base[2] + db) * s + (base[1] + dg)) * s + (base[0] + dr)
                    wsum.index_add_(0, idx, w)
                    acc.index_add_(1, idx, o * w)
        count += 1
    filled = wsum > 1e-3
    if not filled.any():
        raise ValueError("fit_lut_from_pairs: no pixels to fit (no pairs, or empty images)")
    values = torch.where(filled, acc / wsum.clamp(min=1e-12), torch.zeros((), dtype=torch.float64))
    values = values.reshape(1, 3, s, s, s)
    mask = filled.reshape(1, 1, s, s, s).double()
    while not bool(mask.all()):  # grow the filled region by one cell per pass
        num = F.avg_pool3d(values * mask, 3, stride=1, padding=1, count_include_pad=False)
        den = F.avg_pool3d(mask, 3, stride=1, padding=1, count_include_pad=False)
        grow = (mask == 0) & (den > 0)
        values = torch.where(grow, num / den.clamp(min=1e-12), values)
        mask = torch.where(grow, torch.ones_like(mask), mask)
    axis = torch.linspace(0.0, 1.0, s, dtype=torch.float64)
    b, g, r = torch.meshgrid(axis, axis, axis, indexing="ij")
    return (values[0] + torch.stack([r, g, b])).float()


# --------------------------------------------------------------------------- application

LutLike = Union[LUT3D, np.ndarray, torch.Tensor]


def _check_images(images: torch.Tensor, fname: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{fname}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"{fname}: images must have shape (*, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{fname}: images must be floating point in [0, 1], got {images.dtype}")


def _check_strength(strength: float, fname: str) -> float:
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"{fname}: strength must be in [0, 1], got {strength}")
    return strength


class _TensorTable:
    """A raw torch table (any device) used as-is, so CUDA tables never round-trip
    through host memory; same attributes the kernels read from a LUT3D."""

    domain_min = (0.0, 0.0, 0.0)
    domain_max = (1.0, 1.0, 1.0)
    has_unit_domain = True

    def __init__(self, table: torch.Tensor):
        self.tensor = table.detach()
        self.size = int(table.shape[0])
        self._cache: dict = {}


def _as_lut(lut: LutLike, fname: str):
    if isinstance(lut, LUT3D):
        return lut
    if isinstance(lut, torch.Tensor):
        shape = tuple(lut.shape)
        if len(shape) != 4 or shape[3] != 3 or not shape[0] == shape[1] == shape[2] or not 2 <= shape[0] <= MAX_CUBE_SIZE:
            raise ValueError(f"{fname}: LUT3D table must have shape (S, S, S, 3) with 2 <= S <= {MAX_CUBE_SIZE}, got {shape}")
        if not lut.is_floating_point():
            raise ValueError(f"{fname}: LUT table must be floating point, got {lut.dtype}")
        return _TensorTable(lut)
    if isinstance(lut, np.ndarray):
        try:
            return LUT3D(lut)
        except ValueError as exc:
            raise ValueError(f"{fname}: {exc}") from None
    raise ValueError(f"{fname}: lut must be a LUT3D, np.ndarray or torch.Tensor, got {type(lut).__name__}")


def _table(lut) -> torch.Tensor:
    return lut.tensor if isinstance(lut, _TensorTable) else torch.from_numpy(lut.table)


def _normalise(images: torch.Tensor, lut: LUT3D) -> torch.Tensor:
    """Map the domain onto [0, 1] and clamp (values outside the domain are clamped)."""
    if lut.has_unit_domain:
        return images.clamp(0.0, 1.0)
    shape = (3, 1, 1)
    lo = torch.tensor(lut.domain_min, dtype=images.dtype, device=images.device).view(shape)
    hi = torch.tensor(lut.domain_max, dtype=images.dtype, device=images.device).view(shape)
    return ((images - lo) / (hi - lo)).clamp_(0.0, 1.0)


def _volume(lut: LUT3D, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    key = ("volume", device, dtype)
    vol = lut._cache.get(key)
    if vol is None:
        vol = _table(lut).permute(3, 0, 1, 2).unsqueeze(0).to(device, dtype).contiguous()
        lut._cache[key] = vol
    return vol


def _tiled(lut: LUT3D, device: torch.device, dtype: torch.dtype):
    """2D texture for the CPU path: the S blue slices laid out as a grid of tiles,
    each (S+1)×(S+1) with a duplicated guard row/column so bilinear reads never bleed
    into a neighbour tile; channels 0-2 hold slice b, channels 3-5 slice b+1, so one
    bilinear fetch returns both blue neighbours."""
    key = ("tiled", device, dtype)
    hit = lut._cache.get(key)
    if hit is not None:
        return hit
    size = lut.size
    cols = math.ceil(math.sqrt(size))
    rows = math.ceil(size / cols)
    g = size + 1
    t = _table(lut).to(torch.float64)
    t = torch.cat([t, t[:, -1:]], dim=1)
    t = torch.cat([t, t[:, :, -1:]], dim=2)  # (S, G, G, 3)
    nxt = torch.cat([t[1:], t[-1:]], dim=0)  # slice b+1 (the last slice repeats; its weight is 0)
    both = torch.cat([t, nxt], dim=3)  # (S, G, G, 6)
    fill = rows * cols - size
    if fill:
        both = torch.cat([both, both[-1:].expand(fill, -1, -1, -1)], dim=0)
    tex = both.reshape(rows, cols, g, g, 6).permute(4, 0, 2, 1, 3).reshape(6, rows * g, cols * g)
    tex = tex.unsqueeze(0).to(device, dtype).contiguous()
    hit = (tex, cols, g)
    lut._cache[key] = hit
    return hit


def _trilinear_volume(x: torch.Tensor, lut: LUT3D) -> torch.Tensor:
    """x: (N, 3, H, W) in [0, 1] → trilinear lookup with 5-D grid_sample."""
    vol = _volume(lut, x.device, x.dtype)
    grid = (x * 2.0 - 1.0).permute(0, 2, 3, 1).unsqueeze(1)  # (N, 1, H, W, [r→W, g→H, b→D])
    out = F.grid_sample(
        vol.expand(x.shape[0], -1, -1, -1, -1), grid,
        mode="bilinear", padding_mode="border", align_corners=True,
    )
    return out.squeeze(2)


def _trilinear_tiled(x: torch.Tensor, lut: LUT3D) -> torch.Tensor:
    """x: (N, 3, H, W) in [0, 1] → trilinear lookup as one bilinear 2-D grid_sample
    (PyTorch's 2-D CPU sampler is vectorised, the 3-D one is not: ~2.5x faster) plus a
    lerp along blue. Coordinates are O(S^1.5) texels, so float32 rounding leaves
    ~2e-5 of a lattice step of error (vs ~2e-7 for the volume path)."""
    tex, cols, g = _tiled(lut, x.device, x.dtype)
    n = lut.size - 1
    tex_h, tex_w = tex.shape[-2:]
    sx, sy = 2.0 / (tex_w - 1), 2.0 / (tex_h - 1)
    r, gg, b = x[:, 0], x[:, 1], x[:, 2]
    bs = b * n
    b0 = bs.floor().clamp_(max=n - 1)
    fb = (bs - b0).unsqueeze(1)
    tile_y = torch.floor(b0 * (1.0 / cols) + (0.5 / cols))  # exact: b0 is an integer
    tile_x = b0 - tile_y * cols
    grid = torch.empty(x.shape[0], x.shape[2], x.shape[3], 2, dtype=x.dtype, device=x.device)
    torch.add(r * (n * sx) - 1.0, tile_x, alpha=g * sx, out=grid[..., 0])
    torch.add(gg * (n * sy) - 1.0, tile_y, alpha=g * sy, out=grid[..., 1])
    out = F.grid_sample(
        tex.expand(x.shape[0], -1, -1, -1), grid,
        mode="bilinear", padding_mode="border", align_corners=True,
    )
    return torch.lerp(out[:, :3], out[:, 3:], fb)


def _tetrahedral(x: torch.Tensor, lut: LUT3D) -> torch.Tensor:
    key = ("flat", x.device, x.dtype)
    flat = lut._cache.get(key)
    if flat is None:
        flat = _table(lut).reshape(-1, 3).t().to(x.device, x.dtype).contiguous()
        lut._cache[key] = flat
    size = lut.size
    n = size - 1
    N, _, H, W = x.shape
    p = (x * n).reshape(N, 3, -1)
    i = p.floor().clamp_(max=n - 1)
    f = p - i
    fr, fg, fb = f[:, 0], f[:, 1], f[:, 2]
    base = (i[:, 2] * size + i[:, 1]) * size + i[:, 0]
    s_r, s_g, s_b = 1.0, float(size), float(size * size)
    f_max = torch.maximum(torch.maximum(fr, fg), fb)
    f_min = torch.minimum(torch.minimum(fr, fg), fb)
    f_mid = fr + fg + fb - f_max - f_min
    # Walk from the base corner along the axis with the largest fraction, then the
    # middle one: vertices base, +max axis, +all but the min axis, +all. Ties pick
    # r > g > b for the max and b > g > r for the min, so max and min axes differ
    # unless all fractions are equal — and then the middle weights are zero anyway.
    r_is_max = (fr >= fg) & (fr >= fb)
    g_is_max = ~r_is_max & (fg >= fb)
    off_max = torch.where(r_is_max, s_r, torch.where(g_is_max, s_g, s_b))
    b_is_min = (fb <= fr) & (fb <= fg)
    g_is_min = ~b_is_min & (fg <= fr)
    off_min = torch.where(b_is_min, s_b, torch.where(g_is_min, s_g, s_r))
    total = s_r + s_g + s_b
    corners = (base, base + off_max, base + (total - off_min), base + total)
    weights = (1.0 - f_max, f_max - f_mid, f_mid - f_min, f_min)
    out = None
    for idx, w in zip(corners, weights):
        val = flat.gather(1, idx.reshape(1, -1).long().expand(3, -1)).view(3, N, -1).transpose(0, 1)
        term = val * w.unsqueeze(1)
        out = term if out is None else out.add_(term)
    return out.reshape(N, 3, H, W)


def _apply(images, lut, strength, fname, kernel):
    _check_images(images, fname)
    strength = _check_strength(strength, fname)
    lut = _as_lut(lut, fname)
    if strength == 0.0:
        return images.clamp(0.0, 1.0)
    lead = images.shape[:-3]
    x = images.reshape(-1, *images.shape[-3:])
    if x.shape[0] == 0 or x.shape[-1] * x.shape[-2] == 0:
        return images.clamp(0.0, 1.0)
    if x.device.type == "cpu":
        # CPU: slabs of <= ~1 Mpixel keep the temporaries cache- and allocator-friendly
        # (measured: 4 x 1024^2 in one call ~1.6x slower than per image)
        out = torch.empty_like(x)
        rows = max(1, _CPU_SLAB_PIXELS // x.shape[-1])
        for i in range(x.shape[0]):
            for r0 in range(0, x.shape[-2], rows):
                slab = x[i : i + 1, :, r0 : r0 + rows]
                out[i : i + 1, :, r0 : r0 + rows] = kernel(_normalise(slab, lut), lut)
    else:
        out = kernel(_normalise(x, lut), lut)
    if strength != 1.0:
        out = torch.lerp(x, out, strength)
    return out.clamp_(0.0, 1.0).reshape(*lead, *images.shape[-3:])


def apply_lut(images: torch.Tensor, lut: LutLike, strength: float = 1.0, *, method: str = "auto") -> torch.Tensor:
    """Trilinear 3D-LUT lookup on ``images`` of shape ``(*, 3, H, W)`` (float, [0, 1]).

    ``lut``: a ``LUT3D`` (its domain is honoured; its prepared textures are cached per
    device, so reuse the object) or a raw ``(S, S, S, 3)`` table indexed ``[b, g, r]``
    on the unit domain (a torch table is used on its own device, never via the host). ``strength`` in [0, 1] blends with the identity
    (``x + strength * (lut(x) - x)``). Inputs are clamped to the domain, outputs to
    [0, 1]. ``method``: ``"volume"`` (5-D grid_sample; exact to float rounding, the
    default on CUDA), ``"tiled"`` (2-D grid_sample over a tiled texture; ~2.5x faster on
    CPU, the CPU default), or ``"auto"``. Returns the same shape and dtype.
    """
    if method not in ("auto", "volume", "tiled"):
        raise ValueError(f"apply_lut: method must be 'auto', 'volume' or 'tiled', got {method!r}")
    if method == "auto":
        method = "tiled" if getattr(images, "device", torch.device("cpu")).type == "cpu" else "volume"
    kernel = _trilinear_tiled if method == "tiled" else _trilinear_volume
    return _apply(images, lut, strength, "apply_lut", kernel)


def apply_lut_tetrahedral(images: torch.Tensor, lut: LutLike, strength: float = 1.0) -> torch.Tensor:
    """Tetrahedral 3D-LUT lookup; same contract as ``apply_lut``. Tetrahedral
    interpolation preserves the neutral axis exactly and is smoother on steep LUTs."""
    return _apply(images, lut, strength, "apply_lut_tetrahedral", _tetrahedral)
