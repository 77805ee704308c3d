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
