"""Decoding: every kind of file a photo folder holds becomes an upright RGB array or one line."""
from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import DATA
from PIL import Image, ImageOps

from lookalike.ingest.images import DETAIL_SIDE, MAX_PIXELS, MAX_SIDE, ImageError, decode

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
    from lookalike.ingest.models import Detector

    upright = Image.open(PORTRAIT).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # pixels stored rotated
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90° clockwise turn, which undoes ROTATE_90
    d = decode(_bytes(sideways, "JPEG", exif=exif, quality=95))
    assert d.rgb.shape[:2] == (upright.height, upright.width)
    faces = Detector("yunet", settings).detect(d)
    main = max(faces, key=lambda f: f.box[2] * f.box[3])
    assert main.left_eye is not None and main.right_eye is not None
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
    with Image.open(io.BytesIO(data)) as src:
        w, h = src.size
        s = next((s for s in (8, 4, 2) if max(w, h) >= s * DETAIL_SIDE), 1)
        src.draft("RGB", (w // s, h // s))
        im = ImageOps.exif_transpose(src).convert("RGB")
        if max(im.size) > MAX_SIDE:
            r = MAX_SIDE / max(im.size)
            im = im.resize((max(1, round(im.size[0] * r)), max(1, round(im.size[1] * r))), Image.Resampling.BILINEAR)
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


# -- hostile files ---------------------------------------------------------------------------------
def test_special_files_are_refused_without_being_opened(tmp_path):
    """A FIFO would block a reader forever, /dev/zero never ends: refused from stat() alone. Run
    in a process of its own, so that a reader that did open the FIFO fails the test instead of
    hanging it."""
    import os
    import subprocess
    import sys

    os.mkfifo(tmp_path / "z.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    os.symlink(tmp_path / "absent.jpg", tmp_path / "dangling.jpg")
    code = ("import sys\nfrom lookalike.ingest.images import ImageError, read_bytes\n"
            "for p in sys.argv[1:]:\n    try:\n        read_bytes(p)\n    except ImageError as e:\n        print(e)\n")
    names = ["z.jpg", "zero.jpg", "dangling.jpg", "."]
    r = subprocess.run([sys.executable, "-c", code, *(str(tmp_path / n) for n in names)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["a named pipe (FIFO), not a regular file: not read",
                                     "a character device, not a regular file: not read",
                                     "file not found (or a broken symbolic link)", "is a directory"]


def test_reads_are_bounded(tmp_path):
    from lookalike.ingest.images import read_bytes

    p = tmp_path / "big.jpg"
    p.write_bytes(b"\xff" * 5000)
    with pytest.raises(ImageError, match=r"file too large \(5,000 bytes, the limit is 4,096 bytes\)"):
        read_bytes(p, max_bytes=4096)
    assert len(read_bytes(p, max_bytes=5000)) == 5000
    # /proc's files say 0 bytes and are read to their end, within the bound
    status = read_bytes("/proc/self/status", max_bytes=1 << 20)
    assert status.startswith(b"Name:")
    with pytest.raises(ImageError, match="file too large"):
        read_bytes("/proc/self/status", max_bytes=16)


def _png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("w, h, reason", [
    (9_000, 9_000, "image too large: 9000x9000 px (81 MP), the limit is 80 MP"),  # PIL only warns here
    (12_000, 12_000, "image too large: 12000x12000 px (144 MP), the limit is 80 MP"),
    (20_000, 20_000, "image too large: 400 MP, the limit is 80 MP"),  # PIL refuses in open()
])
def test_a_too_large_image_is_refused_with_its_size(w, h, reason):
    with pytest.raises(ImageError) as e:
        decode(_png_claiming(w, h))
    assert str(e.value) == reason


def test_a_corrupt_jpeg_ending_with_its_end_marker_is_refused_quietly(capfd):
    data = PORTRAIT.read_bytes()
    with pytest.raises(ImageError) as e:
        decode(data[: len(data) // 3] + b"\xff\xd9")
    assert str(e.value).startswith("corrupt JPEG data (premature end of data segment): part of the picture")
    # junk before the end marker leaves every pixel: decoded, as before
    assert np.array_equal(decode(data[:-2] + b"\0" * 7 + b"\xff\xd9").bgr, decode(data).bgr)
    out, err = capfd.readouterr()
    assert "Corrupt JPEG" not in out + err, err  # libjpeg's own lines are the reason now, not noise


# ---------------------------------------------------------------------------------------------
# Contact sheet captions (query/render.py; issue 32, item 5)
# ---------------------------------------------------------------------------------------------
def _sheet_result():
    from lookalike.query.results import Match, PhotoResult, QueryFace

    def match(rank, score, identity, same):
        m = Match.from_row(rank, score, {"id": f"x_{rank}", "identity": identity, "source_path": str(PORTRAIT),
                                         "box_x": 60, "box_y": 60, "box_w": 120, "box_h": 120})
        return m.model_copy(update={"same_person": same, "same_person_probability": 0.99 if same else 0.01})

    matches = [match(1, 0.97, "Tom_Hanks", True), match(2, 0.88, "7342", False), match(3, 0.87, "", False),
               match(4, 0.86, "Sylvester_Stallone_the_long_name", False)]
    faces = [QueryFace(index=0, box=(60, 60, 120, 120), confidence=0.9, quality=0.31, low_quality=True,
                       matches_by_model={"dlib": matches}),
             QueryFace(index=1, box=(10, 10, 40, 40), confidence=0.8, quality=0.95, matches_by_model={"dlib": matches})]
    with Image.open(PORTRAIT) as im:
        w, h = im.size
    return PhotoResult(path=str(PORTRAIT), sha256="", width=w, height=h, detector="yunet", models=["dlib"],
                       top_k=4, faces=faces)


def test_sheet_caption_lines_keep_score_identity_and_quality_apart():
    from lookalike.query.render import face_caption, identity_label, match_caption

    r = _sheet_result()
    celeba = r.faces[0].matches[1]
    assert match_caption(celeba) == ["0.88", "id 7342", PORTRAIT.name]  # not "0.88 7342" (0.887342)
    assert match_caption(r.faces[0].matches[0])[:2] == ["0.97 · same person", "Tom_Hanks"]
    assert identity_label("") == "unknown" and identity_label("10177") == "id 10177"
    assert face_caption(r.faces[0]) == ["face 1", "conf 0.90 · q 0.31", "LOW QUALITY"]  # the value is kept
    assert face_caption(r.faces[1], "facenet512") == ["face 2 · facenet512", "conf 0.80 · q 0.95"]


def test_sheet_captions_are_drawn_whole_within_their_tile(monkeypatch):
    """Each caption line is drawn in full (no "…"), no wider than its THUMB-wide tile in the font
    it is drawn with, and within the caption band below the tile; only a name longer than the
    tile is shortened."""
    from PIL import ImageDraw

    from lookalike.query import render

    drawn = []
    text = ImageDraw.ImageDraw.text

    def spy(self, xy, t, *a, **kw):
        drawn.append((xy, t, kw.get("font"), kw.get("fill")))
        return text(self, xy, t, *a, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    r = _sheet_result()
    sheet = render.render_sheet(r)
    assert sheet.size == render.sheet_size(r.width, r.height, 2, 4)
    font = render._font(render.CAPTION_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wanted = set(render.face_caption(r.faces[0])) | set(render.face_caption(r.faces[1]))
    for m in r.faces[0].matches:
        wanted |= set(render.match_caption(m))
    wanted -= {"Sylvester_Stallone_the_long_name", PORTRAIT.name}  # wider than a tile: shortened
    captions = {t: (xy, f, fill) for xy, t, f, fill in drawn if f is font}
    missing = wanted - set(captions)
    assert not missing, (missing, sorted(captions))
    y_rows = render.MARGIN + render.HEADER_H + render.photo_height(r.width, r.height) + render.GAP
    for t, ((x, y), f, _fill) in captions.items():
        assert measure.textlength(t, font=f) <= render.THUMB, t
        row = (y - y_rows) // render.ROW_H
        band_bottom = y_rows + row * render.ROW_H + render.THUMB + render.CAPTION_H
        assert measure.textbbox((x, y), t, font=f)[3] <= band_bottom, t
    assert any(t.startswith("Sylvester_Stal") and t.endswith("…") for t in captions)  # a long name is shortened
    names = [t for t in captions if "…" in t and t.endswith(".jpg")]  # a file name, in its middle
    assert names and all(t.startswith("Tom_") and t.endswith("0001.jpg") for t in names), sorted(captions)
    assert captions["LOW QUALITY"][2] == render.LOW_TEXT
    assert captions["0.97 · same person"][2] == render.SAME_TEXT


def test_face_box_colours_are_not_the_same_person_green():
    """No face box (sheet or web page) is drawn in, or near, the "same person" frame's green."""
    import re
    from pathlib import Path

    from lookalike.query.render import BOX_COLOURS, SAME_COLOUR

    def far(c, ref):
        return sum((a - b) ** 2 for a, b in zip(c, ref)) ** 0.5 >= 100

    assert all(far(c, SAME_COLOUR) for c in BOX_COLOURS), BOX_COLOURS
    assert len(set(BOX_COLOURS)) == len(BOX_COLOURS)
    static = Path(__file__).resolve().parents[1] / "query" / "app" / "static"
    js = (static / "app.js").read_text()
    web = re.search(r"const COLOURS = \[([^\]]*)\]", js)
    assert web is not None
    hexes = re.findall(r'"#([0-9a-fA-F]{6})"', web.group(1))
    frame = re.search(r"\.match\.is-same \{[^}]*#([0-9a-fA-F]{6})", (static / "app.css").read_text())
    assert hexes and frame is not None

    def rgb(h):
        return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))

    assert all(far(rgb(h), rgb(frame.group(1))) for h in hexes), hexes
