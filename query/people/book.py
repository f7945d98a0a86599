"""The person tables of a Store: which person each clustered face belongs to, the persons' names,
merges and the next free id (`_Book`, read and written by `people`), and the read-only lookup a
query's answer uses (`persons_of_faces`)."""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from lookalike.schemas import (
    PERSON_FACES_COLLECTION,
    PERSON_FACES_FIELDS,
    PERSONS_COLLECTION,
    PERSONS_FIELDS,
    PERSONS_VECTOR_DIM,
    VECTOR_FIELD,
)
from lookalike.schemas.filters import encode_literal


def root_of(records: Dict[int, Dict[str, Any]], pid: int) -> int:
    """The person `pid` is now: itself, or the one it was merged into (followed; a cycle stops)."""
    seen = set()
    while pid in records and records[pid]["merged_into"] and pid not in seen:
        seen.add(pid)
        pid = records[pid]["merged_into"]
    return pid


def majority(labels: Counter) -> Optional[str]:
    """The identity most of a person's labelled faces carry (ties: the smallest), None if none."""
    return min(labels.items(), key=lambda kv: (-kv[1], kv[0]))[0] if labels else None


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Book:
    """The persons of one model in a Store: assignments, names, merges, the id counter.

    The two collections are bookkeeping collections like the images ledger, created and written
    through the Store's public `ensure_table` / `upsert_rows`."""

    def __init__(self, store, model: str, readonly: bool = False):
        self.store, self.model = store, model
        self._where = f"model == {encode_literal(model)}"
        if not readonly:  # read-only: tables absent read as no persons (iterate yields nothing)
            store.ensure_table(PERSON_FACES_COLLECTION, PERSON_FACES_FIELDS, PERSONS_VECTOR_DIM)
            store.ensure_table(PERSONS_COLLECTION, PERSONS_FIELDS, PERSONS_VECTOR_DIM)
        self.assigned: Dict[str, int] = {r["face_id"]: int(r["person"]) for r in store.iterate(
            PERSON_FACES_COLLECTION, ["face_id", "person"], filter=self._where)}
        self.records: Dict[int, Dict[str, Any]] = {}
        self.next_id = 1
        for r in store.iterate(PERSONS_COLLECTION, ["id", "person", "name", "merged_into"], filter=self._where):
            if r["id"] == self._counter_key:
                self.next_id = max(self.next_id, int(r["person"]))
            else:
                self.records[int(r["person"])] = {"name": r["name"], "merged_into": int(r["merged_into"])}
        self.next_id = max([self.next_id, *(p + 1 for p in self.assigned.values()), *(p + 1 for p in self.records)])

    @property
    def _counter_key(self) -> str:
        return f"{self.model}:next"

    def root(self, pid: int) -> int:
        return root_of(self.records, pid)

    def known(self, pid: int) -> bool:
        return pid in self.records or pid in set(self.assigned.values())

    def new_id(self) -> int:
        pid = self.next_id
        self.next_id += 1
        return pid

    def assign(self, faces: Dict[str, int]) -> None:
        """Record face id -> person for these faces (upserts)."""
        now = _now_ms()
        rows = [{"id": f"{self.model}:{fid}", "model": self.model, "face_id": fid, "person": int(pid),
                 "assigned_at": now, VECTOR_FIELD: [0.0] * PERSONS_VECTOR_DIM} for fid, pid in faces.items()]
        for i in range(0, len(rows), 5000):
            self.store.upsert_rows(PERSON_FACES_COLLECTION, rows[i:i + 5000],
                                   f"writing {len(rows[i:i + 5000])} person assignments")
        self.assigned.update(faces)
        self._save_counter()

    def unassign(self, face_ids: Sequence[str]) -> None:
        if face_ids:
            self.store.delete_where(PERSON_FACES_COLLECTION, "id", [f"{self.model}:{f}" for f in face_ids])
            for f in face_ids:
                self.assigned.pop(f, None)

    def save_person(self, pid: int, name: Optional[str] = None, merged_into: Optional[int] = None) -> None:
        rec = self.records.setdefault(pid, {"name": "", "merged_into": 0})
        if name is not None:
            rec["name"] = name
        if merged_into is not None:
            rec["merged_into"] = merged_into
        self.store.upsert_rows(PERSONS_COLLECTION, [{
            "id": f"{self.model}:{pid}", "model": self.model, "person": pid, "name": rec["name"],
            "merged_into": rec["merged_into"], "updated_at": _now_ms(), VECTOR_FIELD: [0.0] * PERSONS_VECTOR_DIM}],
            f"writing person {pid}")
        self._save_counter()

    def _save_counter(self) -> None:
        self.store.upsert_rows(PERSONS_COLLECTION, [{
            "id": self._counter_key, "model": self.model, "person": self.next_id, "name": "", "merged_into": 0,
            "updated_at": _now_ms(), VECTOR_FIELD: [0.0] * PERSONS_VECTOR_DIM}], "writing the person counter")


@dataclass(frozen=True)
class PersonRef:
    """The person a stored face belongs to (followed through merges), for a query's answer."""

    id: int
    name: Optional[str]  # the user's name, else the identity most of its labelled faces carry
    named_by: Optional[str]  # "user" | "identity" | None


def persons_of_faces(store, model: str, face_ids: Sequence[str]) -> Optional[Dict[str, PersonRef]]:
    """Face id -> its person, for the stored faces `face_ids` of `model` that `people` clustered
    (a face not clustered yet is left out). Read-only, a few batched reads whatever the number of
    faces: their assignments (by primary key), the model's person records (names, merges), then,
    for persons without a user's name, their faces' identities. None when `people` never ran for
    this model (no person tables, or none of its rows): the caller then answers nothing."""
    if not (store.has_collection(PERSON_FACES_COLLECTION) and store.has_collection(PERSONS_COLLECTION)):
        return None
    where = f"model == {encode_literal(model)}"
    records: Dict[int, Dict[str, Any]] = {}
    ran = False
    for r in store.select(PERSONS_COLLECTION, ["id", "person", "name", "merged_into"], where):
        ran = True
        if r["id"] != f"{model}:next":
            records[int(r["person"])] = {"name": r["name"] or "", "merged_into": int(r["merged_into"] or 0)}
    if not ran:
        return None
    ids = list(dict.fromkeys(face_ids))
    if not ids:
        return {}
    assigned = {str(r["face_id"]): int(r["person"]) for r in store.rows_where(
        PERSON_FACES_COLLECTION, "id", [f"{model}:{f}" for f in ids], ["face_id", "person"])}
    roots = {fid: root_of(records, pid) for fid, pid in assigned.items()}
    unnamed = {r for r in roots.values() if not records.get(r, {}).get("name")}
    identity: Dict[int, Optional[str]] = {}
    if unnamed:  # named as `people` names them: the identity most of the person's labelled faces carry
        members = [p for p in set(records) | unnamed if root_of(records, p) in unnamed]
        flt = f"{where} and person in {encode_literal(sorted(members))}"
        owner = {str(r["face_id"]): root_of(records, int(r["person"])) for r in store.select(
            PERSON_FACES_COLLECTION, ["face_id", "person"], flt)}
        counts: Dict[int, Counter] = defaultdict(Counter)
        fids = list(owner)
        for i in range(0, len(fids), 1000):
            for r in store.get(model, fids[i:i + 1000], output_fields=["id", "identity"]):
                if r.get("identity"):
                    counts[owner[str(r["id"])]][str(r["identity"])] += 1
        for pid, c in counts.items():
            identity[pid] = majority(c)
    out: Dict[str, PersonRef] = {}
    for fid, pid in roots.items():
        user = records.get(pid, {}).get("name") or ""
        if user:
            out[fid] = PersonRef(pid, user, "user")
        elif identity.get(pid):
            out[fid] = PersonRef(pid, identity[pid], "identity")
        else:
            out[fid] = PersonRef(pid, None, None)
    return out
