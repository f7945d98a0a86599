"""The writers: the driver's (Milvus Lite has one writer process) and a worker's (a server takes
writes from many). Faces first, then the ledger: an image is recorded only once its faces are durable."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

from lookalike.ingest.head import head_rows
from lookalike.ingest.pipeline.paths import _ledger_id, ledger_path, storable
from lookalike.ingest.pipeline.results import ImageResult
from lookalike.ingest.sources import ImageRecord
from lookalike.ingest.store import Store, now_ms
from lookalike.schemas import ATTRIBUTES, LEDGER_COLLECTION, collection_name

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
                self.store.upsert_faces(self.heads[model].key, head_rows(self.heads[model], rows))
        self.faces_stored += sum(len(r.faces) for r in chosen.values())
        return [{
            "id": _ledger_id(model, r.path), "model": model, "source_path": ledger_path(r.path),
            "image_sha256": r.sha256, "status": r.status, "faces": len(r.faces),
            "reason": storable(r.reason)[:1000], "detector": self.detector, "ingested_at": ts,
        } for r in results for model in self.models]

    @property
    def pending_faces(self) -> int:
        """Faces written at the next commit (duplicates of stored pictures not yet told apart)."""
        return self._pending_faces

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
