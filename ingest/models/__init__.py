"""Face detection and embedding models. The query path imports these, so a query face is detected,
aligned and embedded exactly like a stored face (through lookalike.ingest.analysis).

One module a job: `detector` (DeepFace's detector backends), `base` (the embedder interface),
`deepface`, `dlib`, `vit` (one module per model kind), `weights` (where weights come from),
`registry` (kind -> class, the one place a new kind is added), `engine` (built once per process).
"""
from lookalike.ingest.models.base import Embedder, torch_threads
from lookalike.ingest.models.deepface import DeepFaceEmbedder
from lookalike.ingest.models.detector import DETECTORS, MIN_DETECT_SIDE, Detector, Face
from lookalike.ingest.models.dlib import DlibEmbedder
from lookalike.ingest.models.engine import Engine, engine_key, get_engine
from lookalike.ingest.models.errors import ModelError, WeightsMissing
from lookalike.ingest.models.registry import (
    EMBEDDERS,
    default_face_model,
    make_embedder,
    model_names,
    model_source,
    settings_for_source,
    weights_present,
)
from lookalike.ingest.models.vit import CROP_MARGIN, CROP_SIZE, ClipEmbedder, Dinov2Embedder, TransformerEmbedder, face_square
from lookalike.ingest.models.weights import DLIB_LANDMARKS_FILE, YUNET_FILE, import_tensorflow, provision_weights

__all__ = ["Embedder", "torch_threads", "DeepFaceEmbedder", "DETECTORS", "MIN_DETECT_SIDE", "Detector", "Face",
           "DlibEmbedder", "Engine", "engine_key", "get_engine", "ModelError", "WeightsMissing", "EMBEDDERS",
           "default_face_model", "make_embedder", "model_names", "model_source",
           "settings_for_source", "weights_present", "CROP_MARGIN",
           "CROP_SIZE", "ClipEmbedder", "Dinov2Embedder", "TransformerEmbedder", "face_square", "DLIB_LANDMARKS_FILE",
           "YUNET_FILE", "import_tensorflow", "provision_weights"]
