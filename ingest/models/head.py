"""A trained projection head as a model (`<model>_head`): the head file, where it lives, and the
embedder that runs the base model's code then the head. Training it is lookalike.ingest.head; this
module is what ingest and query need to use one, so the model package never imports the trainer.

Projection at ingest and query time is numpy (`Head.project`): a matrix product per face batch.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from lookalike.ingest.models.base import Embedder
from lookalike.ingest.models.errors import ModelError, WeightsMissing
from lookalike.ingest.settings import Settings
from lookalike.schemas import get_model, head_key
from lookalike.schemas.errors import EXIT_WEIGHTS, LookalikeError

FORMAT = "lookalike-head/1"
HEADS_ENV = "LOOKALIKE_HEADS"  # Settings.heads_dir, named in messages


class HeadError(LookalikeError, ValueError):
    """A head asked for what cannot be done: an option, a model, too few labelled faces (exit 2,
    HTTP 400). str() is one line."""


class HeadFileError(HeadError, ModelError):
    """A head file that cannot be used: not a head, the head of another model, or not the head its
    collection was written with (exit 5, HTTP 503, as any model that cannot load)."""

    exit_code = EXIT_WEIGHTS
    http_status = 503
    api_code = "model_error"


class HeadDeviceError(HeadError):
    """The device asked to train on is not here (exit 5, HTTP 503)."""

    exit_code = EXIT_WEIGHTS
    http_status = 503
    api_code = "model_error"


# ---------------------------------------------------------------------------------------------
# Where a head lives
# ---------------------------------------------------------------------------------------------
def heads_dir(settings: Settings) -> Path:
    """The folder of a database's heads: $LOOKALIKE_HEADS, else `<db stem>.heads` beside a Lite
    database, else ~/.cache/lookalike/heads/<server> for a server."""
    if settings.heads_dir:
        return Path(settings.heads_dir).expanduser()
    return settings.beside_db("heads")


def head_path(settings: Settings, model: str) -> Path:
    return heads_dir(settings) / f"{head_key(model)}.pt"


def file_key(settings: Settings, key: str) -> Tuple[str, int]:
    """(path, mtime) of the head file behind model key `key` (`dlib_head`): a process-wide engine
    holding a head follows its database and a retrained file."""
    path = head_path(settings, get_model(key).head_of)
    try:
        return str(path.resolve()), path.stat().st_mtime_ns
    except OSError:
        return str(path), 0


# ---------------------------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------------------------
@dataclass
class Head:
    model: str  # the base model key whose vectors it projects
    arch: str
    dim: int
    hidden: int
    state: Dict[str, np.ndarray]  # float32 arrays, torch's state-dict names
    provenance: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return head_key(self.model)

    @property
    def digest(self) -> str:
        """sha256 of the architecture and weights (not of the file: provenance may be rewritten)."""
        h = hashlib.sha256(f"{FORMAT}|{self.model}|{self.arch}|{self.dim}|{self.hidden}".encode())
        for k in sorted(self.state):
            h.update(k.encode())
            h.update(np.ascontiguousarray(self.state[k], dtype=np.float32).tobytes())
        return h.hexdigest()

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """(n, dim) L2-normalised head outputs of (n, dim) L2-normalised base vectors: the same
        arithmetic as the torch module it was trained as."""
        x = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if self.arch == "linear":
            y = x + x @ self.state["branch.weight"].T
        else:
            h = np.maximum(x @ self.state["branch.0.weight"].T + self.state["branch.0.bias"], 0.0)
            y = x + h @ self.state["branch.2.weight"].T
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def to_bytes(self) -> bytes:
        import torch

        buf = io.BytesIO()
        torch.save({"format": FORMAT, "state_dict": {k: torch.from_numpy(np.ascontiguousarray(v))
                                                     for k, v in self.state.items()},
                    "provenance": self.provenance}, buf)
        return buf.getvalue()

    def save(self, path: Path) -> None:
        """Written whole or not at all (a temporary file renamed over the old one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Head":
        import torch

        try:
            blob = torch.load(str(path), map_location="cpu", weights_only=True)
            prov = dict(blob["provenance"])
            state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in blob["state_dict"].items()}
            if blob.get("format") != FORMAT:
                raise ValueError(f"format {blob.get('format')!r}, expected {FORMAT}")
            return cls(prov["model"], prov["arch"], int(prov["dim"]), int(prov["hidden"]), state, prov)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable file is one line
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise HeadFileError(f"head file {path}: not a Lookalike head ({why})") from None


# ---------------------------------------------------------------------------------------------
# The head as an embedder: the base model's code, then the head
# ---------------------------------------------------------------------------------------------
class HeadEmbedder(Embedder):
    """`<model>_head`: the base model's embedder (same crops, same forward pass), its normalised
    vectors through the head file of the database in `settings`."""

    def __init__(self, spec, settings: Settings, base: Embedder):
        super().__init__(spec, settings)
        self.base = base  # built by the registry, like any model
        self.path = head_path(settings, spec.head_of)
        self.max_forward = self.base.max_forward
        self.head: Optional[Head] = None

    @property
    def dim(self) -> int:
        return self._head().dim

    def _head(self) -> Head:
        if self.head is None:
            try:
                self.head = Head.load(self.path)
            except FileNotFoundError:
                raise WeightsMissing(
                    f"model {self.name}: head file {self.path} not found; train it with `lookalike train-head "
                    f"--model {self.spec.head_of}` on this database, or set {HEADS_ENV} to the folder holding "
                    f"{self.path.name}") from None
            if self.head.model != self.spec.head_of:
                raise HeadFileError(f"head file {self.path} is a head of {self.head.model}, not {self.spec.head_of}")
        return self.head

    def _load(self) -> Any:
        head = self._head()
        self.base.load()
        return head

    def model_input(self, image, face) -> np.ndarray:
        return self.base.model_input(image, face)

    def _predict_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._model.project(self.base.embed_inputs(inputs))
