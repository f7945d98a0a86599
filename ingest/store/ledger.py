"""The images ledger: one row per photo and model (done, no face, failed), written after the faces
it accounts for, so that a resume skips exactly the photos whose faces are stored."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence

from lookalike.ingest.store.collections import Collections
from lookalike.schemas import HEAD_SUFFIX, LEDGER_COLLECTION, LEDGER_FIELDS, LEDGER_STATUSES, LEDGER_VECTOR_DIM, VECTOR_FIELD
from lookalike.schemas.filters import encode_literal


def now_ms() -> int:
    """A ledger row's `ingested_at`."""
    return int(time.time() * 1000)


class Ledger(Collections):
    """The images ledger of a Store."""

    def ensure_ledger(self) -> None:
        self.ensure_table(LEDGER_COLLECTION, LEDGER_FIELDS, LEDGER_VECTOR_DIM)

    def record_images(self, rows: List[Dict[str, Any]]) -> None:
        if not rows:
            return
        for r in rows:
            r.setdefault(VECTOR_FIELD, [0.0] * LEDGER_VECTOR_DIM)
        self._upsert(f"writing {len(rows)} image records", LEDGER_COLLECTION, rows)

    def ledger(self, model: str) -> Dict[str, Dict[str, Any]]:
        """source_path -> ledger row for one model."""
        out = {}
        for r in self.iterate(LEDGER_COLLECTION, ["source_path", "status", "faces", "reason", "image_sha256"],
                              filter=f"model == {encode_literal(model)}"):
            out[r["source_path"]] = r
        return out

    def ledger_statuses(self, ids: Sequence[str]) -> Dict[str, str]:
        """Ledger id -> status, for those of `ids` the ledger holds: a primary-key lookup, which
        costs per id asked, not per row stored (a resume's skip pass asks chunk by chunk)."""
        self._load(LEDGER_COLLECTION)
        rows = self.call("reading the ledger", self.client.get, LEDGER_COLLECTION, ids=list(ids),
                         output_fields=["id", "status"])
        return {r["id"]: r["status"] for r in rows}

    def ledger_counts(self) -> Dict[str, Dict[str, int]]:
        """Photos the images ledger holds per model of a face collection, by status (`done`,
        `noface`, `failed`); empty when there is no ledger. Counted, not read.

        Lite scans every row for each filtered read, so they are few: the rows not done (a few
        photos without a face or failed) are read in one query, and `done` is the rest of the
        model's rows; the first model's rows are counted without a filter on it."""
        if not self.has_collection(LEDGER_COLLECTION):
            return {}
        # a head's collection holds its base model's photos, projected: the ledger records the base
        models = [m for m in self.models() if not m.endswith(HEAD_SUFFIX)]
        out: Dict[str, Dict[str, int]] = {m: dict.fromkeys(LEDGER_STATUSES, 0) for m in models}
        if not models:
            return out
        # the first model's rows: all, less those of the other models and of models whose
        # collection is gone (usually one model, and a head's collection with no rows)
        rows = {m: self.count(LEDGER_COLLECTION, extra_filter=f"model == {encode_literal(m)}") for m in models[1:]}
        gone = self.count(LEDGER_COLLECTION, extra_filter=f"model not in {encode_literal(models)}")
        rows[models[0]] = self.count(LEDGER_COLLECTION) - gone - sum(rows.values())
        for r in self.select(LEDGER_COLLECTION, ["model", "status"], f'status != {encode_literal("done")}'):
            if r["model"] in out and r["status"] in out[r["model"]]:
                out[r["model"]][r["status"]] += 1
        for m in models:
            out[m]["done"] = rows[m] - sum(n for st, n in out[m].items() if st != "done")
        return out
