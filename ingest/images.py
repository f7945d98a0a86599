"""Image decoding: bytes -> upright BGR array (the detectors' order), with a clear one-line error for
anything else."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import stat
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

from lookalike.schemas.errors import UnreadableError

try:  # HEIC/HEIF/AVIF phone photos, when pillow-heif is installed
    import pillow_heif  # type: ignore

    pillow_heif.register_heif_opener()
    try:
        pillow_heif.register_avif_opener()  # type: ignore[attr-defined]  # newer pillow-heif only
    except AttributeError:
        pass
except ImportError:  # pragma: no cover - optional
    pass

# Anything above this many pixels is refused before decoding (PIL checks the header only).
MAX_PIXELS = 80_000_000
# Larger images are decoded at reduced size: detectors work on ~640 px anyway, and a 48-MP phone
# photo would otherwise cost ~150 MB per copy. Boxes are mapped back to original coordinates.
MAX_SIDE = 3000
# A JPEG decodes at 1/2, 1/4 or 1/8 scale for the price of the smaller image, so one whose long
# side is at least twice this decodes reduced, keeping a long side >= DETAIL_SIDE (like immich,
# which runs its face models on a 1440-px preview): YuNet sees ~640 px of it, and a face big
# enough to be found in such a photo keeps >= ~45 px for the 150-px chip. Reduced decoding is what
# keeps a few large photos from dominating decode time (bench/bench_ingest.py, run ad; figures in
# bench/README.md, "Measured here").
DETAIL_SIDE = 1440

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# A file larger than this is refused before it is read: a worker holds a file whole, and 80 MP
# (MAX_PIXELS) of uncompressed 8-bit RGB -- the largest BMP or TIFF decode() takes -- is 240 MB.
MAX_FILE_BYTES = 256 * 1024 * 1024

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                  ".heic", ".heif", ".avif", ".jfif"}


class ImageError(UnreadableError):
    """An image that cannot be used; str() is a one-line reason (exit 4, HTTP 422)."""


@dataclass
class Decoded:
    bgr: np.ndarray  # HxWx3 uint8, EXIF-upright, possibly downscaled; BGR like DeepFace and OpenCV
    scale: float  # original pixels per decoded pixel (1.0 unless downscaled)
    width: int  # original (upright) width
    height: int

    @cached_property
    def rgb(self) -> np.ndarray:
        """RGB copy, for pictures (PIL); the models work on `bgr`."""
        return cv2.cvtColor(self.bgr, cv2.COLOR_BGR2RGB)


_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _not_regular(mode: int) -> Optional[str]:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _SPECIAL if test(mode)), "a special file")
    return "is a directory" if kind == "a directory" else f"{kind}, not a regular file: not read"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n:,} bytes"


def read_bytes(path: Union[str, Path], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. A FIFO would block the reader forever
    and a device (a link to /dev/zero) never ends: what stat() says is not a regular file is
    refused unopened, and the read itself stops past `max_bytes` (a file that grows, or one of
    /proc's, whose size stat() gives as 0)."""
    try:
        st = os.stat(path)
        why = _not_regular(st.st_mode)
        if why:
            raise ImageError(why)
        if st.st_size > max_bytes:
            raise ImageError(f"file too large ({_mb(st.st_size)}, the limit is {_mb(max_bytes)})")
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
        try:
            # Non-blocking: should the file have become a FIFO since stat(), opening it returns
            # at once (and fstat() refuses it below) instead of waiting for a writer.
            fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
        except BlockingIOError:
            # A regular file under another process's lease (Samba, NFS exports): a reader waits
            # until the lease is given up, at most the kernel's lease-break-time (45 s).
            fd = os.open(path, flags)
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            why = _not_regular(st.st_mode)
            if why:
                raise ImageError(why)
            chunks, n = [], 0
            while True:
                chunk = f.read(min(max(st.st_size + 1 - n, 1 << 20), max_bytes + 1 - n))
                if not chunk:
                    break
                chunks.append(chunk)
                n += len(chunk)
                if n > max_bytes:
                    raise ImageError(f"file too large (over {_mb(max_bytes)}, the limit)")
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except PermissionError:
        raise ImageError("permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except FileNotFoundError:
        raise ImageError("file not found (or a broken symbolic link)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError("symbolic link loop") from None
        raise ImageError(f"cannot read file: {e.strerror or e}") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jpeg_scale(w: int, h: int) -> int:
    """The largest JPEG reduction (1/2, 1/4, 1/8) that keeps the long side >= DETAIL_SIDE."""
    return next((s for s in (8, 4, 2) if max(w, h) >= s * DETAIL_SIDE), 1)


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


# libjpeg's warnings (it prints them on the process's stderr and goes on) that mean pixels are
# missing or wrong: the rest of the picture is filled grey or decoded from garbage. Such a file is
# refused rather than stored with a warning: the faces of a half-grey picture embed as noise and
# would be returned as matches. Other warnings ("extraneous bytes before marker", junk between
# segments) leave the pixels whole and pass.
_JPEG_DAMAGE = re.compile(r"Corrupt JPEG data: (?!\d+ extraneous bytes)[^\n]*|Premature end of JPEG file"
                          r"|Invalid SOS parameters[^\n]*|Huffman table[^\n]*|Bogus [^\n]*")
_LIBJPEG_LINE = re.compile(r"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS|Huffman table|Bogus "
                           r"|Warning: |Unsupported marker|Inconsistent progression)")
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _native_stderr():
    """What native code writes on file descriptor 2 meanwhile, in the list yielded (one string).
    Lines that are not libjpeg's are written back to stderr afterwards."""
    out: list = []
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to capture
            yield out
            return
        # an in-memory file where there is one: no file system touched per decode
        memfd = getattr(os, "memfd_create", None)
        with (os.fdopen(memfd("lookalike-stderr", getattr(os, "MFD_CLOEXEC", 0)), "w+b") if memfd
              else tempfile.TemporaryFile()) as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield out
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                text = tmp.read(1 << 16).decode("utf-8", "replace")
                out.append(text)
                other = [ln for ln in text.splitlines(True) if not _LIBJPEG_LINE.match(ln)]
                if other:
                    with contextlib.suppress(OSError):
                        os.write(2, "".join(other).encode("utf-8", "replace"))


def _decode_jpeg(data: bytes, w: int, h: int) -> Optional[np.ndarray]:
    """A plain RGB or grey JPEG through OpenCV: the same libjpeg-turbo pixels as PIL, EXIF
    orientation applied, straight into BGR -- faster than PIL, with no channel swap after it, and
    the pixels identical (bench/README.md, "Measured here", has the comparison). None when
    OpenCV cannot do it as PIL would: a truncated file (PIL reports it; OpenCV would fill it
    grey), or any decoding error (PIL then gives the reason)."""
    if not data[-64:].rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):  # the tail only: no copy of the file
        return None
    with _native_stderr() as said:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[_jpeg_scale(w, h)])
    damage = _JPEG_DAMAGE.search(said[0] if said else "")
    if damage:
        what = damage.group(0).strip().rstrip(".").replace("Corrupt JPEG data: ", "")
        raise ImageError(f"corrupt JPEG data ({what}): part of the picture is missing or garbled; "
                         f"repair or re-export it")
    return bgr if bgr is not None and bgr.ndim == 3 and bgr.shape[2] == 3 else None


def decode(data: bytes) -> Decoded:
    """Decode image bytes to an upright BGR array (EXIF orientation applied)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns from MAX_PIXELS to twice that, then refuses; the size check just below
            # refuses the same images with their size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"image too large: {w}x{h} px ({w * h / 1e6:.0f} MP), the limit is "
                                 f"{MAX_PIXELS // 1_000_000} MP")
            bgr = _decode_jpeg(data, w, h) if im.format == "JPEG" and im.mode in ("RGB", "L") else None
            if bgr is not None:
                if max(bgr.shape[:2]) > MAX_SIDE:  # PIL's resize, as below (per channel: order-blind)
                    bgr = np.asarray(_fit(Image.fromarray(bgr)), dtype=np.uint8)
                return _decoded(bgr, w, h)
            scale = _jpeg_scale(w, h) if im.format == "JPEG" else 1
            if scale > 1:  # the same reduction as the OpenCV path (draft keeps sizes >= the request)
                im.draft("RGB", (max(1, w // scale), max(1, h // scale)))
            im = ImageOps.exif_transpose(im)  # type: ignore[assignment]  # an Image, no longer the file
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")  # type: ignore[assignment]
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)  # type: ignore[assignment]
            if im.mode == "I;16" or im.mode.startswith("I"):
                arr16 = np.asarray(im, dtype=np.float32)
                im = Image.fromarray(  # type: ignore[assignment]
                    np.clip(arr16 / max(arr16.max(), 1) * 255, 0, 255).astype(np.uint8))
            im = im.convert("RGB")  # type: ignore[assignment]
            bgr = cv2.cvtColor(np.asarray(_fit(im), dtype=np.uint8), cv2.COLOR_RGB2BGR)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # over twice the limit PIL refuses in open(), before the size can be asked; it says the pixels
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f": {int(m.group(1)) / 1e6:.0f} MP" if m else ""
        raise ImageError(f"image too large{size}, the limit is {MAX_PIXELS // 1_000_000} MP") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"cannot decode image: {msg}") from None
    return _decoded(bgr, w, h)


def _fit(im: Image.Image) -> Image.Image:
    """`im` shrunk (bilinear) to a long side of MAX_SIDE if it is longer."""
    if max(im.size) <= MAX_SIDE:
        return im
    r = MAX_SIDE / max(im.size)
    return im.resize((max(1, round(im.size[0] * r)), max(1, round(im.size[1] * r))), Image.Resampling.BILINEAR)


def _decoded(bgr: np.ndarray, w: int, h: int) -> Decoded:
    if bgr.ndim != 3 or bgr.shape[0] < 2 or bgr.shape[1] < 2:
        raise ImageError(f"image too small ({bgr.shape[1] if bgr.ndim > 1 else 0}x{bgr.shape[0]})")
    # draft()/resize may have shrunk the image; rotation keeps the long side, so this maps decoded
    # pixels back to original upright pixels.
    scale = max(w, h) / max(bgr.shape[:2])
    width, height = round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)
    return Decoded(bgr=np.ascontiguousarray(bgr), scale=scale, width=width, height=height)


def load(path: Union[str, Path]) -> Decoded:
    return decode(read_bytes(path))
