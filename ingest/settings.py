"""One validated settings object, read from the environment (LOOKALIKE_*), overridable per call.

Every command builds it once; a bad value (an unknown detector, a Lite path without `.db`, a
negative retry count) fails there with one line naming the setting, not deep inside a worker.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional, Tuple

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookalike.schemas import MODELS, PROFILES, get_model
from lookalike.schemas.errors import UsageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# DeepFace's detector backends the product can run (weights provisioned offline: yunet, dlib).
DETECTORS = ("yunet", "dlib", "mtcnn", "opencv", "retinaface", "ssd", "centerface", "mediapipe",
             "yolov8n", "fastmtcnn")
DLIB_ENGINES = ("torch", "dlib", "onnx", "onnx-int8")


# Settings that only say where the faces are stored and how they are written; any other setting
# may change what a model computes, so models built under one value are never reused under another.
STORAGE_SETTINGS = frozenset({"db", "uri", "token", "profile", "milvus_retries", "milvus_retry_seconds", "commit_seconds"})


class SettingsError(UsageError):
    """A setting with a value the product cannot use; the message names it (one line; exit 2, HTTP 400)."""

    api_code = "bad_setting"


def default_data_dir() -> Path:
    """Sample data: $LOOKALIKE_DATA, else ../shared/data beside the project."""
    return Path(os.environ.get("LOOKALIKE_DATA") or PROJECT_ROOT.parent / "shared" / "data").expanduser()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", env_ignore_empty=True, frozen=True,
                                      extra="forbid", populate_by_name=True)

    db: str = Field("lookalike.db", description="Milvus Lite database path (ends in .db)")
    uri: Optional[str] = Field(None, description="Milvus server URI; when set, db is not used")
    token: Optional[str] = None
    profile: Optional[str] = Field(None, description="index profile (schemas.PROFILES)")
    detector: str = "yunet"
    # DeepFace keeps weights in $DEEPFACE_HOME/.deepface/weights; DeepFace's own default is $HOME.
    deepface_home: str = Field(default_factory=lambda: str(Path.home()),
                               validation_alias=AliasChoices("DEEPFACE_HOME", "deepface_home"))
    # Optional extra place to find a YuNet .onnx when DeepFace's weights dir lacks one (offline).
    yunet_weights: Optional[str] = None
    data_dir: Path = Field(default_factory=default_data_dir,
                           validation_alias=AliasChoices("LOOKALIKE_DATA", "data_dir"))
    # transformers models: a hub id or a local directory (from_pretrained takes either)
    # (each a model's `source_setting` in schemas.MODELS, defaulting to its declared source)
    clip_model: str = MODELS["clip"].default_source
    dinov2_model: str = MODELS["dinov2"].default_source
    # DeepFace's YuNet default (0.9) misses half the faces of the sample group photos; 0.6 finds
    # the human-checked face counts with no false face on the no-face photos.
    yunet_threshold: float = Field(0.6, gt=0.0, lt=1.0)
    # Transient Milvus errors (server unreachable, restarting, deadline exceeded) are retried with
    # exponential backoff, at most this many times and within this many seconds per call
    # (ingest/store.py); then the command stops with one line (exit 6).
    milvus_retries: int = Field(8, ge=0, le=100)
    milvus_retry_seconds: float = Field(30.0, ge=0.0)
    # Lite ingest: the driver writes what the workers returned at most this often (faces, then
    # the ledger); a kill -9 loses at most these seconds of work, redone on resume. Shorter
    # costs the models CPU (ingest/pipeline.py Writer); 0 writes every batch as it completes.
    commit_seconds: float = Field(5.0, ge=0.0)
    # dlib's face ResNet: "onnx" (an ONNX graph written from the weights file, on ONNX Runtime,
    # ingest/dlib_onnx.py: batched, no torch; the default), "torch" (the torch port the graph
    # mirrors, ingest/dlib_resnet.py) or "dlib" (dlib's own code through DeepFace; the same
    # vectors, slower, the reference); "onnx-int8": the graph quantised to int8 (faster, vectors
    # within a cosine of ~0.99 of the others: bench/results/engines.txt; recorded with its
    # collection, which other engines then do not write to).
    dlib_engine: str = "onnx"
    # Learned projection heads (ingest/head.py): default `<db stem>.heads/` beside a Lite database.
    heads_dir: Optional[str] = Field(None, validation_alias=AliasChoices("LOOKALIKE_HEADS", "heads_dir"))
    # The Hugging Face hub transformers would download from (its own variable): probed before a
    # download so that an offline machine gets one line at once, not minutes of retries.
    hf_endpoint: str = Field("https://huggingface.co", validation_alias=AliasChoices("HF_ENDPOINT", "hf_endpoint"))

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise SettingsError(_one_line(e)) from None

    @field_validator("detector", "dlib_engine")
    @classmethod
    def _known_name(cls, v: str, info: ValidationInfo) -> str:
        what, known = {"detector": ("detector", DETECTORS), "dlib_engine": ("dlib engine", DLIB_ENGINES)}[
            str(info.field_name)]
        if v not in known:
            raise ValueError(f"unknown {what} '{v}' (known: {', '.join(known)})")
        return v

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in PROFILES:
            raise ValueError(f"unknown index profile '{v}' (known: {', '.join(PROFILES)})")
        return v

    @model_validator(mode="after")
    def _lite_path(self) -> "Settings":
        # Milvus Lite takes only a path ending in .db (pymilvus calls anything else an illegal uri)
        if not self.uri and not str(self.db).endswith(".db"):
            raise ValueError(f"{self.db}: a Milvus Lite database path must end in .db (e.g. {self.db}.db); "
                             f"a server is --uri http://host:19530")
        return self

    def model_settings(self) -> Tuple[Tuple[str, str], ...]:
        """Every setting that may change what a model computes: all but STORAGE_SETTINGS (the
        engine cache key, lookalike.ingest.models.engine)."""
        return tuple((k, str(v)) for k, v in self.model_dump().items() if k not in STORAGE_SETTINGS)

    @property
    def weights_dir(self) -> Path:
        return Path(self.deepface_home).expanduser() / ".deepface" / "weights"

    @property
    def target(self) -> str:
        """Where the faces are: the server URI or the Lite database path."""
        return self.uri or str(self.db)

    def beside_db(self, kind: str) -> Path:
        """A folder of the database's own files (heads, run reports): `<db stem>.<kind>` beside a
        Lite database, ~/.cache/lookalike/<kind>/<server> for a server."""
        if self.uri:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.uri.split("://")[-1]).strip("_") or "server"
            return Path.home() / ".cache" / "lookalike" / kind / slug
        db = Path(self.db).expanduser()
        return db.with_name(f"{db.stem}.{kind}")

    def model_source(self, base: str) -> str:
        """The hub id or folder a model with a configurable source loads (schemas.ModelSpec.source_setting)."""
        return str(getattr(self, get_model(base).source_setting))

    def with_(self, **changes: Any) -> "Settings":
        """A validated copy with these values changed (None leaves a value as it is)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        return type(self)(**{**self.model_dump(), **changes})


def resolve(settings: Optional[Settings], **keywords: Any) -> Settings:
    """The settings of a Python API call: the object given, or the environment's with these
    keywords (db=, uri=, ...), never a mix, so that what runs is what the caller wrote."""
    given = {k: v for k, v in keywords.items() if v is not None}
    if settings is not None and given:
        names = ", ".join(f"{k}=" for k in given)
        raise TypeError(f"give settings or {names} not both: settings.with_({names.replace('=', '=...')})")
    return settings if settings is not None else Settings().with_(**given)


# Flag (or variable) each setting is given with, for error messages.
_FLAGS = {"db": "--db / $LOOKALIKE_DB", "uri": "--uri / $LOOKALIKE_URI", "profile": "--profile / $LOOKALIKE_PROFILE",
          "detector": "--detector / $LOOKALIKE_DETECTOR", "deepface_home": "$DEEPFACE_HOME",
          "data_dir": "$LOOKALIKE_DATA"}


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    name = str(err["loc"][0]) if err.get("loc") else ""
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if not name and "Milvus Lite database path" in msg:
        name = "db"
    flag = _FLAGS.get(name, f"${'LOOKALIKE_' + name.upper()}" if name else "settings")
    return f"{flag}: {msg}"


def pin_threads(n: int = 1) -> None:
    """Pin BLAS/OpenMP/TensorFlow threads so N worker processes do not oversubscribe the cores.

    Must run before numpy/TensorFlow start their thread pools, i.e. in the environment the worker
    processes are started with.
    """
    os.environ.update(thread_env(n))


def pinned_threads() -> int:
    """The threads this process was pinned to (pin_threads / a Dask worker's environment), 0 if none:
    a process-wide setting of the runtime, set before the models load, not a per-call one."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    except ValueError:
        return 0


def thread_env(n: int = 1) -> dict:
    env = {v: str(n) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    return env
