"""The mapper, run on the workers: read, hash, decode, detect and embed a batch of images with the
worker's engine, built once per process; on a server (`--uri`) the worker also writes its batch."""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lookalike.ingest.images import ImageError, decode, read_bytes, sha256_bytes
from lookalike.ingest.models import Engine, ModelError, WeightsMissing, get_engine
from lookalike.ingest.pipeline.paths import MAX_PATH_BYTES, storable
from lookalike.ingest.pipeline.results import BatchResult, ImageResult, _reason
from lookalike.ingest.pipeline.writer import ServerWriter
from lookalike.ingest.quality import assess
from lookalike.ingest.settings import Settings
from lookalike.ingest.sources import ImageRecord
from lookalike.ingest.store import Store, StoreError


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


Inputs = Dict[str, List[np.ndarray]]  # model -> the crop it embeds, one per face


def _prepare(engine: Engine, record: ImageRecord, min_face: int = 0) -> Tuple[ImageResult, Optional[Inputs]]:
    """Read, hash, decode, detect, and cut every model's crops: everything up to the forward pass.
    The result is final unless inputs come back (status done, vectors still to fill)."""
    path = record.path
    if storable(path) != path:
        return ImageResult(path, "", "failed", "file name is not valid UTF-8; rename the file"), None
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        return ImageResult(path, "", "failed", f"path longer than {MAX_PATH_BYTES} bytes"), None
    try:
        data = read_bytes(path)
        sha = sha256_bytes(data)
    except ImageError as e:
        return ImageResult(path, "", "failed", f"unreadable: {e}"), None
    except MemoryError:
        return ImageResult(path, "", "failed", "unreadable: out of memory reading this file"), None
    try:
        image = decode(data)
        del data
    except ImageError as e:
        return ImageResult(path, sha, "failed", str(e)), None
    except MemoryError:
        return ImageResult(path, sha, "failed", "cannot decode image: out of memory decoding it"), None
    except Exception as e:  # noqa: BLE001 - a decoder crash on one file must not stop the run
        return ImageResult(path, sha, "failed", f"cannot decode image: {_reason(e)}"), None
    try:
        faces = engine.detector.detect(image, min_face=min_face)
    except (WeightsMissing, ModelError):
        raise  # configuration problems stop the run
    except Exception as e:  # noqa: BLE001 - a detector crash on one file must not stop the run
        return ImageResult(path, sha, "failed", f"face detector failed on this image: {_reason(e)}"), None
    if not faces:
        return ImageResult(path, sha, "noface"), None
    try:
        inputs = {name: [emb.model_input(image, f) for f in faces] for name, emb in engine.embedders.items()}
    except (WeightsMissing, ModelError):
        raise
    except Exception as e:  # noqa: BLE001
        return ImageResult(path, sha, "failed", f"embedding error: {_reason(e)}"), None
    meta = [{"face_index": f.index, "box": f.box, "confidence": f.confidence, "quality": assess(image, f).fields}
            for f in faces]
    return ImageResult(path, sha, "done", faces=meta), inputs


def _inputs(item: Tuple[ImageResult, Optional[Inputs]]) -> Inputs:
    assert item[1] is not None  # only images with inputs are embedded
    return item[1]


def _embed(engine: Engine, prepared: Sequence[Tuple[ImageResult, Optional[Inputs]]]) -> List[ImageResult]:
    """One forward pass per model for all faces of all images of a batch: batched, a face costs
    dlib's ResNet on torch far less than one image at a time (bench/bench_ingest.py, run a1
    against a; bench/results/ingest.txt). If the batch fails, each image is tried alone so that
    only the culprit fails."""
    results = [res for res, _ in prepared]
    pending = [i for i, (_, inputs) in enumerate(prepared) if inputs is not None]
    for name, emb in engine.embedders.items():
        crops = [crop for i in pending for crop in _inputs(prepared[i])[name]]
        try:
            vectors = emb.embed_inputs(crops)
        except (WeightsMissing, ModelError):
            raise
        except Exception:  # noqa: BLE001 - isolated below
            vectors = None
        offset = 0
        for i in pending:
            n = len(_inputs(prepared[i])[name])
            res = results[i]
            if vectors is not None:
                res.vectors[name] = vectors[offset:offset + n]
            elif res.status == "done":
                try:
                    res.vectors[name] = emb.embed_inputs(_inputs(prepared[i])[name])
                except (WeightsMissing, ModelError):
                    raise
                except Exception as e:  # noqa: BLE001
                    results[i] = ImageResult(res.path, res.sha256, "failed", f"embedding error: {_reason(e)}")
            offset += n
    return results


def process_image(engine: Engine, record: ImageRecord, min_face: int = 0) -> ImageResult:
    return _embed(engine, [_prepare(engine, record, min_face)])[0]


def process_batch(records: Sequence[ImageRecord], settings: Settings, detector: str,
                  models: Sequence[str], min_face: int = 0) -> BatchResult:
    t0 = time.perf_counter()
    engine = get_engine(settings, detector, models).load()
    results = _embed(engine, [_prepare(engine, r, min_face) for r in records])
    return BatchResult(results, time.perf_counter() - t0, os.getpid(), _rss())


def warm_worker(settings: Settings, detector: str, models: Sequence[str]) -> int:
    """Load the engine before timing starts (each worker loads each model once)."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    get_engine(settings, detector, models).load()
    return os.getpid()


_STORES: Dict[Tuple, Store] = {}


def _store_key(settings: Settings) -> Tuple:
    return settings.uri, settings.token, settings.profile


def worker_store(settings: Settings) -> Store:
    key = _store_key(settings)
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = Store.from_settings(settings, lite=False)
    return store


def process_and_write_batch(records: Sequence[ImageRecord], settings: Settings, detector: str,
                            models: Sequence[str], min_face: int = 0) -> BatchResult:
    """Server mode's mapper: process a batch and write it to the server from this worker; the
    driver gets the results without their vectors, only to account for them. A Milvus error comes
    back as `store_error` (not raised: Dask would retry the batch, and then the driver would split
    it into single images) and stops the run."""
    res = process_batch(records, settings, detector, models, min_face)
    try:
        from lookalike.ingest.head import worker_heads

        ServerWriter(worker_store(settings), models, detector, {r.path: r for r in records},
                     heads=worker_heads(settings, models)).write(res.images)
    except StoreError as e:
        bad = _STORES.pop(_store_key(settings), None)
        if bad is not None:
            bad.close()  # reconnect on the next batch (the server may come back)
        res.store_error = str(e)
    for r in res.images:
        r.vectors = {}
    res.written = not res.store_error
    return res
