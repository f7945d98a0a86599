"""How usable a detected face is for "whose face is this like?", computed once per face.

Tiny, blurred, turned-away or cut-off faces (bystanders at the edge of a photo, the back of a
head) make poor matches: their embeddings sit near the middle of the embedding space, so they come
back as the nearest face of almost everyone (hubs). Five measurements, each mapped to [0, 1]:

* size: the face box's shorter side in pixels of the original photo;
* confidence: the detector's own score;
* sharpness: variance of the Laplacian of the face's inner region (eyes, nose and mouth, placed
  from the landmarks), grey, resampled to a fixed size, relative to the region's own contrast. A
  small face upscaled, or an out-of-focus one, scores low. The inner region, not the whole box:
  the box of a blurred bystander beside someone sharp holds that person's hair or ear, whose edges
  made a defocused face look sharp (CelebA 007103.jpg, face 2: 0.19 on the box, 0.025 inside);
* frontal: how far the nose tip sits from the line between the eyes' midpoint and the face's
  vertical axis (0 = profile, 1 = frontal); unknown (-1) for detectors without a nose landmark;
* in frame (not stored on its own): for a face whose box reaches the photo's edge, the share of
  the face the detector located -- the extent its landmarks span (a whole face reaches
  `FACE_REACH` eye distances beyond the eyes), clipped to the photo, over the extent a whole face
  of its box's uncut side would have (`FACE_W_PER_H`). The frame cuts the box, and the detector
  also pulls the landmarks of a cut face inward, so a face whose box reaches the edge with short
  eye distance for its height is mostly not there (CelebA 007413.jpg, face 2: 0.69). A face
  inside the photo is whole (1).

`quality` is the product of the mapped values (a face bad in any one way is a bad match): search
leaves out stored faces below `DEFAULT_MIN_QUALITY` unless asked (`--min-quality 0`), and a query
face below it is answered but marked. The ramps are set from the sample data (bench/README.md,
"Quality ramps" and "Defocus and truncation").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from lookalike.ingest.images import Decoded

Point = Optional[Tuple[int, int]]

# Side of the grey square the sharpness is measured on: about the inner region of a CelebA face
# (1.8 eye distances of ~60 px at the median), so a face smaller than this is upsampled and loses
# sharpness, as it should: it holds less detail.
SHARP_SIDE = 48
# Half the inner region's side, in eye distances, around the midpoint of the eyes' midpoint and the
# nose tip: from the eyebrows to the mouth, cheek to cheek, no hair or background.
INNER_HALF = 0.9
# (value at quality 0, value at quality 1) of each measurement's linear ramp
SIZE_RAMP = (24.0, 64.0)  # pixels
CONFIDENCE_RAMP = (0.5, 0.8)
# Sample CelebA faces blurred on purpose (Gaussian, sigma in eye distances; bench/README.md): 0.1
# takes the inner sharpness to ~0.015 and the face's dlib embedding to 0.93 of the sharp one (as
# unlike itself as the bottom quarter of two photos of one person), 0.04 to ~0.07 and 0.98.
SHARPNESS_RAMP = (0.015, 0.07)
FRONTAL_RAMP = (0.0, 0.4)
# Share of a cut face that the detector located: the uncut faces' own estimate reads >= 0.88 for
# nine in ten (so 0.9 is "whole"); a face cut by 30-40 % of its box has a dlib embedding that for
# one in ten is no nearer the whole face than a stranger's (bench/README.md).
IN_FRAME_RAMP = (0.6, 0.9)
# Whole faces of the CelebA sample (box inside the photo, frontal >= 0.5; medians): the box
# reaches this many eye distances beyond the outer eyes (left, right) and above / below the eyes,
# and its width is this share of its height.
FACE_REACH = (0.57, 0.54, 1.11, 1.73)
FACE_W_PER_H = 0.757
# Stored faces below this are left out of lookalike search by default (schemas' field doc, README).
DEFAULT_MIN_QUALITY = 0.4


@dataclass(frozen=True)
class Quality:
    size: int
    confidence: float
    sharpness: float
    frontal: float  # -1: unknown
    score: float
    in_frame: float = 1.0  # folded into score; not a stored field

    @property
    def fields(self) -> dict:
        """The face row's quality fields (schemas.FACE_FIELDS)."""
        return {"face_size": int(self.size), "sharpness": float(self.sharpness),
                "frontal": float(self.frontal), "quality": float(self.score)}


def _ramp(v: float, lo_hi: Tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(min(1.0, max(0.0, (v - lo) / (hi - lo))))


def _eyes(left_eye: Point, right_eye: Point) -> Optional[Tuple[np.ndarray, np.ndarray, float]]:
    if left_eye is None or right_eye is None:
        return None
    le, re = np.asarray(left_eye, dtype=np.float64), np.asarray(right_eye, dtype=np.float64)
    return le, re, float(np.linalg.norm(le - re))


def sharpness(bgr: np.ndarray, dbox: Tuple[int, int, int, int], left_eye: Point = None,
              right_eye: Point = None, nose: Point = None) -> float:
    """Laplacian energy of the face's inner region relative to its contrast (0 when flat): the
    square of INNER_HALF eye distances around the eyes and nose, or without eyes the box's middle
    60 %, grey, resampled to SHARP_SIDE (decoded pixels, as `dbox` and the landmarks)."""
    import cv2

    x, y, w, h = dbox
    eyes = _eyes(left_eye, right_eye)
    if eyes is not None:
        le, re, d = eyes
        mid = (le + re) / 2
        centre = (mid + np.asarray(nose, dtype=np.float64)) / 2 if nose is not None else mid + (0.0, 0.33 * d)
        # a profile's eyes nearly meet: keep a share of the box
        half = max(INNER_HALF * d, 0.2 * min(w, h), 2.0)
    else:
        centre, half = np.array([x + w / 2, y + h / 2]), 0.3 * min(w, h)
    x0, y0 = int(round(centre[0] - half)), int(round(centre[1] - half))
    x1, y1 = int(round(centre[0] + half)), int(round(centre[1] + half))
    crop = bgr[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]
    if min(crop.shape[:2]) < 4:
        return 0.0
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    interp = cv2.INTER_AREA if min(grey.shape[:2]) > SHARP_SIDE else cv2.INTER_LINEAR
    sq = cv2.resize(grey, (SHARP_SIDE, SHARP_SIDE), interpolation=interp).astype(np.float32)
    contrast = float(sq.var())
    if contrast < 1.0:
        return 0.0
    return float(cv2.Laplacian(sq, cv2.CV_32F).var() / contrast)


def in_frame(width: int, height: int, dbox: Tuple[int, int, int, int], left_eye: Point = None,
             right_eye: Point = None) -> float:
    """Share (0..1) of a face the detector located inside a width x height photo (decoded pixels):
    1 unless its box reaches the photo's edge. Along each axis the box is cut on, the landmarks'
    face extent (FACE_REACH beyond the eyes) clipped to the photo, over the whole face's extent
    from the box's other side (FACE_W_PER_H); without eyes, the box's own extent."""
    x, y, w, h = dbox
    cut_x = x <= 0 or x + w >= width - 1
    cut_y = y <= 0 or y + h >= height - 1
    if not (cut_x or cut_y):
        return 1.0
    eyes = _eyes(left_eye, right_eye)
    share = 1.0
    for axis, cut, limit in ((0, cut_x, width), (1, cut_y, height)):
        if not cut:
            continue
        # the whole face's extent along this axis, from the box's extent along the other one
        # (cut too: from the eyes alone)
        other_cut = cut_y if axis == 0 else cut_x
        whole: Optional[float] = None if other_cut else (h * FACE_W_PER_H if axis == 0 else w / FACE_W_PER_H)
        if eyes is None:
            seen = float(w if axis == 0 else h)
        else:
            le, re, d = eyes
            if axis == 0:
                a, b = min(le[0], re[0]) - FACE_REACH[0] * d, max(le[0], re[0]) + FACE_REACH[1] * d
            else:
                ey = (le[1] + re[1]) / 2
                a, b = ey - FACE_REACH[2] * d, ey + FACE_REACH[3] * d
            seen = max(0.0, min(b, limit) - max(a, 0.0))
            whole = whole or (b - a)
        if whole and whole > 0:
            share *= min(1.0, seen / whole)
    return float(share)


def frontal(left_eye: Point, right_eye: Point, nose: Point) -> float:
    """1 - 2 x the nose tip's offset from the eyes' midpoint along the eye line, in eye distances
    (a frontal face: ~1; the nose level with one eye: 0); -1 when a landmark is missing."""
    if left_eye is None or right_eye is None or nose is None:
        return -1.0
    le, re, n = (np.asarray(p, dtype=np.float64) for p in (left_eye, right_eye, nose))
    e = le - re
    d2 = float(e @ e)
    if d2 < 1.0:
        return 0.0
    t = float((n - (le + re) / 2) @ e) / d2
    return float(max(0.0, 1.0 - 2.0 * abs(t)))


def assess(image: Decoded, face) -> Quality:
    """The quality of one detected face (an ingest.models.Face) of `image`."""
    size = int(min(face.box[2], face.box[3]))
    nose = getattr(face, "nose", None)
    sharp = sharpness(image.bgr, face.dbox, face.left_eye, face.right_eye, nose)
    front = frontal(face.left_eye, face.right_eye, nose)
    height, width = image.bgr.shape[:2]
    inside = in_frame(width, height, face.dbox, face.left_eye, face.right_eye)
    score = (_ramp(size, SIZE_RAMP) * _ramp(face.confidence, CONFIDENCE_RAMP)
             * _ramp(sharp, SHARPNESS_RAMP) * (1.0 if front < 0 else _ramp(front, FRONTAL_RAMP))
             * _ramp(inside, IN_FRAME_RAMP))
    return Quality(size, float(face.confidence), round(sharp, 5), round(front, 4), round(score, 4),
                   round(inside, 4))
