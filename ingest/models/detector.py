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

# The detail pass (issue 32 item 6): an add-only second look at a group photo at a higher
# resolution, for the faces the pass above misses there -- a face of 40 px in a 1024-px photo is 12
# px in the <= 320-px photo YuNet is shown (it needs ~18), and a large close-up cut by the frame's
# edge scores 0.34-0.39 there but 0.80-0.85 at >= 530 px (groups/photos: selfie-many-people.jpg's
# close-up at the bottom right, the Visakhapatnam photo's pilot; bench/bench_detect.py). The first
# pass is kept exactly as it is -- every face it finds keeps its box, eyes, nose and confidence,
# on which the dlib chip's calibration, the quality gate and eval lfw were measured (changing the
# main pass's resolution moved them all: commit f57c052, reverted) -- and the detail pass only adds
# the faces it finds away from those. It runs only
# * for YuNet, on a photo the first pass saw shrunk (DeepFace's border and YuNet's 640-px limit:
#   a long side over DETAIL_MIN_SIDE): a smaller photo, such as LFW's 250-px ones, was seen whole,
#   at its own resolution, and has nothing more to show;
# * where the first pass found at least DETAIL_MIN_FACES faces: a group photo, where small and cut
#   faces matter. A single portrait's bystanders (a head in the crowd behind, a face on a poster)
#   are small, blurred or turned, faces the quality gate (ingest/quality.py) drops anyway: the
#   detail pass's time (tiles, several YuNet runs) is not spent on them.
# The detail pass: tiles of at most 640 x 640 detector pixels over the photo at YUNET_MIN /
# MIN_FACE scale (or the photo at its full resolution where it fits one tile), without DeepFace's
# border. A face it finds is added where
# * it is one the first pass could not see for the resolution: cut by the photo's edge, or
#   smaller than YUNET_MIN px at the first pass's scale. A whole face the first pass saw at a size
#   YuNet finds and did not find is turned, shadowed or blurred (obama_and_biden.jpg's girl at the
#   bottom right, 23 px there, in shadow, too poor for the quality gate): not what this pass is for;
# * it does not overlap a first-pass face (IoU < _SAME_IOU, and neither's centre in the other's box);
# * YuNet finds it again in a crop round it at a face's usual scale (CONFIRM_SIDES): at high
#   resolution YuNet also answers hair, a hand or a dress next to a large face at 0.7-0.8, which
#   score 0.0-0.5 when seen again at a face's scale, real faces >= 0.6.
DETAIL_MIN_SIDE = 320
DETAIL_MIN_FACES = 2
# The smallest face (decoded pixels) the detail pass should still find, and the face size
# (detector pixels) YuNet finds reliably (98 % of LFW faces pasted at 18 px wide, 84 % at 16, 28 %
# at 12): the detail pass sees the photo at YUNET_MIN / MIN_FACE (or larger).
MIN_FACE = 24
YUNET_MIN = 20
_DETAIL_SIDE = 640  # a tile's side, detector pixels (YuNet's own input size)
CONFIRM_SIDES = (48, 64)
_CONFIRM_IOU = 0.4
_SAME_IOU = 0.3



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

    # False turns the detail pass off (bench/bench_detect.py's 'before', tests/test_detection.py)
    detail: bool = True

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
        if self._wants_detail(bgr, areas):
            areas = areas + self._detail_areas(bgr, hb, wb, areas)
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

    def _wants_detail(self, bgr: np.ndarray, areas: List[Any]) -> bool:
        """Whether a photo gets the detail pass (the constants above say why): YuNet, a photo the
        first pass saw shrunk, and at least DETAIL_MIN_FACES faces found by it."""
        if self.backend != "yunet" or self.detail is False:
            return False
        H, W = bgr.shape[:2]
        return max(H, W) > DETAIL_MIN_SIDE and sum(a.w > 1 and a.h > 1 for a in areas) >= DETAIL_MIN_FACES

    def _detail_areas(self, bgr: np.ndarray, hb: int, wb: int, first: List[Any]) -> List[Any]:
        """The faces of the detail pass that the first pass (`first`, its areas in the photo
        bordered by hb rows / wb columns) did not find, each confirmed in a crop round it; as
        areas in the same bordered frame, so they go through what the first pass's faces do."""
        from deepface.models.Detector import FacialAreaRegion

        H, W = bgr.shape[:2]
        r0 = min(1.0, _SHRINKS_TO["yunet"] / max(H + 2 * hb, W + 2 * wb))  # the first pass's scale
        known = [np.array([a.x - wb, a.y - hb, a.w, a.h], np.float64) for a in first]
        added: List[np.ndarray] = []
        for v in sorted(self._detail_pass(bgr), key=lambda v: -v[14]):
            if any(_overlaps(v, k) for k in known + added):
                continue
            cut = v[0] <= 1 or v[1] <= 1 or v[0] + v[2] >= W - 1 or v[1] + v[3] >= H - 1
            if not cut and min(v[2], v[3]) * r0 >= YUNET_MIN:
                continue  # seen by the first pass at a size YuNet finds, whole: not missed for resolution
            if any(self._found_in_crop(bgr, v, t) for t in CONFIRM_SIDES):
                added.append(v)

        def pt(v, i):
            return int(np.floor(v[i])) + wb, int(np.floor(v[i + 1])) + hb

        return [FacialAreaRegion(x=max(0, int(np.floor(v[0])) + wb), y=max(0, int(np.floor(v[1])) + hb),
                                 w=int(v[2]), h=int(v[3]), confidence=float(v[14]), right_eye=pt(v, 4),
                                 left_eye=pt(v, 6), nose=pt(v, 8), mouth_right=pt(v, 10), mouth_left=pt(v, 12))
                for v in added]

    def _detail_pass(self, bgr: np.ndarray) -> List[np.ndarray]:
        """YuNet on tiles of the photo at the detail scale, each _DETAIL_SIDE px square or less
        once scaled; the faces in photo coordinates (floats). Neighbouring tiles overlap by 1.5x
        the largest face too small for the first pass (YUNET_MIN px in the photo at <= 320 px),
        or half a tile, and each tile keeps only the faces whose centre lies in its share of the
        overlaps and that its edges do not cut where a neighbour goes on: no face twice, none cut."""
        import cv2

        H, W = bgr.shape[:2]
        rd = max(min(1.0, YUNET_MIN / MIN_FACE), min(1.0, _DETAIL_SIDE / max(H, W)))
        tile = _DETAIL_SIDE / rd  # photo pixels
        overlap = min(tile / 2, 1.5 * YUNET_MIN * max(H, W) / (_SHRINKS_TO["yunet"] / 2))
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
                if min(tw, th) < MIN_DETECT_SIDE:
                    continue
                if (tw, th) != (x1 - x0, y1 - y0):
                    crop = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA)
                for v in self._yunet(np.ascontiguousarray(crop)):
                    f = _to_photo(v, (x1 - x0) / tw, (y1 - y0) / th, x0, y0)
                    cx, cy = f[0] + f[2] / 2, f[1] + f[3] / 2
                    inside = ((x0 == 0 or f[0] >= x0) and (x1 == W or f[0] + f[2] <= x1)
                              and (y0 == 0 or f[1] >= y0) and (y1 == H or f[1] + f[3] <= y1))
                    if inside and left <= cx < right and top <= cy < bottom:
                        out.append(f)
        return out

    def _found_in_crop(self, bgr: np.ndarray, v: np.ndarray, target: int) -> bool:
        """Whether YuNet finds the face `v` (photo coordinates) again in a crop of three times its
        size round it, scaled so the face is `target` px, black outside the photo (as DeepFace's
        border), the boxes overlapping by _CONFIRM_IOU."""
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
        canvas = np.zeros((n, n, 3), np.uint8)
        canvas[dy:dy + th, dx:dx + tw] = cv2.resize(
            bgr[sy0:sy1, sx0:sx1], (tw, th), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        box = np.array([(x - cx0) * k, (y - cy0) * k, w * k, h * k])
        return any(_iou(row, box) >= _CONFIRM_IOU for row in self._yunet(canvas))

    def _yunet(self, img: np.ndarray) -> List[np.ndarray]:
        """YuNet's rows (floats) for `img` at its own size (the caller sizes it): x, y, w, h, then
        right eye, left eye, nose tip, right and left mouth corners, then the score."""
        h, w = img.shape[:2]
        net = self._model.model
        net.setInputSize((w, h))
        net.setScoreThreshold(float(self.settings.yunet_threshold))
        _, rows = net.detect(img)
        return [] if rows is None else [np.asarray(row, np.float64) for row in rows]

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


def _to_photo(v: np.ndarray, fx: float, fy: float, x0: int, y0: int) -> np.ndarray:
    """A YuNet row from a tile scaled by 1/fx, 1/fy from the photo region at x0, y0: the row in
    photo coordinates (floats; the score stays last)."""
    out = np.array(v[:15], np.float64)
    out[0:14:2] = out[0:14:2] * fx + x0
    out[1:14:2] = out[1:14:2] * fy + y0
    out[2], out[3] = v[2] * fx, v[3] * fy  # width and height: scaled, not moved
    return out


def _tiles(n: int, tile: float, overlap: float) -> Tuple[List[int], int]:
    """Where tiles start along a side of n pixels, and their length: as few tiles of at most
    `tile` pixels as cover it with neighbours overlapping by at least `overlap`, shortened to share
    the side evenly."""
    if n <= tile:
        return [0], n
    count = max(2, int(np.ceil((n - overlap) / (tile - overlap))))
    length = min(n, int(np.ceil((n + (count - 1) * overlap) / count)))
    return [round(i * (n - length) / (count - 1)) for i in range(count)], length


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / (a[2] * a[3] + b[2] * b[3] - inter))


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """A detail-pass face `a` taken for the face `b` (x, y, w, h): IoU >= _SAME_IOU, or a's centre
    inside b's box (or b's inside a's)."""
    if _iou(a, b) >= _SAME_IOU:
        return True
    ax, ay, bx, by = a[0] + a[2] / 2, a[1] + a[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    return bool((b[0] <= ax <= b[0] + b[2] and b[1] <= ay <= b[1] + b[3])
                or (a[0] <= bx <= a[0] + a[2] and a[1] <= by <= a[1] + a[3]))


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
