"""Image decoding: bytes -> upright RGB array, with a clear one-line error for anything else."""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

try:  # HEIC/HEIF/AVIF phone photos, when pillow-heif is installed
    import pillow_heif  # type: ignore

    pillow_heif.register_heif_opener()
    try:
        pillow_heif.register_avif_opener()
    except AttributeError:
        pass
except ImportError:  # pragma: no cover - optional
    pass

# Anything above this many pixels is refused before decoding (PIL checks the header only).
MAX_PIXELS = 80_000_000
# Larger images are decoded at reduced size: detectors work on ~640 px anyway, and a 48-MP phone
# photo would otherwise cost ~150 MB per copy. Boxes are mapped back to original coordinates.
MAX_SIDE = 3000

Image.MAX_IMAGE_PIXELS = MAX_PIXELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                  ".heic", ".heif", ".avif", ".jfif"}


class ImageError(ValueError):
    """An image that cannot be used; str() is a one-line reason."""


@dataclass
class Decoded:
    rgb: np.ndarray  # HxWx3 uint8, EXIF-upright, possibly downscaled
    scale: float  # original pixels per decoded pixel (1.0 unless downscaled)
    width: int  # original (upright) width
    height: int


def read_bytes(path: Union[str, Path]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError:
        raise ImageError("permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes) -> Decoded:
    """Decode image bytes to an upright RGB array (EXIF orientation applied)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"image too large ({w}x{h} > {MAX_PIXELS // 1_000_000} MP)")
            if max(w, h) > MAX_SIDE and im.format == "JPEG":
                # JPEG can decode at 1/2, 1/4, 1/8 scale directly: cheap and memory-safe.
                im.draft("RGB", (MAX_SIDE, MAX_SIDE))
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            if im.mode == "I;16" or im.mode.startswith("I"):
                arr16 = np.asarray(im, dtype=np.float32)
                im = Image.fromarray(np.clip(arr16 / max(arr16.max(), 1) * 255, 0, 255).astype(np.uint8))
            im = im.convert("RGB")
            if max(im.size) > MAX_SIDE:
                r = MAX_SIDE / max(im.size)
                im = im.resize((max(1, round(im.size[0] * r)), max(1, round(im.size[1] * r))), Image.BILINEAR)
            rgb = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image too large (decompression bomb guard, > {MAX_PIXELS // 1_000_000} MP)") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"cannot decode image: {msg}") from None
    if rgb.ndim != 3 or rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ImageError(f"image too small ({rgb.shape[1] if rgb.ndim > 1 else 0}x{rgb.shape[0]})")
    # draft()/resize may have shrunk the image; rotation keeps the long side, so this maps decoded
    # pixels back to original upright pixels.
    scale = max(w, h) / max(rgb.shape[:2])
    width, height = round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)
    return Decoded(rgb=np.ascontiguousarray(rgb), scale=scale, width=width, height=height)


def load(path: Union[str, Path]) -> Decoded:
    return decode(read_bytes(path))
