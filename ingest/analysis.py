"""One photo's analysis, the only path from a decoded photo to its faces: detect -> quality -> each
model's input -> one embedding per model. Ingest (on the workers), query, evaluation and
explanations all go through `Analyzer`, so a query face is processed by exactly the code that
processed the stored faces; no other module calls the detector or an embedder.

Reading and decoding stay with the caller (lookalike.ingest.images): each door has its own policy
for a file it cannot read (a failed ledger row, an exit code), while everything after the pixels
is shared.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lookalike.ingest.images import Decoded
from lookalike.ingest.models import Embedder, Engine, Face, ModelError, get_engine
from lookalike.ingest.quality import Quality, assess
from lookalike.ingest.settings import Settings
from lookalike.schemas.errors import UnreadableError


class AnalysisError(UnreadableError):
    """The detector or a model failed on this photo (not on its configuration): the photo cannot
    be analysed, others can. str() is the one-line reason a ledger row or a message shows."""


def reason(e: BaseException) -> str:
    """An exception's first line, bounded: what a report row says about one failed photo."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:300]


@dataclass
class FaceAnalysis:
    face: Face  # index in the photo, box (photo pixels), dbox (decoded pixels), confidence, landmarks
    quality: Quality
    inputs: Dict[str, np.ndarray] = field(default_factory=dict)  # model -> the crop it embeds
    vectors: Dict[str, np.ndarray] = field(default_factory=dict)  # model -> (dim,) float32, L2-normalised

    @property
    def index(self) -> int:
        return self.face.index

    @property
    def box(self) -> Tuple[int, int, int, int]:
        return self.face.box


@dataclass
class PhotoAnalysis:
    image: Decoded
    faces: List[FaceAnalysis]
    skipped_small: int = 0  # faces found but under min_face
    detected: int = 0  # faces of at least min_face, before a `select` kept some of them
    error: str = ""  # set when a model failed on this photo alone (the faces are then incomplete)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds: detect, embed

    def vectors(self, model: str) -> np.ndarray:
        """(faces, dim) embeddings of one model, in face order."""
        if not self.faces:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([f.vectors[model] for f in self.faces])


Select = Callable[[List[Face], Decoded], List[Face]]


class Analyzer:
    """The detector and embedders of one configuration (built once per process) behind one call:
    `analyse(image)` -> the photo's faces with quality and embeddings. The steps are also open one
    by one (`detect`, `prepare`, `embed`) so a worker can batch the forward passes of many photos
    and a query can time each step."""

    def __init__(self, settings: Settings, detector: str, models: Sequence[str]):
        self.engine: Engine = get_engine(settings, detector, list(models))
        self.models: List[str] = list(models)
        self.detector = detector

    def load(self) -> "Analyzer":
        self.engine.load()
        return self

    # -- steps ---------------------------------------------------------------------------------
    def detect(self, image: Decoded, *, min_face: int = 0, select: Optional[Select] = None) -> PhotoAnalysis:
        """Faces of at least `min_face` px (shorter side, photo pixels), numbered left to right, each
        with its quality; `select` may keep some of them (e.g. the face nearest the centre)."""
        t = time.perf_counter()
        try:
            found = self.engine.detector.detect(image, min_face=0)
        except ModelError:
            raise  # configuration problems stop the caller
        except Exception as e:  # noqa: BLE001 - a detector crash on one photo fails that photo only
            raise AnalysisError(f"face detector failed on this image: {reason(e)}") from e
        kept = [f for f in found if f.size >= min_face]
        for i, f in enumerate(kept):
            f.index = i
        skipped, detected = len(found) - len(kept), len(kept)
        if select is not None:
            kept = select(kept, image)
        faces = [FaceAnalysis(f, assess(image, f)) for f in kept]
        return PhotoAnalysis(image, faces, skipped_small=skipped, detected=detected,
                             timings={"detect": time.perf_counter() - t})

    def prepare(self, photo: PhotoAnalysis, models: Optional[Sequence[str]] = None) -> PhotoAnalysis:
        """Each model's input crop for every face: all the work of a face before the forward pass."""
        for m in models or self.models:
            emb = self._embedder(m)
            try:
                for fa in photo.faces:
                    if m not in fa.inputs:
                        fa.inputs[m] = emb.model_input(photo.image, fa.face)
            except ModelError:
                raise
            except Exception as e:  # noqa: BLE001
                raise AnalysisError(f"embedding error: {reason(e)}") from e
        return photo

    def embed(self, photos: Sequence[PhotoAnalysis], models: Optional[Sequence[str]] = None) -> None:
        """One forward pass per model for all faces of all `photos` (batched, a face costs far less
        than one photo at a time: bench/README.md). If a batch fails, each photo is tried alone so
        that only the culprit fails: its `error` is set and later models skip it."""
        for m in models or self.models:
            t = time.perf_counter()
            for p in photos:
                if not p.error:
                    try:
                        self.prepare(p, [m])
                    except AnalysisError as e:
                        p.error = str(e)
            todo = [p for p in photos if not p.error and p.faces]
            try:
                vectors: Optional[np.ndarray] = self._embed_inputs(m, [fa.inputs[m] for p in todo for fa in p.faces])
            except ModelError:
                raise
            except Exception:  # noqa: BLE001 - isolated below
                vectors = None
            offset = 0
            for p in todo:
                n = len(p.faces)
                if vectors is not None:
                    got = vectors[offset:offset + n]
                else:
                    try:
                        got = self._embed_inputs(m, [fa.inputs[m] for fa in p.faces])
                    except ModelError:
                        raise
                    except Exception as e:  # noqa: BLE001
                        p.error = f"embedding error: {reason(e)}"
                        continue
                for fa, v in zip(p.faces, got):
                    fa.vectors[m] = v
                offset += n
            spent = time.perf_counter() - t  # a batch's time, shared out: per photo is what a query reports
            for p in photos:
                p.timings["embed"] = p.timings.get("embed", 0.0) + spent / len(photos)

    def analyse(self, image: Decoded, *, min_face: int = 0, select: Optional[Select] = None,
                models: Optional[Sequence[str]] = None) -> PhotoAnalysis:
        """The whole analysis of one photo; raises AnalysisError if a model fails on it."""
        photo = self.detect(image, min_face=min_face, select=select)
        self.embed([photo], models)
        if photo.error:
            raise AnalysisError(photo.error)
        return photo

    # -- single faces and perturbed inputs (explanations) -------------------------------------
    def model_input(self, model: str, image: Decoded, face: Face) -> np.ndarray:
        """The crop `model` embeds for one face (what an explanation perturbs)."""
        return self._embedder(model).model_input(image, face)

    def embed_inputs(self, model: str, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dim) L2-normalised embeddings of model inputs, possibly perturbed."""
        return self._embed_inputs(model, inputs)

    def model(self, name: str) -> Embedder:
        """The model itself, for what only it can say: its explanation hooks and methods."""
        return self._embedder(name)

    def _embedder(self, model: str) -> Embedder:
        try:
            return self.engine.embedders[model]
        except KeyError:
            raise ModelError(f"model {model} is not loaded by this analyzer (it has {', '.join(self.models)})") from None

    def _embed_inputs(self, model: str, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._embedder(model).embed_inputs(inputs)


def centre_face(faces: Sequence[Face], width: int, height: int) -> Face:
    """The face whose box centre is nearest the centre of a width x height photo (LFW crops are
    centred on the person)."""
    cx, cy = width / 2.0, height / 2.0
    return min(faces, key=lambda f: (f.box[0] + f.box[2] / 2.0 - cx) ** 2 + (f.box[1] + f.box[3] / 2.0 - cy) ** 2)


def nearest_centre(faces: List[Face], image: Decoded) -> List[Face]:
    """A `select` for Analyzer.detect: the face nearest the photo's centre (centre_face)."""
    return [centre_face(faces, image.width, image.height)] if faces else []
