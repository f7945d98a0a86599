"""The per-process engine: one detector and the embedders of a configuration, built once per
process (each Dask worker, the query process) and shared by every photo it analyses."""
from __future__ import annotations

import threading
from typing import Any, Dict, Sequence, Tuple

from lookalike.ingest.models.base import Embedder
from lookalike.ingest.models.detector import Detector
from lookalike.ingest.models.head import file_key
from lookalike.ingest.models.registry import make_embedder
from lookalike.ingest.settings import Settings
from lookalike.schemas import get_model


class Engine:
    def __init__(self, settings: Settings, detector: str, models: Sequence[str]):
        self.settings = settings
        self.detector = Detector(detector, settings)
        self.embedders: Dict[str, Embedder] = {m: make_embedder(m, settings) for m in models}

    def load(self) -> "Engine":
        self.detector.load()
        for e in self.embedders.values():
            e.load()
        return self


_ENGINES: Dict[Tuple, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_key(settings: Settings, detector: str, models: Sequence[str]) -> Tuple[Any, ...]:
    """What an engine is built from: every setting except those that only say where the faces are
    stored (Settings.model_settings), so a new setting can never silently reuse a model built
    without it; plus each head's file (a retrained head is a new engine)."""
    key: Tuple[Any, ...] = (settings.model_settings(), detector, tuple(models))
    heads = [m for m in models if get_model(m).head_of]
    if heads:
        key += tuple(file_key(settings, m) for m in heads)
    return key


def get_engine(settings: Settings, detector: str, models: Sequence[str]) -> Engine:
    """The process-wide engine for this configuration (models load once per process)."""
    key = engine_key(settings, detector, models)
    with _ENGINES_LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            eng = _ENGINES[key] = Engine(settings, detector, models)
    return eng
