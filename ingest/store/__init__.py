"""The one place that talks to Milvus; its body moves into modules of one job next."""
from lookalike.ingest.store.collections import (  # noqa: F401
    QUERY_LIMIT,
    RETRY_BASE_DELAY,
    RETRY_MAX_DELAY,
    SOURCE_PROPERTY,
    CollectionStats,
    Store,
    StoreError,
    now_ms,
    transient,
)
