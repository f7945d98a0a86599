"""How usable a detected face is for "whose face is this like?", computed once per face.

Tiny, blurred or turned-away faces (bystanders at the edge of a photo, the back of a head) make
poor matches: their embeddings sit near the middle of the embedding space, so they come back as
the nearest face of almost everyone (hubs). Four measurements, each mapped to [0, 1] and stored:

* size: the face box's shorter side in pixels of the original photo;
* confidence: the detector's own score;
* sharpness: variance of the Laplacian of the face, grey, resampled to a fixed size (so a small
  face upscaled, or a blurred one, scores low), relative to the face's own contrast;
* frontal: how far the nose tip sits from the line between the eyes' midpoint and the face's
  vertical axis (0 = profile, 1 = frontal); unknown (-1) for detectors without a nose landmark.

`quality` is the product of the mapped values (a face bad in any one way is a bad match): search
leaves out stored faces below `DEFAULT_MIN_QUALITY` unless asked (`--min-quality 0`), and a query
face below it is answered but marked. The ramps are set from the sample data (bench/README.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from lookalike.ingest.images import Decoded

# Side of the grey square the sharpness is measured on: about a CelebA face's size, so a face
# smaller than this is upsampled (and loses sharpness, as it should: it holds less detail).
SHARP_SIDE = 64
# (value at quality 0, value at quality 1) of each measurement's linear ramp
SIZE_RAMP = (24.0, 64.0)  # pixels
CONFIDENCE_RAMP = (0.5, 0.8)
SHARPNESS_RAMP = (0.03, 0.12)
FRONTAL_RAMP = (0.0, 0.4)
# Stored faces below this are left out of lookalike search by default (schemas' field doc, README).
DEFAULT_MIN_QUALITY = 0.4


@dataclass(frozen=True)
class Quality:
    size: int
    confidence: float
    sharpness: float
    frontal: float  # -1: unknown
    score: float

    @property
    def fields(self) -> dict:
        """The face row's quality fields (schemas.FACE_FIELDS)."""
        return {"face_size": int(self.size), "sharpness": float(self.sharpness),
                "frontal": float(self.frontal), "quality": float(self.score)}


def _ramp(v: float, lo_hi: Tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(min(1.0, max(0.0, (v - lo) / (hi - lo))))


def sharpness(bgr: np.ndarray, dbox: Tuple[int, int, int, int]) -> float:
    """Laplacian energy of the face's grey square relative to its contrast (0 when flat)."""
    import cv2

    x, y, w, h = dbox
    crop = bgr[max(0, y):y + h, max(0, x):x + w]
    if crop.size == 0:
        return 0.0
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    interp = cv2.INTER_AREA if min(grey.shape[:2]) > SHARP_SIDE else cv2.INTER_LINEAR
    sq = cv2.resize(grey, (SHARP_SIDE, SHARP_SIDE), interpolation=interp).astype(np.float32)
    contrast = float(sq.var())
    if contrast < 1.0:
        return 0.0
    return float(cv2.Laplacian(sq, cv2.CV_32F).var() / contrast)


def frontal(left_eye: Optional[Tuple[int, int]], right_eye: Optional[Tuple[int, int]],
            nose: Optional[Tuple[int, int]]) -> float:
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
    sharp = sharpness(image.bgr, face.dbox)
    front = frontal(face.left_eye, face.right_eye, getattr(face, "nose", None))
    score = (_ramp(size, SIZE_RAMP) * _ramp(face.confidence, CONFIDENCE_RAMP)
             * _ramp(sharp, SHARPNESS_RAMP) * (1.0 if front < 0 else _ramp(front, FRONTAL_RAMP)))
    return Quality(size, float(face.confidence), round(sharp, 5), round(front, 4), round(score, 4))
