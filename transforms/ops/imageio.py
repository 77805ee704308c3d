"""Image bytes ⇄ pixels with Pillow. Pure: bytes in, arrays out (no Beam, no storage).

Decoding policy (what every input becomes):
- EXIF orientation is applied, then the EXIF is dropped.
- Output is always 8-bit RGB, shape (H, W, 3), uint8.
- CMYK, L, LA, P, I;16/I, F, YCbCr, … are converted to RGB; 16-bit and float data are
  scaled to 8 bits (not clipped) by their nominal range.
- Alpha (RGBA, LA, P with transparency) is composited over white: filtered photos with
  alpha are rare, and white matches how browsers and catalogs show them.
- Animated images (GIF, WebP, APNG) give their first frame.
- Images over ``max_pixels`` (default 80 MP) are refused from the header alone, before
  any pixel is decoded, so a decompression bomb is an error row, never an OOM.
"""
from __future__ import annotations

import io
import re
import warnings

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 80_000_000
FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")

# Truncated files must fail loudly (an error row), not decode grey bottoms.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(ValueError):
    """Bytes that are not a usable image; the message is the reason for the manifest."""


def probe_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as exc:
        raise DecodeError(_bomb_reason(exc, DEFAULT_MAX_PIXELS)) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DecodeError(_reason(data, exc)) from None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 of shape (H, W, 3) per the module policy.

    Raises DecodeError whose message starts with the kind of failure (the run summary
    groups reasons by the text before the first colon).
    """
    if not data:
        raise DecodeError("empty file: 0 bytes")
    try:
        # Our size check below is the one that counts; Pillow's warning (> ~89 MP) would
        # otherwise override a larger --max-pixels. Pillow's hard error (> 2x its limit)
        # still fires inside Image.open and is reported the same way.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DecodeError(
                        f"image over the pixel limit: {w}x{h} = {w * h / 1e6:.1f} MP, over the "
                        f"{max_pixels / 1e6:g} MP limit (raise --max-pixels if it is genuine)"
                    )
                if w == 0 or h == 0:
                    raise DecodeError(f"image has zero size: {w}x{h}")
                im.seek(0)
                im.load()
                rgb = _to_rgb(ImageOps.exif_transpose(im) if _has_orientation(im) else im)
                return np.asarray(rgb, dtype=np.uint8).copy()
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(_bomb_reason(exc, max_pixels)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DecodeError(_reason(data, exc)) from None


def _bomb_reason(exc: BaseException, max_pixels: int) -> str:
    """Pillow refused the header before we saw the size; its message carries the pixel count."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(m.group(1)) / 1e6:.1f} MP" if m else "size unknown"
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if max_pixels <= pillow_limit or not pillow_limit:
        limit = f"the {max_pixels / 1e6:g} MP limit (raise --max-pixels if it is genuine)"
    else:
        limit = f"Pillow's {pillow_limit / 1e6:g} MP limit (PIL.Image.MAX_IMAGE_PIXELS)"
    return f"image over the pixel limit: {size}, over {limit}; refused from the header"


def _has_orientation(im: Image.Image) -> bool:
    try:
        return im.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # corrupt EXIF: keep the pixels, ignore the tag
        return False


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _reason(data: bytes, exc: BaseException) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml")):
        return "not an image: the bytes are an HTML/XML document (an error page saved as an image?)"
    # Pillow names the BytesIO by address; drop it so equal inputs give equal reasons.
    msg = re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>", "", str(exc)) or type(exc).__name__
    if "truncated" in msg.lower() or isinstance(exc, EOFError) or _looks_truncated(data):
        return f"truncated image data: {len(data)} bytes, {msg}"
    if isinstance(exc, UnidentifiedImageError):
        return f"not a recognised image format: {len(data)} bytes, {msg}"
    return f"cannot decode image: {type(exc).__name__}: {msg}"


def _looks_truncated(data: bytes) -> bool:
    """The container says more bytes should follow (decoders often report this vaguely)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-12:]
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-32:]
    if data[:4] == b"GIF8":
        return not data.rstrip(b"\x00").endswith(b";")
    return False


def encode_image(pixels: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """Encode RGB uint8 (H, W, 3) as jpg/png/webp. Deterministic bytes for equal input."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"encode_image expects uint8 (H, W, 3), got {pixels.dtype} {pixels.shape}")
    key = fmt.lower()
    if key not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of jpg, png, webp")
    buf = io.BytesIO()
    im = Image.fromarray(pixels, "RGB")
    if FORMATS[key] == "JPEG":
        im.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, optimize=False)
    elif FORMATS[key] == "WEBP":
        im.save(buf, "WEBP", quality=quality, method=4)
    else:
        im.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def extension(fmt: str) -> str:
    return "jpg" if fmt.lower() in ("jpg", "jpeg") else fmt.lower()


def to_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) → torch float32 (3, H, W) in [0, 1]."""
    a = pixels if pixels.flags.writeable and pixels.flags.c_contiguous else np.array(pixels)  # torch wants writable
    return torch.from_numpy(a).permute(2, 0, 1).float().div_(255.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """torch float (3, H, W) in [0, 1] → uint8 (H, W, 3), rounded."""
    return image.detach().clamp(0, 1).mul(255.0).round_().to("cpu", dtype=torch.uint8).permute(1, 2, 0).numpy()


def is_plain_jpeg(data: bytes) -> bool:
    """True when ``data`` is an RGB (YCbCr) JPEG with no EXIF rotation: its decode is
    exactly what ``decode_image`` returns, so the bytes can stand for the pixels as-is
    (no re-encode, no generation loss). Reads the header only."""
    if data[:2] != b"\xff\xd8":
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format == "JPEG" and im.mode == "RGB" and not _has_orientation(im)
    except Exception:
        return False
