"""One typed settings object, read from the environment (LOOKALIKE_*), overridable per call."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: Optional[str] = None) -> Optional[str]:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def default_data_dir() -> Path:
    """Sample data: $LOOKALIKE_DATA, else ../shared/data beside the project."""
    return Path(_env("LOOKALIKE_DATA", str(PROJECT_ROOT.parent / "shared" / "data"))).expanduser()


@dataclass(frozen=True)
class Settings:
    db: str = field(default_factory=lambda: _env("LOOKALIKE_DB", "lookalike.db"))
    uri: Optional[str] = field(default_factory=lambda: _env("LOOKALIKE_URI"))
    token: Optional[str] = field(default_factory=lambda: _env("LOOKALIKE_TOKEN"))
    profile: Optional[str] = field(default_factory=lambda: _env("LOOKALIKE_PROFILE"))
    detector: str = field(default_factory=lambda: _env("LOOKALIKE_DETECTOR", "yunet"))
    # DeepFace keeps weights in $DEEPFACE_HOME/.deepface/weights; DeepFace's own default is $HOME.
    deepface_home: str = field(default_factory=lambda: _env("DEEPFACE_HOME", str(Path.home())))
    # Optional extra place to find a YuNet .onnx when DeepFace's weights dir lacks one (offline).
    yunet_weights: Optional[str] = field(default_factory=lambda: _env("LOOKALIKE_YUNET_WEIGHTS"))
    data_dir: Path = field(default_factory=default_data_dir)
    # DeepFace's YuNet default (0.9) misses half the faces of the sample group photos; 0.6 finds
    # 12/14 photos' counts right with no false faces on the no-face photos (measured, README).
    # transformers models: a hub id or a local directory (from_pretrained takes either)
    clip_model: str = field(default_factory=lambda: _env("LOOKALIKE_CLIP_MODEL", "openai/clip-vit-base-patch32"))
    dinov2_model: str = field(default_factory=lambda: _env("LOOKALIKE_DINOV2_MODEL", "facebook/dinov2-small"))
    yunet_threshold: float = field(default_factory=lambda: float(_env("LOOKALIKE_YUNET_THRESHOLD", "0.6")))
    # Transient Milvus errors (server unreachable, restarting, deadline exceeded) are retried with
    # exponential backoff, at most this many times and within this many seconds per call
    # (ingest/store.py); then the command stops with one line (exit 6).
    milvus_retries: int = field(default_factory=lambda: int(_env("LOOKALIKE_MILVUS_RETRIES", "8")))
    milvus_retry_seconds: float = field(
        default_factory=lambda: float(_env("LOOKALIKE_MILVUS_RETRY_SECONDS", "30")))
    # Lite ingest: the driver writes what the workers returned at most this often (faces, then
    # the ledger); a kill -9 loses at most these seconds of work, redone on resume. Shorter
    # costs the models CPU (ingest/pipeline.py Writer); 0 writes every batch as it completes.
    commit_seconds: float = field(default_factory=lambda: float(_env("LOOKALIKE_COMMIT_SECONDS", "5")))
    # dlib's face ResNet: "torch" (ingest/dlib_resnet.py, batched, the default) or "dlib" (dlib's
    # own code through DeepFace; the same vectors, 5-12x slower, the reference).
    dlib_engine: str = field(default_factory=lambda: _env("LOOKALIKE_DLIB_ENGINE", "torch"))

    @property
    def weights_dir(self) -> Path:
        return Path(self.deepface_home).expanduser() / ".deepface" / "weights"

    def model_source(self, base: str) -> str:
        return {"clip": self.clip_model, "dinov2": self.dinov2_model}[base]

    def with_(self, **changes) -> "Settings":
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes)


def pin_threads(n: int = 1) -> None:
    """Pin BLAS/OpenMP/TensorFlow threads so N worker processes do not oversubscribe the cores.

    Must run before numpy/TensorFlow start their thread pools, i.e. in the environment the worker
    processes are started with.
    """
    os.environ.update(thread_env(n))


def thread_env(n: int = 1) -> dict:
    env = {v: str(n) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    return env
