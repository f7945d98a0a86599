"""The ingestion pipeline: reader -> mapper -> writer -> runner.

- reader: the source's records, minus those the images ledger already holds (resume);
- mapper (`process_batch`, on Dask workers): read, hash, decode, detect, embed a batch of images
  with the worker's engine, built once per process;
- writer (the driver): buffers finished batches; every few seconds upserts their faces, then
  records their images in the ledger. Milvus Lite allows one writer process, so the driver is it;
- server mode (`--uri`): each worker writes its own batches (`process_and_write_batch`,
  `ServerWriter`) and the driver only accounts for them;
- runner: a bounded number of batches in flight (memory stays flat whatever the dataset size),
  a tqdm bar, a summary and a report of failed files.

A batch is the unit of work and of resume: its images are recorded as done only after their faces
are durable, so a kill -9 at any point redoes at most the batches in flight and the last few seconds
of results, and upserts keyed on content make redoing them harmless.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from lookalike.ingest.images import ImageError, decode, read_bytes, sha256_bytes
from lookalike.ingest.models import (
    Engine,
    ModelError,
    WeightsMissing,
    default_face_model,
    get_engine,
    make_embedder,
    model_source,
)
from lookalike.ingest.quality import assess
from lookalike.ingest.settings import Settings, pin_threads, resolve, thread_env
from lookalike.ingest.sources import ImageRecord, open_source
from lookalike.ingest.store import Store, StoreError, now_ms
from lookalike.schemas import ATTRIBUTES, LEDGER_COLLECTION, collection_name, get_model, layer_key

DEFAULT_REPORT = "ingest-report.jsonl"


class IngestError(RuntimeError):
    """A run that cannot start or continue; str() is one line."""


@dataclass
class ImageResult:
    path: str
    sha256: str
    status: str  # done | noface | failed
    reason: str = ""
    faces: List[Dict[str, Any]] = field(default_factory=list)  # metadata per face
    vectors: Dict[str, np.ndarray] = field(default_factory=dict)  # model -> (n, dim)


@dataclass
class BatchResult:
    images: List[ImageResult]
    seconds: float  # worker time spent
    pid: int
    rss: int  # worker RSS (bytes) after the batch
    written: bool = False  # server mode: the worker stored it already (process_and_write_batch)
    store_error: str = ""  # server mode: the worker could not store it (the run stops with this)


@dataclass
class IngestSummary:
    source: str
    models: List[str]
    detector: str
    images_seen: int = 0
    images_done: int = 0  # processed this run with >= 1 face
    images_noface: int = 0
    images_skipped: int = 0  # already in the ledger
    images_failed: int = 0
    faces_stored: int = 0
    wall_seconds: float = 0.0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    failure_kinds: Dict[str, int] = field(default_factory=dict)
    worker_peak_rss: Dict[int, int] = field(default_factory=dict)
    report_path: Optional[str] = None
    interrupted: bool = False

    @property
    def faces_per_second(self) -> float:
        return self.faces_stored / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def images_per_second(self) -> float:
        n = self.images_done + self.images_noface + self.images_failed
        return n / self.wall_seconds if self.wall_seconds else 0.0

    def lines(self) -> List[str]:
        out = [
            f"source      {self.source}",
            f"models      {', '.join(self.models)} (detector {self.detector})",
            f"images      {self.images_seen} seen: {self.images_done} with faces, {self.images_noface} without a face, "
            f"{self.images_skipped} already done, {self.images_failed} failed",
            f"faces       {self.faces_stored} stored ({self.faces_per_second:.1f} faces/s, "
            f"{self.images_per_second:.1f} images/s)",
            f"wall time   {self.wall_seconds:.1f} s",
        ]
        if self.failure_kinds:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.failure_kinds.items(), key=lambda kv: -kv[1]))
            out.append(f"failed      {kinds}")
        if self.report_path:
            out.append(f"report      {self.report_path}")
        if self.interrupted:
            out.append("interrupted: re-run the same command to resume")
        return out


# ------------------------------------------------------------------------------------------------
# mapper (runs on workers)
# ------------------------------------------------------------------------------------------------
def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:300]


def path_bytes(path: str) -> bytes:
    """The file name's own bytes (os.fsencode's): what tells two files apart."""
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (not from a file system)
        return path.encode("utf-8", "surrogatepass")


def storable(path: str) -> str:
    """A path as Milvus can store it (valid UTF-8) and a person can read. A valid UTF-8 name is
    itself; in a name that is not, undecodable bytes become `\\xNN` and backslashes `\\\\`, so
    two such names never read alike. (A valid name may still read like an escaped one: the
    ledger tells files apart by `_ledger_id`, from the bytes, never by this text.)"""
    raw = path_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


MAX_PATH_BYTES = 2048  # schemas: source_path VARCHAR(2048)


def ledger_path(path: str) -> str:
    """A path as the ledger stores it (`source_path`): storable, cut to the field's size if it
    must be. Display only: the ledger's key is `_ledger_id`."""
    s = storable(path)
    b = s.encode("utf-8")
    return s if len(b) <= MAX_PATH_BYTES else b[:MAX_PATH_BYTES].decode("utf-8", "ignore")


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


# ------------------------------------------------------------------------------------------------
# writer (driver)
# ------------------------------------------------------------------------------------------------
def _ledger_id(model: str, path: str) -> str:
    """A file's key in the ledger: from the bytes of its name, so two names are two keys whatever
    they hold (a valid UTF-8 name's bytes are its UTF-8: the ids of existing databases)."""
    return f"{model}:{hashlib.sha1(path_bytes(path)).hexdigest()}"


FLUSH_EVERY = 20_000  # photos between two flushes of the Lite writer (bench/README.md, "At full scale")


class Writer:
    """Writes results in the driver, which on Milvus Lite shares the workers' cores: every CPU
    second it spends is one the models lose. So results are only buffered as batches complete;
    at most every `commit_every` seconds (or `max_pending_faces` faces, and at the end) the buffer
    is written at once: one duplicate lookup, one upsert per model, then the ledger records the
    images as done. Few large calls instead of many small ones: bench/bench_ingest.py reports the
    driver's CPU per photo, and bench/README.md ("Measured here") what this, together with tasks
    of 16, no flush per commit and columnar upserts, saved.

    No flush per commit: Milvus Lite (>= 3) appends every write to its write-ahead log and hands
    it to the OS before acknowledging it, so an acknowledged upsert survives a kill -9 (tried:
    1,500 rows upserted, never flushed, process killed -9: all 1,500 there on reopening), and the
    faces' upserts are acknowledged before the ledger's. A flush turns the log into segments
    (Parquet files, index): a large share of the writer's CPU when done per commit (bench/README.md,
    "Measured here"), so it is done every `flush_every` photos and in `close()` at the end of the
    run: Lite replays the unflushed log when it next loads a collection, so a resume after a kill
    -9 would otherwise wait for the whole run's log (bench/README.md, "At full scale"). A kill -9
    loses only the uncommitted seconds, which a resume redoes: the ledger never gets ahead of
    durable faces."""

    def __init__(self, store: Store, models: Sequence[str], detector: str,
                 records: Dict[str, ImageRecord], commit_every: float = 5.0, max_pending_faces: int = 4096,
                 heads: Optional[Dict[str, Any]] = None, flush_every: int = FLUSH_EVERY):
        self.store = store
        self.heads = heads or {}  # model -> ingest.head.Head: its projected vectors go to faces_<model>_head
        self.models = list(models)
        self.detector = detector
        self.records = records
        self.commit_every = commit_every
        self.max_pending_faces = max_pending_faces
        self.flush_every = flush_every
        self._unflushed = 0  # photos committed since the last flush
        self.faces_stored = 0  # faces written by this writer (duplicates of stored pictures excluded)
        self._pending: List[ImageResult] = []
        self._pending_faces = 0
        self._last_commit = time.monotonic()

    def _face_rows(self, res: ImageResult, model: str, ts: int) -> List[Dict[str, Any]]:
        rec = self.records[res.path]
        unknown = {a: None for a in ATTRIBUTES}  # null; false where Milvus has no nullable fields
        attrs = rec.attribute_dict() if rec.attributes is not None else unknown
        vecs = res.vectors[model]
        # A label (folder name, CelebA identity and attributes) describes the photo's subject:
        # it goes to the largest face only; bystanders get no identity and no attributes.
        main = max(range(len(res.faces)), key=lambda i: res.faces[i]["box"][2] * res.faces[i]["box"][3])
        rows = []
        for i, (meta, vec) in enumerate(zip(res.faces, vecs)):
            x, y, w, h = meta["box"]
            subject = i == main
            rows.append({
                "id": f"{res.sha256}_{meta['face_index']}", "image_sha256": res.sha256,
                "source_path": res.path, "face_index": int(meta["face_index"]),
                "box_x": int(x), "box_y": int(y), "box_w": int(w), "box_h": int(h),
                "confidence": float(meta["confidence"]), "detector": self.detector, **meta["quality"],
                "identity": rec.identity[:256] if subject else "",
                "has_attributes": subject and rec.attributes is not None,
                **(attrs if subject else unknown), "ingested_at": ts, "vector": vec.tolist(),
            })
        return rows

    def _stored_paths(self, results: List[ImageResult]) -> Dict[str, str]:
        """sha -> source_path already stored (first model's collection), for duplicates."""
        ids = sorted({f"{r.sha256}_0" for r in results if r.status == "done"})
        if not ids:
            return {}
        rows = self.store.get(self.models[0], ids, output_fields=["image_sha256", "source_path"])
        return {r["image_sha256"]: r["source_path"] for r in rows}

    def write(self, results: List[ImageResult]) -> None:
        self._pending.extend(results)
        self._pending_faces += sum(len(r.faces) for r in results)
        if self._pending_faces >= self.max_pending_faces or \
                time.monotonic() - self._last_commit >= self.commit_every:
            self.commit()

    def _store_faces(self, results: List[ImageResult]) -> List[Dict[str, Any]]:
        """Upsert the faces of `results` (each picture once), return their ledger rows."""
        ts = now_ms()
        stored = self._stored_paths(results)
        # The same picture under two names is stored once, under the smaller path (deterministic
        # whatever the order batches finish in); the ledger keeps every path.
        chosen: Dict[str, ImageResult] = {}
        for r in results:
            if r.status != "done":
                continue
            prev = stored.get(r.sha256)
            if prev is not None and prev < r.path:
                r.reason = f"duplicate of {prev}"
                continue
            other = chosen.get(r.sha256)
            if other is not None:
                if other.path < r.path:
                    r.reason = f"duplicate of {other.path}"
                    continue
                other.reason = f"duplicate of {r.path}"
            chosen[r.sha256] = r
        for model in self.models:
            rows: List[Dict[str, Any]] = []
            for r in chosen.values():
                rows.extend(self._face_rows(r, model, ts))
            self.store.upsert_faces(model, rows)
            if model in self.heads:
                from lookalike.ingest.head import head_rows

                self.store.upsert_faces(self.heads[model].key, head_rows(self.heads[model], rows))
        self.faces_stored += sum(len(r.faces) for r in chosen.values())
        return [{
            "id": _ledger_id(model, r.path), "model": model, "source_path": ledger_path(r.path),
            "image_sha256": r.sha256, "status": r.status, "faces": len(r.faces),
            "reason": storable(r.reason)[:1000], "detector": self.detector, "ingested_at": ts,
        } for r in results for model in self.models]

    def _take(self) -> List[ImageResult]:
        self._last_commit = time.monotonic()
        results, self._pending, self._pending_faces = self._pending, [], 0
        return results

    def commit(self) -> None:
        """Write the buffered results: faces, then the ledger."""
        results = self._take()
        if results:
            self.store.record_images(self._store_faces(results))
            self._unflushed += len(results)
            if self.flush_every and self._unflushed >= self.flush_every:
                self.flush()

    def flush(self) -> None:
        """The run's writes so far into segments (Lite indexes segments only, and replays an
        unflushed write-ahead log on every later open)."""
        names = ([collection_name(m) for m in self.models] + [LEDGER_COLLECTION]
                 + [collection_name(h.key) for h in self.heads.values()])
        # a run that stopped before its models loaded created no collection for them
        self.store.flush([n for n in names if self.store.has_collection(n)])
        self._unflushed = 0

    def close(self) -> None:
        """After the last commit."""
        self.flush()


class ServerWriter(Writer):
    """Writer for a Milvus server: faces, then the batch's ledger rows, at once and never flushed.

    A server takes writes from many processes, so each Dask worker writes its own batches
    (`process_and_write_batch`). A server flush seals the growing segments (small segments, more
    index builds, and a slow call: bench/README.md, server ingest), and durability does not need
    it: an acknowledged upsert is in the server's log and is replayed after a crash (tried on
    2.3.5: kill -9 of the server after unflushed upserts, every row back after the restart).
    Upserting the faces before the ledger keeps the resume guarantee: an image is recorded only
    once its faces are acknowledged, and a batch cut short is redone by upserts keyed on content.
    The run flushes once at the end (Store.build_indexes) so the server indexes what it wrote.

    Duplicate pictures across batches stored by different workers at the same moment may keep
    either path (ids are content-derived, so the face is never stored twice).
    """

    def write(self, results: List[ImageResult]) -> None:
        super().write(results)
        self.commit()

    def flush(self) -> None:
        pass  # Store.build_indexes flushes a server once at the end


# One Store per worker process and server, opened by the first batch (like get_engine's models).
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


# ------------------------------------------------------------------------------------------------
# runner
# ------------------------------------------------------------------------------------------------
def _chunks(items: Iterable[Any], n: int) -> Iterator[List[Any]]:
    buf: List[Any] = []
    for x in items:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def _batches(chunks: Iterable[Sequence[ImageRecord]], size: int) -> Iterator[List[ImageRecord]]:
    """Batches of `size` images, the last 4 x size images in batches of at most 8: a run ends when
    its last worker does, and with full batches the others would wait up to a batch's time for it
    (smaller than 8, a batch's faces make forward passes too small to be efficient). The images
    come in chunks, possibly over time (the skip pass): a batch leaves as soon as it cannot be
    part of the last 4 x size."""
    size = max(1, size)
    buf: List[ImageRecord] = []
    for chunk in chunks:
        buf.extend(chunk)
        ready = (len(buf) - 4 * size) // size * size
        if ready > 0:
            head, buf = buf[:ready], buf[ready:]
            yield from _chunks(head, size)
    cut = max(0, len(buf) - 4 * size)
    yield from _chunks(buf[:cut], size)
    yield from _chunks(buf[cut:], min(size, 8))


SKIP_CHUNK = 4096  # ledger ids asked per lookup of the skip pass


def _undone(store: Store, records: List[ImageRecord], models: List[str], skip_status: Set[str],
            chunk: Optional[int] = None) -> Iterator[List[ImageRecord]]:
    """The records not yet done, chunk by chunk. An image is done when every model has it in the
    ledger with a status of `skip_status`, looked up by id (from the name's bytes), not by the
    stored path: a name that is not UTF-8 is stored escaped, and its escaped text may be another
    file's real name.

    A run sends its batches in source order, so what a killed run did is mostly a prefix of the
    source: a binary search over the chunks finds the first one with work, the pass starts there,
    and the chunks before it (which may hold a few photos that were in flight) come last. Every
    chunk is looked up once."""
    chunks = list(_chunks(records, chunk or SKIP_CHUNK))
    seen: Dict[int, List[ImageRecord]] = {}

    def todo(c: int) -> List[ImageRecord]:
        if c not in seen:
            ids = [[_ledger_id(m, r.path) for r in chunks[c]] for m in models]  # per model
            known = [store.ledger_statuses(model_ids) for model_ids in ids]
            seen[c] = [r for j, r in enumerate(chunks[c])
                       if not all(st.get(model_ids[j]) in skip_status for model_ids, st in zip(ids, known))]
        return seen[c]

    lo, hi = 0, len(chunks)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if todo(mid) else (mid + 1, hi)
    for i in [*range(lo, len(chunks)), *range(lo)]:
        yield todo(i)
        seen.pop(i, None)


class _Pending:
    """The records still to do, as a background thread finds them (`find` yields them in chunks).
    `total` is their number once the search has ended; an error in it is raised to the reader.

    Once it has found work, the search waits for `go()` (the workers have loaded their models)
    before it goes on: on 2 cores the rest of the search would slow the workers' start by as much
    as it takes, and the photos found first keep the workers busy meanwhile."""

    def __init__(self, find: Callable[[], Iterator[List[ImageRecord]]]):
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._stopped = threading.Event()
        self._go = threading.Event()
        self._error: Optional[BaseException] = None
        self.total: Optional[int] = None
        self._thread = threading.Thread(target=self._run, args=(find,), name="ledger", daemon=True)
        self._thread.start()

    def _run(self, find: Callable[[], Iterator[List[ImageRecord]]]) -> None:
        n = 0
        try:
            for chunk in find():
                if self._stopped.is_set():  # the run ended (interrupted, or an error)
                    return
                if chunk:
                    n += len(chunk)
                    self._queue.put(chunk)
                    self._go.wait()
            self.total = n
        except BaseException as e:  # noqa: BLE001 - raised again in the run's thread
            self._error = e
        finally:
            self._queue.put(None)

    def go(self) -> None:
        self._go.set()

    def wait(self) -> None:
        """Until the search has ended (then `total` is known); raises its error."""
        self._go.set()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stopped.set()
        self._go.set()

    def chunks(self) -> Iterator[List[ImageRecord]]:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:  # the reader is out of work: the search must go on
                self._go.set()
                item = self._queue.get()
            if item is None:
                break
            yield item
        self.wait()  # ended: raises the search's error, if any


def _failure_kind(reason: str) -> str:
    return reason.split(":")[0].split("(")[0].strip()[:40] or "error"


def resolve_models(models: Optional[Sequence[str] | str], settings: Settings,
                   layer: Optional[int] = None) -> List[str]:
    """Model keys to ingest: `auto` is the face model with weights here; `--layer N` turns the
    transformer models into their block-N variants (`dinov2` -> `dinov2_l6`)."""
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    out = []
    for m in models or ["auto"]:
        m = default_face_model(settings) if m == "auto" else m
        try:
            out.append(layer_key(m, layer))
            if get_model(out[-1]).head_of:
                raise IngestError(f"{m} is written with its model: ingest --models {get_model(m).head_of}")
        except KeyError as e:
            raise IngestError(str(e).strip("'\"")) from None
    return list(dict.fromkeys(out))


def run(
    source: str,
    *,
    db: Optional[str] = None,
    uri: Optional[str] = None,
    token: Optional[str] = None,
    profile: Optional[str] = None,
    models: Optional[Sequence[str] | str] = None,
    layer: Optional[int] = None,
    detector: Optional[str] = None,
    workers: int = 2,
    scheduler: Optional[str] = None,
    limit: Optional[int] = None,
    partition: Optional[str] = None,
    celeba_images: Optional[str] = None,
    batch_size: int = 16,
    max_in_flight: Optional[int] = None,
    min_face: int = 24,
    retry_failed: bool = False,
    report: Optional[str] = None,
    progress: bool = True,
    settings: Optional[Settings] = None,
    clip_model: Optional[str] = None,
    dinov2_model: Optional[str] = None,
) -> IngestSummary:
    """Ingest every image of `source` into one Milvus collection per model (Python twin of
    `lookalike ingest`). Re-running resumes: images already recorded are skipped."""
    settings = resolve(settings, db=db, uri=uri, token=token, profile=profile, detector=detector,
                       clip_model=clip_model, dinov2_model=dinov2_model)
    from lookalike.ingest.sources import SourceError

    try:
        src = open_source(source, limit=limit, partition=partition, celeba_images=celeba_images)
        records_list = [ImageRecord(os.path.abspath(r.path), r.identity, r.attributes) for r in src]
    except (SourceError, OSError) as e:
        raise IngestError(str(e)) from None
    models_list = resolve_models(models, settings, layer)
    det = settings.detector  # validated by Settings
    summary = IngestSummary(src.describe(), models_list, det, images_seen=len(records_list))

    store = Store.from_settings(settings)
    try:
        # The driver reads only configs (dimensions), never weights: workers load the models.
        dims = {m: make_embedder(m, settings).dim for m in models_list}

        def ready() -> None:  # the models have loaded on every worker
            for m in models_list:
                store.ensure_collection(m, dim=dims[m], source=model_source(m, settings))
            todo.go()

        # An existing collection is checked (dimension, weights) before the models load; a new
        # one is created once they have loaded (`ready`), so weights that cannot load leave no
        # empty collection behind for queries to pick.
        for m in models_list:
            if store.has(m):
                store.ensure_collection(m, dim=dims[m], source=model_source(m, settings))
        store.ensure_ledger()
        from lookalike.ingest.head import attach_heads

        heads = attach_heads(store, settings, models_list, progress=progress)  # new faces go through them too
        by_path: Dict[str, ImageRecord] = {}  # the records to do, for the writer
        skip_status = {"done", "noface"} if retry_failed else {"done", "noface", "failed"}

        def undone() -> Iterator[List[ImageRecord]]:
            for chunk in _undone(store, records_list, models_list, skip_status) if ledger_rows else [records_list]:
                by_path.update((r.path, r) for r in chunk)
                yield chunk

        # The skip pass runs beside the workers' start, chunk by chunk: a resume sends its first
        # undone photos as soon as they are found, not after the whole ledger is read
        # (bench/README.md, "At full scale"). A ledger with a row for every photo and model
        # may mean nothing is left: then the pass ends first, so that a finished run starts no
        # workers. The count is Strong on a server: the pass then sees every recorded image.
        ledger_rows = store.count(LEDGER_COLLECTION)
        todo = _Pending(undone)
        if ledger_rows >= len(records_list) * len(models_list):
            todo.wait()
        writer = (ServerWriter if store.server else Writer)(store, models_list, det, by_path,
                                                            commit_every=settings.commit_seconds, heads=heads)
        t0 = time.perf_counter()
        try:
            _run_batches(todo, writer, summary, settings, det, models_list, workers, scheduler,
                         batch_size, max_in_flight, min_face, progress, ready=ready)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            todo.stop()
        if todo.total is not None:  # the skip pass ended (not when the run stopped before it did)
            summary.images_skipped = len(records_list) - todo.total
        summary.wall_seconds = time.perf_counter() - t0
        if summary.faces_stored and not summary.interrupted:
            names = [collection_name(m) for m in models_list] + [collection_name(h.key) for h in heads.values()]
            slow = [n for n in names if store.builds_index(n)]
            if progress and slow:  # minutes on a large collection: say why the run has not ended
                print(f"indexing {', '.join(slow)} ...", file=sys.stderr)
            store.build_indexes(names)
    finally:
        store.close()
    summary.report_path = _write_report(summary, report)
    return summary


def _account(summary: IngestSummary, results: List[ImageResult], count_faces: bool = True) -> None:
    """Count `results` into the summary; their faces only when already written (by the workers,
    on a server): the driver's Writer counts what it writes itself."""
    for r in results:
        if r.status == "failed":
            summary.images_failed += 1
            summary.failures.append((r.path, r.reason))
            k = _failure_kind(r.reason)
            summary.failure_kinds[k] = summary.failure_kinds.get(k, 0) + 1
        elif r.status == "noface":
            summary.images_noface += 1
        else:
            summary.images_done += 1
            if count_faces and not r.reason.startswith("duplicate of"):
                summary.faces_stored += len(r.faces)


def _make_bar(total: Optional[int], enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                desc="ingest")


def _postfix(bar, summary: IngestSummary) -> None:
    # as text: tqdm writes a number in its shortest form, and 50,000 faces would show as "5e+4"
    bar.set_postfix(faces=str(summary.faces_stored), failed=str(summary.images_failed), refresh=False)


def _run_batches(todo: _Pending, writer: Writer, summary: IngestSummary, settings: Settings,
                 det: str, models: List[str], workers: int, scheduler: Optional[str], batch_size: int,
                 max_in_flight: Optional[int], min_face: int, progress: bool,
                 ready: Callable[[], None] = lambda: None) -> None:
    """Run the batches of `todo`, which may still be being found while the workers start; `ready()`
    is called once the models have loaded (on every worker), before the first batch starts."""
    bar = _make_bar(todo.total, progress)

    def todo_batches() -> Iterator[List[ImageRecord]]:
        for batch in _batches(todo.chunks(), batch_size):
            if todo.total is not None and bar.total != todo.total:
                bar.total = todo.total
                bar.refresh()
            yield batch

    batches = todo_batches()

    def done(res: BatchResult) -> None:
        if res.store_error:
            raise StoreError(res.store_error)
        if not res.written:  # Lite: the driver is the single writer
            writer.write(res.images)
            summary.faces_stored = writer.faces_stored
        _account(summary, res.images, count_faces=res.written)
        summary.worker_peak_rss[res.pid] = max(summary.worker_peak_rss.get(res.pid, 0), res.rss)
        bar.update(len(res.images))
        _postfix(bar, summary)

    failed = True
    try:
        if todo.total == 0:
            failed = False
            return
        if workers <= 0 and not scheduler:
            # In-process: no Dask, for debugging and for measuring the pipeline's own overhead.
            warm_worker(settings, det, models)
            ready()
            for batch in batches:
                done(_mapper(settings)(batch, settings, det, models, min_face))
        else:
            _run_dask(batches, done, settings, det, models, workers, scheduler, max_in_flight, min_face, ready)
        failed = False
    finally:
        # Record what is already written, also when interrupted or stopped by an error (but never
        # let a failing commit hide the error that stopped the run).
        try:
            writer.commit()
            writer.close()
        except Exception:
            if not failed:
                raise
        finally:
            if not settings.uri:
                summary.faces_stored = writer.faces_stored
            # the last commit's faces too: the bar ends on the summary's count
            _postfix(bar, summary)
            bar.close()


def _mapper(settings: Settings):
    """Lite: workers return vectors to the driver, the single writer. Server: workers write."""
    return process_and_write_batch if settings.uri else process_batch


def _run_dask(batches: Iterator[List[ImageRecord]], done, settings: Settings, det: str,
              models: List[str], workers: int, scheduler: Optional[str],
              max_in_flight: Optional[int], min_face: int, ready: Callable[[], None]) -> None:
    from distributed import Client

    _quiet_dask()
    cluster = client = None
    try:
        with _sigint_ignored():
            if scheduler:
                client = Client(scheduler, timeout="30s")
            else:
                cluster = _local_cluster(workers)
                client = Client(cluster)
        _run_on(client, batches, done, settings, det, models, max_in_flight, min_face, ready)
    finally:
        with _sigint_ignored():
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()


def _deaths_allowed() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures", 3)) + 1


def _quiet_dask() -> None:
    """Dask's own logs off in the driver, as in the workers (ingest.dask_worker); asyncio's stay:
    the driver may be a user's own program calling ingest.run."""
    from lookalike.ingest.dask_worker import quiet_logs

    quiet_logs(("distributed", "tornado"))


@contextlib.contextmanager
def _sigint_ignored():
    """Ctrl-C ignored meanwhile, by this process and by the processes it starts meanwhile.

    Ctrl-C signals the terminal's whole process group, Dask's worker processes included, and
    each would print a KeyboardInterrupt traceback from wherever it was. An ignored SIGINT is
    inherited across exec (Python then leaves it ignored), so the workers started while the
    cluster starts never take it; only the driver stops on Ctrl-C, and it stops them. Also held
    while the cluster closes: a Ctrl-C then would leave it half-closed, closed again at exit by
    Dask with tracebacks. (A Ctrl-C in those few seconds is lost; the next one stops the run.)"""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _local_cluster(workers: int):
    import logging

    import dask
    from distributed import LocalCluster

    pin_threads(1)
    # Dask's nannies set MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive mmap
    # threshold: every decoded photo then comes from a fresh mmap and is page-faulted in
    # (a large share of the model's time in page faults: bench/README.md, worker memory).
    # The statistical profiler samples the computing thread every 10 ms. Neither helps here.
    # Slower housekeeping timers: less idle CPU taken from the models (bench/README.md,
    # "Measured here").
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {},
                          "distributed.worker.profile.enabled": False,
                          "distributed.admin.tick.interval": "1s",
                          "distributed.admin.system-monitor.interval": "2s",
                          "distributed.worker.memory.monitor-interval": "1s"}):
        # No dashboard, and the scheduler's HTTP server (health and metrics routes, which it
        # starts even without one) on a free port: on Dask's 8787, a second run on the machine
        # warned "Port 8787 is already in use" into the progress bar.
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                            env=thread_env(1), silence_logs=logging.CRITICAL, preload=["lookalike.ingest.dask_worker"])


def _run_on(client, batches: Iterator[List[ImageRecord]], done, settings: Settings, det: str,
            models: List[str], max_in_flight: Optional[int], min_face: int,
            ready: Callable[[], None] = lambda: None) -> None:
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info()["workers"]))
    # Surface configuration errors (missing weights) once, before any image is touched.
    for err in client.run(_warm_safe, settings, det, models).values():
        if err:
            kind, message = err
            raise (WeightsMissing if kind == "WeightsMissing" else ModelError)(message)
    ready()
    limit = max_in_flight or 2 * n_workers
    # Dask runs a batch again when its worker dies, on up to 4 workers in all
    # (distributed.scheduler.allowed-failures 3; retries=2 covers exceptions), then gives up.
    futures = as_completed()
    pending: Dict[Any, List[ImageRecord]] = {}
    mapper = _mapper(settings)

    def submit(batch: List[ImageRecord]) -> None:
        fut = client.submit(mapper, batch, settings, det, models, min_face, pure=False, retries=2)
        pending[fut.key] = batch
        futures.add(fut)

    for _ in range(limit):
        batch = next(batches, None)
        if batch is None:
            break
        submit(batch)
    # A batch whose workers kept dying is not blamed yet: a killed worker also loses the other
    # tasks it held, so an innocent batch can fail beside the guilty one. Its images are run
    # again one by one, each ALONE on the cluster, once everything else is done: an image that
    # still kills its worker then is the culprit and is quarantined (failed, with the reason).
    suspects: List[ImageRecord] = []
    for fut in futures:
        batch = pending.pop(fut.key)
        try:
            res = fut.result()
        except (WeightsMissing, ModelError):
            raise
        except Exception:  # noqa: BLE001 - KilledWorker, a crash inside a model, ...
            suspects.extend(batch)
        else:
            done(res)
        finally:
            fut.release()
        batch = next(batches, None)
        if batch is not None:
            submit(batch)
    for r in suspects:
        fut = client.submit(mapper, [r], settings, det, models, min_face, pure=False, retries=2)
        try:
            res = fut.result()
        except (WeightsMissing, ModelError):
            raise
        except Exception as e:  # noqa: BLE001
            # Dask's KilledWorker names a task key and worker addresses: say what happened instead
            why = (f"every worker process that read it died ({_deaths_allowed()} in a row: a crash in a "
                   f"decoder or model, or out of memory)" if type(e).__name__ == "KilledWorker" else _reason(e))
            res = BatchResult([ImageResult(r.path, "", "failed", f"worker crashed on this file: {why}")],
                              0.0, 0, 0)
        finally:
            fut.release()
        done(res)


def _warm_safe(settings: Settings, det: str, models: Sequence[str]) -> Optional[Tuple[str, str]]:
    try:
        warm_worker(settings, det, models)
        return None
    except (WeightsMissing, ModelError) as e:
        return type(e).__name__, str(e)


REPORT_FORMAT = "lookalike-ingest-report/2"
_SURROGATE = re.compile("[\ud800-\udfff]")


def report_line(record: Dict[str, Any]) -> str:
    """One JSON object on one line. Whatever a file name holds (a newline, a TAB, quotes) is a
    JSON string escape, so no name can end a record or start another; a name that is not UTF-8
    keeps its undecodable bytes as \\udcNN escapes (json.loads, then os.fsencode, gives the exact
    bytes back)."""
    text = json.dumps(record, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def _write_report(summary: IngestSummary, report: Optional[str]) -> Optional[str]:
    """The run report, JSON Lines: a first record with the run's summary, then one record per
    failed file: {"path": ..., "status": "failed", "reason": ...}."""
    path = Path(report) if report else Path(DEFAULT_REPORT)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(report_line({
                "format": REPORT_FORMAT, "source": summary.source, "models": summary.models,
                "detector": summary.detector, "images_seen": summary.images_seen,
                "images_done": summary.images_done, "images_noface": summary.images_noface,
                "images_skipped": summary.images_skipped, "images_failed": summary.images_failed,
                "faces_stored": summary.faces_stored, "wall_seconds": round(summary.wall_seconds, 1),
                "interrupted": summary.interrupted}))
            for p, reason in summary.failures:
                f.write(report_line({"path": p, "status": "failed", "reason": reason}))
    except OSError:
        return None
    return str(path)
