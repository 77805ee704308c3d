"""Where training and evaluation photographs come from: only what the package registries
install. Nothing here runs at inference time.

- scikit-image's bundled colour photos (PyPI ``scikit-image``, files in ``skimage/data``);
- photographs shipped as desktop wallpapers by Debian packages, fetched with
  ``apt-get download`` and unpacked with ``dpkg -x`` into a cache folder (no root-owned
  install). Only photographs are listed: the packages' illustrations and renders are left
  out (picked by looking at every file);
- photographs inside the Qt resource bundles (``.rcc``) of Debian's ``gcompris-qt-data``
  (the GCompris educational suite's activities: monuments, animals, landscapes, objects,
  musicians): WebP images stored uncompressed in the bundle, addressed by their ordinal
  among the bundle's WebP images and checked against a SHA-256 prefix, so a changed
  package fails loudly instead of silently training on other pictures. Paintings,
  drawings and textures are left out (picked by looking at every image);
- sample photographs of Debian's ``opencv-doc`` (OpenCV's example data) and the puzzle
  photographs of ``palapeli-data`` (KDE's jigsaw game);
- the preview photograph inside each puzzle file of Debian's ``jigzo-data`` (a children's
  jigsaw game; 176–232 px, enough for colour statistics), addressed by the puzzle file
  and checked against a SHA-256 prefix like the GCompris images.

``split`` is fixed: EVAL photos are never used for training, so benchmarks measure
generalisation to unseen photographs.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import io
import os
import re
import struct
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
    ("palapeli-data", "/usr/share/palapeli/collection/", [
        "castle-maintenon.jpg", "cincinnati-bridge.jpg", "citrus-fruits.jpg", "european-honey-bee.jpg",
        "panther-chameleon-female.jpg"]),
    # OpenCV's sample data and example inputs: photographs only (no renders, paintings,
    # text scans, test charts or greyscale images).
    ("opencv-doc", "/usr/share/doc/opencv-doc/examples/", [
        *(f"data/{n}" for n in (
            "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg",
            "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg",
            "leuvenA.jpg", "leuvenB.jpg", "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg",
            "rubberwhale1.png", "squirrel_cls.jpg")),
        *(f"text/scenetext0{i}.jpg" for i in range(1, 7)),
        "hfs/data/000.jpg", "alphamat/input_images/plant.jpg", "dnn_superres/butterfly.png", "reg/home.png"]),
)

# (bundle, [(ordinal among the bundle's WebP images, sha256 prefix of the image file)]).
GCOMPRIS_PACKAGE, GCOMPRIS_PREFIX = "gcompris-qt-data", "/usr/share/gcompris-qt/rcc/"
GCOMPRIS = (
    ("categorization", [(28, "0dc109b5dc42"), (56, "ac327299a179"), (67, "c63a0145cf7e"), (68, "76cdfd62ea1d"),
                        (93, "a0d5498bf18d"), (97, "acb47a53be1d"), (124, "9bee0d3330c3"), (131, "33bfa2aa2d23"),
                        (133, "374c9ed08f3a"), (136, "c5ab1633cc4e"), (137, "496b5e1d1916")]),
    ("clickgame", [(2, "9c8236a6ade2"), (5, "533dcc0d871a"), (11, "a3a8c196d24f"), (12, "42f7a4152c54"),
                   (23, "08c6d1ae0ea4"), (29, "21295e109d35")]),
    ("details", [(10, "0bbfd0f6edd1"), (28, "cb88769524ed"), (37, "702de281dd3a"), (44, "9c2796c2a415"),
                 (48, "6ba38f91b6f6"), (67, "a811a6b22948"), (74, "84b09f2cc12c"), (80, "b973a69611d3"),
                 (83, "cd94fbfc2ef0"), (93, "3cea5251d1e9"), (103, "5e763c937dba"), (116, "71946fdfe1a1"),
                 (122, "d8f4c352456d")]),
    ("erase", [(0, "250140eb6d3a"), (1, "5957d392349d"), (2, "1aca9fcc5a0e"), (3, "f67d7d04bf3b"), (4, "ec755f7b9d89"),
               (5, "df4da85790b8"), (6, "e2b2f388dc6f"), (7, "56bdd761a414"), (8, "b637658d7e0f"), (9, "5fe69699bf37"),
               (10, "5ce6131ce966"), (11, "ffd29864f09b"), (12, "5268033ecc36"), (13, "a7b242c4b014"),
               (14, "8a338c7df329"), (15, "1c8a4014d079"), (16, "822be2d08adc"), (17, "459198d83393"),
               (18, "e12b50bb4ee6"), (19, "63006dabe8b7"), (20, "b9d85c2e2899"), (21, "810de9fea049"),
               (22, "15b49393342b"), (23, "dab7bc930f6f"), (24, "1c8be6df0a6f"), (25, "3a97a3c854c6"),
               (26, "076622230f06"), (27, "977b0ff42770"), (28, "2847f84c4c96"), (29, "acba63337c11"),
               (30, "7dcb10485273"), (31, "c39106edc785"), (32, "c6f3a52585a3")]),
    ("explore_farm_animals", [(0, "fa4572f2022a"), (1, "db359136be5e"), (2, "3bac61d5dabb"), (3, "87879a9644b7"),
                              (4, "ab7c3e1b04e8"), (5, "30a07d3c7dfc"), (6, "4f3d27d1fd3d"), (7, "5e9d95444957"),
                              (8, "e8b7d705a955")]),
    ("explore_monuments", [(0, "e9642c03c230"), (1, "62d80a80ca5e"), (2, "fded6367850d"), (3, "a96693bfff66"),
                           (4, "4e414fc35ae9"), (5, "cf115ede2289"), (6, "720ddce0a312"), (7, "b9de4b334e76"),
                           (8, "1c097b958c4b"), (9, "b9e560a9ae2f"), (10, "694a4eaebc52"), (11, "f8427c095794"),
                           (12, "7df87dfe904e"), (13, "ca717a088d79"), (14, "a657a2139787"), (15, "dea912cbd395"),
                           (16, "8d1053776a85"), (17, "a84a26be8d94"), (18, "7dbf980b3711"), (19, "c94ddb83bb2d"),
                           (20, "41791947f877"), (21, "ec52355726f8"), (22, "3b6741152471"), (23, "4edb7eed9db5"),
                           (24, "be7b3264cd33"), (25, "42c8376f99f7"), (26, "d9fec7d6ac49"), (27, "2148fe45a541"),
                           (28, "8eeda3c92c73"), (29, "134f44b0e1c3"), (30, "fa8d36162b13"), (31, "52eab4d110bd"),
                           (32, "e109eb44fd12"), (33, "b1d3584272eb"), (35, "cc782ccdd5b5"), (36, "9882593801be"),
                           (37, "fc0d45ec5a25"), (38, "3133f2872b3d"), (39, "0d38a0c2d491"), (40, "e04e163ccef6"),
                           (41, "546e2483d17c"), (42, "15ec5fcb8758"), (43, "b552994f6472"), (44, "5b39680425fc"),
                           (45, "dd1818360d15"), (46, "2cb312c79a20"), (47, "91be8dd19821"), (48, "c90cdcbf981b")]),
    ("explore_world_animals", [(0, "683964b6f57f"), (1, "2252a671c2e0"), (2, "f3ececf0133c"), (3, "840cf54b69bf"),
                               (4, "780aceaa6244"), (5, "8b088ed71a87"), (6, "77b243c27d79"), (7, "4fccf91dd5e6"),
                               (8, "fc36683cc206"), (9, "0544cef0a7d6"), (10, "11f3b2c5b876"), (11, "2a94d2fc7482"),
                               (12, "22704727b664"), (13, "70ccf9a9db50"), (14, "68014ed783cf")]),
    ("explore_world_music", [(0, "b4a6d85a40ce"), (1, "b30a023e5d36"), (2, "bc847e52730f"), (3, "0f0aa2d3116e"),
                             (4, "cd1286e5d764"), (5, "b7e0bc6da6f9"), (6, "72af64588442"), (7, "c4b27aebe084"),
                             (8, "20ef5a10a55b")]),
)

# (puzzle file, sha256 prefix of its preview JPEG): each puzzle's "-t.jpg" section.
JIGZO_PACKAGE, JIGZO_PREFIX = "jigzo-data", "/usr/share/games/jigzo/puzzles/00_default/"
JIGZO = (("bike-3x4", "23a99628b929"), ("bird-2x3", "f2079fd8580e"), ("blackberry-3x3", "620cb071ba44"),
         ("castle-6x3", "6723417c5c52"), ("clouds-4x4", "695557f77945"), ("gorilla2-3x3", "5275daa6e157"),
         ("heli-4x3", "e3ee7bbebf5b"), ("horse-4x3", "3ac08ddd0de1"), ("penguin-3x2", "34b4c9ddd093"),
         ("tobogan-4x3", "fe12c32f7908"), ("train-2x2", "a6f0d76a6d0a"), ("windmill-4x4", "d13a09128ce6"))

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
            # a plasma wallpaper is named by its folder; other nested files by their path
            short = f.split("/", 1)[0] if "/contents/" in f else f.replace("/", "-")
            photos.append(Photo(f"{package}/{short}", f"debian:{package}", prefix + f))
    for bundle, images in GCOMPRIS:
        for ordinal, sha in images:
            photos.append(Photo(f"{GCOMPRIS_PACKAGE}/{bundle}-{ordinal}", f"debian:{GCOMPRIS_PACKAGE}",
                                f"{GCOMPRIS_PREFIX}{bundle}.rcc#webp:{ordinal}:{sha}"))
    for puzzle, sha in JIGZO:
        photos.append(Photo(f"{JIGZO_PACKAGE}/{puzzle}", f"debian:{JIGZO_PACKAGE}",
                            f"{JIGZO_PREFIX}{puzzle}.pzl#preview:{sha}"))
    return photos


def split() -> tuple[list[Photo], list[Photo]]:
    """(train, eval) photos."""
    photos = catalog()
    return [p for p in photos if p.name not in EVAL_NAMES], [p for p in photos if p.name in EVAL_NAMES]


def holdout_split(fraction: float, seed: int = 123) -> tuple[list[Photo], list[Photo]]:
    """The TRAIN photos split again, by photograph, into (fit, held out): a seeded
    ``fraction`` is held out, for choosing settings on photos the fit part never saw
    without touching the EVAL photos."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_split: fraction must be in (0, 1), got {fraction}")
    train = split()[0]
    order = np.random.default_rng(seed).permutation(len(train))
    n = max(1, int(len(train) * fraction))
    held = set(order[:n].tolist())
    return [p for i, p in enumerate(train) if i not in held], [p for i, p in enumerate(train) if i in held]


def fetch_debian(cache: str) -> str:
    """Download and unpack the Debian packages into ``cache`` (idempotent); returns it."""
    os.makedirs(cache, exist_ok=True)
    for package in [d[0] for d in DEBIAN] + [GCOMPRIS_PACKAGE, JIGZO_PACKAGE]:
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
    """The file holding the photo (for a bundled image: the bundle)."""
    if photo.source.startswith("pypi:"):
        import skimage

        return os.path.join(os.path.dirname(os.path.dirname(skimage.__file__)), photo.path)
    return os.path.join(cache, photo.source.split(":", 1)[1], photo.path.split("#", 1)[0].lstrip("/"))


@functools.lru_cache(maxsize=2)
def _webp_blobs(bundle: str) -> tuple[bytes, ...]:
    """Every RIFF/WebP image stored in ``bundle``, in order: read and scanned once per
    bundle, however many of its photos are loaded (photos are loaded bundle by bundle)."""
    data = open(bundle, "rb").read()
    return tuple(data[m.start(): m.start() + 8 + struct.unpack("<I", m.group(1))[0]]
                 for m in re.finditer(rb"RIFF(....)WEBP", data, re.S))


def _embedded_webp(bundle: str, ordinal: int, sha_prefix: str) -> bytes:
    """The ``ordinal``-th RIFF/WebP image stored in ``bundle``, checked against its hash."""
    blobs = _webp_blobs(bundle)
    if ordinal >= len(blobs):
        raise ValueError(f"{bundle}: has no WebP image #{ordinal}: the package changed; re-pick its photos")
    got = hashlib.sha256(blobs[ordinal]).hexdigest()
    if not got.startswith(sha_prefix):
        raise ValueError(f"{bundle}: WebP image #{ordinal} has sha256 {got[:12]}, the catalogue expects "
                         f"{sha_prefix}: the package changed; re-pick its photos")
    return blobs[ordinal]


def _puzzle_preview(puzzle: str, sha_prefix: str) -> bytes:
    """The preview JPEG of a jigzo puzzle file: the section named ``*-t.jpg`` (a puzzle file
    is a list of "name\\nlength\\nbytes" sections), checked against its hash."""
    data = open(puzzle, "rb").read()
    m = re.search(rb"\n[\w.-]+-t\.jpg\n(\d+)\n", data)
    if not m:
        raise ValueError(f"{puzzle}: has no preview section: the package changed; re-pick its photos")
    blob = data[m.end(): m.end() + int(m.group(1))]
    got = hashlib.sha256(blob).hexdigest()
    if not got.startswith(sha_prefix):
        raise ValueError(f"{puzzle}: preview has sha256 {got[:12]}, the catalogue expects {sha_prefix}: "
                         "the package changed; re-pick its photos")
    return blob


def load(photo: Photo, cache: str, max_side: int | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3), downscaled (Lanczos) so the long side is at most ``max_side``."""
    if "#webp:" in photo.path:
        _, ordinal, sha = photo.path.split("#", 1)[1].split(":")
        im = Image.open(io.BytesIO(_embedded_webp(locate(photo, cache), int(ordinal), sha))).convert("RGB")
    elif "#preview:" in photo.path:
        im = Image.open(io.BytesIO(_puzzle_preview(locate(photo, cache), photo.path.rsplit(":", 1)[1])))
        im = im.convert("RGB")
    else:
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
