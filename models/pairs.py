"""Training pairs for the models: read a ``synth-pairs`` OUTPUT (any URL) into memory and
serve random aligned crops.

Both trainers use it: the restorer reads ``--mode removal`` pairs (input = filtered,
target = original); DNCM reads ``--mode preset`` pairs (two looks of one image).
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from chromabeam.transforms import storage


@dataclass
class Pair:
    key: str
    pair_index: int
    input: np.ndarray  # uint8 (H, W, 3)
    target: np.ndarray  # uint8 (H, W, 3)
    transform: str  # the manifest's JSON


def _decode(data: bytes, max_side: int | None) -> np.ndarray:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if max_side and max(im.size) > max_side:
        im = im.resize(_fit(im.size, max_side), Image.BILINEAR)
    return np.asarray(im)


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def load_pairs(output: str, *, max_side: int | None = 512, limit: int | None = None) -> list[Pair]:
    """All ``ok`` pairs of a synth-pairs OUTPUT, decoded, long side ≤ ``max_side``.

    Input and target are resized identically, so they stay aligned pixel for pixel.
    """
    from chromabeam.pipelines.job import read_manifest

    table = read_manifest(output)
    if table is None or table.num_rows == 0:
        raise ValueError(f"{storage.redact(output)} has no manifest: pass a synth-pairs OUTPUT")
    if "input_uri" not in table.column_names:
        raise ValueError(f"{storage.redact(output)} is not a synth-pairs OUTPUT (no input_uri column)")
    rows = [r for r in table.to_pylist() if r["status"] == "ok"]
    by_shard: dict[str, dict[str, str]] = {}
    for r in rows:
        for col in ("input_uri", "target_uri"):
            shard, _, member = r[col].partition("#")
            by_shard.setdefault(shard, {})[member] = ""
    blobs: dict[str, bytes] = {}
    for shard, members in sorted(by_shard.items()):
        if shard.endswith(".tar"):
            with storage.open_url(shard) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
                for info in tar:
                    if info.name in members:
                        blobs[f"{shard}#{info.name}"] = tar.extractfile(info).read()
        else:  # --format files: the URI is the object itself
            blobs[shard] = storage.read_bytes(shard)
    pairs = []
    for r in rows[:limit]:
        inp, tgt = blobs[r["input_uri"]], blobs[r["target_uri"]]
        pairs.append(Pair(r["key"], r["pair_index"], _decode(inp, max_side), _decode(tgt, max_side), r["transform"]))
    return pairs


def random_crops(pairs: list[Pair], batch: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of aligned random crops (``size``² or the image, if smaller, resized up) with
    random flips: two float tensors (B, 3, size, size) in [0, 1]."""
    xs, ys = [], []
    for _ in range(batch):
        p = pairs[int(rng.integers(len(pairs)))]
        h, w = p.input.shape[:2]
        a, b = p.input, p.target
        if min(h, w) < size:
            scale = size / min(h, w)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            a = np.asarray(Image.fromarray(a).resize((nw, nh), Image.BILINEAR))
            b = np.asarray(Image.fromarray(b).resize((nw, nh), Image.BILINEAR))
            h, w = nh, nw
        top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        a, b = a[top:top + size, left:left + size], b[top:top + size, left:left + size]
        xs.append(a)
        ys.append(b)
    return flip_and_stack(xs, ys, rng)


def flip_and_stack(xs: list[np.ndarray], ys: list[np.ndarray], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned uint8 crops (H, W, 3) → the same random horizontal flip for each pair, then
    two float tensors (B, 3, H, W) in [0, 1]."""
    out_x, out_y = [], []
    for a, b in zip(xs, ys):
        if rng.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        out_x.append(np.ascontiguousarray(a))
        out_y.append(np.ascontiguousarray(b))
    to = lambda arrs: torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255)  # noqa: E731
    return to(out_x), to(out_y)
