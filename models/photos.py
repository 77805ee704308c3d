"""Where training and evaluation photographs come from: only what the package registries
install. Nothing here runs at inference time.

- scikit-image's bundled colour photos (PyPI ``scikit-image``, files in ``skimage/data``);
- photographs shipped as desktop wallpapers by Debian packages, fetched with
  ``apt-get download`` and unpacked with ``dpkg -x`` into a cache folder (no root-owned
  install). Only photographs are listed: the packages' illustrations and renders are left
  out (picked by looking at every file).

``split`` is fixed: EVAL photos are never used for training, so benchmarks measure
generalisation to unseen photographs.
"""
from __future__ import annotations

import glob
import os
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Photo:
    name: str
    source: str  # "pypi:<package>" or "debian:<package>"
    path: str  # inside the package's files


DEBIAN = (
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/", [
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg", "life_by_Aitzol_Berasategi.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
        "sunset_by_Aitzol_Berasategi.jpg"]),
    ("lomiri-wallpapers-20.04", "/usr/share/backgrounds/", ["Kleiber_by_Lukas_Baubkus.jpg"]),
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/", [
        "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg",
        "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg"]),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/", [
        "BytheWater/contents/images/1280x1024.jpg", "ColdRipple/contents/images/1280x1024.jpg",
        "EveningGlow/contents/images/1280x1024.jpg", "FallenLeaf/contents/images/1280x1024.jpg",
        "Grey/contents/images/1280x1024.jpg", "Path/contents/images/1280x1024.jpg",
        "summer_1am/contents/images/1280x1024.jpg"]),
)

SKIMAGE = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
           "hubble_deep_field.jpg", "retina.jpg")

# Held out from training: used by benchmarks and quality checks only. All scikit-image
# photos (they are also the demo's photos) plus one photo of each Debian package.
EVAL_NAMES = frozenset({
    *(f"skimage/{n}" for n in SKIMAGE),
    "lomiri-wallpapers-16.04/picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "lomiri-wallpapers-16.04/Wine_by_Jakkub_Mede.jpg",
    "mate-backgrounds/LadyBird.jpg",
    "mate-backgrounds/Storm.jpg",
    "plasma-workspace-wallpapers/EveningGlow",
    "plasma-workspace-wallpapers/Path",
})


def catalog() -> list[Photo]:
    photos = [Photo(f"skimage/{n}", "pypi:scikit-image", f"skimage/data/{n}") for n in SKIMAGE]
    for package, prefix, files in DEBIAN:
        for f in files:
            short = f.split("/", 1)[0] if "/" in f else f
            photos.append(Photo(f"{package}/{short}", f"debian:{package}", prefix + f))
    return photos


def split() -> tuple[list[Photo], list[Photo]]:
    """(train, eval) photos."""
    photos = catalog()
    return [p for p in photos if p.name not in EVAL_NAMES], [p for p in photos if p.name in EVAL_NAMES]


def fetch_debian(cache: str) -> str:
    """Download and unpack the Debian packages into ``cache`` (idempotent); returns it."""
    os.makedirs(cache, exist_ok=True)
    for package, _, _ in DEBIAN:
        root = os.path.join(cache, package)
        if os.path.isdir(root):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", "-qq", package], cwd=tmp, check=True)
            (deb,) = glob.glob(os.path.join(tmp, "*.deb"))
            subprocess.run(["dpkg", "-x", deb, root + ".partial"], check=True)
            os.replace(root + ".partial", root)
    return cache


def locate(photo: Photo, cache: str) -> str:
    if photo.source.startswith("pypi:"):
        import skimage

        return os.path.join(os.path.dirname(os.path.dirname(skimage.__file__)), photo.path)
    return os.path.join(cache, photo.source.split(":", 1)[1], photo.path.lstrip("/"))


def load(photo: Photo, cache: str, max_side: int | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3), downscaled (Lanczos) so the long side is at most ``max_side``."""
    im = Image.open(locate(photo, cache)).convert("RGB")
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.LANCZOS)
    return np.asarray(im)


def export(photos: list[Photo], cache: str, out_dir: str, max_side: int | None = None) -> list[str]:
    """Write photos as JPEG (quality 95) into ``out_dir`` with keys safe for WebDataset."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for p in photos:
        key = p.name.replace("/", "--").rsplit(".", 1)[0].replace(".", "_")
        path = os.path.join(out_dir, key + ".jpg")
        Image.fromarray(load(p, cache, max_side)).save(path, quality=95)
        paths.append(path)
    return paths
