"""The run: `run()` (the Python twin of `lookalike ingest`) resolves the models, opens the store and
its collections, starts the skip pass, and feeds its batches through the runner to the writer; the
summary and the report come out of it."""
from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set

from lookalike.ingest.head import attach_heads
from lookalike.ingest.models import default_face_model, make_embedder, model_source
from lookalike.ingest.pipeline.reader import _batches, _Pending, _undone
from lookalike.ingest.pipeline.report import _write_report, default_report
from lookalike.ingest.pipeline.results import BatchResult, IngestSummary, _account
from lookalike.ingest.pipeline.runner import run_batches
from lookalike.ingest.pipeline.writer import ServerWriter, Writer
from lookalike.ingest.settings import Settings, resolve
from lookalike.ingest.sources import ImageRecord, open_source
from lookalike.ingest.store import Store, StoreError, capabilities
from lookalike.schemas import LEDGER_COLLECTION, collection_name, get_model, layer_key
from lookalike.schemas.errors import UsageError


class IngestError(UsageError, RuntimeError):
    """A run that cannot start or continue; str() is one line."""


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
    started = time.perf_counter()
    settings = resolve(settings, db=db, uri=uri, token=token, profile=profile, detector=detector,
                       clip_model=clip_model, dinov2_model=dinov2_model)
    from lookalike.ingest.sources import SourceError

    try:
        src = open_source(source, limit=limit, partition=partition, celeba_images=celeba_images)
        records_list = [ImageRecord(os.path.abspath(r.path), r.identity, r.attributes) for r in src]
    except (SourceError, OSError) as e:
        raise IngestError(str(e)) from None
    if not records_list:  # before the database is opened: nothing to create it for
        raise IngestError(f"{source}: no image in it, nothing to ingest")
    models_list = resolve_models(models, settings, layer)
    det = settings.detector  # validated by Settings
    summary = IngestSummary(src.describe(), models_list, det, images_seen=len(records_list))

    store = Store.from_settings(settings)
    try:
        # The driver reads only configs (dimensions), never weights: workers load the models.
        dims = {m: make_embedder(m, settings).dim for m in models_list}

        # An existing collection is checked (dimension, weights) before the models load; a new
        # one is created once they have loaded (`_ready`), so weights that cannot load leave no
        # empty collection behind for queries to pick.
        for m in models_list:
            if store.has(m):
                store.ensure_collection(m, dim=dims[m], source=model_source(m, settings))
        store.ensure_ledger()
        heads = attach_heads(store, settings, models_list, progress=progress)  # new faces go through them too
        by_path: Dict[str, ImageRecord] = {}  # the records to do, for the writer
        skip_status = {"done", "noface"} if retry_failed else {"done", "noface", "failed"}
        # The skip pass runs beside the workers' start, chunk by chunk: a resume sends its first
        # undone photos as soon as they are found, not after the whole ledger is read
        # (bench/README.md, "At full scale"). A ledger with a row for every photo and model
        # may mean nothing is left: then the pass ends first, so that a finished run starts no
        # workers. The count is Strong on a server: the pass then sees every recorded image.
        ledger_rows = store.count(LEDGER_COLLECTION)
        todo = _Pending(partial(_to_do, store, records_list, models_list, skip_status, ledger_rows, by_path))
        if ledger_rows >= len(records_list) * len(models_list):
            todo.wait()
        writer = (ServerWriter if store.caps.workers_write else Writer)(store, models_list, det, by_path,
                                                            commit_every=settings.commit_seconds, heads=heads)
        t0 = time.perf_counter()
        try:
            _run_batches(todo, writer, summary, settings, det, models_list, workers, scheduler,
                         batch_size, max_in_flight, min_face, progress,
                         ready=partial(_ready, store, settings, dims, todo))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            todo.stop()
        if todo.total is not None:  # the skip pass ended (not when the run stopped before it did)
            summary.images_skipped = len(records_list) - todo.total
        summary.work_seconds = time.perf_counter() - t0
        if summary.faces_stored and not summary.interrupted:
            names = [collection_name(m) for m in models_list] + [collection_name(h.key) for h in heads.values()]
            slow = [n for n in names if store.builds_index(n)]
            if progress and slow:  # minutes on a large collection: say why the run has not ended
                print(f"indexing {', '.join(slow)} ...", file=sys.stderr)
            store.build_indexes(names)
    finally:
        store.close()
    summary.wall_seconds = time.perf_counter() - started
    summary.report_path = _write_report(summary, Path(report) if report else default_report(settings, source))
    return summary


def _to_do(store: Store, records: List[ImageRecord], models: List[str], skip_status: Set[str],
           ledger_rows: int, by_path: Dict[str, ImageRecord]) -> Iterator[List[ImageRecord]]:
    """The skip pass's search (`_Pending` runs it in its thread): the records still to do, chunk by
    chunk, each also kept in `by_path` for the writer. An empty ledger has nothing to skip."""
    for chunk in _undone(store, records, models, skip_status) if ledger_rows else [records]:
        by_path.update((r.path, r) for r in chunk)
        yield chunk


def _ready(store: Store, settings: Settings, dims: Dict[str, int], todo: _Pending) -> None:
    """The models have loaded on every worker: their collections are created if new, and the skip
    pass may go on."""
    for m, dim in dims.items():
        store.ensure_collection(m, dim=dim, source=model_source(m, settings))
    todo.go()


def _make_bar(total: Optional[int], enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                desc="ingest")


def _postfix(bar, summary: IngestSummary, pending: int = 0) -> None:
    """faces= counts the faces of the photos analysed so far: those stored, and those the writer
    holds until its next commit (seconds apart), so that it moves with the photos."""
    # as text: tqdm writes a number in its shortest form, and 50,000 faces would show as "5e+4"
    bar.set_postfix(faces=str(summary.faces_stored + pending), failed=str(summary.images_failed), refresh=False)


class _Batches:
    """One run's batches between the skip pass and the writer: `feed()` cuts the records into
    batches as the pass finds them, `done()` takes each finished batch (written here on Lite,
    where the driver is the single writer), `close()` writes what is still buffered."""

    def __init__(self, todo: _Pending, writer: Writer, summary: IngestSummary, batch_size: int, progress: bool):
        self.todo = todo
        self.writer = writer
        self.summary = summary
        self.batch_size = batch_size
        self.bar = _make_bar(todo.total, progress)

    def feed(self) -> Iterator[List[ImageRecord]]:
        for batch in _batches(self.todo.chunks(), self.batch_size):
            if self.todo.total is not None and self.bar.total != self.todo.total:
                self.bar.total = self.todo.total
                self.bar.refresh()
            yield batch

    def done(self, res: BatchResult) -> None:
        if res.store_error:
            raise StoreError(res.store_error)
        if not res.written:  # Lite: the driver is the single writer
            self.writer.write(res.images)
            self.summary.faces_stored = self.writer.faces_stored
        _account(self.summary, res.images, count_faces=res.written)
        self.summary.worker_peak_rss[res.pid] = max(self.summary.worker_peak_rss.get(res.pid, 0), res.rss)
        self.bar.update(len(res.images))
        _postfix(self.bar, self.summary, self.writer.pending_faces)

    def close(self, failed: bool, lite: bool) -> None:
        """Record what is already written, also when interrupted or stopped by an error (but never
        let a failing commit hide the error that stopped the run)."""
        try:
            self.writer.commit()
            self.writer.close()
        except Exception:
            if not failed:
                raise
        finally:
            if lite:
                self.summary.faces_stored = self.writer.faces_stored
            # the last commit's faces too: the bar ends on the summary's count
            _postfix(self.bar, self.summary)
            self.bar.close()


def _run_batches(todo: _Pending, writer: Writer, summary: IngestSummary, settings: Settings,
                 det: str, models: List[str], workers: int, scheduler: Optional[str], batch_size: int,
                 max_in_flight: Optional[int], min_face: int, progress: bool,
                 ready: Callable[[], None] = lambda: None) -> None:
    """Run the batches of `todo`, which may still be being found while the workers start; `ready()`
    is called once the models have loaded (on every worker), before the first batch starts."""
    batches = _Batches(todo, writer, summary, batch_size, progress)
    failed = True
    try:
        if todo.total == 0:
            failed = False
            return
        run_batches(batches.feed(), batches.done, settings, det, models, workers, scheduler, max_in_flight,
                    min_face, ready)
        failed = False
    finally:
        batches.close(failed, lite=not capabilities(settings.uri).workers_write)
