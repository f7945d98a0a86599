"""The reader: the source's records in batches, and the resume's skip pass, which leaves out the
records the images ledger already holds."""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, TypeVar

from lookalike.ingest.pipeline.paths import _ledger_id
from lookalike.ingest.sources import ImageRecord
from lookalike.ingest.store import Store

T = TypeVar("T")  # what is batched: image records (tests batch plain numbers)


def _chunks(items: Iterable[T], n: int) -> Iterator[List[T]]:
    buf: List[T] = []
    for x in items:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def _batches(chunks: Iterable[Sequence[T]], size: int) -> Iterator[List[T]]:
    """Batches of `size` images, the last 4 x size images in batches of at most 8: a run ends when
    its last worker does, and with full batches the others would wait up to a batch's time for it
    (smaller than 8, a batch's faces make forward passes too small to be efficient). The images
    come in chunks, possibly over time (the skip pass): a batch leaves as soon as it cannot be
    part of the last 4 x size."""
    size = max(1, size)
    buf: List[T] = []
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
