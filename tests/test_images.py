"""Decoding: every kind of file a photo folder holds becomes an upright RGB array or one line."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import DATA
from ingest.images import MAX_PIXELS, MAX_SIDE, ImageError, decode

PORTRAIT = sorted((DATA / "people" / "Tom_Hanks").iterdir())[0]


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [
    ("RGBA", "PNG"), ("P", "PNG"), ("L", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"),
    ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF"),
])
def test_modes_and_formats_decode_to_rgb(mode, fmt):
    base = Image.open(PORTRAIT).convert("RGB")
    im = base.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(base.convert("L"), dtype=np.uint16) * 257))
    d = decode(_bytes(im, fmt))
    assert d.rgb.dtype == np.uint8 and d.rgb.shape == (base.height, base.width, 3)
    assert d.rgb.std() > 10  # real content, not a blank frame


def test_exif_orientation_is_applied(settings):
    """A photo stored sideways with an EXIF 'rotate 90' tag decodes upright: faces are found."""
    from ingest.models import Detector

    upright = Image.open(PORTRAIT).convert("RGB")
    sideways = upright.transpose(Image.ROTATE_90)  # pixels stored rotated
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90° clockwise turn, which undoes ROTATE_90
    d = decode(_bytes(sideways, "JPEG", exif=exif, quality=95))
    assert d.rgb.shape[:2] == (upright.height, upright.width)
    faces = Detector("yunet", settings).detect(d)
    main = max(faces, key=lambda f: f.box[2] * f.box[3])
    (lx, ly), (rx, ry) = main.left_eye, main.right_eye
    assert abs(lx - rx) > 3 * abs(ly - ry)  # eyes side by side: the face is upright
    raw = decode(_bytes(sideways, "JPEG", quality=95))
    assert raw.rgb.shape[:2] == (upright.width, upright.height)


def test_bad_bytes_give_one_line_reasons():
    with pytest.raises(ImageError, match="empty"):
        decode(b"")
    with pytest.raises(ImageError, match="not an image"):
        decode(b"hello, I am text\n" * 10)
    with pytest.raises(ImageError, match="too small"):
        decode(_bytes(Image.new("RGB", (1, 1)), "PNG"))


def test_decompression_bomb_is_refused_without_decoding():
    # a PNG whose header claims more pixels than the limit; tiny on disk
    side = int((MAX_PIXELS * 1.5) ** 0.5)
    im = Image.new("1", (side, side))
    data = _bytes(im, "PNG")
    assert len(data) < 5_000_000
    with pytest.raises(ImageError, match="too large"):
        decode(data)


def test_large_photos_are_downscaled_and_boxes_map_back():
    big = Image.open(PORTRAIT).convert("RGB").resize((MAX_SIDE * 2, MAX_SIDE * 2))
    d = decode(_bytes(big, "JPEG", quality=80))
    assert max(d.rgb.shape[:2]) <= MAX_SIDE
    assert (d.width, d.height) == (MAX_SIDE * 2, MAX_SIDE * 2)
    assert d.scale == pytest.approx(2.0, rel=0.01)
