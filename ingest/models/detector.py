"""Face detection and eye-line alignment through DeepFace's detector backends: a photo in, its
faces (box, landmarks, confidence, aligned crop on demand) out, in a stable order."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from lookalike.ingest.images import Decoded
from lookalike.ingest.models.errors import ModelError
from lookalike.ingest.models.weights import (
    DLIB_LANDMARKS_FILE,
    YUNET_FILE,
    _deepface_env,
    _missing,
    _quiet,
    import_tensorflow,
    provision_weights,
)
from lookalike.ingest.settings import DETECTORS, Settings

# Weights needed per DeepFace detector backend (those we can provide offline).
_DETECTOR_WEIGHTS = {"yunet": YUNET_FILE, "dlib": DLIB_LANDMARKS_FILE}
# Backends whose packages run on TensorFlow (the others: OpenCV, dlib, ONNX, torch, mediapipe).
_TF_DETECTORS = frozenset({"mtcnn", "retinaface"})

# Backends run on the image as it is, not on DeepFace's black-bordered copy: detect_faces
# (align=True) pads the image by half its size on every side before detecting. For dlib's HOG that
# is 4x the pixels to scan and shifts its 8-px cell grid, which loses faces dlib finds on the plain
# image (bench/results/eval_lfw_investigation.txt, findings 2 and 3, with the time per photo).
# extract_face pads with black where an aligned face would leave the image, so alignment does not
# need the border. (opencv and yunet do no better without it: the same file.)
_NO_BORDER = frozenset({"dlib"})

# Backends that shrink their input to this long side (DeepFace's YuNet: 640 px) -- which, after
# the border, is the photo at <= 320 px. Shrinking the photo first and bordering the small copy
# gives the detector nearly the same picture, and nearly the same faces, boxes and eyes (compared
# on the sample: bench/README.md, "Measured here"), without the full-size bordered copy: 4x the
# photo's pixels, 60 MB for a 5-MP photo, the largest thing a worker allocated (its peak RSS
# followed the largest photo seen so far; bench/bench_ingest.py's rss run) and a share of the
# detection time.
_SHRINKS_TO = {"yunet": 640}
# No detector finds a face in fewer pixels than this (YuNet's smallest anchor is 10 px). A strip
# (10000x10) shrunk for YuNet is a pixel high, which it answers with infinite coordinates: such a
# picture has no face to find, at ingest and at query alike.
MIN_DETECT_SIDE = 10



@dataclass
class Face:
    index: int  # order in the image (left to right, then top to bottom)
    box: Tuple[int, int, int, int]  # x, y, w, h in original upright image pixels
    confidence: float
    # decoded-image coordinates, used by embedders for their own crops
    dbox: Tuple[int, int, int, int]
    # DeepFace's eye-aligned crop (decoded pixels, BGR uint8): given, or computed by `align` when
    # first asked for -- only DeepFace's own models (FaceNet) use it, and the rotation is a
    # noticeable share of an image's work with dlib on torch (bench/README.md, "Measured here").
    aligned_bgr: Optional[np.ndarray] = None
    left_eye: Optional[Tuple[int, int]] = None
    right_eye: Optional[Tuple[int, int]] = None
    # nose tip (decoded pixels), from detectors that find one (YuNet, RetinaFace, MediaPipe):
    # with the eyes it tells how frontal the face is (ingest.quality)
    nose: Optional[Tuple[int, int]] = None
    backend: str = ""  # the detector that found it
    align: Optional[Callable[[], np.ndarray]] = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return min(self.box[2], self.box[3])

    def aligned(self) -> np.ndarray:
        if self.aligned_bgr is None:
            if self.align is None:
                raise ModelError("face has no aligned crop")
            self.aligned_bgr = np.ascontiguousarray(self.align()).astype(np.uint8)
            self.align = None
        return self.aligned_bgr


class Detector:
    """DeepFace face detection + eye-line alignment for one backend."""

    def __init__(self, backend: str, settings: Settings):
        if backend not in DETECTORS:
            raise ModelError(f"unknown detector '{backend}' (known: {', '.join(DETECTORS)})")
        self.backend = backend
        self.settings = settings
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        _deepface_env(self.settings)
        if self.backend == "yunet":  # DeepFace reads its YuNet threshold from the environment
            os.environ["yunet_score_threshold"] = str(self.settings.yunet_threshold)
        needed = _DETECTOR_WEIGHTS.get(self.backend)
        if needed:
            provision_weights(self.settings, needed)
        if self.backend in _TF_DETECTORS:
            import_tensorflow()
        from deepface.modules import modeling

        try:
            with _quiet():
                return modeling.build_model(task="face_detector", model_name=self.backend)
        except (ValueError, OSError) as e:
            if needed and not (self.settings.weights_dir / needed).is_file():
                hint = "; or pick --detector dlib / mtcnn, which work offline" if self.backend == "yunet" else ""
                raise _missing(f"detector {self.backend}", needed, self.settings, hint) from None
            raise ModelError(f"detector {self.backend} failed to load: {str(e).splitlines()[0]}") from None

    def load(self) -> "Detector":
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return self

    def detect(self, image: Decoded, min_face: int = 0) -> List[Face]:
        self.load()
        from deepface.modules import detection

        bgr = image.bgr
        H, W = bgr.shape[:2]
        if min(H, W) < MIN_DETECT_SIDE:
            return []
        # What detection.detect_faces(align=True) does, minus the alignment (Face.align, on
        # demand): detect on a copy with a black border of half the image on every side, then
        # take boxes and eyes back to the image's coordinates.
        hb, wb = (0, 0) if self.backend in _NO_BORDER else (int(0.5 * H), int(0.5 * W))
        limit = _SHRINKS_TO.get(self.backend)
        if limit and max(H + 2 * hb, W + 2 * wb) > limit:
            areas = self._detect_shrunk(bgr, hb, wb, limit)
            # extract_face(align=False) only clips the box to the bordered image: its shape will do
            padded = np.broadcast_to(np.zeros(1, np.uint8), (H + 2 * hb, W + 2 * wb, 3))
        else:
            padded = _bordered(bgr, hb, wb)
            areas = self._areas(padded)
        faces: List[Face] = []
        for area in areas:
            fa = detection.extract_face(facial_area=area, img=padded, align=False, expand_percentage=0,
                                        width_border=wb, height_border=hb, detector_backend=self.backend).facial_area
            x, y = max(0, int(fa.x) - wb), max(0, int(fa.y) - hb)
            w, h = min(int(fa.w), W - x), min(int(fa.h), H - y)
            if w <= 1 or h <= 1:
                continue
            s = image.scale
            box = (round(x * s), round(y * s), round(w * s), round(h * s))
            if min(box[2], box[3]) < min_face:
                continue
            eyes = [None if e is None else (int(e[0]) - wb, int(e[1]) - hb)
                    for e in (fa.left_eye, fa.right_eye, getattr(area, "nose", None))]
            faces.append(Face(index=-1, box=box, confidence=float(fa.confidence or 0.0), dbox=(x, y, w, h),
                              left_eye=eyes[0], right_eye=eyes[1], nose=eyes[2], backend=self.backend,
                              align=_aligner(bgr, area, hb, wb, self.backend)))
        faces.sort(key=lambda f: (f.box[0], f.box[1]))
        for i, f in enumerate(faces):
            f.index = i
        return faces

    def _detect_shrunk(self, bgr: np.ndarray, hb: int, wb: int, limit: int) -> List[Any]:
        """detect_faces on the photo shrunk so that, bordered, it fits `limit`; the areas come back
        in the coordinates of the full-size bordered photo (border hb rows / wb columns)."""
        import cv2
        from deepface.models.Detector import FacialAreaRegion

        H, W = bgr.shape[:2]
        r = limit / max(H + 2 * hb, W + 2 * wb)
        ws, hs = max(1, int(W * r)), max(1, int(H * r))
        if min(ws, hs) < MIN_DETECT_SIDE:
            return []
        hbs, wbs = int(0.5 * hs), int(0.5 * ws)
        small = _bordered(cv2.resize(bgr, (ws, hs), interpolation=cv2.INTER_LINEAR), hbs, wbs)
        fx, fy = W / ws, H / hs

        def pt(p):
            return None if p is None else (int((p[0] - wbs) * fx) + wb, int((p[1] - hbs) * fy) + hb)

        return [FacialAreaRegion(x=int((a.x - wbs) * fx) + wb, y=int((a.y - hbs) * fy) + hb,
                                 w=int(a.w * fx), h=int(a.h * fy), confidence=a.confidence,
                                 left_eye=pt(a.left_eye), right_eye=pt(a.right_eye), nose=pt(a.nose),
                                 mouth_left=pt(a.mouth_left), mouth_right=pt(a.mouth_right))
                for a in self._areas(small)]

    def _areas(self, img: np.ndarray) -> List[Any]:
        """The backend's detect_faces; for YuNet the same call DeepFace's wrapper makes, keeping
        the nose tip and mouth corners that the wrapper drops (the nose says how frontal a face is)."""
        if self.backend != "yunet":
            return self._model.detect_faces(img)
        import cv2
        from deepface.models.Detector import FacialAreaRegion

        h, w = img.shape[:2]
        r = 1.0
        if max(h, w) > 640:  # as DeepFace's wrapper: YuNet misses faces on larger inputs
            r = 640.0 / max(h, w)
            img = cv2.resize(img, (int(w * r), int(h * r)))
            h, w = img.shape[:2]
        net = self._model.model
        net.setInputSize((w, h))
        net.setScoreThreshold(float(self.settings.yunet_threshold))
        _, rows = net.detect(img)
        out = []
        for row in ([] if rows is None else rows):
            # x, y, w, h, then right eye, left eye, nose tip, right and left mouth corners (the
            # person's right: the image's left), then the score; rounded as DeepFace's wrapper does
            v = [int(c) for c in row[:14]]
            v[0], v[1] = max(v[0], 0), max(v[1], 0)
            if r != 1.0:
                v = [int(c / r) for c in v]
            out.append(FacialAreaRegion(
                x=v[0], y=v[1], w=v[2], h=v[3], confidence=float(row[-1]), right_eye=(v[4], v[5]),
                left_eye=(v[6], v[7]), nose=(v[8], v[9]), mouth_right=(v[10], v[11]), mouth_left=(v[12], v[13])))
        return out


def _bordered(bgr: np.ndarray, hb: int, wb: int) -> np.ndarray:
    """`bgr` with a black border of hb rows / wb columns on each side (DeepFace's detect_faces)."""
    import cv2

    return bgr if not (hb or wb) else cv2.copyMakeBorder(bgr, hb, hb, wb, wb, cv2.BORDER_CONSTANT, value=[0, 0, 0])


def _aligner(bgr: np.ndarray, area: Any, hb: int, wb: int, backend: str) -> Callable[[], np.ndarray]:
    """DeepFace's aligned crop of one detected face, as detect_faces(align=True) returns it. It
    keeps the unbordered image, so a Face kept in a result does not hold a 4x copy."""
    def align() -> np.ndarray:
        from deepface.modules import detection

        return detection.extract_face(facial_area=area, img=_bordered(bgr, hb, wb), align=True, expand_percentage=0,
                                      width_border=wb, height_border=hb, detector_backend=backend).img
    return align
