"""Erasure: remove every face of an image or a person, and their images' ledger rows.

`delete(image=..., sha256=..., identity=...)` is the Python twin of `lookalike delete`. Face
embeddings are biometric data, so erasure is by content and complete:

- `image` (a path, resolved like ingest does: absolute, `ledger_path`): the picture's content hash
  is taken from the ledger rows of that path and, if the file is still there, from its bytes. Every
  face with that hash is removed from every face collection (`faces_*`, layer variants included),
  and so is every ledger row with that hash: the same picture under another name (stored once, the
  ledger holds every path) is erased too, not left behind as a "done" row whose faces are gone.
  The path's own ledger rows go as well (also a failed one, which has no hash).
- `sha256`: the same, by content hash.
- `identity`: every face labelled with it, in every face collection, and the ledger rows of their
  images (by hash). Other, unlabelled faces of those images (bystanders) are not that person and
  stay; the same person unlabelled elsewhere is not found by name.

Nothing records what was erased (a list of erased hashes would itself be data about the person):
ingesting the same files again stores them again. Deleting is idempotent: a second run removes 0.
All Milvus calls go through ingest.store.Store; every user value reaches a filter through
`schemas.filters.encode_literal` (Store.in_filter), never by concatenation.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Union

from lookalike.ingest.settings import Settings, resolve
from lookalike.schemas import LEDGER_COLLECTION, PERSON_FACES_COLLECTION
from lookalike.schemas.errors import UsageError

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
IDENTITY_MAX = 256  # schemas: identity VARCHAR(256)


class DeleteError(UsageError):
    """A delete that cannot run as asked (no selector, bad hash, missing database); one line, exit 2."""


@dataclass
class DeleteSummary:
    """What `delete` removed (or, with dry_run, would remove)."""

    target: str  # the database (Lite path or server URI)
    dry_run: bool
    selectors: List[str]  # "image PATH", "sha256 HASH", "identity ID", as asked
    faces: Dict[str, int] = field(default_factory=dict)  # collection -> faces removed (every face collection)
    ledger_rows: int = 0
    paths: List[str] = field(default_factory=list)  # distinct ledger paths whose rows were removed
    sha256s: List[str] = field(default_factory=list)  # images (content) with faces or ledger rows removed
    unhashed_paths: List[str] = field(default_factory=list)  # removed ledger paths without a hash (failed reads)
    notes: List[str] = field(default_factory=list)

    @property
    def faces_removed(self) -> int:
        return sum(self.faces.values())

    @property
    def images(self) -> int:
        """Distinct images that lost faces or ledger rows: by content hash, plus the paths whose
        file could never be read (a failed ledger row has no hash)."""
        return len(self.sha256s) + len(self.unhashed_paths)

    @property
    def removed_anything(self) -> bool:
        return bool(self.faces_removed or self.ledger_rows)

    def to_dict(self) -> Dict[str, Any]:
        return {"target": self.target, "dry_run": self.dry_run, "selectors": list(self.selectors),
                "faces": dict(self.faces), "faces_removed": self.faces_removed,
                "ledger_rows": self.ledger_rows, "images": self.images, "paths": list(self.paths),
                "sha256s": list(self.sha256s), "unhashed_paths": list(self.unhashed_paths),
                "notes": list(self.notes)}

    def lines(self) -> List[str]:
        out = [f"{name:<24} {n:>7} faces" for name, n in self.faces.items()]
        out.append(f"{LEDGER_COLLECTION:<24} {self.ledger_rows:>7} ledger rows ({len(self.paths)} paths)")
        verb = "would remove" if self.dry_run else "removed"
        total = (f"{verb} {self.faces_removed} faces, {self.ledger_rows} ledger rows, "
                 f"{self.images} images from {self.target}")
        if not self.removed_anything:
            total += ": nothing matched" + ("" if self.dry_run else " (already erased?)")
        elif self.dry_run:
            total += " (dry run: nothing removed)"
        return [*out, total]


def _as_list(value: Union[None, str, os.PathLike, Iterable[Any]]) -> List[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes, os.PathLike)):
        return [value]
    return list(value)


def _check_sha(value: str) -> str:
    v = str(value).strip()
    if not _SHA256.match(v):
        raise DeleteError(f"--sha256 must be 64 hexadecimal digits (the image's sha256), got {str(value)[:80]!r}")
    return v.lower()


def _identity_variants(ident: str) -> List[str]:
    """Spellings a user may have meant: identities match exactly, as stored (folder names keep
    their case and underscores)."""
    words = [w for w in ident.replace("_", " ").replace("-", " ").split() if w]
    forms = {"_".join(w.capitalize() for w in words), "_".join(words), " ".join(words), ident.lower(),
             ident.upper(), "_".join(w.lower() for w in words), ident.strip()}
    forms.discard(ident)
    return sorted(f for f in forms if f)


def _no_such_identity(store, collections: List[str], ident: str) -> str:
    near = sorted({r["identity"] for name in collections[:1]
                   for r in store.rows_where(name, "identity", _identity_variants(ident), ["identity"])})
    if near:
        return f"no face is labelled '{ident}'; did you mean {' or '.join(repr(n) for n in near)}? (exact match)"
    return (f"no face is labelled '{ident}' (identities match exactly: a CelebA number or a gallery folder "
            f"name); to find someone unlabelled, query a photo of them and delete the images it finds")


def _check_identity(value: str) -> str:
    v = str(value)
    if not v.strip():
        raise DeleteError("--identity must not be empty ('' is every unlabelled face)")
    if len(v) > IDENTITY_MAX:
        raise DeleteError(f"--identity is at most {IDENTITY_MAX} characters (as stored), got {len(v)}")
    return v


def _image_keys(path: Union[str, os.PathLike]) -> List[str]:
    """Ledger keys a path may have been ingested under: absolute (what ingest stores), and the
    symlink-resolved path when it differs."""
    from lookalike.ingest.pipeline import ledger_path

    p = os.fsdecode(os.fspath(path))
    if not p.strip():
        raise DeleteError("--image must not be empty")
    keys = [ledger_path(os.path.abspath(p)), ledger_path(os.path.realpath(p))]
    return list(dict.fromkeys(keys))


def delete(image: Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]] = None,
           sha256: Union[None, str, Sequence[str]] = None,
           identity: Union[None, str, Sequence[str]] = None, *,
           db: Optional[str] = None, uri: Optional[str] = None, token: Optional[str] = None,
           profile: Optional[str] = None, settings: Optional[Settings] = None,
           dry_run: bool = False, store=None) -> DeleteSummary:
    """Remove every face of the given images / persons from every face collection, and their
    images' rows from the ledger (Python twin of `lookalike delete`).

    Each selector takes one value or a list; at least one is required. Returns a DeleteSummary
    (faces per collection, ledger rows, images). Raises DeleteError (bad input, missing Lite
    database) and StoreError (Milvus). Idempotent: a second call removes 0.
    """
    from lookalike.ingest.images import ImageError, read_bytes, sha256_bytes
    from lookalike.ingest.store import Store, StoreError

    images = _as_list(image)
    shas_asked = [_check_sha(s) for s in _as_list(sha256)]
    idents = [_check_identity(i) for i in _as_list(identity)]
    if not (images or shas_asked or idents):
        raise DeleteError("nothing to delete: give --image PATH, --sha256 HASH or --identity ID")
    image_keys = []
    for p in images:
        if os.path.isdir(p):
            raise DeleteError(f"--image {os.fsdecode(os.fspath(p))} is a folder; give image files "
                              f"(or --identity for a person)")
        image_keys.append((p, _image_keys(p)))
    settings = resolve(settings, db=db, uri=uri, token=token, profile=profile)
    target = settings.uri or settings.db
    if store is None and not settings.uri and not Path(settings.db).exists():
        # Opening a missing Lite database would create it, empty: say so instead.
        raise DeleteError(f"database {settings.db} does not exist")
    selectors = ([f"image {os.fsdecode(os.fspath(p))}" for p in images]
                 + [f"sha256 {s}" for s in shas_asked] + [f"identity {i}" for i in idents])
    summary = DeleteSummary(target=str(target), dry_run=dry_run, selectors=selectors)

    own = store is None
    store = store or Store.from_settings(settings)
    try:
        collections = store.face_collections()
        has_ledger = store.has_collection(LEDGER_COLLECTION)
        content: Set[str] = set(shas_asked)  # images erased whole: every face, every ledger row
        ledger_keys: Set[str] = set()  # paths whose ledger rows go whatever their hash
        for p, keys in image_keys:
            # --image: the content hash from the ledger rows of the path, and from the file's bytes.
            shown = os.fsdecode(os.fspath(p))
            ledger_keys.update(keys)
            found = set()
            if has_ledger:
                found = {r["image_sha256"] for r in store.rows_where(
                    LEDGER_COLLECTION, "source_path", keys, ["image_sha256"])}
            try:
                found.add(sha256_bytes(read_bytes(p)))
            except ImageError as e:
                if not found:
                    summary.notes.append(f"{shown}: not in the database, and the file cannot be read "
                                         f"({e}): nothing to find its faces by")
            content |= found
        content.discard("")  # the hash of every unreadable file's ledger row: never a selector

        face_ids: Dict[str, Set[str]] = {}
        person_shas: Set[str] = set()  # images of the persons: their ledger rows go
        labelled: Set[str] = set()  # identities found in the first face collection
        for name in collections:
            ids: Set[str] = set()
            for r in store.rows_where(name, "image_sha256", sorted(content), ["id", "image_sha256"]):
                ids.add(r["id"])
            # --identity: the faces labelled with it (not the bystanders of the person's photos)
            for r in store.rows_where(name, "identity", idents, ["id", "image_sha256", "identity"]):
                ids.add(r["id"])
                person_shas.add(r["image_sha256"])
                if name == collections[0]:
                    labelled.add(r["identity"])
            face_ids[name] = ids
        person_shas.discard("")
        for ident in idents:
            if ident not in labelled:
                summary.notes.append(_no_such_identity(store, collections, ident))
        ledger: Dict[str, Dict[str, Any]] = {}
        if has_ledger:
            for fld, values in (("image_sha256", sorted(content | person_shas)),
                                ("source_path", sorted(ledger_keys))):
                for r in store.rows_where(LEDGER_COLLECTION, fld, values, ["id", "source_path", "image_sha256"]):
                    ledger[r["id"]] = r

        summary.faces = {name: len(ids) for name, ids in face_ids.items()}
        summary.ledger_rows = len(ledger)
        summary.paths = sorted({r["source_path"] for r in ledger.values()})
        # images: the content hashes that lost a face or a ledger row (face ids are <sha>_<index>)
        hashes = {i.rsplit("_", 1)[0] for ids in face_ids.values() for i in ids}
        hashes |= {r["image_sha256"] for r in ledger.values()}
        hashes.discard("")
        summary.sha256s = sorted(hashes)
        summary.unhashed_paths = sorted({r["source_path"] for r in ledger.values() if not r["image_sha256"]})
        if not dry_run:
            # Faces (the biometric data) first, the ledger last: a run cut short in between
            # leaves ledger rows (path, hash, status) whose faces are gone; the same --image or
            # --sha256 delete run again finds and removes them.
            touched = [n for n, ids in face_ids.items() if ids]
            for name in touched:
                store.delete_where(name, "id", sorted(face_ids[name]))
            # an erased face leaves its person at once (`lookalike people`): the person tables
            # hold face ids, which name the photo's content hash
            erased = sorted({i for ids in face_ids.values() for i in ids})
            if erased and store.has_collection(PERSON_FACES_COLLECTION):
                store.delete_where(PERSON_FACES_COLLECTION, "face_id", erased)
                touched.append(PERSON_FACES_COLLECTION)
            if ledger:
                store.delete_where(LEDGER_COLLECTION, "id", sorted(ledger))
                touched.append(LEDGER_COLLECTION)
            # Durable before we say so (Milvus Lite keeps recent writes in memory); a server is
            # asked to compact, which is what drops deleted rows from its segments.
            store.flush(touched)
            if store.caps.reads_lag_writes:
                # A Strong read waits until the query nodes have applied the deletes: searches
                # (Bounded consistency) started after this call returns no longer see the rows.
                for n in touched:
                    store.count(n)
            try:
                store.compact(touched)
            except StoreError as e:  # the rows are deleted (and invisible) already; say so, go on
                summary.notes.append(f"compaction not requested: {e}")
    finally:
        if own:
            store.close()
    return summary
