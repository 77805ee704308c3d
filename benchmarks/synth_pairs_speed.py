"""Pair-synthesis throughput per core, against a floor measured in the same run.

Floor: Pillow's own ``ImageFilter.Color3DLUT`` applied to the decoded image, then a JPEG
encode (quality 95) — the least work any tool must do to emit one LUT-graded image.
chromabeam: the synth-pairs step's whole per-record work (decode, transform, encode the
input, the target) on the same JPEG files, one thread, for
  - ``lut``:   a .cube LUT pack only (like for like with the floor);
  - ``mixed``: the default mix (40 pilgram filters incl. spatial ones, procedural grades,
               light perturbations).
On a GPU (when one is present) the transform also runs on CUDA.

    .venv/bin/python benchmarks/synth_pairs_speed.py [--sizes 512,1024] [--images 6] [--repeat 3]
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image, ImageFilter

from chromabeam.pipelines import demo
from chromabeam.pipelines.synth_pairs import PairsOptions, SynthPairsFn
from chromabeam.schemas.records import ImageRecord
from chromabeam.transforms import storage
from chromabeam.transforms.ops import synth
from chromabeam.transforms.ops.lut import LUT3D, identity_table


def _images(size: int, count: int) -> list[bytes]:
    """The bundled photos, resized so the long side is ``size``, as JPEG bytes."""
    out = []
    urls = storage.expand(demo.photos_url(), extensions=(".jpg",))
    for i in range(count):
        im = Image.open(io.BytesIO(storage.read_bytes(urls[i % len(urls)]))).convert("RGB")
        scale = size / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def _grade_lut(size: int = 33) -> LUT3D:
    t = identity_table(size).astype(np.float64)
    t = t ** np.array([0.85, 1.0, 1.2])
    t[..., 2] = 0.05 + 0.9 * t[..., 2]
    return LUT3D(t.astype(np.float32), title="bench")


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def floor_rate(jpegs: list[bytes], lut: LUT3D, repeat: int) -> float:
    size = lut.table.shape[0]
    flat = lut.table.reshape(-1, 3).tolist()  # [b][g][r] order = red fastest, as Pillow wants
    flt = ImageFilter.Color3DLUT(size, flat)
    decoded = [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs]

    def run():
        for im in decoded:
            buf = io.BytesIO()
            im.filter(flt).save(buf, "JPEG", quality=95, subsampling=0)

    return len(jpegs) / _best(run, repeat)


def chromabeam_rate(jpegs: list[bytes], config: synth.SynthConfig, luts: dict, repeat: int) -> float:
    fn = SynthPairsFn(PairsOptions(synth=config, pairs_per_image=1, seed=1), luts)
    fn.setup()
    records = [(f"k{i}", ImageRecord(f"k{i}", f"mem://k{i}.jpg", j)) for i, j in enumerate(jpegs)]
    for unit in records[:1]:
        list(fn.process(unit))  # warm caches (filter LUT capture happens once per process)

    def run():
        for unit in records:
            for _ in fn.process(unit):
                pass

    return len(jpegs) / _best(run, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lut = _grade_lut()
    luts = {"bench": lut}
    configs = {
        "lut": synth.SynthConfig(filters=(), luts=("bench",), perturb="none", identity_prob=0.0, grade_prob=0.0),
        "mixed": synth.SynthConfig(),
    }
    print(f"one thread; {args.images} images per size; best of {args.repeat}; pairs/s per core")
    print(f"{'size':>6} {'floor (Pillow LUT+JPEG)':>24} {'chromabeam lut':>15} {'ratio':>6} {'chromabeam mixed':>17} {'ratio':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        jpegs = _images(size, args.images)
        floor = floor_rate(jpegs, lut, args.repeat)
        ours = {name: chromabeam_rate(jpegs, cfg, luts, args.repeat) for name, cfg in configs.items()}
        print(f"{size:>6} {floor:>24.1f} {ours['lut']:>15.1f} {ours['lut'] / floor:>6.2f} "
              f"{ours['mixed']:>17.1f} {ours['mixed'] / floor:>6.2f}")
    if torch.cuda.is_available():
        print("CUDA: transform-only throughput")
        x = torch.rand(1, 3, 1024, 1024, device="cuda")
        cfg = configs["lut"]
        for _ in range(3):
            synth.make_pair(x, cfg, 1, "warm", 0, luts)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(50):
            synth.make_pair(x, cfg, 1, f"k{i}", 0, luts)
        torch.cuda.synchronize()
        print(f"  1024 px LUT pairs/s on CUDA (no codec): {50 / (time.perf_counter() - t0):.1f}")
    else:
        print("no CUDA device here: GPU figures not measured")


if __name__ == "__main__":
    main()
