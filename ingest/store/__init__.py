"""The one place that talks to Milvus: embedded Milvus Lite (a local .db) or a Milvus server.

- client.py: what differs between the two deployments (`LiteBackend`, `ServerBackend`, their
  `Capabilities`), bounded retries of transient failures, one-line errors (`StoreError`);
- collections.py: collections created from the declarations in `schemas/`, indexed, loaded,
  written and read;
- ledger.py: the images ledger; erasure.py: selective reads and deletes;
- api.py: `Store`, all of these, and `Store.from_settings`, the one way the product opens it.
"""
from lookalike.ingest.store.api import Store
from lookalike.ingest.store.client import (
    RETRY_BASE_DELAY,
    RETRY_MAX_DELAY,
    Backend,
    Capabilities,
    LiteBackend,
    ServerBackend,
    StoreError,
    capabilities,
    transient,
)
from lookalike.ingest.store.collections import QUERY_LIMIT, SOURCE_PROPERTY, CollectionStats
from lookalike.ingest.store.ledger import now_ms

__all__ = [
    "QUERY_LIMIT", "RETRY_BASE_DELAY", "RETRY_MAX_DELAY", "SOURCE_PROPERTY", "Backend", "Capabilities",
    "CollectionStats", "LiteBackend", "ServerBackend", "Store", "StoreError", "capabilities", "now_ms", "transient",
]
