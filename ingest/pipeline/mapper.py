"""The mapper, run on the workers: read, hash and decode a batch of images, then analyse them
(lookalike.ingest.analysis, models built once per process); on a server (`--uri`) the worker also writes its batch."""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

from lookalike.ingest.analysis import AnalysisError, Analyzer, PhotoAnalysis
from lookalike.ingest.head import worker_heads
from lookalike.ingest.images import ImageError, decode, read_bytes, sha256_bytes
from lookalike.ingest.pipeline.paths import MAX_PATH_BYTES, storable
from lookalike.ingest.pipeline.results import BatchResult, ImageResult, _reason
from lookalike.ingest.pipeline.writer import ServerWriter
from lookalike.ingest.settings import Settings
from lookalike.ingest.sources import ImageRecord
from lookalike.ingest.store import Store, StoreError


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


Prepared = Tuple[ImageResult, Optional[PhotoAnalysis]]


def _prepare(analyzer: Analyzer, record: ImageRecord, min_face: int = 0) -> Prepared:
    """Read, hash, decode, then the analysis up to the forward pass (faces, quality, every model's
    crop). The result is final unless an analysis comes back (status done, vectors still to fill).
    A file that cannot be read or analysed fails alone; a configuration problem stops the run."""
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
        photo = analyzer.prepare(analyzer.detect(image, min_face=min_face))
    except AnalysisError as e:
        return ImageResult(path, sha, "failed", str(e)), None
    if not photo.faces:
        return ImageResult(path, sha, "noface"), None
    meta = [{"face_index": fa.index, "box": fa.box, "confidence": fa.face.confidence, "quality": fa.quality.fields}
            for fa in photo.faces]
    return ImageResult(path, sha, "done", faces=meta), photo


def _embed(analyzer: Analyzer, prepared: Sequence[Prepared]) -> List[ImageResult]:
    """One forward pass per model for all faces of all images of a batch (Analyzer.embed: batched,
    a photo that fails the batch tried alone); the analyses become the results' vectors."""
    photos = [photo for _, photo in prepared if photo is not None]
    analyzer.embed(photos)
    results = []
    for res, photo in prepared:
        if photo is not None:
            if photo.error:
                res = ImageResult(res.path, res.sha256, "failed", photo.error)
            else:
                res.vectors = {m: photo.vectors(m) for m in analyzer.models}
        results.append(res)
    return results


def process_image(analyzer: Analyzer, record: ImageRecord, min_face: int = 0) -> ImageResult:
    return _embed(analyzer, [_prepare(analyzer, record, min_face)])[0]


def process_batch(records: Sequence[ImageRecord], settings: Settings, detector: str,
                  models: Sequence[str], min_face: int = 0) -> BatchResult:
    t0 = time.perf_counter()
    analyzer = Analyzer(settings, detector, models).load()
    results = _embed(analyzer, [_prepare(analyzer, r, min_face) for r in records])
    return BatchResult(results, time.perf_counter() - t0, os.getpid(), _rss())


def warm_worker(settings: Settings, detector: str, models: Sequence[str]) -> int:
    """Load the engine before timing starts (each worker loads each model once)."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    Analyzer(settings, detector, models).load()
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
