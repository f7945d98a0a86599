"""Decoding: every kind of file a photo folder holds becomes an upright RGB array or one line."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import DATA
from ingest.images import DETAIL_SIDE, MAX_PIXELS, MAX_SIDE, ImageError, decode

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


@pytest.mark.parametrize("side,fmt,scale", [
    (MAX_SIDE * 2, "JPEG", 4.0),  # reduced while decoding, long side kept >= DETAIL_SIDE
    (DETAIL_SIDE * 2 + 10, "JPEG", 2.0),
    (DETAIL_SIDE * 2 - 10, "JPEG", 1.0),  # half would fall below DETAIL_SIDE: full size
    (MAX_SIDE * 2, "PNG", 2.0),  # no cheap reduction: resized to MAX_SIDE
])
def test_large_photos_are_downscaled_and_boxes_map_back(side, fmt, scale):
    big = Image.open(PORTRAIT).convert("RGB").resize((side, side * 2 // 3))
    d = decode(_bytes(big, fmt, **({"quality": 80} if fmt == "JPEG" else {})))
    assert max(d.rgb.shape[:2]) <= MAX_SIDE
    assert max(d.rgb.shape[:2]) >= min(side, DETAIL_SIDE)
    assert d.scale == pytest.approx(scale, rel=0.01)
    assert (d.width, d.height) == pytest.approx((side, side * 2 // 3), abs=scale)


def _pil_reference(data: bytes) -> np.ndarray:
    """What decode() gave before JPEGs went through OpenCV: PIL all the way."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        s = next((s for s in (8, 4, 2) if max(w, h) >= s * DETAIL_SIDE), 1)
        im.draft("RGB", (w // s, h // s))
        im = ImageOps.exif_transpose(im).convert("RGB")
        if max(im.size) > MAX_SIDE:
            r = MAX_SIDE / max(im.size)
            im = im.resize((max(1, round(im.size[0] * r)), max(1, round(im.size[1] * r))), Image.BILINEAR)
        return np.asarray(im)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["plain", "huge", "grey", "progressive"])
def test_jpeg_fast_path_gives_pils_pixels(orientation, kind):
    """Plain JPEGs decode through OpenCV (faster, straight to BGR); the pixels, size and scale must
    be exactly those of the PIL path, for every EXIF orientation, at reduced scale, grey or
    progressive."""
    im = Image.open(PORTRAIT).convert("RGB")
    kw = {"quality": 90}
    if kind == "huge":
        im = im.resize((MAX_SIDE * 3 + 17, MAX_SIDE * 2 + 5))
    elif kind == "grey":
        im = im.convert("L")
    elif kind == "progressive":
        kw["progressive"] = True
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _bytes(im, "JPEG", exif=exif, **kw)
    d = decode(data)
    ref = _pil_reference(data)
    assert d.rgb.shape == ref.shape
    assert np.array_equal(d.rgb, ref)
    assert np.array_equal(d.bgr, ref[:, :, ::-1])
    upright = (im.height, im.width) if orientation >= 5 else (im.width, im.height)
    assert (d.width, d.height) == pytest.approx(upright, abs=1)


def test_truncated_jpeg_is_reported_not_filled():
    data = _bytes(Image.open(PORTRAIT).convert("RGB"), "JPEG", quality=90)
    with pytest.raises(ImageError, match="cannot decode"):
        decode(data[: len(data) // 2])
