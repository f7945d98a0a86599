"""Where model weights come from: DeepFace's weights folder ($DEEPFACE_HOME/.deepface/weights),
fed from files that ship inside Python packages or the sample data, so this machine gives real
results without a download; and the quiet imports of the frameworks that load them."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

from lookalike.ingest.models.errors import WeightsMissing
from lookalike.ingest.settings import Settings
from lookalike.schemas import MODELS

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
DLIB_LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"



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
