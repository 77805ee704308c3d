"""models.photos — the catalogue's split and the loader for photos stored inside a
resource bundle (found by ordinal, checked by hash). No download: the bundle is built here."""
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from chromabeam.models import photos


def _webp(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "WEBP", lossless=True)
    return buf.getvalue()


def test_catalogue_split_is_disjoint_and_names_unique():
    cat = photos.catalog()
    names = [p.name for p in cat]
    assert len(names) == len(set(names))
    train, evals = photos.split()
    assert {p.name for p in evals} == set(photos.EVAL_NAMES)
    assert not {p.name for p in train} & {p.name for p in evals}
    assert len(train) + len(evals) == len(cat) and len(train) >= 150
    assert all(p.source.startswith(("pypi:", "debian:")) for p in cat)


def test_embedded_webp_found_by_ordinal_and_checked(tmp_path):
    red, blue = _webp((200, 10, 10)), _webp((10, 10, 200))
    bundle = tmp_path / "pkg" / "usr/share/gcompris-qt/rcc/x.rcc"
    bundle.parent.mkdir(parents=True)
    bundle.write_bytes(b"qres\0\0\0\3" + b"\0" * 13 + red + b"\1\2\3" + blue + b"tail")
    sha = hashlib.sha256(blue).hexdigest()[:12]
    p = photos.Photo("pkg/x-1", "debian:pkg", f"/usr/share/gcompris-qt/rcc/x.rcc#webp:1:{sha}")
    img = photos.load(p, str(tmp_path))
    assert img.shape == (30, 40, 3) and np.all(img[..., 2] == 200) and np.all(img[..., 0] == 10)
    small = photos.load(p, str(tmp_path), max_side=20)
    assert max(small.shape[:2]) == 20
    wrong = photos.Photo("pkg/x-0", "debian:pkg", f"/usr/share/gcompris-qt/rcc/x.rcc#webp:0:{sha}")
    with pytest.raises(ValueError, match="package changed"):
        photos.load(wrong, str(tmp_path))
    missing = photos.Photo("pkg/x-5", "debian:pkg", f"/usr/share/gcompris-qt/rcc/x.rcc#webp:5:{sha}")
    with pytest.raises(ValueError, match="no WebP image #5"):
        photos.load(missing, str(tmp_path))


def _jpeg(colour, size=(36, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_puzzle_preview_found_by_section_name_and_checked(tmp_path):
    # a jigzo puzzle file: text header lines, then "name\nlength\nbytes" sections
    preview, atlas = _jpeg((20, 160, 40)), _jpeg((250, 0, 0), (64, 64))
    puzzle = tmp_path / "pkg" / "usr/share/games/jigzo/puzzles/00_default/cat-2x2.pzl"
    puzzle.parent.mkdir(parents=True)
    puzzle.write_bytes(b"PzlF\n0.1\ncat-2x2\nhttp://example.org/\ncat-2x2.map\n4\nabcd\n"
                       + b"cat-2x2-t.jpg\n" + str(len(preview)).encode() + b"\n" + preview
                       + b"cat-2x2.jpg\n" + str(len(atlas)).encode() + b"\n" + atlas)
    sha = hashlib.sha256(preview).hexdigest()[:12]
    path = f"/usr/share/games/jigzo/puzzles/00_default/cat-2x2.pzl#preview:{sha}"
    img = photos.load(photos.Photo("pkg/cat-2x2", "debian:pkg", path), str(tmp_path))
    assert img.shape == (24, 36, 3)
    assert abs(int(img[..., 1].mean()) - 160) <= 3 and img[..., 0].mean() < 40  # the preview, not the atlas
    wrong = photos.Photo("pkg/cat-2x2", "debian:pkg", path.replace(sha, "000000000000"))
    with pytest.raises(ValueError, match="package changed"):
        photos.load(wrong, str(tmp_path))
    puzzle.write_bytes(b"PzlF\n0.1\ncat-2x2\n")
    with pytest.raises(ValueError, match="no preview section"):
        photos.load(photos.Photo("pkg/cat-2x2", "debian:pkg", path), str(tmp_path))


def test_catalogue_names_nested_files_apart():
    names = {p.name for p in photos.catalog()}
    assert "opencv-doc/data-aero1.jpg" in names and "opencv-doc/text-scenetext01.jpg" in names
    assert "plasma-workspace-wallpapers/Path" in names  # wallpapers keep their folder name
    assert sum(n.startswith("jigzo-data/") for n in names) == len(photos.JIGZO)


def test_holdout_split_is_by_photo_seeded_and_covers_train():
    train = photos.split()[0]
    fit, held = photos.holdout_split(0.2)
    assert len(held) == int(len(train) * 0.2) and len(fit) + len(held) == len(train)
    assert not {p.name for p in fit} & {p.name for p in held}
    assert {p.name for p in fit} | {p.name for p in held} == {p.name for p in train}
    assert photos.holdout_split(0.2) == (fit, held)  # the same photos every time
    assert photos.holdout_split(0.2, seed=5)[1] != held
    with pytest.raises(ValueError, match="fraction"):
        photos.holdout_split(1.0)
