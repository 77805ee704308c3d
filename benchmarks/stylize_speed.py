"""DNCM stylization speed.

(a) Model application at FHD, 4K and 8K on CPU (and CUDA when available), each size in a
    fresh process: encoder (its view incl. the resize), nDNCM + sDNCM (the two full-
    resolution colour maps), and peak memory above the process's baseline (CPU: the
    kernel's peak-RSS counter VmHWM, reset via /proc/self/clear_refs; CUDA:
    torch.cuda.max_memory_allocated). Rows for the shipped curve DNCM and for the paper's
    linear DNCM (same encoder, knots=0) show what the curve basis costs. For the shipped
    model on CPU also the 8-bit path the job uses: the handler's encoder view from uint8,
    the folded 65³ nDNCM∘sDNCM table and Pillow's Color3DLUT on the uint8 image.
(b) A whole ``chromabeam stylize`` job (one style, JPEG q95 files out) on N 4K JPEGs,
    against the floor of decoding and re-encoding the same files with Pillow (same JPEG
    settings) in one process, as a ratio — with ``--method look`` (the default: the
    shipped ``warm`` look, one LUT per style, tabulated after 2²⁴ pixels) and
    ``--method dncm`` (the shipped ``warm`` DNCM preset: an encoder pass and a folded LUT
    per image).
(c) Where a look job's time per 4K image goes: decode, the look by Pillow and tabulated
    (``pixels8.LookApplier``, checked identical), encode.

    python benchmarks/stylize_speed.py [--sizes fhd,4k,8k] [--jobs 32] [--threads 1]

The 4K inputs are TRAIN photos upscaled (bicubic) to 3840×2160 and saved as JPEG q90 in a
temporary folder.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

SIZES = {"fhd": (1080, 1920), "4k": (2160, 3840), "8k": (4320, 7680)}

CHILD = textwrap.dedent(
    """
    import json, sys, time, torch
    torch.set_num_threads({threads})
    from chromabeam.models.dncm import DNCM
    from chromabeam.models.registry import build_model
    h, w, device, variant, repeats = {h}, {w}, "{device}", "{variant}", {repeats}
    from chromabeam.transforms.stylize_handler import default_weights
    m = build_model(default_weights(), device)
    if variant != "curve":  # the paper's linear map with the shipped model's encoder
        cfg = {{k: v for k, v in m.config.items() if k != "model"}}
        m = DNCM(**{{**cfg, "knots": 0, "pretrained": False}}).to(device).eval()
    def peak_reset():
        if device == "cuda":
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); return torch.cuda.memory_allocated()
        open("/proc/self/clear_refs", "w").write("5")
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    def peak():
        if device == "cuda":
            torch.cuda.synchronize(); return torch.cuda.max_memory_allocated()
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    def sync():
        if device == "cuda": torch.cuda.synchronize()
    x = torch.rand(1, 3, h, w, device=device)
    with torch.inference_mode():
        d, r = m.encode(x[..., :300, :300]); m.stylize(m.normalize(x[..., :64, :64], d), r)  # warm-up
        enc, app = [], []
        base = peak_reset()
        for _ in range(repeats):
            sync(); t = time.perf_counter(); d, r = m.encode(x); sync(); enc.append(time.perf_counter() - t)
            t = time.perf_counter(); y = m.stylize(m.normalize(x, d), r); sync(); app.append(time.perf_counter() - t)
            del y
        mem = peak() - base
        lut = None
        if variant == "curve" and device == "cpu":
            import numpy as np
            from chromabeam.transforms.stylize_handler import apply_dncm_lut, encoder_view
            from chromabeam.transforms.ops.style import fold_curves
            px = (x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            Ms = fold_curves(m.P_s, r, m.Q_s)[0].numpy()
            lut = []
            for _ in range(repeats):
                t = time.perf_counter()
                d, _ = m.encode(encoder_view(px, m.encoder_size)[None])
                y8 = apply_dncm_lut(px, fold_curves(m.P_n, d, m.Q_n)[0].numpy(), Ms)
                lut.append(time.perf_counter() - t)
    print(json.dumps({{"encoder_s": min(enc), "apply_s": min(app), "peak_bytes": mem, "image_bytes": x.nelement() * 4,
                      "lut8_s": min(lut) if lut else None}}))
    """
)


def model_timings(sizes: list[str], devices: list[str], threads: int, repeats: int) -> list[dict]:
    rows = []
    for device in devices:
        for variant in ("curve", "linear"):
            for name in sizes:
                h, w = SIZES[name]
                code = CHILD.format(threads=threads, h=h, w=w, device=device, variant=variant, repeats=repeats)
                res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
                if res.returncode != 0:
                    rows.append({"device": device, "variant": variant, "size": name, "error": res.stderr.strip()[-300:]})
                    continue
                rows.append({"device": device, "variant": variant, "size": name, **json.loads(res.stdout.strip().splitlines()[-1])})
    return rows


def make_4k_jpegs(folder: str, n: int) -> list[str]:
    from PIL import Image

    from chromabeam.models import photos

    train, _ = photos.split()
    cache = photos.fetch_debian(os.environ.get("CHROMABEAM_PHOTO_CACHE", "/tmp/photo-cache"))
    paths = []
    for i in range(n):
        p = train[i % len(train)]
        im = Image.fromarray(photos.load(p, cache)).resize((3840, 2160), Image.BICUBIC)
        path = os.path.join(folder, f"img{i:03d}.jpg")
        im.save(path, quality=90)
        paths.append(path)
    return paths


def pillow_floor(paths: list[str]) -> float:
    """Decode + re-encode every file with Pillow in this process (the job's JPEG settings)."""
    from chromabeam.transforms.ops.imageio import decode_image, encode_image

    t = time.perf_counter()
    for p in paths:
        with open(p, "rb") as fh:
            encode_image(decode_image(fh.read()), "jpg", 95)
    return time.perf_counter() - t


def look_timings(path: str, repeats: int) -> dict:
    """Per-image costs of the look job on one 4K JPEG (best of ``repeats``): decode, the
    shipped ``warm`` look by Pillow's ``Color3DLUT`` and by the tabulated
    ``pixels8.LookApplier`` (its one-off tabulation timed apart), JPEG q95 encode."""
    from chromabeam.pipelines.preset import shipped_preset
    from chromabeam.transforms.ops.imageio import decode_image, encode_image
    from chromabeam.transforms.ops.pixels8 import LookApplier, lut_uint8
    from chromabeam.transforms.stylize_handler import read_look

    def best(fn):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    with open(path, "rb") as fh:
        data = fh.read()
    decode_s, pixels = best(lambda: decode_image(data))
    table = read_look(shipped_preset("warm", "look"))
    pillow_s, want = best(lambda: lut_uint8(pixels, table))
    look = LookApplier(table, switch_pixels=0)
    t = time.perf_counter()
    look(pixels)
    tabulate_s = time.perf_counter() - t
    gather_s, got = best(lambda: look(pixels))
    assert (got == want).all(), "the tabulated look differs from Pillow's"
    encode_s, _ = best(lambda: encode_image(got, "jpg", 95))
    return {"decode_s": decode_s, "pillow_lut_s": pillow_s, "tabulate_once_s": tabulate_s - gather_s,
            "tabulated_lut_s": gather_s, "encode_s": encode_s}


def stylize_job(folder: str, out: str, threads: int, exact: bool = False, method: str = "look") -> tuple[float, dict]:
    cmd = [sys.executable, "-c", textwrap.dedent(f"""
        import argparse, json, time, torch
        torch.set_num_threads({threads})
        from chromabeam.pipelines import stylize
        p = argparse.ArgumentParser(); p.add_argument("input"); p.add_argument("output"); stylize.add_arguments(p)
        a = p.parse_args(["{folder}", "{out}", "--style", "warm", "--method", "{method}", "--device", "cpu", "--batch-size", "8"]{' + ["--exact"]' if exact else ''})
        a.layout, a.image_format, a.quality, a.overwrite = "files", "jpg", 95, True
        a.shard_size, a.max_error_rate, a.max_pixels = 256, 0.0, 10**9
        t = time.perf_counter(); rc = stylize.command(a, []); print(json.dumps({{"rc": rc, "s": time.perf_counter() - t}}))
    """)]
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return wall, json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="fhd,4k,8k")
    ap.add_argument("--jobs", type=int, default=32, help="4K JPEGs in the job benchmark (0: skip it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--exact", action="store_true", help="also time the job with --exact (the float path)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    result = {"threads": args.threads, "model": model_timings(sizes, devices, args.threads, args.repeats)}
    print(f"(a) DNCM application, torch threads = {args.threads} (best of {args.repeats})\n")
    print("| device | DNCM | size | encoder s | nDNCM+sDNCM s | total s | peak memory MB | × image | 8-bit LUT path s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in result["model"]:
        if "error" in r:
            print(f"| {r['device']} | {r['variant']} | {r['size']} | error: {r['error']} |")
            continue
        print(f"| {r['device']} | {r['variant']} | {r['size']} | {r['encoder_s']:.3f} | {r['apply_s']:.3f} | "
              f"{r['encoder_s'] + r['apply_s']:.3f} | {r['peak_bytes'] / 2**20:.0f} | {r['peak_bytes'] / r['image_bytes']:.2f} | "
              + (f"{r['lut8_s']:.3f} |" if r.get("lut8_s") is not None else "– |"))
    if args.jobs:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "in")
            os.makedirs(src)
            paths = make_4k_jpegs(src, args.jobs)
            floor = min(pillow_floor(paths) for _ in range(2))
            result["look_per_image"] = look_timings(paths[0], args.repeats)
            wall, inner = stylize_job(src, os.path.join(tmp, "out"), args.threads)
            outs = glob.glob(os.path.join(tmp, "out", "images", "*.jpg"))
            assert len(outs) == args.jobs, f"job wrote {len(outs)} of {args.jobs} images"
            dncm = stylize_job(src, os.path.join(tmp, "dncm"), args.threads, method="dncm")[1]
            exact = stylize_job(src, os.path.join(tmp, "exact"), args.threads, exact=True)[1] if args.exact else None
        result["job"] = {"images": args.jobs, "pillow_floor_s": floor, "job_s": inner["s"], "process_wall_s": wall,
                         "ratio": inner["s"] / floor, "ratio_incl_startup": wall / floor,
                         "dncm_job_s": dncm["s"], "dncm_ratio": dncm["s"] / floor}
        j = result["job"]
        print(f"\n(b) `chromabeam stylize` on {args.jobs} 4K JPEGs (1 style, JPEG q95 out), CPU, {args.threads} torch thread(s)\n")
        print("| what | seconds | per image ms | ratio to floor |")
        print("| --- | --- | --- | --- |")
        print(f"| Pillow decode + encode floor (1 process) | {floor:.2f} | {1000 * floor / args.jobs:.0f} | 1.00 |")
        print(f"| stylize job, --method look (run_job: Beam pipeline) | {j['job_s']:.2f} | {1000 * j['job_s'] / args.jobs:.0f} | {j['ratio']:.2f} |")
        print(f"| the same incl. Python/torch start-up | {wall:.2f} | {1000 * wall / args.jobs:.0f} | {j['ratio_incl_startup']:.2f} |")
        print(f"| stylize job, --method dncm | {j['dncm_job_s']:.2f} | {1000 * j['dncm_job_s'] / args.jobs:.0f} | {j['dncm_ratio']:.2f} |")
        if exact:
            j["exact_job_s"] = exact["s"]
            print(f"| stylize job, look --exact (float path) | {exact['s']:.2f} | {1000 * exact['s'] / args.jobs:.0f} | {exact['s'] / floor:.2f} |")
    if "look_per_image" in result:
        lk = result["look_per_image"]
        print(f"\n(c) one 4K image, one thread, best of {args.repeats}: decode {1000 * lk['decode_s']:.0f} ms, "
              f"`warm` look by Pillow Color3DLUT {1000 * lk['pillow_lut_s']:.0f} ms / tabulated (LookApplier) "
              f"{1000 * lk['tabulated_lut_s']:.0f} ms (identical output; tabulating once: "
              f"{lk['tabulate_once_s']:.2f} s), JPEG q95 encode {1000 * lk['encode_s']:.0f} ms")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
