"""Presenting query results: a terminal table, and a contact sheet PNG (Pillow).

Contact sheet layout (all sizes in pixels, constants below)::

    +-- MARGIN ---------------------------------------------------------------+
    | HEADER_H: "photo.jpg  3 faces  dlib  top 5  filter ..."                 |
    | the query photo scaled to PHOTO_WIDTH wide, numbered face boxes         |
    | GAP                                                                     |
    | row per face (and per model): [query crop "1"] ROW_GAP [match 1] GAP    |
    |   [match 2] ... (at most RENDER_MAX_K); each cell THUMB x THUMB, then    |
    |   CAPTION_H of caption, one line each: score ("0.83 · same person"),    |
    |   identity ("id 2880" for CelebA's numbers), file name; ROW_H per row   |
    |   (a face too poor to judge: a band "face too poor to judge (quality    |
    |   0.12)" across its matches' tops, and no verdict on them)              |
    +-------------------------------------------------------------------------+

`sheet_size()` gives the exact size for a photo, a number of rows and k; a photo with no face
gets one row saying so. A match whose source image is missing is drawn as a grey placeholder.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont, ImageOps

from lookalike.query.results import Match, PhotoResult, results_document

MARGIN = 16
HEADER_H = 28
PHOTO_WIDTH = 800
GAP = 8
THUMB = 112
CAPTION_SIZE = 12  # caption font size; each caption line fits THUMB wide in it
CAPTION_LINE = 15  # caption line pitch
CAPTION_H = 3 * CAPTION_LINE + 4
ROW_GAP = 16  # between the query face crop and its first match
ROW_H = THUMB + CAPTION_H + GAP
RENDER_MAX_K = 10  # thumbnails per row; results.json holds all k
BG = (255, 255, 255)
PLACEHOLDER = (170, 170, 170)
TEXT = (20, 20, 20)
MUTED = (90, 90, 90)
# face box colours: none of them green, the colour of the "same person" frame (SAME_COLOUR)
BOX_COLOURS = [(230, 25, 75), (128, 0, 0), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 200, 200), (240, 50, 230), (128, 128, 0), (0, 0, 128), (170, 110, 40)]


def photo_height(width: int, height: int) -> int:
    """Height of the query photo once scaled to PHOTO_WIDTH."""
    return max(1, round(height * PHOTO_WIDTH / max(width, 1)))


def sheet_size(width: int, height: int, n_rows: int, k: int) -> Tuple[int, int]:
    """(width, height) of the contact sheet for a width x height photo, n_rows face rows (faces
    times models; 0 means the "no face" row) and k matches per row."""
    shown = max(1, min(k, RENDER_MAX_K))
    row_w = THUMB + ROW_GAP + shown * (THUMB + GAP) - GAP
    w = 2 * MARGIN + max(PHOTO_WIDTH, row_w)
    h = MARGIN + HEADER_H + photo_height(width, height) + GAP + max(1, n_rows) * ROW_H + MARGIN - GAP
    return w, h


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _fit_middle(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """text, shortened in its middle to fit: a file name keeps its first letters and as much of its
    end (number and extension) as fits."""
    if draw.textlength(text, font=font) <= width:
        return text
    head = text[:4]
    for start in range(4, len(text)):
        short = head + "…" + text[start:]
        if draw.textlength(short, font=font) <= width:
            return short
    return _fit_text(draw, text, font, width)


def _load_rgb(path: str):
    """Upright decoded image of the query photo when it was not kept, or None."""
    from lookalike.ingest.images import ImageError, load

    try:
        return load(path)
    except (ImageError, OSError):
        return None


def _crop(decoded, box: Sequence[int], scale_box: bool = True) -> Optional[Image.Image]:
    """Crop an original-pixel box out of a Decoded image (which may be downscaled)."""
    if decoded is None:
        return None
    s = decoded.scale if scale_box else 1.0
    x, y, w, h = (int(round(v / s)) for v in box)
    H, W = decoded.rgb.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(W, x + max(w, 1)), min(H, y + max(h, 1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return Image.fromarray(decoded.rgb[y0:y1, x0:x1])


_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


def source_crop(path: str, box: Sequence[int]) -> Optional[Image.Image]:
    """The face box (original upright pixels, as stored) of a stored face's source image, or
    None when the file is missing or unreadable. JPEGs are decoded at a reduced scale (draft)
    when the face stays larger than a thumbnail, which makes a sheet of 80 matches fast."""
    try:
        with Image.open(path) as im:
            w0, h0 = im.size
            orientation = im.getexif().get(0x0112, 1)
            side = min(box[2], box[3])
            r = 1
            while r < 8 and side / (2 * r) >= THUMB:
                r *= 2
            if r > 1 and im.format == "JPEG":
                im.draft("RGB", (max(1, w0 // r), max(1, h0 // r)))
            up = ImageOps.exif_transpose(im) if orientation != 1 else im.convert("RGB")
            uw = h0 if orientation in _SWAPS_AXES else w0
            s = uw / up.width
            x, y, w, h = box
            x0, y0 = max(0, round(x / s)), max(0, round(y / s))
            x1, y1 = min(up.width, round((x + w) / s)), min(up.height, round((y + h) / s))
            if x1 - x0 < 2 or y1 - y0 < 2:
                return None
            return up.crop((x0, y0, x1, y1)).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _thumb(img: Optional[Image.Image]) -> Image.Image:
    if img is None:
        return Image.new("RGB", (THUMB, THUMB), PLACEHOLDER)
    return ImageOps.pad(img.convert("RGB"), (THUMB, THUMB), method=Image.Resampling.BILINEAR, color=(235, 235, 235))


def _label(draw: ImageDraw.ImageDraw, xy: Tuple[int, int], text: str, colour, size: int = 16) -> None:
    font = _font(size)
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=colour)
    draw.text(xy, text, fill=(255, 255, 255), font=font)


SAME_COLOUR = (46, 160, 67)  # frame of a match judged the same person
SAME_TEXT = (26, 127, 55)  # its caption
LOW_TEXT = (200, 60, 40)  # a low-quality query face's caption


def identity_label(identity: str) -> str:
    """A match's identity as captioned: CelebA's identities are numbers, shown "id 7342" so that
    they never read as part of the score; an unlabelled face is "unknown"."""
    if not identity:
        return "unknown"
    return f"id {identity}" if identity.isdigit() else identity


def match_caption(m: Match) -> List[str]:
    """A match's caption lines: score (and the verdict), identity, file name."""
    return [f"{m.score:.2f}" + (" · same person" if m.same_person else ""), identity_label(m.identity),
            Path(m.source_path).name]


def too_poor_text(face) -> str:
    """What a face too poor to judge says instead of a verdict."""
    return "face too poor to judge" + ("" if face.quality is None else f" (quality {face.quality:.2f})")


def face_caption(face, model: str = "") -> List[str]:
    """A query face's caption lines: its number (and model), confidence and quality, and
    "LOW QUALITY" on a line of its own, so that its quality value is never cut off."""
    lines = [f"face {face.index + 1}" + (f" · {model}" if model else ""),
             f"conf {face.confidence:.2f}" + ("" if face.quality is None else f" · q {face.quality:.2f}")]
    if face.low_quality:
        lines.append("LOW QUALITY")
    return lines


def _caption(draw: ImageDraw.ImageDraw, x: int, y: int, lines: Sequence[str], colours: Sequence,
             file_line: int = -1) -> None:
    """Caption lines under a tile, each fitted to THUMB (line `file_line`, a file name, is
    shortened in its middle)."""
    font = _font(CAPTION_SIZE)
    for i, (text, colour) in enumerate(zip(lines, colours)):
        fit = _fit_middle if i == file_line else _fit_text
        draw.text((x, y + THUMB + 2 + i * CAPTION_LINE), fit(draw, text, font, THUMB), fill=colour, font=font)


def render_sheet(result: PhotoResult, image=None, source_cache: Optional[Dict[object, Image.Image]] = None
                 ) -> Image.Image:
    """The contact sheet of one photo's results. `image` is the query photo's Decoded (taken from
    result.image when kept, else re-read from result.path)."""
    decoded = image if image is not None else result.image
    if decoded is None:
        decoded = _load_rgb(result.path)
    cache: Dict[object, Image.Image] = source_cache if source_cache is not None else {}
    models = result.models or [""]
    rows = [(f, m) for f in result.faces for m in models]
    k = result.top_k
    W, H = sheet_size(result.width, result.height, len(rows), k)
    sheet = Image.new("RGB", (W, H), BG)
    draw = ImageDraw.Draw(sheet)
    normal = _font(14)

    # header
    n = len(result.faces)
    head = f"{Path(result.path).name}   {n} face{'s' if n != 1 else ''}   model {', '.join(result.models)}   top {k}"
    if result.filter:
        head += f"   filter {result.filter}"
    if result.exclude_same_image:
        head += "   excluding the same image"
    draw.text((MARGIN, MARGIN + 6), _fit_text(draw, head, normal, W - 2 * MARGIN), fill=TEXT, font=normal)

    # photo with numbered boxes
    ph = photo_height(result.width, result.height)
    top = MARGIN + HEADER_H
    if decoded is not None:
        photo = Image.fromarray(decoded.rgb).resize((PHOTO_WIDTH, ph), Image.Resampling.BILINEAR)
    else:
        photo = Image.new("RGB", (PHOTO_WIDTH, ph), PLACEHOLDER)
    pdraw = ImageDraw.Draw(photo)
    r = PHOTO_WIDTH / max(result.width, 1)
    lw = max(2, round(PHOTO_WIDTH / 300))
    for f in result.faces:
        c = BOX_COLOURS[f.index % len(BOX_COLOURS)]
        x, y, w, h = (v * r for v in f.box)
        pdraw.rectangle((x, y, x + w, y + h), outline=c, width=lw)
        _label(pdraw, (int(x) + 2, max(0, int(y) - 20)), str(f.index + 1), c)
    sheet.paste(photo, (MARGIN, top))

    # one row per face (and model)
    y0 = top + ph + GAP
    if not rows:
        draw.text((MARGIN, y0 + THUMB // 2), "no face found", fill=TEXT, font=_font(18))
    for i, (face, model) in enumerate(rows):
        y = y0 + i * ROW_H
        c = BOX_COLOURS[face.index % len(BOX_COLOURS)]
        qcrop = _crop(decoded, face.dbox, scale_box=False) if face.dbox and decoded is not None else \
            _crop(decoded, face.box)
        sheet.paste(_thumb(qcrop), (MARGIN, y))
        draw.rectangle((MARGIN, y, MARGIN + THUMB - 1, y + THUMB - 1), outline=c, width=3)
        _label(draw, (MARGIN + 5, y + 4), str(face.index + 1), c, size=18)
        low = LOW_TEXT if face.low_quality else MUTED
        _caption(draw, MARGIN, y, face_caption(face, model if len(models) > 1 else ""), (TEXT, low, LOW_TEXT))
        matches = face.matches_by_model.get(model, []) if model else face.matches
        # a face too poor to judge has no verdict, whatever its matches hold
        poor = face.verdict_of(model or next(iter(face.matches_by_model), "")) == "too_poor"
        x = x_row = MARGIN + THUMB + ROW_GAP
        if not matches:
            draw.text((x, y + THUMB // 2 - 7), "no match", fill=MUTED, font=normal)
        for m in matches[:RENDER_MAX_K]:
            key = (m.source_path, m.box)
            if key not in cache:
                cache[key] = _thumb(source_crop(m.source_path, m.box))
            sheet.paste(cache[key], (x, y))
            same = bool(m.same_person) and not poor
            if same:
                draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), outline=SAME_COLOUR, width=4)
            lines = match_caption(m) if not poor else [f"{m.score:.2f}"] + match_caption(m)[1:]
            _caption(draw, x, y, lines, (SAME_TEXT if same else TEXT, TEXT, MUTED), file_line=2)
            x += THUMB + GAP
        if poor:  # instead of a verdict, a band across the top of the row's matches
            text = too_poor_text(face) + ": lookalikes only, no same-person verdict"
            right = W - MARGIN
            text = _fit_text(draw, text, normal, right - x_row - 8)
            draw.rectangle((x_row, y, right - 1, y + 19), fill=LOW_TEXT)
            draw.text((x_row + 4, y + 2), text, fill=(255, 255, 255), font=normal)
    return sheet


def sheet_names(results: Sequence[PhotoResult]) -> List[str]:
    """result.png for one photo; with several, each sheet is named after its photo,
    result_<stem>.png (result_<stem>_2.png for a second photo of the same name)."""
    if len(results) == 1:
        return ["result.png"]
    names: List[str] = []
    for r in results:
        stem = re.sub(r"[^\w.-]+", "_", Path(r.path).stem)[:80] or "photo"
        name, n = f"result_{stem}.png", 2
        while name in names:
            name, n = f"result_{stem}_{n}.png", n + 1
        names.append(name)
    return names


def write_outputs(results: Sequence[PhotoResult], out_dir: str) -> List[str]:
    """results.json (every photo) and one contact sheet per readable photo; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    doc = results_document(results)
    tmp = out / ".results.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
    os.replace(tmp, out / "results.json")
    written.append(str(out / "results.json"))
    cache: Dict[object, Image.Image] = {}
    for r, name in zip(results, sheet_names(results)):
        if not r.ok:
            continue
        path = out / name
        render_sheet(r, source_cache=cache).save(path, compress_level=1)  # level 6 is much slower (bench/README.md, query)
        written.append(str(path))
    return written


# ---------------------------------------------------------------------------------------------
# Terminal table
# ---------------------------------------------------------------------------------------------
def _short(path: str, width: int) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]


def verdict_word(m: Match) -> str:
    """'same 97%' / 'other 12%' (P(same person)), or '' for a model without a verdict."""
    if m.same_person is None:
        return ""
    word = "same" if m.same_person else "other"
    return word if m.same_person_probability is None else f"{word} {100 * m.same_person_probability:.0f}%"


def verdict_line(matches: List[Match], face=None, model: str = "") -> str:
    """One sentence on whether the collection holds this person at all (`face`: the query face,
    whose verdict says when it is too poor to judge)."""
    if face is not None and face.verdict_of(model) == "too_poor":
        return f"{too_poor_text(face)}: tiny, blurred or turned away; its rows are lookalikes, not a verdict"
    if not matches or matches[0].same_person is None:
        return "no same-person verdict for this model: scores are similarity only"
    same = [m for m in matches if m.same_person]
    if not same:
        return "nobody here is likely the same person; nearest lookalikes:"
    who = sorted({m.identity for m in same if m.identity})
    return f"likely the same person: {', '.join(who) if who else 'an unlabelled face'}"


def format_text(result: PhotoResult) -> str:
    """A readable table per face."""
    lines = []
    n = len(result.faces)
    head = (f"{result.path}  {result.width}x{result.height}  {n} face{'s' if n != 1 else ''}  "
            f"model {', '.join(result.models)}  top {result.top_k}")
    if result.filter:
        head += f"  filter: {result.filter}"
    if result.exclude_same_image:
        head += "  (same image excluded)"
    lines.append(head)
    if not result.faces:
        extra = f" ({result.faces_skipped_small} smaller than --min-face {result.min_face} px skipped)" \
            if result.faces_skipped_small else ""
        lines.append(f"  no face found by detector {result.detector}{extra}")
        return "\n".join(lines)
    for f in result.faces:
        x, y, w, h = f.box
        for model, matches in (f.matches_by_model.items() or [(result.models[0], [])]):
            tag = f"  [{model}]" if len(result.models) > 1 else ""
            q = "" if f.quality is None else f"  quality {f.quality:.2f}"
            poor = f.verdict_of(model) == "too_poor"  # the verdict line says why
            low = ("  LOW QUALITY" + ("" if poor else ": tiny, blurred or turned away; its matches mean little")
                   if f.low_quality else "")
            lines.append(f"\nface {f.index + 1}  box {x},{y} {w}x{h}  confidence {f.confidence:.2f}{q}{tag}{low}")
            if not matches:
                lines.append("   no match" + (" (filter keeps no row)" if result.filter else ""))
                continue
            lines.append(f"   {verdict_line(matches, f, model)}")
            lines.append(f"   {'#':>3}  {'score':>6}  {'verdict':<11}  {'identity':<20} source (face)")
            for m in matches:
                src = _short(m.source_path, 60)
                lines.append(f"   {m.rank:>3}  {m.score:6.3f}  {verdict_word(m):<11}  {_short(m.identity or '-', 20):<20} "
                             f"{src} ({m.face_index + 1})")
    if result.faces_skipped_small:
        lines.append(f"\n({result.faces_skipped_small} faces smaller than --min-face {result.min_face} px skipped)")
    return "\n".join(lines)
