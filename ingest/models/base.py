"""What every model is: the errors a model raises and the embedder interface (`_load` once per
process, `model_input` per face, `_predict_inputs` per batch, typed float32 output)."""
from __future__ import annotations

import threading
from typing import Any, Sequence, Tuple

import numpy as np

from lookalike.ingest.images import Decoded
from lookalike.ingest.models.detector import Face
from lookalike.ingest.models.errors import ModelError, WeightsMissing  # noqa: F401  (re-exported)
from lookalike.ingest.settings import Settings, pinned_threads
from lookalike.schemas import ModelSpec


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


def torch_threads() -> None:
    """Pinned per Dask worker through OMP_NUM_THREADS (ingest.settings.thread_env); torch's own
    default (all cores) elsewhere, e.g. for a query's batch of faces."""
    import torch

    threads = pinned_threads()
    if threads > 0:
        torch.set_num_threads(threads)
