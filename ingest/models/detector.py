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

# Backends whose input is held to a pixel budget: side x side pixels (YuNet: 640 x 640, its own
# input size). DeepFace's way -- a black border of half the photo on every side, then its YuNet
# wrapper's shrink to 640 px long side -- shows YuNet the photo at <= 320 px: a face of 40 px in a
# 1024-px photo is 12 px there, below what YuNet finds (it finds 98 % of LFW faces pasted at 18 px
# wide, 84 % at 16, 28 % at 12), and a big face cut by the frame edge loses the detail it is found
# by (groups/photos: selfie-many-people.jpg's close-up at the bottom right, the Visakhapatnam
# photo's pilot and the man behind; bench/bench_detect.py, bench/results/detect.txt). So:
# * the working pass: the photo with a black border (DeepFace's half where that fits the budget
#   at full size, else _WORK_BORDER), shrunk, if need be, to fit the budget -- shrunk first, then
#   bordered: never the full-size bordered copy (4x the photo's pixels, 60 MB for a 5-MP photo,
#   once the largest thing a worker allocated);
# * a detail pass only where the working pass shrinks a face of MIN_FACE px below YUNET_MIN px:
#   tiles of the budget's size over the photo at the scale that keeps MIN_FACE at YUNET_MIN, each
#   cut from the photo and shrunk on its own (one tile in memory at a time), overlapping by more
#   than the largest face the working pass could miss. An ordinary photo (up to ~0.4 MP: CelebA's
#   median is 0.2) gets the working pass alone, at its full resolution.
# The passes' faces are merged by overlap (non-maximum suppression): a working-pass face is kept
# as found, a detail-pass face added only where no kept face covers it.
_SHRINKS_TO = {"yunet": 640}
# The working pass's border, a fraction of the photo's width / height on each side, for a photo
# too large to keep DeepFace's half-size border at full size within the budget. DeepFace borders
# by half for its alignment (Face.align still does, on demand); detection needs only a little
# context round a face that fills the frame: 640-px close-ups cut tight round the face are found
# 193 of 200 times with a border of 5 % or more, 190 without (LFW crops); 1.44x the photo's pixels
# instead of 4x. A smaller photo gets a wider border, up to DeepFace's half (what fits at full
# size): the same input as before for a small photo such as LFW's 250-px ones, whose boxes and
# eyes the dlib chip's calibration (models/dlib.py, SHAPE_BOX) and eval lfw were measured on --
# with a 10 % border there LFW fold 1 lost 0.3 pt (99.17 %).
_WORK_BORDER = 0.1
# The smallest face (decoded pixels) the detector should still find: the size at which ingest's
# default --min-face (24) and the quality ramp (ingest/quality.py, SIZE_RAMP) start. A larger
# --min-face asked for raises it (no detail pass is spent on faces that would be dropped).
MIN_FACE = 24
# The face size (detector-input pixels) YuNet finds reliably (see above: 98 % at 18 px).
YUNET_MIN = 20
# A face found is kept only if found again in a crop round it at a face's usual scale: the face
# CONFIRM_SIDES px wide (the first, else the second), or in DeepFace's framing of the photo, the
# boxes overlapping by _CONFIRM_IOU (Detector._confirmed says why).
CONFIRM_SIDES = (48, 64)
_CONFIRM_IOU = 0.4
# Faces of two passes are the same face when their boxes overlap by this IoU, or the smaller box
# lies this much inside the other (a face cut by a tile seen whole by the working pass).
_SAME_IOU, _SAME_INSIDE = 0.3, 0.6
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
        side = _SHRINKS_TO.get(self.backend)
        if side:
            # the areas come back in the bordered photo's coordinates, as DeepFace's would
            areas = self._detect_budget(bgr, hb, wb, side, max(MIN_FACE, min_face / image.scale))
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

    def _detect_budget(self, bgr: np.ndarray, hb: int, wb: int, side: int, min_face: float) -> List[Any]:
        """YuNet on the photo within a budget of side x side pixels: the working pass, plus the
        detail pass (tiles) where the working pass would shrink a face of `min_face` decoded
        pixels below YUNET_MIN (the constants above say why). The areas come back in the
        coordinates of the photo bordered by hb rows / wb columns (DeepFace's frame)."""
        import cv2
        from deepface.models.Detector import FacialAreaRegion

        H, W = bgr.shape[:2]
        # the budget: side x side pixels, and never more than DeepFace's own input (the photo in its
        # half-size border, shrunk to side px long side), so an ordinary photo costs what it did
        budget = min(side * side, 4 * W * H * min(1.0, side / (2 * max(W, H))) ** 2)
        fit = (budget / (W * H)) ** 0.5  # the scale at which the photo alone fills the budget
        rd = min(1.0, YUNET_MIN / min_face)  # the scale that keeps a min_face face at YUNET_MIN px
        # DeepFace's half-size border where the budget holds it at the photo's full size (an LFW
        # photo, 250 px: exactly DeepFace's input, so the boxes and eyes SHAPE_BOX was fitted on),
        # down to _WORK_BORDER for a larger photo, which is then shrunk to the budget
        border = min(0.5, max(_WORK_BORDER, (fit - 1) / 2))
        r = min(1.0, fit / (1 + 2 * border))
        if rd > r and fit >= rd:
            # a photo that fits the budget at rd, but not with the whole border: a thinner border
            # (what the budget leaves) rather than a second pass
            r, border = rd, max(0.0, (fit / rd - 1) / 2)
        ws, hs = max(1, int(W * r)), max(1, int(H * r))
        if min(ws, hs) < MIN_DETECT_SIDE:
            return []
        small = bgr if (ws, hs) == (W, H) else cv2.resize(bgr, (ws, hs), interpolation=cv2.INTER_LINEAR)
        bx, by = int(border * ws), int(border * hs)
        rows = self._yunet(_bordered(small, by, bx))
        found = [_to_photo(v, bx, by, W / ws, H / hs, 0, 0) for v in rows]
        if rd > r * (1 + 1e-6):
            found = _merge(found, self._detail_pass(bgr, side, rd, r))
        found = self._confirmed(bgr, found, side)

        def pt(v, i):
            return int(np.floor(v[i])) + wb, int(np.floor(v[i + 1])) + hb

        # rounded down, and the corner kept in the bordered photo, as DeepFace's wrapper does: the
        # same integers as before where the input is the same (LFW's photos; a pixel's shift of
        # every box there moves eval lfw by 2 pairs)
        return [FacialAreaRegion(x=max(0, int(np.floor(v[0])) + wb), y=max(0, int(np.floor(v[1])) + hb),
                                 w=int(v[2]), h=int(v[3]), confidence=float(v[14]), right_eye=pt(v, 4),
                                 left_eye=pt(v, 6), nose=pt(v, 8), mouth_right=pt(v, 10), mouth_left=pt(v, 12))
                for v in found]

    def _detail_pass(self, bgr: np.ndarray, side: int, rd: float, r_work: float) -> List[np.ndarray]:
        """YuNet on tiles of the photo at scale `rd`, each side x side pixels or less once scaled;
        the faces in photo coordinates. Neighbouring tiles overlap by more than the largest face
        the working pass (scale r_work) could miss, so such a face lies whole in the tile whose
        share of the overlap holds its centre: each tile keeps only those faces (no duplicate, no
        face cut by a tile's edge)."""
        import cv2

        H, W = bgr.shape[:2]
        tile = side / rd  # photo pixels
        overlap = min(tile / 2, 1.5 * YUNET_MIN / r_work)
        out: List[np.ndarray] = []
        (xs, tx), (ys, ty) = _tiles(W, tile, overlap), _tiles(H, tile, overlap)
        for j, y0 in enumerate(ys):
            y1 = y0 + ty
            top = 0.0 if j == 0 else (ys[j - 1] + ty + y0) / 2  # the middle of the overlaps
            bottom = float(H) if j == len(ys) - 1 else (y1 + ys[j + 1]) / 2
            for i, x0 in enumerate(xs):
                x1 = x0 + tx
                left = 0.0 if i == 0 else (xs[i - 1] + tx + x0) / 2
                right = float(W) if i == len(xs) - 1 else (x1 + xs[i + 1]) / 2
                crop = bgr[y0:y1, x0:x1]
                tw, th = max(1, round((x1 - x0) * rd)), max(1, round((y1 - y0) * rd))
                if (tw, th) != (x1 - x0, y1 - y0):
                    crop = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_LINEAR)
                for v in self._yunet(np.ascontiguousarray(crop)):
                    f = _to_photo(v, 0, 0, (x1 - x0) / tw, (y1 - y0) / th, x0, y0)
                    cx, cy = f[0] + f[2] / 2, f[1] + f[3] / 2
                    inside = ((x0 == 0 or f[0] >= x0) and (x1 == W or f[0] + f[2] <= x1)
                              and (y0 == 0 or f[1] >= y0) and (y1 == H or f[1] + f[3] <= y1))
                    if inside and left <= cx < right and top <= cy < bottom:
                        out.append(f)
        return out

    def _confirmed(self, bgr: np.ndarray, found: List[np.ndarray], side: int) -> List[np.ndarray]:
        """The faces of `found` (photo coordinates) that YuNet finds again, at the same threshold:
        in a crop of three times the face's size round it, scaled so the face is CONFIRM_SIDES px
        (the first, else the second); failing that, in DeepFace's framing of the whole photo (the
        photo at <= side / 2 px in a black border of half its size: what this detector did up to
        issue 32), run only if some face needs it. At the photo's own resolution YuNet also
        answers hair, a dress, a hand or a table top at 0.7-0.8 next to a large face (CelebA
        sample: 8 such in 21 photos whose count changed), which DeepFace's 320-px photo hid: seen
        again at a face's usual scale those score 0.0-0.5, real faces >= 0.6; the few real ones
        that do not (a head thrown back, a hand over the face) are those the 320-px photo finds."""
        kept: List[np.ndarray] = []
        doubtful: List[np.ndarray] = []
        for v in found:
            (kept if any(self._found_in_crop(bgr, v, t) for t in CONFIRM_SIDES) else doubtful).append(v)
        if doubtful:
            coarse = self._deepface_framing(bgr, side)
            kept += [v for v in doubtful if any(_iou(c, v) >= _CONFIRM_IOU for c in coarse)]
        return kept

    def _found_in_crop(self, bgr: np.ndarray, v: np.ndarray, target: int) -> bool:
        import cv2

        x, y, w, h = (float(c) for c in v[:4])
        H, W = bgr.shape[:2]
        m = max(w, h, 1.0)
        cx0, cy0 = x + w / 2 - 1.5 * m, y + h / 2 - 1.5 * m  # the crop's corner, photo pixels
        sx0, sy0 = max(0, int(np.floor(cx0))), max(0, int(np.floor(cy0)))
        sx1, sy1 = min(W, int(np.ceil(cx0 + 3 * m))), min(H, int(np.ceil(cy0 + 3 * m)))
        if sx1 <= sx0 or sy1 <= sy0:
            return False
        k = target / m
        n = int(round(3 * target))
        dx, dy = min(n - 1, max(0, int(round((sx0 - cx0) * k)))), min(n - 1, max(0, int(round((sy0 - cy0) * k))))
        tw = min(n - dx, max(1, int(round((sx1 - sx0) * k))))
        th = min(n - dy, max(1, int(round((sy1 - sy0) * k))))
        canvas = np.zeros((n, n, 3), np.uint8)  # black outside the photo, as DeepFace's border
        canvas[dy:dy + th, dx:dx + tw] = cv2.resize(
            bgr[sy0:sy1, sx0:sx1], (tw, th), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        box = np.array([(x - cx0) * k, (y - cy0) * k, w * k, h * k])
        return any(_iou(row, box) >= _CONFIRM_IOU for row in self._yunet(canvas))

    def _deepface_framing(self, bgr: np.ndarray, side: int) -> List[np.ndarray]:
        """YuNet's faces (photo coordinates) in the photo bordered by half its size on every
        side, at <= side px long side: DeepFace's detect_faces with its YuNet wrapper."""
        import cv2

        H, W = bgr.shape[:2]
        r = min(1.0, side / (2 * max(H, W)))
        ws, hs = max(1, int(W * r)), max(1, int(H * r))
        if min(ws, hs) < MIN_DETECT_SIDE:
            return []
        small = bgr if (ws, hs) == (W, H) else cv2.resize(bgr, (ws, hs), interpolation=cv2.INTER_LINEAR)
        bx, by = int(0.5 * ws), int(0.5 * hs)
        return [_to_photo(v, bx, by, W / ws, H / hs, 0, 0) for v in self._yunet(_bordered(small, by, bx))]

    def _yunet(self, img: np.ndarray) -> List[np.ndarray]:
        """YuNet's rows for `img` at its own size, as DeepFace's wrapper runs it (minus the
        wrapper's shrink to 640 px: the caller sizes the input): x, y, w, h, then right eye, left
        eye, nose tip, right and left mouth corners (the person's right: the image's left), then
        the score -- the wrapper drops the nose, which says how frontal a face is."""
        h, w = img.shape[:2]
        net = self._model.model
        net.setInputSize((w, h))
        net.setScoreThreshold(float(self.settings.yunet_threshold))
        _, rows = net.detect(img)
        return [] if rows is None else [np.asarray(row, np.float64) for row in rows]

    def _areas(self, img: np.ndarray) -> List[Any]:
        """The backend's detect_faces (YuNet goes through _detect_budget)."""
        return self._model.detect_faces(img)


def _to_photo(v: np.ndarray, bx: int, by: int, fx: float, fy: float, x0: int, y0: int) -> np.ndarray:
    """A YuNet row from an input bordered by bx / by pixels and scaled by 1/fx, 1/fy from the
    photo region at x0, y0: the row in photo coordinates (floats; the score stays last)."""
    out = np.array(v[:15], np.float64)
    out[0:14:2] = (out[0:14:2] - bx) * fx + x0
    out[1:14:2] = (out[1:14:2] - by) * fy + y0
    out[2], out[3] = v[2] * fx, v[3] * fy  # width and height: scaled, not moved
    return out


def _tiles(n: int, tile: float, overlap: float) -> Tuple[List[int], int]:
    """Where tiles start along a side of n pixels, and their length: as few tiles of at most
    `tile` pixels as cover it with neighbours overlapping by at least `overlap`, shortened to share
    the side evenly (a 853-px side: two tiles of ~460, not two of 640)."""
    if n <= tile:
        return [0], n
    count = max(2, int(np.ceil((n - overlap) / (tile - overlap))))
    length = min(n, int(np.ceil((n + (count - 1) * overlap) / count)))
    return [round(i * (n - length) / (count - 1)) for i in range(count)], length


def _merge(kept: List[np.ndarray], extra: List[np.ndarray]) -> List[np.ndarray]:
    """`kept` (the working pass's faces, as found) plus those of `extra`, best score first, that
    no face kept so far covers (non-maximum suppression by IoU or containment)."""
    out = list(kept)
    for f in sorted(extra, key=lambda v: -v[14]):
        if all(not _same(f, g) for g in out):
            out.append(f)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / (a[2] * a[3] + b[2] * b[3] - inter))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Boxes of one face: overlapping by _SAME_IOU, or the smaller _SAME_INSIDE inside the other."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return False
    return _iou(a, b) >= _SAME_IOU or iw * ih / max(1e-9, min(a[2] * a[3], b[2] * b[3])) >= _SAME_INSIDE


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
