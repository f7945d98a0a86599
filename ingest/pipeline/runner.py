"""The runner: where the batches run, in this process or on a Dask cluster (a local one it starts,
or `--scheduler`'s), with a bounded number in flight, and what to do when a worker dies."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from lookalike.ingest.models import ModelError, WeightsMissing
from lookalike.ingest.pipeline.mapper import process_and_write_batch, process_batch, warm_worker
from lookalike.ingest.pipeline.results import BatchResult, ImageResult, _reason
from lookalike.ingest.settings import Settings, pin_threads, thread_env
from lookalike.ingest.sources import ImageRecord
from lookalike.ingest.store import capabilities

Done = Callable[[BatchResult], None]  # takes each finished batch, in the driver


def run_batches(batches: Iterator[List[ImageRecord]], done: Done, settings: Settings, det: str,
                models: List[str], workers: int, scheduler: Optional[str], max_in_flight: Optional[int],
                min_face: int, ready: Callable[[], None]) -> None:
    """Every batch of `batches` through the mapper, each result to `done`; `ready()` is called once
    the models have loaded (on every worker), before the first batch starts."""
    if workers <= 0 and not scheduler:
        # In-process: no Dask, for debugging and for measuring the pipeline's own overhead.
        warm_worker(settings, det, models)
        ready()
        for batch in batches:
            done(_mapper(settings)(batch, settings, det, models, min_face))
    else:
        _run_dask(batches, done, settings, det, models, workers, scheduler, max_in_flight, min_face, ready)


def _mapper(settings: Settings):
    """Lite: workers return vectors to the driver, the single writer. Server: workers write."""
    return process_and_write_batch if capabilities(settings.uri).workers_write else process_batch


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
