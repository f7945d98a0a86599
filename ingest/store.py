"""The one place that talks to Milvus: embedded Milvus Lite (a local .db) or a Milvus server.

Collections are created from the declarations in `schemas/`. Writes use `upsert` (a server's
`insert` would duplicate a primary key; Lite's overwrites) and are flushed before the images
ledger records them as done, so a kill -9 at any point loses at most work that is redone on resume.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from schemas import (
    FACE_FIELDS, LEDGER_COLLECTION, LEDGER_FIELDS, LEDGER_VECTOR_DIM, MODELS, OUTPUT_FIELDS,
    VECTOR_FIELD, FieldSpec, IndexProfile, collection_name, default_profile, get_model,
    get_profile, model_for_collection,
)

# Collection property recording the weights (model id or path) a collection was built with.
SOURCE_PROPERTY = "lookalike.model_source"
from schemas.filters import CompiledFilter

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A Milvus problem a user can act on; str() is one line."""


@contextlib.contextmanager
def _milvus_errors(what: str):
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as e:
        msg = getattr(e, "message", None) or str(e)
        raise StoreError(f"{what}: {str(msg).splitlines()[0]}") from None


def _quiet_pymilvus() -> None:
    # pymilvus logs every failed RPC at ERROR with a traceback; we report errors ourselves.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    # Milvus Lite's in-process gRPC server logs unimplemented optional RPCs (AllocTimestamp) that
    # pymilvus probes for and then works around.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)


@dataclass
class CollectionStats:
    name: str
    model: Optional[str]
    rows: int
    dim: int
    index_type: str
    metric: str


class Store:
    def __init__(self, db: Optional[str] = "lookalike.db", uri: Optional[str] = None,
                 token: Optional[str] = None, profile: Optional[str] = None):
        from pymilvus import MilvusClient

        _quiet_pymilvus()  # after the import: pymilvus sets its logger levels when imported

        self.server = bool(uri)
        self.target = uri if uri else str(Path(db or "lookalike.db"))
        self.profile: IndexProfile = get_profile(profile or default_profile(self.server))
        if not self.server and self.profile.name != "lite":
            raise StoreError(
                f"profile '{self.profile.name}' needs a Milvus server (--uri); Milvus Lite would accept "
                f"{self.profile.index_type} and silently search brute force"
            )
        if not self.server:
            parent = Path(self.target).resolve().parent
            if not parent.is_dir():
                raise StoreError(f"database {self.target}: folder {parent} does not exist")
        try:
            with _milvus_errors(f"cannot open Milvus at {self.target}"):
                self.client = MilvusClient(self.target, token=token or "") if self.server \
                    else MilvusClient(self.target)
        except StoreError:
            raise
        except PermissionError as e:
            raise StoreError(f"database {self.target}: permission denied ({e.filename or self.target})") from None
        except Exception as e:  # connection refused, locked database, ...
            raise StoreError(f"cannot open Milvus at {self.target}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self._loaded: set = set()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------------------
    def _schema(self, fields: Sequence[FieldSpec], dim: int):
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        for f in fields:
            kw: Dict[str, Any] = {}
            if f.kind == "VARCHAR":
                kw["max_length"] = f.max_length
            schema.add_field(f.name, getattr(DataType, f.kind), is_primary=f.primary, **kw)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        return schema

    def _check_index(self, name: str, want: str) -> None:
        info = self.client.describe_index(name, VECTOR_FIELD) or {}
        got = str(info.get("index_type", "")).upper()
        if got != want.upper():
            raise StoreError(f"collection {name}: index is {got or 'missing'}, profile {self.profile.name} wants {want}")
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
                params: Dict[str, Any]) -> None:
        if index_type not in self.profile.buildable:
            raise StoreError(f"index {index_type} is not buildable on profile {self.profile.name} "
                             f"(buildable: {', '.join(self.profile.buildable)})")
        with _milvus_errors(f"collection {name}"):
            if not self.client.has_collection(name):
                index = self.client.prepare_index_params()
                index.add_index(VECTOR_FIELD, index_type=index_type, metric_type=self.profile.metric,
                                params=dict(params))
                # Index declared at creation, before any data: building it over existing rows
                # blocks for minutes at 200k rows.
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

    def _load(self, name: str) -> None:
        if name not in self._loaded:
            self.client.load_collection(name)
            self._loaded.add(name)

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
        with _milvus_errors(f"writing {len(rows)} faces to {name}"):
            self.client.upsert(name, rows)

    def record_images(self, rows: List[Dict[str, Any]]) -> None:
        if not rows:
            return
        for r in rows:
            r.setdefault(VECTOR_FIELD, [0.0] * LEDGER_VECTOR_DIM)
        with _milvus_errors(f"writing {len(rows)} image records"):
            self.client.upsert(LEDGER_COLLECTION, rows)

    def flush(self, names: Iterable[str]) -> None:
        """Make writes durable. Milvus Lite keeps recent writes in memory: without a flush a
        kill -9 loses acknowledged rows (measured)."""
        for n in names:
            with _milvus_errors(f"flushing {n}"):
                self.client.flush(n)

    def build_indexes(self, names: Iterable[str]) -> None:
        """Milvus Lite indexes new segments only when a collection is loaded, and searches them
        brute force until then (measured: 30k new rows, search 0.17 s before, 0.06 s after; 200k
        rows took 137 s to index on a first query). Reloading at the end of an ingest puts that
        cost where it belongs; the index is persisted for later processes. A server indexes on
        its own."""
        if self.server:
            return
        for n in names:
            with _milvus_errors(f"indexing {n}"):
                self.client.release_collection(n)
                self.client.load_collection(n)
                self._loaded.add(n)

    # -- reads -----------------------------------------------------------------------------------
    def iterate(self, name: str, output_fields: List[str], filter: str = "",
                batch_size: int = 2000) -> Iterator[Dict[str, Any]]:
        """All rows matching `filter`, in batches (never the whole collection in memory)."""
        if not self.client.has_collection(name):
            return
        self._load(name)
        with _milvus_errors(f"reading {name}"):
            it = self.client.query_iterator(name, filter=filter, output_fields=output_fields,
                                            batch_size=batch_size)
            try:
                while True:
                    batch = it.next()
                    if not batch:
                        break
                    yield from batch
            finally:
                it.close()

    def ledger(self, model: str) -> Dict[str, Dict[str, Any]]:
        """source_path -> ledger row for one model."""
        out = {}
        for r in self.iterate(LEDGER_COLLECTION, ["source_path", "status", "faces", "reason", "image_sha256"],
                              filter=f"model == {_lit(model)}"):
            out[r["source_path"]] = r
        return out

    def count(self, name: str, flt: Optional[CompiledFilter] = None, extra_filter: str = "") -> int:
        if not self.client.has_collection(name):
            return 0
        self._load(name)
        with _milvus_errors(f"counting {name}"):
            res = self.client.query(name, output_fields=["count(*)"], **self.filter_args(flt, extra_filter))
        return int(res[0]["count(*)"]) if res else 0

    def filter_args(self, flt: Optional[CompiledFilter], extra: str = "") -> Dict[str, Any]:
        """Filter keyword arguments for a search or query: templated expression + parameters on a
        server, literals encoded by schemas.filters on Lite (which has no templating)."""
        from schemas.filters import combine

        if flt is None:
            return {"filter": extra}
        if self.server:
            return {"filter": combine([flt.template, extra]), "filter_params": dict(flt.params)}
        return {"filter": combine([flt.render(), extra])}

    def query(self, name: str, output_fields: List[str], flt: Optional[CompiledFilter] = None,
              extra_filter: str = "", limit: int = 1000) -> List[Dict[str, Any]]:
        """One query call: at most `limit` rows matching the filter (a server caps limit at
        16,384). Used by the query path to probe a filter and fetch its rows' vectors at once."""
        self._load(name)
        with _milvus_errors(f"reading {name}"):
            return self.client.query(name, output_fields=output_fields, limit=limit,
                                     **self.filter_args(flt, extra_filter))

    def get(self, model: str, ids: Sequence[str], output_fields: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        name = collection_name(model)
        self._load(name)
        with _milvus_errors(f"reading {name}"):
            return self.client.get(name, ids=list(ids), output_fields=output_fields or OUTPUT_FIELDS)

    def search(self, model: str, vectors: np.ndarray, limit: int, flt: Optional[CompiledFilter] = None,
               extra_filter: str = "", output_fields: Optional[List[str]] = None,
               search_params: Optional[Dict[str, Any]] = None) -> List[List[Dict[str, Any]]]:
        """One batched search call: one result list per query vector."""
        name = collection_name(model)
        self._load(name)
        params = {"metric_type": self.profile.metric,
                  "params": dict(search_params if search_params is not None else self.profile.search_params)}
        with _milvus_errors(f"searching {name}"):
            return self.client.search(
                name, data=np.asarray(vectors, dtype=np.float32).tolist(), limit=limit,
                output_fields=output_fields if output_fields is not None else OUTPUT_FIELDS,
                search_params=params, anns_field=VECTOR_FIELD, **self.filter_args(flt, extra_filter),
            )

    def stats(self) -> List[CollectionStats]:
        out = []
        for name in sorted(self.client.list_collections()):
            desc = self.client.describe_collection(name)
            vec = next((f for f in desc["fields"] if f["name"] == VECTOR_FIELD), {})
            idx = {}
            with contextlib.suppress(Exception):
                idx = self.client.describe_index(name, VECTOR_FIELD) or {}
            out.append(CollectionStats(
                name=name, model=model_for_collection(name), rows=self.count(name),
                dim=int(vec.get("params", {}).get("dim", 0)),
                index_type=str(idx.get("index_type", "?")), metric=str(idx.get("metric_type", "?")),
            ))
        return out


def _lit(value: str) -> str:
    from schemas.filters import encode_literal

    return encode_literal(value)


def now_ms() -> int:
    return int(time.time() * 1000)
