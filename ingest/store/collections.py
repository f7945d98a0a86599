"""The store's collections: opened through a backend (client.py), created from the declarations in
`schemas/`, indexed, loaded, written and read.

Writes use `upsert` (a server's `insert` would duplicate a primary key; Lite's overwrites) and are
acknowledged, so logged, before the images ledger records them as done (ledger.py), so a kill -9
at any point loses at most work that is redone on resume.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np

from lookalike.ingest.store.client import Backend, Capabilities, StoreError, backend_class, milvus_errors, quiet_pymilvus, retry
from lookalike.schemas import (
    EXACT_INDEXES,
    FACE_FIELDS,
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
from lookalike.schemas.filters import CompiledFilter, combine

# Collection property recording the weights (model id or path) a collection was built with.
SOURCE_PROPERTY = "lookalike.model_source"

# The most rows one query call returns (Milvus caps a query's limit there).
QUERY_LIMIT = 16384

_Self = TypeVar("_Self", bound="Collections")


@dataclass
class CollectionStats:
    name: str
    model: Optional[str]
    rows: int
    dim: int
    index_type: str
    metric: str


class Collections:
    """An open database: its collections, through one backend (Milvus Lite or a server)."""

    def __init__(self, db: Optional[str] = "lookalike.db", uri: Optional[str] = None,
                 token: Optional[str] = None, profile: Optional[str] = None,
                 retries: Optional[int] = None, retry_seconds: Optional[float] = None):
        import pymilvus  # noqa: F401  (imported before quieting: pymilvus sets its logger levels when imported)

        quiet_pymilvus()
        if retries is None or retry_seconds is None:
            from lookalike.ingest.settings import Settings

            fields = Settings.model_fields
            retries = fields["milvus_retries"].default if retries is None else retries
            retry_seconds = fields["milvus_retry_seconds"].default if retry_seconds is None else retry_seconds
        self.retries, self.retry_seconds = max(0, int(retries)), float(retry_seconds)
        kind = backend_class(uri)
        self.server = not kind.caps.embedded
        self._index_types: Dict[str, str] = {}
        self.target = uri if uri else str(Path(db or "lookalike.db"))
        self.profile: IndexProfile = get_profile(profile or default_profile(self.server))
        if self.profile.embedded != kind.caps.embedded:
            raise StoreError(
                f"profile '{self.profile.name}' needs a Milvus server (--uri); Milvus Lite would accept "
                f"{self.profile.index_type} and silently search brute force" if not self.server else
                f"profile '{self.profile.name}' is for Milvus Lite (--db), not a server"
            )
        self.backend: Backend = kind.open(self.target, token)
        self.client = self.backend.client
        self._loaded: set = set()
        self._load_lock = threading.Lock()  # a search may load a collection another thread is loading
        self._columns: Dict[str, Tuple[Any, List[Dict[str, Any]]]] = {}  # collection -> (schema, fields a write sends)

    @property
    def caps(self) -> Capabilities:
        """What this deployment does differently (client.Capabilities)."""
        return self.backend.caps

    def close(self) -> None:
        self.backend.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, what: str, fn, *args, **kwargs):
        """One client call: transient failures retried (bounded, see client.transient), any
        failure raised as one StoreError line."""
        with milvus_errors(what):
            return retry(what, lambda: fn(*args, **kwargs), retries=self.retries,
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
        return self.backend.nullable_fields()

    def field_names(self, name: str) -> List[str]:
        """Scalar fields a collection has (one written before a field was declared lacks it)."""
        return [f["name"] for f in self._described(name)[1] if f["name"] != VECTOR_FIELD]

    def _described(self, name: str) -> Tuple[Any, List[Dict[str, Any]]]:
        """(schema, the fields a write sends) of a collection, described once per Store."""
        if name not in self._columns:
            schema = self.call(f"describing {name}", self.client.describe_collection, name)
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
                with milvus_errors(f"collection {name}"):
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

    def properties(self, name: str) -> Dict[str, Any]:
        """The properties recorded with collection `name` (SOURCE_PROPERTY, a head's digest, ...)."""
        return self.call(f"describing {name}", self.client.describe_collection, name).get("properties") or {}

    def set_properties(self, name: str, properties: Mapping[str, Any]) -> None:
        self.call(f"collection {name}", self.client.alter_collection_properties, name, properties=dict(properties))

    def drop_collection(self, name: str) -> None:
        """Drop `name`; what this Store knows of it is forgotten (a collection of that name is new)."""
        self.call(f"dropping {name}", self.client.drop_collection, name)
        self._loaded.discard(name)
        self._index_types.pop(name, None)
        self._columns.pop(name, None)

    def _ensure(self, name: str, fields: Sequence[FieldSpec], dim: int, index_type: str,
                params: Mapping[str, Any]) -> None:
        self._columns.pop(name, None)  # described again at the next use (it may be new)
        if index_type not in self.profile.buildable:
            raise StoreError(f"index {index_type} is not buildable on profile {self.profile.name} "
                             f"(buildable: {', '.join(self.profile.buildable)})")
        with milvus_errors(f"collection {name}"):
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

    def index_type(self, name: str) -> str:
        """The vector index `name` was built with (upper case; '' when none)."""
        got = self._index_types.get(name)
        if got is None:
            info = self.call(f"reading {name}", self.client.describe_index, name, VECTOR_FIELD) or {}
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
                self.call(f"loading {name}", self.client.load_collection, name)
                self._loaded.add(name)

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def load(self, name: str) -> None:
        """Load `name` for reads now (Lite reads its segments, which takes a while on a large
        collection), so that it can be done beside other work; reads load what they need anyway."""
        self._load(name)

    def has(self, model: str) -> bool:
        return self.client.has_collection(collection_name(model))

    def has_collection(self, name: str) -> bool:
        return bool(self.call(f"reading {name}", self.client.has_collection, name))

    def models(self) -> List[str]:
        """Models that have a collection in this database (declared ones first, then layers)."""
        found = [m for m in (model_for_collection(n) for n in self.client.list_collections()) if m]
        order = {m: i for i, m in enumerate(MODELS)}
        return sorted(found, key=lambda m: (order.get(m, len(order)), m))

    def face_collections(self) -> List[str]:
        """Every face collection in the database: `faces_*`, layer variants and models this
        version does not declare included (erasure must not miss one)."""
        names = self.call("listing collections", self.client.list_collections)
        return sorted(n for n in names if n.startswith("faces_"))

    # -- writes ----------------------------------------------------------------------------------
    def ensure_table(self, name: str, fields: Sequence[FieldSpec], dim: int) -> None:
        """A bookkeeping collection declared in schemas (the images ledger, the people tables):
        scalar rows, with the tiny vector Milvus requires of every collection (FLAT)."""
        self._ensure(name, fields, dim, "FLAT", {})

    def upsert_rows(self, name: str, rows: List[Dict[str, Any]], what: str = "") -> None:
        """Upsert rows into a bookkeeping collection (`what`: the action, for error messages)."""
        if rows:
            self._upsert(what or f"writing {len(rows)} rows to {name}", name, rows)

    def upsert_faces(self, model: str, rows: List[Dict[str, Any]]) -> None:
        if not rows:
            return
        name = collection_name(model)
        self._upsert(f"writing {len(rows)} faces to {name}", name, rows)

    def _upsert(self, what: str, name: str, rows: List[Dict[str, Any]]) -> None:
        """Upsert `rows`, only the collection's fields (one written before a field was declared
        lacks it); null (unknown) stored as false in a field that cannot hold it (has_attributes
        says which). MilvusClient's upsert takes rows, which pymilvus packs value by value: the
        column call beneath it, cheaper for face rows of ~50 fields (bench/README.md, "Measured
        here"), is not public API."""
        _, fields = self._described(name)
        keep = [(f["name"], bool(f.get("nullable"))) for f in fields]
        try:
            data = [{k: False if v is None and not nullable else v for k, nullable in keep for v in (r[k],)}
                    for r in rows]
        except KeyError as e:
            raise StoreError(f"{what}: a row lacks field {e.args[0]} (collection {name})") from None
        self.call(what, self.client.upsert, name, data)

    def flush(self, names: Iterable[str]) -> None:
        """Turn logged writes into segments. Neither deployment needs it to survive a kill -9: an
        acknowledged write is in Milvus Lite's write-ahead log (milvus-lite >= 3; measured: rows
        upserted, never flushed, process killed -9, all there on reopening) or in a server's log
        (rocksmq/Pulsar/Kafka; measured on 2.3.5 the same way). Segments are what gets indexed, and
        Lite replays the unflushed log when it next loads a collection, so the Lite writer flushes
        every FLUSH_EVERY photos and at the end (ingest.pipeline.Writer)."""
        for n in names:
            self.call(f"flushing {n}", self.client.flush, n)

    def builds_index(self, name: str) -> bool:
        """Whether `build_indexes` builds an index for `name` here (FLAT has none to build)."""
        return self.caps.index_on_load and self.index_type(name) not in EXACT_INDEXES

    def build_indexes(self, names: Iterable[str]) -> None:
        """Milvus Lite indexes new segments only when a collection is loaded, and searches them
        brute force until then, so a first query after a large ingest would pay the whole build
        (bench/README.md, index back ends). Reloading at the end of an ingest puts that cost where
        it belongs; the index is persisted for later processes. A server indexes on
        its own, but only sealed segments: one flush at the end seals what the run wrote (rows in
        growing segments are searched brute force)."""
        if not self.caps.index_on_load:
            self.flush(names)
            return
        for n in names:
            if not self.builds_index(n):
                continue  # brute force is the index: nothing to build
            self.call(f"indexing {n}", lambda n=n: (self.client.release_collection(n), self.client.load_collection(n)))
            self._loaded.add(n)

    # -- reads -----------------------------------------------------------------------------------
    def iterate(self, name: str, output_fields: List[str], filter: str = "",
                batch_size: int = QUERY_LIMIT) -> Iterator[Dict[str, Any]]:
        """All rows matching `filter`, in batches (never the whole collection in memory). Large
        batches: each step of the iterator costs about as much as a whole batch on Lite, so small
        batches multiply the cost of reading a large ledger (bench/README.md, "At full scale")."""
        if not self.call(f"reading {name}", self.client.has_collection, name):
            return
        self._load(name)
        if self.caps.reads_lag_writes:
            # A server's query iterator reads with the collection's default consistency (Bounded:
            # on 2.3.5 it missed rows upserted a moment before, measured). A Strong read first
            # makes the server catch up with every acknowledged write, so the iterator sees them
            # (what a resume needs: the ledger as the workers left it).
            self.count(name)
        what = f"reading {name}"
        it = self.call(what, self.client.query_iterator, name, filter=filter,
                       output_fields=output_fields, batch_size=batch_size)
        try:
            while True:
                batch = self.call(what, it.next)
                if not batch:
                    break
                yield from batch
        finally:
            with contextlib.suppress(Exception):
                it.close()

    def select(self, name: str, output_fields: List[str], filter: str) -> Iterator[Dict[str, Any]]:
        """The rows matching a selective `filter`: one query call when they fit in one answer, the
        iterator otherwise. Opening a query iterator costs a few hundred milliseconds on Lite
        whatever it then returns, which was most of a `delete --dry-run`."""
        if not self.has_collection(name):
            return
        self._load(name)
        rows = self.call(f"reading {name}", self.client.query, name, filter=filter,
                         output_fields=output_fields, limit=QUERY_LIMIT, **self.backend.consistency("Strong"))
        if len(rows) < QUERY_LIMIT:
            yield from rows
        else:
            yield from self.iterate(name, output_fields, filter=filter)

    def count(self, name: str, flt: Optional[CompiledFilter] = None, extra_filter: str = "") -> int:
        if not self.call(f"counting {name}", self.client.has_collection, name):
            return 0
        self._load(name)
        # Strong on a server: a count follows writes (of this or another process) at once.
        res = self.call(f"counting {name}", self.client.query, name, output_fields=["count(*)"],
                        **self.backend.consistency("Strong"), **self.filter_args(flt, extra_filter, name))
        return int(res[0]["count(*)"]) if res else 0

    def filter_args(self, flt: Optional[CompiledFilter], extra: str = "",
                    name: Optional[str] = None) -> Dict[str, Any]:
        """Filter keyword arguments for a search or query: templated expression + parameters where
        the deployment takes templates (Milvus >= 2.5 servers), literals encoded by
        schemas.filters on Lite and older servers (no templating; `name` is the collection to probe
        the server with)."""
        if flt is None:
            return {"filter": extra}
        if self.backend.templated_filters(name):
            return {"filter": combine([flt.template, extra]), "filter_params": dict(flt.params)}
        return {"filter": combine([flt.render(), extra])}

    def query(self, name: str, output_fields: List[str], flt: Optional[CompiledFilter] = None,
              extra_filter: str = "", limit: int = 1000) -> List[Dict[str, Any]]:
        """One query call: at most `limit` rows matching the filter (a server caps limit at
        16,384). Used by the query path to probe a filter and fetch its rows' vectors at once."""
        self._load(name)
        return self.call(f"reading {name}", self.client.query, name, output_fields=output_fields,
                         limit=limit, **self.filter_args(flt, extra_filter, name))

    def get(self, model: str, ids: Sequence[str], output_fields: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        name = collection_name(model)
        self._load(name)
        # Session on a server: sees this process's own writes at once (the writer's duplicate
        # check), at no cost; the collection default (Bounded) may not.
        return self.call(f"reading {name}", self.client.get, name, ids=list(ids),
                         output_fields=self._present(name, output_fields or OUTPUT_FIELDS),
                         **self.backend.consistency("Session"))

    def search(self, model: str, vectors: np.ndarray, limit: int, flt: Optional[CompiledFilter] = None,
               extra_filter: str = "", output_fields: Optional[List[str]] = None,
               search_params: Optional[Dict[str, Any]] = None) -> List[List[Dict[str, Any]]]:
        """One batched search call: one result list per query vector."""
        name = collection_name(model)
        self._load(name)
        params = {"metric_type": self.profile.metric,
                  "params": dict(search_params if search_params is not None else self.search_params(name))}
        return self.call(
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
            desc = self.call(f"describing {name}", self.client.describe_collection, name)
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
