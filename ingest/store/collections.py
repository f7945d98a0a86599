"""The one place that talks to Milvus: embedded Milvus Lite (a local .db) or a Milvus server.

Collections are created from the declarations in `schemas/`. Writes use `upsert` (a server's
`insert` would duplicate a primary key; Lite's overwrites) and are acknowledged, so logged, before
the images ledger records them as done, so a kill -9 at any point loses at most work that is redone
on resume.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from lookalike.schemas import (
    EXACT_INDEXES,
    FACE_FIELDS,
    LEDGER_COLLECTION,
    LEDGER_FIELDS,
    LEDGER_STATUSES,
    LEDGER_VECTOR_DIM,
    MODELS,
    OUTPUT_FIELDS,
    VECTOR_FIELD,
    FieldSpec,
    IndexProfile,
    collection_name,
    default_profile,
    get_model,
    get_profile,
    model_for_collection,
    profile_building,
)
from lookalike.schemas.filters import CompiledFilter

# Collection property recording the weights (model id or path) a collection was built with.
SOURCE_PROPERTY = "lookalike.model_source"

log = logging.getLogger(__name__)


# The most rows one query call returns (Milvus caps a query's limit there).
QUERY_LIMIT = 16384


class StoreError(RuntimeError):
    """A Milvus problem a user can act on; str() is one line."""


def _first_line(e: BaseException) -> str:
    details = getattr(e, "details", None)
    msg = getattr(e, "message", None) or (details() if callable(details) else None) or str(e) or type(e).__name__
    return str(msg).strip().splitlines()[0] if str(msg).strip() else type(e).__name__


@contextlib.contextmanager
def _milvus_errors(what: str):
    import grpc
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except (MilvusException, grpc.RpcError) as e:  # pymilvus re-raises some gRPC errors as they are
        raise StoreError(f"{what}: {_first_line(e)}") from None


# -- transient failures -----------------------------------------------------------------------------
# A server restarting, a dropped connection, a deadline exceeded: retried with exponential backoff
# (RETRY_BASE_DELAY doubling, capped at RETRY_MAX_DELAY) at most `retries` times and within
# `retry_seconds` in all (Settings: LOOKALIKE_MILVUS_RETRIES, LOOKALIKE_MILVUS_RETRY_SECONDS), then
# one StoreError line naming the target and the attempts. Anything else (a bad filter, a schema
# mismatch, a missing collection, a full disk) fails at once. Every wrapped call is idempotent:
# upserts keyed on content, flushes, reads.
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
    from pymilvus.exceptions import MilvusException

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


def _retry(what: str, fn, *, retries: int, retry_seconds: float, target: str,
           base_delay: float = RETRY_BASE_DELAY, max_delay: float = RETRY_MAX_DELAY):
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
                                 f"({_first_line(e)})") from None
            log.info("%s: %s; retry %d in %.1f s", what, _first_line(e), attempt, delay)
            time.sleep(delay)


def _quiet_pymilvus() -> None:
    # pymilvus logs every failed RPC at ERROR with a traceback; we report errors ourselves.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    # Milvus Lite's in-process gRPC server logs unimplemented optional RPCs (AllocTimestamp) that
    # pymilvus probes for and then works around.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    # Milvus Lite logs its failures (a full disk, a read-only folder) with tracebacks before
    # answering them as errors, which we report in one line; and, on opening, the torn tail of a
    # write-ahead log cut by a full disk or a kill (the unacknowledged write, dropped).
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)


def _lite_problem(path: Path) -> Optional[str]:
    """Why Milvus Lite could not open the database folder `path`, found by doing what it does:
    create the folder, take its lock, write a file (as root, only a read-only or full file system
    or another process's lock stops it; permission bits do not)."""
    import errno
    import fcntl
    import os

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


# pymilvus pings its server every 10 s, even between calls; Milvus Lite's in-process gRPC server
# keeps gRPC's default policy (no pings more often than every 5 minutes without a call), so a
# connection idle for a minute -- a long batch, a web server between requests -- gets a
# "too_many_pings" GOAWAY logged by gRPC's C core to stderr, and the next call reconnects. A
# server on the same machine needs no keepalive: off for Lite.
_LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}


@dataclass
class CollectionStats:
    name: str
    model: Optional[str]
    rows: int
    dim: int
    index_type: str
    metric: str


# Milvus Lite serves a database from a server thread that pymilvus keeps for the whole process:
# MilvusClient.close() leaves it open, holding the folder's lock while its background thread may
# still be writing index files. The last Store of a path in this process closes it, so a database
# an ingest.run() call returns from is complete on disk and free for another process.
_LITE_LOCK = threading.Lock()
_LITE_OPEN: Dict[str, int] = {}


def _lite_acquire(path: str) -> None:
    with _LITE_LOCK:
        _LITE_OPEN[path] = _LITE_OPEN.get(path, 0) + 1


def _lite_release(path: str) -> None:
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


if TYPE_CHECKING:  # pragma: no cover
    from lookalike.ingest.settings import Settings


class Store:
    @classmethod
    def from_settings(cls, settings: "Settings", *, lite: bool = True) -> "Store":
        """The store the settings name (lite=False: the server only, as the workers open it)."""
        return cls(settings.db if lite else None, settings.uri, settings.token, settings.profile,
                   retries=settings.milvus_retries, retry_seconds=settings.milvus_retry_seconds)

    def __init__(self, db: Optional[str] = "lookalike.db", uri: Optional[str] = None,
                 token: Optional[str] = None, profile: Optional[str] = None,
                 retries: Optional[int] = None, retry_seconds: Optional[float] = None):
        from pymilvus import MilvusClient

        _quiet_pymilvus()  # after the import: pymilvus sets its logger levels when imported

        if retries is None or retry_seconds is None:
            from lookalike.ingest.settings import Settings

            fields = Settings.model_fields
            retries = fields["milvus_retries"].default if retries is None else retries
            retry_seconds = fields["milvus_retry_seconds"].default if retry_seconds is None else retry_seconds
        self.retries, self.retry_seconds = max(0, int(retries)), float(retry_seconds)
        self.server = bool(uri)
        self._index_types: Dict[str, str] = {}
        self.target = uri if uri else str(Path(db or "lookalike.db"))
        self.profile: IndexProfile = get_profile(profile or default_profile(self.server))
        if self.profile.embedded == self.server:
            raise StoreError(
                f"profile '{self.profile.name}' needs a Milvus server (--uri); Milvus Lite would accept "
                f"{self.profile.index_type} and silently search brute force" if not self.server else
                f"profile '{self.profile.name}' is for Milvus Lite (--db), not a server"
            )
        if not self.server:
            if not self.target.endswith(".db"):  # pymilvus would say "uri ... is illegal"
                raise StoreError(f"database {self.target}: a Milvus Lite database path must end in .db")
            parent = Path(self.target).resolve().parent
            if not parent.is_dir():
                raise StoreError(f"database {self.target}: folder {parent} does not exist")
        try:
            with _milvus_errors(f"cannot open Milvus at {self.target}"):
                self.client = MilvusClient(self.target, token=token or "") if self.server \
                    else MilvusClient(self.target, grpc_options=_LITE_GRPC_OPTIONS)
        except StoreError:
            why = None if self.server else _lite_problem(Path(self.target))
            if why:  # Milvus Lite only says "Open local milvus failed"
                raise StoreError(f"database {self.target}: {why}") from None
            raise
        except PermissionError as e:
            raise StoreError(f"database {self.target}: permission denied ({e.filename or self.target})") from None
        except Exception as e:  # connection refused, locked database, ...
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StoreError(f"cannot open Milvus at {self.target}: {why}") from None
        self._lite_path = None if self.server else os.path.abspath(self.target)
        if self._lite_path:
            _lite_acquire(self._lite_path)
        self._loaded: set = set()
        self._load_lock = threading.Lock()  # a search may load a collection another thread is loading
        self._columns: Dict[str, Any] = {}  # collection -> (schema, fields a write sends), for _upsert and reads
        self._templates: Optional[bool] = None  # does the server take filter templates? (probed)
        self._nullable: Optional[bool] = None  # does the server store null? (probed)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        path, self._lite_path = self._lite_path, None
        if path:
            _lite_release(path)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, what: str, fn, *args, **kwargs):
        """One client call: transient failures retried (bounded, see `transient`), any failure
        raised as one StoreError line."""
        with _milvus_errors(what):
            return _retry(what, lambda: fn(*args, **kwargs), retries=self.retries,
                          retry_seconds=self.retry_seconds, target=self.target)

    # -- schema ----------------------------------------------------------------------------------
    def _schema(self, fields: Sequence[FieldSpec], dim: int):
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        nullable = self.nullable_fields()
        for f in fields:
            kw: Dict[str, Any] = {}
            if f.kind == "VARCHAR":
                kw["max_length"] = f.max_length
            if f.nullable and nullable:
                kw["nullable"] = True
            schema.add_field(f.name, getattr(DataType, f.kind), is_primary=f.primary, **kw)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        return schema

    def nullable_fields(self) -> bool:
        """Whether this deployment stores null: Milvus Lite and servers >= 2.5 (2.3/2.4 lack it)."""
        if not self.server:
            return True
        if self._nullable is None:
            self._nullable = False
            with contextlib.suppress(Exception):
                v = re.findall(r"\d+", str(self.client.get_server_version()))
                self._nullable = tuple(int(x) for x in v[:2]) >= (2, 5)
        return self._nullable

    def field_names(self, name: str) -> List[str]:
        """Scalar fields a collection has (one written before a field was declared lacks it)."""
        return [f["name"] for f in self._described(name)[1] if f["name"] != VECTOR_FIELD]

    def _described(self, name: str):
        """(schema, the fields a write sends) of a collection, described once per Store."""
        if name not in self._columns:
            schema = self._call(f"describing {name}", self.client.describe_collection, name)
            self._columns[name] = schema, [f for f in schema.get("fields", [])
                                           if not f.get("auto_id") and not f.get("is_function_output")]
        return self._columns[name]

    def _present(self, name: str, fields: Optional[List[str]]) -> List[str]:
        """`fields` (default: every output field) less those the collection lacks."""
        have = set(self.field_names(name))
        return [f for f in (fields if fields is not None else OUTPUT_FIELDS) if f in have or f == VECTOR_FIELD]

    def _check_index(self, name: str, want: str) -> None:
        info = self.client.describe_index(name, VECTOR_FIELD) or {}
        got = str(info.get("index_type", "")).upper()
        if got != want.upper():
            fits = profile_building(got, self.profile.embedded)
            raise StoreError(f"collection {name}: index is {got or 'missing'}, profile {self.profile.name} wants {want}"
                             + (f" (use --profile {fits.name})" if fits else ""))
        if want.upper() not in self.profile.buildable:
            raise StoreError(f"collection {name}: {want} cannot be built by this deployment "
                             f"(Milvus Lite would silently brute-force it)")

    def ensure_collection(self, model: str, dim: Optional[int] = None, source: Optional[str] = None) -> str:
        """Create the model's collection (index first, then data) if absent; return its name.

        `dim` defaults to the declared one (transformer models pass their config's); `source` (the
        weights' id or path) is recorded with a new collection so queries embed with the same model,
        and checked against an existing one so two models never share a collection.
        """
        spec = get_model(model)
        name = spec.collection
        dim = dim or spec.dim
        if not dim:
            raise StoreError(f"model {model}: dimension unknown")
        created = not self.client.has_collection(name)
        self._ensure(name, FACE_FIELDS, dim, self.profile.index_type, self.profile.build_params)
        if source:
            if created:
                with _milvus_errors(f"collection {name}"):
                    self.client.alter_collection_properties(name, properties={SOURCE_PROPERTY: source})
            else:
                have = self.model_source(model)
                if have and have != source:
                    raise StoreError(f"collection {name} was built with {have}, not {source}; point the "
                                     f"model at {have} or use another database")
        return name

    def model_source(self, model: str) -> Optional[str]:
        """The weights id/path a collection was built with (None if unrecorded)."""
        name = collection_name(model)
        if not self.client.has_collection(name):
            return None
        props = self.client.describe_collection(name).get("properties") or {}
        return props.get(SOURCE_PROPERTY) or None

    def _ensure(self, name: str, fields: Sequence[FieldSpec], dim: int, index_type: str,
                params: Mapping[str, Any]) -> None:
        self._columns.pop(name, None)  # described again at the next use (it may be new)
        if index_type not in self.profile.buildable:
            raise StoreError(f"index {index_type} is not buildable on profile {self.profile.name} "
                             f"(buildable: {', '.join(self.profile.buildable)})")
        with _milvus_errors(f"collection {name}"):
            if not self.client.has_collection(name):
                index = self.client.prepare_index_params()
                index.add_index(VECTOR_FIELD, index_type=index_type, metric_type=self.profile.metric,
                                params=dict(params))
                # Index declared at creation, before any data: building it over existing rows
                # blocks for the whole build (build times: bench/results/index.md).
                self.client.create_collection(name, schema=self._schema(fields, dim), index_params=index)
            else:
                have = self.client.describe_collection(name)
                vec = next((f for f in have["fields"] if f["name"] == VECTOR_FIELD), None)
                got_dim = (vec or {}).get("params", {}).get("dim")
                if got_dim is not None and int(got_dim) != dim:
                    raise StoreError(f"collection {name} holds {got_dim}-d vectors, model needs {dim}-d; "
                                     f"use another --db or drop the collection")
            self._check_index(name, index_type)
            self._load(name)

    def ensure_ledger(self) -> None:
        self._ensure(LEDGER_COLLECTION, LEDGER_FIELDS, LEDGER_VECTOR_DIM, "FLAT", {})

    def index_type(self, name: str) -> str:
        """The vector index `name` was built with (upper case; '' when none)."""
        got = self._index_types.get(name)
        if got is None:
            info = self._call(f"reading {name}", self.client.describe_index, name, VECTOR_FIELD) or {}
            got = self._index_types[name] = str(info.get("index_type", "")).upper()
        return got

    def search_params(self, name: str) -> Dict[str, Any]:
        """Search parameters for `name`: the profile's, or, for a collection built with another
        index (an HNSW collection read with the FLAT lite profile), those of the profile that
        builds that index."""
        have = self.index_type(name)
        fits = None if have == self.profile.index_type else profile_building(have, self.profile.embedded)
        return dict((fits or self.profile).search_params)

    def _load(self, name: str) -> None:
        if name in self._loaded:
            return
        with self._load_lock:
            if name not in self._loaded:
                self._call(f"loading {name}", self.client.load_collection, name)
                self._loaded.add(name)

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def load(self, name: str) -> None:
        """Load `name` for reads now (Lite reads its segments, which takes a while on a large
        collection), so that it can be done beside other work; reads load what they need anyway."""
        self._load(name)

    def has(self, model: str) -> bool:
        return self.client.has_collection(collection_name(model))

    def models(self) -> List[str]:
        """Models that have a collection in this database (declared ones first, then layers)."""
        found = [m for m in (model_for_collection(n) for n in self.client.list_collections()) if m]
        order = {m: i for i, m in enumerate(MODELS)}
        return sorted(found, key=lambda m: (order.get(m, len(order)), m))

    # -- writes ----------------------------------------------------------------------------------
    def upsert_faces(self, model: str, rows: List[Dict[str, Any]]) -> None:
        if not rows:
            return
        name = collection_name(model)
        self._upsert(f"writing {len(rows)} faces to {name}", name, rows)

    def record_images(self, rows: List[Dict[str, Any]]) -> None:
        if not rows:
            return
        for r in rows:
            r.setdefault(VECTOR_FIELD, [0.0] * LEDGER_VECTOR_DIM)
        self._upsert(f"writing {len(rows)} image records", LEDGER_COLLECTION, rows)

    def _upsert(self, what: str, name: str, rows: List[Dict[str, Any]]) -> None:
        """Upsert `rows`, sent as columns. pymilvus packs row dicts value by value in Python, which
        for face rows of ~50 fields was the driver's largest cost on Lite after the models' share of
        the cores; a column is one protobuf extend (rows against columns: bench/README.md, "Measured
        here"). The request, and so what is stored, is the same. Falls back to rows on a pymilvus
        without the column call (its connection handler and call context are not public API)."""
        schema, fields = self._described(name)
        try:
            # Only the collection's fields (one written before a field was declared lacks it); null
            # (unknown) stored as false in a field that cannot hold it (has_attributes says which).
            entities = [{"name": f["name"], "type": f["type"],
                         "values": [r[f["name"]] for r in rows] if f.get("nullable") else
                         [False if r[f["name"]] is None else r[f["name"]] for r in rows]}
                        for f in fields]
        except KeyError as e:
            raise StoreError(f"{what}: a row lacks field {e.args[0]} (collection {name})") from None
        conn = getattr(self.client, "_get_connection", None)
        if conn is None or not hasattr(self.client, "_generate_call_context"):
            names = [e["name"] for e in entities]
            self._call(what, self.client.upsert, name,
                       [dict(zip(names, vals)) for vals in zip(*(e["values"] for e in entities))])
            return
        # the client's call context carries the database name (a server URI may name one)
        self._call(what, lambda: conn().upsert(name, entities, schema=schema,
                                               context=self.client._generate_call_context()))

    def flush(self, names: Iterable[str]) -> None:
        """Turn logged writes into segments. Neither deployment needs it to survive a kill -9: an
        acknowledged write is in Milvus Lite's write-ahead log (milvus-lite >= 3; measured: rows
        upserted, never flushed, process killed -9, all there on reopening) or in a server's log
        (rocksmq/Pulsar/Kafka; measured on 2.3.5 the same way). Segments are what gets indexed, and
        Lite replays the unflushed log when it next loads a collection, so the Lite writer flushes
        every FLUSH_EVERY photos and at the end (ingest.pipeline.Writer)."""
        for n in names:
            self._call(f"flushing {n}", self.client.flush, n)

    def builds_index(self, name: str) -> bool:
        """Whether `build_indexes` builds an index for `name` here (FLAT has none to build)."""
        return not self.server and self.index_type(name) not in EXACT_INDEXES

    def build_indexes(self, names: Iterable[str]) -> None:
        """Milvus Lite indexes new segments only when a collection is loaded, and searches them
        brute force until then, so a first query after a large ingest would pay the whole build
        (bench/README.md, index back ends). Reloading at the end of an ingest puts that cost where
        it belongs; the index is persisted for later processes. A server indexes on
        its own, but only sealed segments: one flush at the end seals what the run wrote (rows in
        growing segments are searched brute force)."""
        if self.server:
            self.flush(names)
            return
        for n in names:
            if not self.builds_index(n):
                continue  # brute force is the index: nothing to build
            self._call(f"indexing {n}", lambda n=n: (self.client.release_collection(n), self.client.load_collection(n)))
            self._loaded.add(n)

    # -- erasure (lookalike delete) -------------------------------------------------------------
    def has_collection(self, name: str) -> bool:
        return bool(self._call(f"reading {name}", self.client.has_collection, name))

    def face_collections(self) -> List[str]:
        """Every face collection in the database: `faces_*`, layer variants and models this
        version does not declare included (erasure must not miss one)."""
        names = self._call("listing collections", self.client.list_collections)
        return sorted(n for n in names if n.startswith("faces_"))

    @staticmethod
    def in_filter(field: str, values: Sequence[Any]) -> str:
        """`field in [v, ...]`: a declared field, each value encoded by schemas.filters."""
        if field not in _ERASE_FIELDS:
            raise ValueError(f"not a declared field: {field!r}")
        return f"{field} in {_lit(list(values))}"

    def _in_chunk(self) -> int:
        """Values per `field in [...]` filter. Lite scans every row per query, and a list of 4,096
        costs it little more than one of 500 (bench/README.md, "At full scale"); a server keeps
        the shorter expressions it was tested with."""
        return 500 if self.server else 4096

    def rows_where(self, name: str, field: str, values: Iterable[Any], output_fields: List[str],
                   chunk: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        """Rows whose `field` is one of `values` (any number: asked `chunk` values at a time)."""
        values = list(dict.fromkeys(values))
        chunk = chunk or self._in_chunk()
        for i in range(0, len(values), chunk):
            yield from self.select(name, output_fields, self.in_filter(field, values[i:i + chunk]))

    def select(self, name: str, output_fields: List[str], filter: str) -> Iterator[Dict[str, Any]]:
        """The rows matching a selective `filter`: one query call when they fit in one answer, the
        iterator otherwise. Opening a query iterator costs a few hundred milliseconds on Lite
        whatever it then returns, which was most of a `delete --dry-run`."""
        if not self.has_collection(name):
            return
        self._load(name)
        rows = self._call(f"reading {name}", self.client.query, name, filter=filter,
                          output_fields=output_fields, limit=QUERY_LIMIT, **self._strong())
        if len(rows) < QUERY_LIMIT:
            yield from rows
        else:
            yield from self.iterate(name, output_fields, filter=filter)

    def delete(self, name: str, filter: str) -> int:
        """Delete the rows matching `filter` (built by in_filter); returns how many. The primary
        keys are read first and deleted by key: the count is then exact on Lite and on a server
        alike (Lite answers a delete with the keys it was given, a server with a count), and a
        retried delete (by key) is harmless."""
        if not self.has_collection(name):
            return 0
        ids = [r["id"] for r in self.select(name, ["id"], filter)]
        for i in range(0, len(ids), 1000):
            self._call(f"deleting {len(ids[i:i + 1000])} rows from {name}", self.client.delete, name,
                       ids=ids[i:i + 1000])
        return len(ids)

    def delete_where(self, name: str, field: str, values: Iterable[Any], chunk: Optional[int] = None) -> int:
        """Delete the rows whose `field` is one of `values`; returns how many."""
        values = list(dict.fromkeys(values))
        chunk = chunk or self._in_chunk()
        return sum(self.delete(name, self.in_filter(field, values[i:i + chunk]))
                   for i in range(0, len(values), chunk))

    def compact(self, names: Iterable[str]) -> None:
        """Ask a server to compact: deleted rows stay in its segments (masked by delete logs) until
        a compaction rewrites them; this starts one now instead of waiting for the automatic one.
        Milvus Lite has no compaction on demand (its ManualCompaction answers success and does
        nothing; it compacts on its own when segment files pile up): a no-op there."""
        if not self.server:
            return
        for n in names:
            self._call(f"compacting {n}", self.client.compact, n)

    # -- reads -----------------------------------------------------------------------------------
    def iterate(self, name: str, output_fields: List[str], filter: str = "",
                batch_size: int = QUERY_LIMIT) -> Iterator[Dict[str, Any]]:
        """All rows matching `filter`, in batches (never the whole collection in memory). Large
        batches: each step of the iterator costs about as much as a whole batch on Lite, so small
        batches multiply the cost of reading a large ledger (bench/README.md, "At full scale")."""
        if not self._call(f"reading {name}", self.client.has_collection, name):
            return
        self._load(name)
        if self.server:
            # A server's query iterator reads with the collection's default consistency (Bounded:
            # on 2.3.5 it missed rows upserted a moment before, measured). A Strong read first
            # makes the server catch up with every acknowledged write, so the iterator sees them
            # (what a resume needs: the ledger as the workers left it).
            self.count(name)
        what = f"reading {name}"
        it = self._call(what, self.client.query_iterator, name, filter=filter,
                        output_fields=output_fields, batch_size=batch_size)
        try:
            while True:
                batch = self._call(what, it.next)
                if not batch:
                    break
                yield from batch
        finally:
            with contextlib.suppress(Exception):
                it.close()

    def ledger(self, model: str) -> Dict[str, Dict[str, Any]]:
        """source_path -> ledger row for one model."""
        out = {}
        for r in self.iterate(LEDGER_COLLECTION, ["source_path", "status", "faces", "reason", "image_sha256"],
                              filter=f"model == {_lit(model)}"):
            out[r["source_path"]] = r
        return out

    def ledger_statuses(self, ids: Sequence[str]) -> Dict[str, str]:
        """Ledger id -> status, for those of `ids` the ledger holds: a primary-key lookup, which
        costs per id asked, not per row stored (a resume's skip pass asks chunk by chunk)."""
        self._load(LEDGER_COLLECTION)
        rows = self._call("reading the ledger", self.client.get, LEDGER_COLLECTION, ids=list(ids),
                          output_fields=["id", "status"])
        return {r["id"]: r["status"] for r in rows}

    def count(self, name: str, flt: Optional[CompiledFilter] = None, extra_filter: str = "") -> int:
        if not self._call(f"counting {name}", self.client.has_collection, name):
            return 0
        self._load(name)
        # Strong on a server: a count follows writes (of this or another process) at once.
        res = self._call(f"counting {name}", self.client.query, name, output_fields=["count(*)"],
                         **self._strong(), **self.filter_args(flt, extra_filter, name))
        return int(res[0]["count(*)"]) if res else 0

    def _strong(self) -> Dict[str, Any]:
        # Slow on a server (each call waits for the next time tick): used where a read must
        # see every acknowledged write, not on the query path.
        return {"consistency_level": "Strong"} if self.server else {}

    def filter_args(self, flt: Optional[CompiledFilter], extra: str = "",
                    name: Optional[str] = None) -> Dict[str, Any]:
        """Filter keyword arguments for a search or query: templated expression + parameters on a
        server that takes templates (Milvus >= 2.5), literals encoded by schemas.filters on Lite and
        older servers (no templating; `name` is the collection to probe the server with)."""
        from lookalike.schemas.filters import combine

        if flt is None:
            return {"filter": extra}
        if self.server and self._templating(name):
            return {"filter": combine([flt.template, extra]), "filter_params": dict(flt.params)}
        return {"filter": combine([flt.render(), extra])}

    def _templating(self, name: Optional[str]) -> bool:
        """Whether the server takes filter templates, probed once with a harmless templated query.
        Milvus 2.3/2.4 ignore `filter_params` and reject `{p}` ("cannot parse expression",
        measured on 2.3.5); the rendered expression is as safe, only parsed slower."""
        if self._templates is None:
            from pymilvus.exceptions import MilvusException

            if not name or not self.client.has_collection(name):
                return False  # nothing to probe with yet: render (always correct)
            try:
                self.client.query(name, filter="id == {p}", filter_params={"p": ""},
                                  output_fields=["id"], limit=1)
                self._templates = True
            except MilvusException:
                self._templates = False
        return self._templates

    def query(self, name: str, output_fields: List[str], flt: Optional[CompiledFilter] = None,
              extra_filter: str = "", limit: int = 1000) -> List[Dict[str, Any]]:
        """One query call: at most `limit` rows matching the filter (a server caps limit at
        16,384). Used by the query path to probe a filter and fetch its rows' vectors at once."""
        self._load(name)
        return self._call(f"reading {name}", self.client.query, name, output_fields=output_fields,
                          limit=limit, **self.filter_args(flt, extra_filter, name))

    def get(self, model: str, ids: Sequence[str], output_fields: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        name = collection_name(model)
        self._load(name)
        # Session on a server: sees this process's own writes at once (the writer's duplicate
        # check), at no cost; the collection default (Bounded) may not.
        kw = {"consistency_level": "Session"} if self.server else {}
        return self._call(f"reading {name}", self.client.get, name, ids=list(ids),
                          output_fields=self._present(name, output_fields or OUTPUT_FIELDS), **kw)

    def search(self, model: str, vectors: np.ndarray, limit: int, flt: Optional[CompiledFilter] = None,
               extra_filter: str = "", output_fields: Optional[List[str]] = None,
               search_params: Optional[Dict[str, Any]] = None) -> List[List[Dict[str, Any]]]:
        """One batched search call: one result list per query vector."""
        name = collection_name(model)
        self._load(name)
        params = {"metric_type": self.profile.metric,
                  "params": dict(search_params if search_params is not None else self.search_params(name))}
        return self._call(
            f"searching {name}", self.client.search,
            name, data=np.asarray(vectors, dtype=np.float32).tolist(), limit=limit,
            output_fields=self._present(name, output_fields),
            search_params=params, anns_field=VECTOR_FIELD, **self.filter_args(flt, extra_filter, name),
        )

    def stats(self) -> List[CollectionStats]:
        """One entry per face collection (`faces_*`); the images ledger, a bookkeeping collection
        whose 2-d vectors are placeholders, is not one of them (`ledger_counts` sums it up)."""
        out = []
        for name in self.face_collections():
            desc = self._call(f"describing {name}", self.client.describe_collection, name)
            vec: Dict[str, Any] = next((f for f in desc["fields"] if f["name"] == VECTOR_FIELD), {})
            idx: Dict[str, Any] = {}
            with contextlib.suppress(Exception):
                idx = self.client.describe_index(name, VECTOR_FIELD) or {}
            out.append(CollectionStats(
                name=name, model=model_for_collection(name), rows=self.count(name),
                dim=int(vec.get("params", {}).get("dim", 0)),
                index_type=str(idx.get("index_type", "?")), metric=str(idx.get("metric_type", "?")),
            ))
        return out

    def ledger_counts(self) -> Dict[str, Dict[str, int]]:
        """Photos the images ledger holds per model of a face collection, by status (`done`,
        `noface`, `failed`); empty when there is no ledger. Counted, not read.

        Lite scans every row for each filtered read, so they are few: the rows not done (a few
        photos without a face or failed) are read in one query, and `done` is the rest of the
        model's rows; the first model's rows are counted without a filter on it."""
        if not self.has_collection(LEDGER_COLLECTION):
            return {}
        models = self.models()
        out: Dict[str, Dict[str, int]] = {m: dict.fromkeys(LEDGER_STATUSES, 0) for m in models}
        if not models:
            return out
        # the first model's rows: all, less those of the other models and of models whose
        # collection is gone (usually one model, and a head's collection with no rows)
        rows = {m: self.count(LEDGER_COLLECTION, extra_filter=f"model == {_lit(m)}") for m in models[1:]}
        gone = self.count(LEDGER_COLLECTION, extra_filter=f"model not in {_lit(models)}")
        rows[models[0]] = self.count(LEDGER_COLLECTION) - gone - sum(rows.values())
        for r in self.select(LEDGER_COLLECTION, ["model", "status"], f'status != {_lit("done")}'):
            if r["model"] in out and r["status"] in out[r["model"]]:
                out[r["model"]][r["status"]] += 1
        for m in models:
            out[m]["done"] = rows[m] - sum(n for st, n in out[m].items() if st != "done")
        return out


# Fields erasure selects on (face and ledger collections).
_ERASE_FIELDS = {"id", "image_sha256", "identity", "source_path"}


def _lit(value: Any) -> str:
    from lookalike.schemas.filters import encode_literal

    return encode_literal(value)


def now_ms() -> int:
    return int(time.time() * 1000)
