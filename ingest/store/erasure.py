"""Erasure (lookalike delete): rows selected by a declared field's values, deleted by key."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

from lookalike.ingest.store.collections import Collections
from lookalike.schemas.filters import encode_literal

# Fields erasure selects on (face, ledger and person collections).
ERASE_FIELDS = frozenset({"id", "image_sha256", "identity", "source_path", "face_id"})


class Erasure(Collections):
    """Selective reads and deletes of a Store."""

    @staticmethod
    def in_filter(field: str, values: Sequence[Any]) -> str:
        """`field in [v, ...]`: a declared field, each value encoded by schemas.filters."""
        if field not in ERASE_FIELDS:
            raise ValueError(f"not a declared field: {field!r}")
        return f"{field} in {encode_literal(list(values))}"

    def rows_where(self, name: str, field: str, values: Iterable[Any], output_fields: List[str],
                   chunk: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        """Rows whose `field` is one of `values` (any number: asked `chunk` values at a time)."""
        values = list(dict.fromkeys(values))
        chunk = chunk or self.caps.in_chunk
        for i in range(0, len(values), chunk):
            yield from self.select(name, output_fields, self.in_filter(field, values[i:i + chunk]))

    def delete(self, name: str, filter: str) -> int:
        """Delete the rows matching `filter` (built by in_filter); returns how many. The primary
        keys are read first and deleted by key: the count is then exact on Lite and on a server
        alike (Lite answers a delete with the keys it was given, a server with a count), and a
        retried delete (by key) is harmless."""
        if not self.has_collection(name):
            return 0
        ids = [r["id"] for r in self.select(name, ["id"], filter)]
        for i in range(0, len(ids), 1000):
            self.call(f"deleting {len(ids[i:i + 1000])} rows from {name}", self.client.delete, name,
                      ids=ids[i:i + 1000])
        return len(ids)

    def delete_where(self, name: str, field: str, values: Iterable[Any], chunk: Optional[int] = None) -> int:
        """Delete the rows whose `field` is one of `values`; returns how many."""
        values = list(dict.fromkeys(values))
        chunk = chunk or self.caps.in_chunk
        return sum(self.delete(name, self.in_filter(field, values[i:i + chunk]))
                   for i in range(0, len(values), chunk))

    def compact(self, names: Iterable[str]) -> None:
        """Ask a server to compact: deleted rows stay in its segments (masked by delete logs) until
        a compaction rewrites them; this starts one now instead of waiting for the automatic one.
        Milvus Lite has no compaction on demand (it compacts on its own when segment files pile
        up): a no-op there."""
        if not self.caps.compacts_on_demand:
            return
        for n in names:
            self.call(f"compacting {n}", self.client.compact, n)
