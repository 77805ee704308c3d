"""``chromabeam demo [OUTPUT]``: the main jobs on the bundled photos, offline.

1. ``synth-pairs``: filter-removal training pairs from the photos      → OUTPUT/pairs
2. filtered copies of the photos (one IFFI filter each, same keys)      → OUTPUT/filtered
3. ``evaluate`` filtered vs original: the "doing nothing" baseline      → OUTPUT/baseline
4. ``restore`` the filtered copies with the shipped weights, scored
   against the originals in the same pass (when the restorer is there)  → OUTPUT/restored
5. ``stylize`` the photos with the shipped looks and the look of one
   filtered photo (OUTPUT/styles/), fitted by the restorer              → OUTPUT/stylized
Each step writes its own manifest, _SUCCESS and report.html.
"""
from __future__ import annotations

import importlib
import importlib.resources

from chromabeam.transforms import storage
from chromabeam.transforms.ops import synth
from chromabeam.transforms.ops.filters import IFFI_FILTERS
from chromabeam.transforms.ops.imageio import decode_image, encode_image

DEMO_FILTERS = ("clarendon", "1977", "nashville", "xpro2", "valencia", "lofi", "toaster", "hefe")


def photos_url() -> str:
    return str(importlib.resources.files("chromabeam") / "data" / "demo" / "photos")


def make_filtered(output: str) -> str:
    """Each bundled photo through one IFFI filter (deterministic), saved under its own key."""
    url = storage.join(output, "filtered")
    for i, src in enumerate(storage.expand(photos_url(), extensions=(".jpg",))):
        name = DEMO_FILTERS[i % len(DEMO_FILTERS)]
        assert name in IFFI_FILTERS
        spec = {"family": "filter", "id": name, "strength": 1.0, "params": None, "perturb": []}
        pixels = synth.render(decode_image(storage.read_bytes(src)), spec)
        storage.put_atomic(storage.join(url, storage.basename(src)), encode_image(pixels, "jpg", 95))
    return url


def _optional(module: str):
    """A later pipeline's module, or None while its issue has not landed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        return None


def run(output: str, beam_args: list[str]) -> int:
    from chromabeam.pipelines import evaluate, synth_pairs
    from chromabeam.pipelines.job import JobConfig

    photos = photos_url()
    lines = []

    pairs_cfg = JobConfig(output=storage.join(output, "pairs"), task=synth_pairs.TASK, overwrite=True,
                          params={"demo": "bundled photos", "pairs_per_image": 2, "seed": 1})
    options = synth_pairs.PairsOptions(synth=synth.SynthConfig(), pairs_per_image=2, seed=1)
    s = synth_pairs.run(photos, pairs_cfg, options, {}, beam_args)
    lines.append(f"synth-pairs  {s['counts']['ok']:>3} pairs        → {pairs_cfg.output}/report.html")

    filtered = make_filtered(output)
    base_cfg = JobConfig(output=storage.join(output, "baseline"), task=evaluate.TASK, overwrite=True,
                         params={"pred": "filtered photos (doing nothing)", "target": "bundled photos"})
    s = evaluate.run(filtered, photos, base_cfg, beam_args)
    lines.append(f"evaluate     filtered vs original: {_mean(s, 'psnr')} dB PSNR → {base_cfg.output}/report.html")

    for module, label in (("chromabeam.pipelines.restore", "restore"), ("chromabeam.pipelines.stylize", "stylize")):
        mod = _optional(module)
        if mod is not None and hasattr(mod, "demo"):
            s = mod.demo(output, beam_args)
            extra = f"{_mean(s, 'psnr')} dB PSNR vs original" if label == "restore" else f"{s['counts']['ok']} images"
            lines.append(f"{label:<12} {extra} → {storage.join(output, s.get('output_name', label))}/report.html")
    print("\n".join(["chromabeam demo:"] + ["  " + ln for ln in lines]))
    return 0


def _mean(summary: dict, metric: str) -> str:
    value = (summary.get("metrics") or {}).get(metric, {}).get("mean")
    return "n/a" if value is None else f"{value:.2f}"
