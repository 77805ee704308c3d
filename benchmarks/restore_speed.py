"""Restore throughput against the JPEG decode+encode floor, measured in the same run.

    python benchmarks/restore_speed.py [--weights URL] [--size 1024] [--repeats 3] [--threads 1]

CPU: the EVAL photos at ``--size`` long side, filtered (one IFFI filter each) and saved
as JPEG q95. The floor is decode + encode (Pillow, what every restore job does anyway);
restore is decode + model + encode, for the default 8-bit fast path and the exact float
path, each run two ways — one image per model call, and the views of a batch of 8 images
through the encoder together (the pixels are then mapped per image); the fast path's
cost per image by stage, with the pixel pass it replaced (Pillow); then how far the
fast path's output is from the exact path's (PSNR). The ratio is restore throughput / floor throughput (1.0 = as fast as just
re-encoding). Best of ``--repeats`` runs of the whole set.

CUDA (when available): per-image time of the model at 4K (3840×2160) and 8K (7680×4320),
host→device copy and device→host result included, after a warm-up; else prints
'no CUDA here'.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from chromabeam.models import photos
from chromabeam.models.registry import build_model
from chromabeam.transforms.ops.filters import IFFI_FILTERS, apply_filter
from chromabeam.transforms.ops.imageio import decode_image, encode_image
from chromabeam.transforms.restore_handler import restore_pixels


def _jpegs(size: int) -> list[bytes]:
    cache = photos.fetch_debian(os.environ.get("CHROMABEAM_PHOTO_CACHE", "/tmp/photo-cache"))
    out = []
    for i, p in enumerate(photos.split()[1]):
        a = photos.load(p, cache, size)
        x = torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255
        y = apply_filter(x, IFFI_FILTERS[i % len(IFFI_FILTERS)], 1.0)
        out.append(encode_image((y[0].permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy(), "jpg", 95))
    return out


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cpu_table(model, files: list[bytes], repeats: int) -> list[tuple[str, float, float]]:
    dev = torch.device("cpu")

    def floor():
        for b in files:
            encode_image(decode_image(b), "jpg", 95)

    def restore(batch: int, exact: bool):
        def go():
            for i in range(0, len(files), batch):
                imgs = [decode_image(b) for b in files[i:i + batch]]
                for r in restore_pixels(model, imgs, dev, exact=exact):
                    encode_image(r, "jpg", 95)
        return go

    restore(1, False)()  # warm-up (allocator, grid_sample kernels)
    t_floor = _best(floor, repeats)
    rows = [("JPEG decode+encode (floor)", t_floor, 1.0)]
    for exact in (False, True):
        for batch in (1, 8):
            t = _best(restore(batch, exact), repeats)
            rows.append((f"restore {'exact float' if exact else '8-bit fast (default)'}, batch {batch}", t, t_floor / t))
    return rows


def fast_vs_exact(model, files: list[bytes]) -> float:
    """Mean PSNR (dB) of the fast path's output against the exact path's."""
    from chromabeam.transforms.ops.metrics import psnr
    from chromabeam.transforms.ops.imageio import to_float

    dev = torch.device("cpu")
    vals = []
    for b in files:
        img = decode_image(b)
        fast, exact = restore_pixels(model, [img], dev)[0], restore_pixels(model, [img], dev, exact=True)[0]
        vals.append(float(psnr(to_float(fast)[None], to_float(exact)[None])[0]))
    return float(np.mean(vals))


def stages(model, files: list[bytes], repeats: int) -> list[tuple[str, float]]:
    """Per-image milliseconds of each stage of the fast path (means over the set, best of
    ``repeats``), and the pixel pass it replaced: Pillow's LUT after the residual's
    upsample-and-add in numpy."""
    from PIL import Image

    from chromabeam.transforms.ops.lut_kernel import residual_lut_uint8
    from chromabeam.transforms.ops.pixels8 import lut_uint8
    from chromabeam.transforms.restore_handler import LOW_SIDE, _float, fast_views, low_copy, reduced_copy

    dev, imgs = torch.device("cpu"), [decode_image(b) for b in files]
    side = max(model.view_size, LOW_SIDE)
    reduced = [reduced_copy(im, side) for im in imgs]
    smalls = [low_copy(r, im.shape[:2]) for r, im in zip(reduced, imgs)]
    def as_tensors(view, *crops):  # fast_views' uint8 views → the view and the crops as heads takes them
        return _float(view, dev), (torch.cat([_float(c, dev) for c in crops])[None] if crops else None)

    with torch.inference_mode():
        views = [as_tensors(*fast_views(model, r)) for r in reduced]
        preds = [model.heads(v, *model.encode(v), crop_views=c) for v, c in views]
        tables = [lut[0].permute(1, 2, 3, 0).numpy() for lut, _ in preds]
        residuals = [(model.apply_local(_float(sm, dev), grid) - _float(sm, dev))[0].permute(1, 2, 0).numpy()
                     for sm, (_, grid) in zip(smalls, preds)]

    def pillow_pass(im, table, res):  # the previous release's pass: 8-bit coded residual, then Color3DLUT
        coded = np.clip(np.rint(res * 255.0) + 128.0, 0, 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(coded, "RGB").resize((im.shape[1], im.shape[0]), Image.BILINEAR))
        return lut_uint8(np.clip(im.astype(np.int16) + up - 128, 0, 255).astype(np.uint8), table)

    def per_image(fn):
        return _best(lambda: [fn(i) for i in range(len(imgs))], repeats) / len(imgs) * 1000

    with torch.inference_mode():
        rows = [
            ("JPEG decode", per_image(lambda i: decode_image(files[i]))),
            ("JPEG encode q95", per_image(lambda i: encode_image(imgs[i], "jpg", 95))),
            ("block-averaged copy (reduced_copy)", per_image(lambda i: reduced_copy(imgs[i], side))),
            ("view" + (" + 4 corner crops" if model.bank_crops else "") + " from it",
             per_image(lambda i: fast_views(model, reduced[i]))),
            (f"shrink it to {LOW_SIDE} px", per_image(lambda i: low_copy(reduced[i], imgs[i].shape[:2]))),
            ("model: colour statistics + heads", per_image(
                lambda i: model.heads(views[i][0], *model.encode(views[i][0]), crop_views=views[i][1]))),
            (f"local grid at {LOW_SIDE} px", per_image(lambda i: model.apply_local(_float(smalls[i], dev), preds[i][1]))),
            ("pixel pass: compiled residual + LUT (default)", per_image(
                lambda i: residual_lut_uint8(imgs[i], tables[i], residuals[i]))),
            ("pixel pass: numpy residual + Pillow LUT (previous)", per_image(
                lambda i: pillow_pass(imgs[i], tables[i], residuals[i]))),
        ]
    return rows


def cuda_times(model, repeats: int) -> list[tuple[str, float]]:
    dev = torch.device("cuda")
    model = model.to(dev)
    rng = np.random.default_rng(0)
    out = []
    for label, (w, h) in (("4K 3840×2160", (3840, 2160)), ("8K 7680×4320", (7680, 4320))):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        restore_pixels(model, [img], dev)
        torch.cuda.synchronize()

        def go():
            restore_pixels(model, [img], dev)
            torch.cuda.synchronize()

        out.append((label, _best(go, repeats)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="default: the shipped restorer")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (Pillow's codecs use one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from chromabeam.pipelines.restore import default_weights

    url, sha = (args.weights, None) if args.weights else default_weights()
    model = build_model(url, "cpu", expected_sha256=sha)
    files = _jpegs(args.size)
    px = sum(np.prod(decode_image(b).shape[:2]) for b in files) / len(files)
    print(f"CPU, {torch.get_num_threads()} torch thread(s): {len(files)} JPEGs, long side {args.size}, "
          f"mean {px / 1e6:.2f} Mpx; weights {os.path.basename(url)}")
    print("| pipeline | seconds for the set | images/s | throughput vs floor |")
    print("| --- | --- | --- | --- |")
    for label, t, ratio in cpu_table(model, files, args.repeats):
        print(f"| {label} | {t:.2f} | {len(files) / t:.2f} | {ratio:.2f} |")
    print("\nper image, fast path by stage (ms):")
    print("| stage | ms |")
    print("| --- | --- |")
    for label, ms in stages(model, files, args.repeats):
        print(f"| {label} | {ms:.1f} |")
    if torch.cuda.is_available():
        print(f"\nCUDA ({torch.cuda.get_device_name(0)}): per-image model time, transfers included")
        for label, t in cuda_times(model, args.repeats):
            print(f"| {label} | {t * 1000:.1f} ms |")
    else:
        print("\nno CUDA here")
    print(f"\nfast path vs exact path: mean PSNR {fast_vs_exact(model, files):.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
