"""The Store: the one object the product talks to Milvus through, and the one way to open it from
settings (`Store.from_settings`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lookalike.ingest.store.erasure import Erasure
from lookalike.ingest.store.ledger import Ledger

if TYPE_CHECKING:  # pragma: no cover
    from lookalike.ingest.settings import Settings


class Store(Ledger, Erasure):
    """Embedded Milvus Lite (a local .db) or a Milvus server: its collections (collections.py), the
    images ledger (ledger.py) and erasure (erasure.py). `Store(db=..., uri=...)` opens one from
    explicit values (tests, benchmarks); the product opens one from its settings."""

    @classmethod
    def from_settings(cls, settings: "Settings", *, lite: bool = True) -> "Store":
        """The store the settings name (lite=False: the server only, as the workers open it)."""
        return cls(settings.db if lite else None, settings.uri, settings.token, settings.profile,
                   retries=settings.milvus_retries, retry_seconds=settings.milvus_retry_seconds)
