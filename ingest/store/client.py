"""The client side of the store: what differs between Milvus Lite (a local .db) and a Milvus server,
in one adapter class per deployment; bounded retries of transient failures; one-line errors.

The rest of the store (and the pipeline) asks a backend's `caps` and its two probes
(`nullable_fields`, `templated_filters`) instead of testing which deployment it talks to.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Optional, Type, TypeVar

from lookalike.schemas.errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreError(StorageError):
    """A Milvus problem a user can act on; str() is one line (a RuntimeError, exit 6)."""


def first_line(e: BaseException) -> str:
    details = getattr(e, "details", None)
    msg = getattr(e, "message", None) or (details() if callable(details) else None) or str(e) or type(e).__name__
    return str(msg).strip().splitlines()[0] if str(msg).strip() else type(e).__name__


@contextlib.contextmanager
def milvus_errors(what: str):
    import grpc
    from pymilvus import MilvusException

    try:
        yield
    except (MilvusException, grpc.RpcError) as e:  # pymilvus re-raises some gRPC errors as they are
        raise StoreError(f"{what}: {first_line(e)}") from None


# -- transient failures -----------------------------------------------------------------------------
# A server restarting, a dropped connection, a deadline exceeded: retried with exponential backoff
# (RETRY_BASE_DELAY doubling, capped at RETRY_MAX_DELAY) at most `retries` times and within
# `retry_seconds` in all (Settings: LOOKALIKE_MILVUS_RETRIES, LOOKALIKE_MILVUS_RETRY_SECONDS), then
# one StoreError line naming the target and the attempts. Anything else (a bad filter, a schema
# mismatch, a missing collection, a full disk) fails at once. Every wrapped call is idempotent:
# upserts keyed on content, flushes, reads. Both deployments retry alike: Lite's only transient
# failure is its half-written index file (below).
RETRY_BASE_DELAY = 0.5
RETRY_MAX_DELAY = 8.0


def transient(e: BaseException) -> bool:
    """Whether retrying the same call may succeed: the server is unreachable, not ready, or slow.

    pymilvus 3 answers a dropped or refused connection with MilvusException code 2 ("Fail
    connecting to server", its CONNECT_FAILED; Milvus' own ServiceUnavailable is 2 too), re-raises
    DEADLINE_EXCEEDED as a bare grpc.RpcError, and wraps other gRPC failures with the gRPC status
    as code. A server's own verdict (`retriable`, `is_input_error`) wins where it gives one.
    Milvus Lite never answers 2 (its errors are 1 and the 4..700 input codes)."""
    import grpc
    from pymilvus import MilvusException

    transient_grpc = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    if isinstance(e, grpc.RpcError):
        return callable(getattr(e, "code", None)) and e.code() in transient_grpc
    if not isinstance(e, MilvusException):
        return False
    if getattr(e, "is_input_error", False):
        return False
    if getattr(e, "retriable", False) or e.code in transient_grpc or e.code == 2:
        return True
    msg = str(e.message or "").lower()
    return any(s in msg for s in ("service not ready", "service unavailable", "server unavailable",
                                  "deadline exceeded", *_LITE_HALF_WRITTEN))


# Milvus Lite's background thread writes a new segment's index file after a flush, not atomically;
# a load that reads it half-written fails with these (seen here). It is complete moments later.
# (numpy reading a FLAT index: the first two; faiss reading an HNSW one: the third.) A file that
# stays broken is reported after the bounded retries like any other.
_LITE_HALF_WRITTEN = ("file seems not fully written", "no data left in file", "read error in")


def retry(what: str, fn: Callable[[], T], *, retries: int, retry_seconds: float, target: str,
          base_delay: float = RETRY_BASE_DELAY, max_delay: float = RETRY_MAX_DELAY) -> T:
    """fn(), retried on transient errors (see `transient`); other errors propagate unchanged."""
    t0 = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not transient(e):
                raise
            elapsed = time.monotonic() - t0
            delay = min(max_delay, base_delay * 2 ** (attempt - 1), retry_seconds - elapsed)
            if attempt > retries or delay <= 0:
                raise StoreError(f"{what}: Milvus at {target} unavailable, gave up after {attempt} "
                                 f"attempt{'s' if attempt > 1 else ''} in {elapsed:.1f} s "
                                 f"({first_line(e)})") from None
            log.info("%s: %s; retry %d in %.1f s", what, first_line(e), attempt, delay)
            time.sleep(delay)


def quiet_pymilvus() -> None:
    # pymilvus logs every failed RPC at ERROR with a traceback; we report errors ourselves.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    # Milvus Lite's in-process gRPC server logs unimplemented optional RPCs (AllocTimestamp) that
    # pymilvus probes for and then works around.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    # Milvus Lite logs its failures (a full disk, a read-only folder) with tracebacks before
    # answering them as errors, which we report in one line; and, on opening, the torn tail of a
    # write-ahead log cut by a full disk or a kill (the unacknowledged write, dropped).
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)


# -- what differs between the deployments ---------------------------------------------------------
@dataclass(frozen=True)
class Capabilities:
    """What a deployment does differently, known without connecting (`capabilities(uri)`)."""

    embedded: bool  # Milvus Lite: a local .db folder; picks the default index profile (schemas/)
    # Several processes may write at once, so each Dask worker writes its own batches; Lite's
    # folder is locked by the one process that opens it, whose driver is then the single writer.
    workers_write: bool
    # Reads at the collection's default consistency (Bounded) may miss acknowledged writes: a read
    # that must see them asks Strong (or Session for this process's own). Lite reads what it has.
    reads_lag_writes: bool
    # Builds a segment's (non-exact) index only when the collection is loaded, so the end of an
    # ingest reloads; a server indexes sealed segments on its own, and the end of an ingest flushes.
    index_on_load: bool
    compacts_on_demand: bool  # Lite's ManualCompaction answers success and does nothing
    in_chunk: int  # values per `field in [...]` filter (Store.rows_where, delete_where)


class Backend:
    """One open MilvusClient and what its deployment does differently."""

    caps: ClassVar[Capabilities]

    def __init__(self, target: str, client: Any):
        self.target = target
        self.client = client

    @classmethod
    def open(cls, target: str, token: Optional[str] = None) -> "Backend":
        raise NotImplementedError

    @classmethod
    def _connect(cls, target: str, make: Callable[[], Any], diagnose: Callable[[], Optional[str]]) -> Any:
        """make() -> a client, or one StoreError line: `diagnose` says why when Milvus cannot."""
        try:
            with milvus_errors(f"cannot open Milvus at {target}"):
                return make()
        except StoreError:
            why = diagnose()
            if why:
                raise StoreError(f"database {target}: {why}") from None
            raise
        except PermissionError as e:
            raise StoreError(f"database {target}: permission denied ({e.filename or target})") from None
        except Exception as e:  # connection refused, locked database, ...
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StoreError(f"cannot open Milvus at {target}: {why}") from None

    def consistency(self, level: str) -> Dict[str, Any]:
        """Keyword arguments for a read at `level` ('Strong', 'Session'), where reads lag writes.
        Strong is slow on a server (each call waits for the next time tick): only where a read
        must see every acknowledged write, not on the query path."""
        return {"consistency_level": level} if self.caps.reads_lag_writes else {}

    def nullable_fields(self) -> bool:
        """Whether this deployment stores null (else unknown values are stored as false)."""
        return True

    def templated_filters(self, name: Optional[str]) -> bool:
        """Whether filters may be sent as a template and parameters (else as rendered literals)."""
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


# pymilvus pings its server every 10 s, even between calls; Milvus Lite's in-process gRPC server
# keeps gRPC's default policy (no pings more often than every 5 minutes without a call), so a
# connection idle for a minute -- a long batch, a web server between requests -- gets a
# "too_many_pings" GOAWAY logged by gRPC's C core to stderr, and the next call reconnects. A
# server on the same machine needs no keepalive: off for Lite.
_LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}

# Milvus Lite serves a database from a server thread that pymilvus keeps for the whole process:
# MilvusClient.close() leaves it open, holding the folder's lock while its background thread may
# still be writing index files. The last Store of a path in this process closes it, so a database
# an ingest.run() call returns from is complete on disk and free for another process.
_LITE_LOCK = threading.Lock()
_LITE_OPEN: Dict[str, int] = {}


class LiteBackend(Backend):
    """Milvus Lite: a local .db folder served in this process (`milvus-lite`)."""

    caps = Capabilities(embedded=True, workers_write=False, reads_lag_writes=False, index_on_load=True,
                        compacts_on_demand=False,
                        # Lite scans every row per query, and a list of 4,096 costs it little more
                        # than one of 500 (bench/README.md, "At full scale")
                        in_chunk=4096)

    def __init__(self, target: str, client: Any):
        super().__init__(target, client)
        self.path: Optional[str] = os.path.abspath(target)
        with _LITE_LOCK:
            _LITE_OPEN[self.path] = _LITE_OPEN.get(self.path, 0) + 1

    @classmethod
    def open(cls, target: str, token: Optional[str] = None) -> "LiteBackend":
        from pymilvus import MilvusClient

        if not target.endswith(".db"):  # pymilvus would say "uri ... is illegal"
            raise StoreError(f"database {target}: a Milvus Lite database path must end in .db")
        parent = Path(target).resolve().parent
        if not parent.is_dir():
            raise StoreError(f"database {target}: folder {parent} does not exist")
        # Milvus Lite only says "Open local milvus failed": find out why
        client = cls._connect(target, lambda: MilvusClient(target, grpc_options=_LITE_GRPC_OPTIONS),
                              lambda: lite_problem(Path(target)))
        return cls(target, client)

    def close(self) -> None:
        super().close()
        path, self.path = self.path, None
        if not path:
            return
        with _LITE_LOCK:
            n = _LITE_OPEN.get(path, 0) - 1
            if n > 0:
                _LITE_OPEN[path] = n
                return
            _LITE_OPEN.pop(path, None)
        with contextlib.suppress(Exception):
            from milvus_lite.server_manager import server_manager_instance

            # Drains the background compaction / index builds, then releases the lock.
            server_manager_instance.release_server(path)


class ServerBackend(Backend):
    """A Milvus server (standalone or cluster) at a URI."""

    caps = Capabilities(embedded=False, workers_write=True, reads_lag_writes=True, index_on_load=False,
                        compacts_on_demand=True,
                        in_chunk=500)  # the shorter expressions a server was tested with

    def __init__(self, target: str, client: Any):
        super().__init__(target, client)
        self._nullable: Optional[bool] = None  # probed once
        self._templates: Optional[bool] = None  # probed once

    @classmethod
    def open(cls, target: str, token: Optional[str] = None) -> "ServerBackend":
        from pymilvus import MilvusClient

        return cls(target, cls._connect(target, lambda: MilvusClient(target, token=token or ""), lambda: None))

    def nullable_fields(self) -> bool:
        """Servers >= 2.5 store null (2.3/2.4 lack it)."""
        if self._nullable is None:
            self._nullable = False
            with contextlib.suppress(Exception):
                v = re.findall(r"\d+", str(self.client.get_server_version()))
                self._nullable = tuple(int(x) for x in v[:2]) >= (2, 5)
        return self._nullable

    def templated_filters(self, name: Optional[str]) -> bool:
        """Whether the server takes filter templates (Milvus >= 2.5), probed once with a harmless
        templated query on collection `name`. Milvus 2.3/2.4 ignore `filter_params` and reject
        `{p}` ("cannot parse expression", measured on 2.3.5); the rendered expression is as safe,
        only parsed slower."""
        if self._templates is None:
            from pymilvus import MilvusException

            if not name or not self.client.has_collection(name):
                return False  # nothing to probe with yet: render (always correct)
            try:
                self.client.query(name, filter="id == {p}", filter_params={"p": ""}, output_fields=["id"], limit=1)
                self._templates = True
            except MilvusException:
                self._templates = False
        return self._templates


def backend_class(uri: Optional[str]) -> Type[Backend]:
    """The adapter of the deployment a --uri (a server) or its absence (a --db file) names."""
    return ServerBackend if uri else LiteBackend


def capabilities(uri: Optional[str]) -> Capabilities:
    """What the deployment `uri` names does differently (no connection): `settings.uri` for a
    run's settings."""
    return backend_class(uri).caps


def lite_problem(path: Path) -> Optional[str]:
    """Why Milvus Lite could not open the database folder `path`, found by doing what it does:
    create the folder, take its lock, write a file (as root, only a read-only or full file system
    or another process's lock stops it; permission bits do not)."""
    import fcntl

    target = path
    try:
        path.mkdir(exist_ok=True)
        target = path / "LOCK"
        fd = os.open(target, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "in use by another process (Milvus Lite opens a database in one process at a time)"
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        target = path / f".lookalike-write-test-{os.getpid()}"
        try:
            with open(target, "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        finally:
            with contextlib.suppress(OSError):
                target.unlink()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            return f"no space left on the device of {path}"
        return f"cannot write {e.filename or target}: {e.strerror or e}"
    return None
