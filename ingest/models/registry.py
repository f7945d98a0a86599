"""The model registry: each model kind bound to the class that loads and runs it.

A model's data is declared once, in `lookalike.schemas.MODELS` (name, dimension, weights file,
default source, the setting that overrides the source); its collection, CLI choices and the web's
list are derived from that declaration, and the class here builds it. Adding a model of a new
kind is one module with its `Embedder` subclass and one line in `EMBEDDERS` (ingest/README.md,
"Adding a model").
"""
from __future__ import annotations

from typing import Callable, Dict, List

from lookalike.ingest.models.base import Embedder
from lookalike.ingest.models.deepface import DeepFaceEmbedder
from lookalike.ingest.models.dlib import DlibEmbedder
from lookalike.ingest.models.errors import ModelError
from lookalike.ingest.models.head import HeadEmbedder
from lookalike.ingest.models.vit import ClipEmbedder, Dinov2Embedder
from lookalike.ingest.models.weights import provision_weights
from lookalike.ingest.settings import Settings
from lookalike.schemas import MODELS, ModelSpec, get_model

Builder = Callable[[ModelSpec, Settings], Embedder]


def _head(spec: ModelSpec, settings: Settings) -> Embedder:
    # `<model>_head`: the base model's embedder, then the database's trained head
    return HeadEmbedder(spec, settings, make_embedder(spec.head_of, settings))


# kind (schemas.ModelSpec.kind) -> the class that builds models of that kind
EMBEDDERS: Dict[str, Builder] = {
    "deepface": DeepFaceEmbedder,
    "dlib": DlibEmbedder,
    "hf-clip": ClipEmbedder,
    "hf-dinov2": Dinov2Embedder,
    "head": _head,
}


def make_embedder(name: str, settings: Settings) -> Embedder:
    spec = get_model(name)
    build = EMBEDDERS.get("head" if spec.head_of else spec.kind)  # a head keeps its base's kind
    if build is None:
        raise ModelError(f"model kind {spec.kind} of {name} is not available")
    return build(spec, settings)


def model_names() -> List[str]:
    """The models a user can name (`--models`, the web's list), in declaration order."""
    return list(MODELS)


def model_source(name: str, settings: Settings) -> str:
    """Where a model's weights come from: recorded with its collection so queries match."""
    spec = get_model(name)
    if spec.source_setting:
        return settings.model_source(spec.base)
    if spec.kind == "dlib" and settings.dlib_engine == "onnx-int8":
        # quantised vectors are not the fp32 engines' (torch, onnx, dlib give the same ones): a
        # collection records which it holds, so the two never mix in it
        return f"deepface:{spec.deepface_name}+int8"
    return f"deepface:{spec.deepface_name}"  # fixed weights: the name identifies them


def settings_for_source(name: str, recorded: str, settings: Settings) -> Settings:
    """Settings that embed as the collection recorded as `recorded` was embedded: a query's faces
    must be embedded by the variant that embedded the stored ones. A configurable source becomes
    the recorded hub id or folder; dlib's fp32 engines (onnx, torch, dlib: the same vectors) and its
    int8 one are told apart by the recorded `+int8`. Anything else is left as it is (the caller's
    check then says what differs)."""
    spec = get_model(name)
    if spec.source_setting:
        return settings.with_(**{spec.source_setting: recorded})
    if spec.kind == "dlib" and recorded != model_source(name, settings):
        if recorded.endswith("+int8"):
            return settings.with_(dlib_engine="onnx-int8")
        if settings.dlib_engine == "onnx-int8" and recorded == model_source(name, settings.with_(dlib_engine="onnx")):
            return settings.with_(dlib_engine="onnx")
    return settings


def weights_present(name: str, settings: Settings) -> bool:
    """Whether a model's weights are on this machine, checked without loading anything: the files
    its class reads (linked in from packages or the sample data where known). Weights known only
    by loading them (a hub id) count as present."""
    spec = get_model(name)
    return all(provision_weights(settings, f) is not None for f in spec.required_files)


def default_face_model(settings: Settings) -> str:
    """FaceNet is the product's face model; where its weights are absent (no download on this
    machine) fall back to dlib, whose real weights ship in a package."""
    return "facenet" if weights_present("facenet", settings) else "dlib"
