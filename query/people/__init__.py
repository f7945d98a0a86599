"""People: every face of a model's collection grouped into persons (`lookalike people`).

`people(model=..., settings=...)` is the Python twin of `lookalike people`; `name_person` and
`merge_persons` are those of `people name` and `people merge`.

How faces become persons:

- **The graph.** Each clustered face's k nearest stored faces come from the vector database, in
  batched search calls (`Store.search`), never from an all-pairs matrix; only the edges scoring at
  least the threshold are kept.
- **The clustering** is average linkage over that graph: the two clusters whose faces are, on
  average, the most alike are merged first, while that average reaches the threshold. With
  L2-normalised vectors the average cosine of every pair of faces of A and B is the dot product of
  the two clusters' mean vectors, so the linkage is exact (every pair counts, not only the
  graph's edges); the graph only says which clusters are worth comparing: two clusters whose
  average reaches the threshold have a pair of faces that does, and that pair is an edge unless a
  face has more than k neighbours above it. Unlike single linkage (connected components) and
  Chinese whispers, one look-alike pair cannot chain two persons together.
- **Quality gate.** Faces below `DEFAULT_MIN_QUALITY` (tiny, blurred, turned away: they look like
  everyone) are not clustered; they are listed apart.
- **Persistence.** Two bookkeeping collections (declared in `schemas/`): which person each face
  belongs to (`PERSON_FACES_COLLECTION`), and the persons' names, merges and the next free id
  (`PERSONS_COLLECTION`).
- **Incremental.** A run finds the faces that have no person yet, searches their neighbours, and
  runs the same average linkage in which the existing persons are clusters already formed that are
  never merged with one another: a new face joins the person its average reaches the threshold
  with, or new faces form new persons. Nothing else is reclustered. `recluster=True` clusters
  every face again.
- **Stable ids.** After a recluster each new cluster takes the id of the old person it shares the
  most faces with (each old id once, the largest overlap first); the rest get new ids. A merged
  person's id points at the person it was merged into, so a merge survives reclustering.
- **Names.** A user's name (`name_person`) wins; otherwise the identity (folder name or CelebA
  number) most of a person's labelled faces carry names it.
- **Erasure.** A face erased from its collection (`lookalike delete`) leaves its person at the
  next run (its assignment is dropped); names and merges stay.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lookalike.ingest.quality import DEFAULT_MIN_QUALITY
from lookalike.ingest.settings import Settings, resolve
from lookalike.query.people.book import PersonRef, _Book, majority, persons_of_faces
from lookalike.query.people.cluster import NEIGHBOURS, average_linkage, knn_edges
from lookalike.schemas import VECTOR_FIELD, collection_name
from lookalike.schemas.errors import UsageError

# Cosine threshold of the average linkage, per model. dlib: the best pairwise F1 of the product's
# embeddings is at 0.9325 on LFW fold 1's images and at 0.9275 on the CelebA sample; 0.93 lies
# between. bench/bench_people.py measures each set at the threshold chosen on the other one
# (bench/results/people.txt).
PEOPLE_THRESHOLDS: Dict[str, float] = {"dlib": 0.93}

__all__ = ["NEIGHBOURS", "PEOPLE_THRESHOLDS", "PeopleError", "PeopleResult", "Person", "PersonFace", "PersonRef",
           "UnknownPerson", "average_linkage", "knn_edges", "merge_persons", "name_person", "people",
           "persons_of_faces", "render_people"]


class PeopleError(UsageError):
    """A people request that cannot run as asked (unknown person, no collection); exit 2."""

    api_code = "bad_person"


class UnknownPerson(PeopleError):
    """No such person (`people name 99`): exit 2, HTTP 404."""

    http_status = 404
    api_code = "no_person"


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass
class PersonFace:
    """One face of a person (or of the faces listed apart)."""

    id: str  # the face's id in faces_<model>: <image sha256>_<face index>
    source: str  # the photo's path
    face: int  # the face's index in its photo
    identity: str = ""
    quality: Optional[float] = None
    box: Tuple[int, int, int, int] = (0, 0, 0, 0)

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "source": self.source, "face": self.face}


@dataclass
class Person:
    id: int
    name: Optional[str]
    named_by: Optional[str]  # "user" | "identity" | None
    faces: List[PersonFace]
    representative: Optional[PersonFace] = None  # the face nearest the person's mean
    merged: List[int] = field(default_factory=list)  # ids merged into this one

    @property
    def photos(self) -> int:
        return len({f.id.rsplit("_", 1)[0] for f in self.faces})

    @property
    def label(self) -> Optional[str]:
        """The name as shown (table, sheet): a CelebA identity number as "id 7484", the contact
        sheet's way (query.render.identity_label), so that it never reads as a count."""
        if self.named_by == "identity" and self.name:
            from lookalike.query.render import identity_label

            return identity_label(self.name)
        return self.name

    def to_dict(self) -> Dict[str, Any]:
        rep = self.representative
        return {"id": self.id, "name": self.name, "named_by": self.named_by, "photos": self.photos,
                "representative": rep.to_dict() if rep else None, "merged": list(self.merged),
                "faces": [f.to_dict() for f in self.faces]}


@dataclass
class PeopleResult:
    """What `people` found: the persons, largest first, and the faces it did not cluster."""

    target: str
    model: str
    threshold: float
    min_quality: float
    people: List[Person]
    unclustered: List[PersonFace]  # below the quality gate: not clustered, listed apart
    reclustered: bool = False  # every face clustered again (else only the new faces)
    clustered: int = 0  # faces clustered by this run (all of them, or the new ones)
    joined: int = 0  # new faces that joined an existing person
    new_people: int = 0  # persons this run started
    dropped: int = 0  # assignments of faces no longer stored (erased) removed
    pending: int = 0  # read-only (update=False): faces above the gate with no person yet
    seconds: float = 0.0

    def person(self, pid: int) -> Person:
        for p in self.people:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def to_dict(self) -> Dict[str, Any]:
        return {"target": self.target, "model": self.model, "threshold": self.threshold,
                "min_quality": self.min_quality, "reclustered": self.reclustered,
                "clustered": self.clustered, "joined": self.joined, "new_people": self.new_people,
                "dropped": self.dropped, "seconds": round(self.seconds, 3),
                "people": [p.to_dict() for p in self.people],
                "unclustered": [{**f.to_dict(), "quality": f.quality} for f in self.unclustered]}

    def lines(self, min_faces: int = 1) -> List[str]:
        shown = [p for p in self.people if len(p.faces) >= min_faces]
        out = [f"{'person':>7}  {'name':<24} {'faces':>5} {'photos':>6}  representative"]
        for p in shown:
            rep = p.representative
            name = (p.label or "-") + ("" if p.named_by != "identity" else " *")
            out.append(f"{p.id:>7}  {name[:24]:<24} {len(p.faces):>5} {p.photos:>6}  "
                       + (f"{rep.source} #{rep.face + 1}" if rep else "-"))
        faces = sum(len(p.faces) for p in self.people)
        hidden = len(self.people) - len(shown)
        how = ("reclustered" if self.reclustered else
               f"{self.clustered} new faces: {self.joined} joined a person, {self.new_people} new persons")
        out.append(f"{len(self.people)} persons of {faces} faces ({self.model}, threshold {self.threshold:.4f}; {how})"
                   + (f"; {hidden} persons with fewer than {min_faces} faces not shown" if hidden else ""))
        out.append("* named by the identity (folder or CelebA number) of most of its labelled faces")
        if self.unclustered:
            out.append(f"{len(self.unclustered)} faces below quality {self.min_quality:g} not clustered"
                       + (": " + ", ".join(f"{f.source} #{f.face + 1}" for f in self.unclustered[:5])
                          + (" ..." if len(self.unclustered) > 5 else "")))
        if self.dropped:
            out.append(f"{self.dropped} erased faces left their persons")
        return out


# --------------------------------------------------------------------------------------------
# The database's persons
# --------------------------------------------------------------------------------------------
_FACE_FIELDS = ["id", "image_sha256", "source_path", "face_index", "identity", "box_x", "box_y", "box_w", "box_h"]


def _open(settings: Settings, store):
    from lookalike.ingest.store import Store

    if store is not None:
        return store, False
    if not settings.uri and not Path(settings.db).exists():
        raise PeopleError(f"database {settings.db} does not exist; ingest first: lookalike ingest SOURCE --db {settings.db}")
    return Store.from_settings(settings), True


def _pick_model(store, model: Optional[str]) -> str:
    present = store.models()
    if model:
        if model not in present:
            raise PeopleError(f"no faces of model {model} in {store.target} (collections: "
                              f"{', '.join(present) or 'none'})")
        return model
    usable = [m for m in present if m in PEOPLE_THRESHOLDS] or present
    if not usable:
        raise PeopleError(f"no face collection in {store.target}; ingest first")
    return usable[0]


def _threshold(model: str, threshold: Optional[float]) -> float:
    if threshold is not None:
        if not 0.0 < float(threshold) < 1.0:
            raise PeopleError(f"threshold must be a cosine between 0 and 1, got {threshold}")
        return float(threshold)
    if model not in PEOPLE_THRESHOLDS:
        raise PeopleError(f"model {model} has no calibrated person threshold (calibrated: "
                          f"{', '.join(PEOPLE_THRESHOLDS)}); give one (--threshold)")
    return PEOPLE_THRESHOLDS[model]


def people(model: Optional[str] = None, *, db: Optional[str] = None, uri: Optional[str] = None,
           token: Optional[str] = None, profile: Optional[str] = None, settings: Optional[Settings] = None,
           recluster: bool = False, threshold: Optional[float] = None,
           min_quality: float = DEFAULT_MIN_QUALITY, k: int = NEIGHBOURS, store=None,
           update: bool = True) -> PeopleResult:
    """Group every face of `model`'s collection into persons (Python twin of `lookalike people`).

    The first run clusters every face of quality >= `min_quality`; later runs cluster only the
    faces that have no person yet (they join a person or start new ones), unless `recluster`.
    Person ids, user names and merges are kept in the database. `update=False` only reads the
    persons stored (GET /api/people): nothing is clustered or written, faces without a person yet
    are counted in `pending`, and a database where `people` never ran has no persons. Raises
    PeopleError (exit 2) for a missing database, model or threshold, StoreError for Milvus."""
    t0 = time.perf_counter()
    settings = resolve(settings, db=db, uri=uri, token=token, profile=profile)
    store, own = _open(settings, store)
    try:
        model = _pick_model(store, model)
        if update or threshold is not None or model in PEOPLE_THRESHOLDS:
            threshold = _threshold(model, threshold)
        else:
            threshold = 0.0  # read-only, a model without a calibrated threshold: nothing to cluster with
        name = collection_name(model)
        have = set(store.field_names(name))
        fields = [f for f in _FACE_FIELDS + ["quality"] if f in have] + [VECTOR_FIELD]
        rows = list(store.iterate(name, fields))
        book = _Book(store, model, readonly=not update)
        if not update:
            return _stored_people(book, rows, store, model, threshold, min_quality, t0)

        # faces erased since the last run leave their persons
        stored = {r["id"] for r in rows}
        gone = [f for f in book.assigned if f not in stored]
        book.unassign(gone)

        faces, good, below, vec = _faces_of(rows, min_quality)
        ids = [faces[i].id for i in good]
        index = {fid: j for j, fid in enumerate(ids)}
        qfilter = f"quality >= {float(min_quality)!r}" if "quality" in have and min_quality > 0 else ""
        result = PeopleResult(target=str(store.target), model=model, threshold=threshold, min_quality=min_quality,
                              people=[], unclustered=sorted(below, key=lambda f: (f.source, f.face)),
                              dropped=len(gone))
        # faces now below the gate (a higher min_quality) are no one's
        book.unassign([f.id for f in below if f.id in book.assigned])

        full = recluster or not any(fid in index for fid in book.assigned)
        if full:
            edges = knn_edges(store, model, ids, vec, index, threshold, k, qfilter)
            labels = average_linkage(vec, edges, threshold)
            old = {j: book.assigned[fid] for fid, j in index.items() if fid in book.assigned}
            pids = _stable_ids(labels, old, book)
            result.reclustered, result.clustered = True, len(ids)
            result.new_people = len(set(pids.values()) - set(book.assigned.values()))
            book.assign({ids[j]: int(pids[int(labels[j])]) for j in range(len(ids))})
        else:
            new = [j for j, fid in enumerate(ids) if fid not in book.assigned]
            if new:
                edges = knn_edges(store, model, [ids[j] for j in new], vec[new], index, threshold, k, qfilter)
                initial = [book.root(book.assigned[fid]) if fid in book.assigned else -1 for fid in ids]
                labels = average_linkage(vec, edges, threshold, initial=initial)
                person_of: Dict[int, int] = {}  # cluster -> existing person
                for j, pid in enumerate(initial):
                    if pid >= 0:
                        person_of[int(labels[j])] = pid
                fresh: Dict[int, int] = {}
                got: Dict[str, int] = {}
                for j in new:
                    c = int(labels[j])
                    if c in person_of:
                        got[ids[j]] = person_of[c]
                        result.joined += 1
                    else:
                        if c not in fresh:
                            fresh[c] = book.new_id()
                        got[ids[j]] = fresh[c]
                result.clustered, result.new_people = len(new), len(fresh)
                book.assign(got)
        result.people = _persons(book, faces, good, vec, index)
    finally:
        if own:
            store.close()
    result.seconds = time.perf_counter() - t0
    return result


def _faces_of(rows: List[Dict[str, Any]], min_quality: float) -> Tuple[List[PersonFace], List[int], List[PersonFace], np.ndarray]:
    """(every face, the rows at or above the quality gate, the faces below it, their vectors)."""
    faces = [PersonFace(r["id"], r["source_path"], int(r["face_index"]), r.get("identity") or "",
                        None if r.get("quality") is None else float(r["quality"]),
                        (int(r["box_x"]), int(r["box_y"]), int(r["box_w"]), int(r["box_h"]))) for r in rows]
    good = [i for i, f in enumerate(faces) if f.quality is None or f.quality >= min_quality]
    below = [faces[i] for i, f in enumerate(faces) if not (f.quality is None or f.quality >= min_quality)]
    vec = np.asarray([rows[i][VECTOR_FIELD] for i in good], dtype=np.float32).reshape(len(good), -1)
    return faces, good, below, vec


def _stored_people(book: _Book, rows: List[Dict[str, Any]], store, model: str, threshold: float,
                   min_quality: float, t0: float) -> PeopleResult:
    """The persons as stored (people(update=False)): no clustering, nothing written."""
    faces, good, below, vec = _faces_of(rows, min_quality)
    index = {faces[i].id: j for j, i in enumerate(good)}
    result = PeopleResult(target=str(store.target), model=model, threshold=threshold, min_quality=min_quality,
                          people=_persons(book, faces, good, vec, index),
                          unclustered=sorted(below, key=lambda f: (f.source, f.face)))
    result.pending = sum(1 for fid in index if fid not in book.assigned)
    result.seconds = time.perf_counter() - t0
    return result


def _stable_ids(labels: np.ndarray, old: Dict[int, int], book: _Book) -> Dict[int, int]:
    """Cluster -> person id: each cluster takes the old person id (as stored, not followed
    through merges) it shares the most faces with, the largest overlaps first, each id once;
    the others get new ids."""
    overlap: Counter = Counter((int(labels[j]), pid) for j, pid in old.items())
    out: Dict[int, int] = {}
    used: set = set()
    for (c, pid), _ in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0])):
        if c not in out and pid not in used:
            out[c] = pid
            used.add(pid)
    for c in sorted(set(labels.tolist())):
        if c not in out:
            out[c] = book.new_id()
    return out


def _persons(book: _Book, faces: List[PersonFace], good: List[int], vec: np.ndarray,
             index: Dict[str, int]) -> List[Person]:
    members: Dict[int, List[int]] = defaultdict(list)  # person (followed through merges) -> rows of vec
    for fid, pid in book.assigned.items():
        j = index.get(fid)
        if j is not None:
            members[book.root(pid)].append(j)
    merged: Dict[int, List[int]] = defaultdict(list)
    for pid, rec in book.records.items():
        if rec["merged_into"]:
            merged[book.root(pid)].append(pid)
    out = []
    for pid, rows in members.items():
        rows.sort(key=lambda j: (faces[good[j]].source, faces[good[j]].face))
        fs = [faces[good[j]] for j in rows]
        mean = vec[rows].astype(np.float64).mean(axis=0)
        rep = fs[int(np.argmax(vec[rows] @ mean))]
        user = book.records.get(pid, {}).get("name") or ""
        named_by: Optional[str] = "user" if user else None
        name: Optional[str] = user or None
        if not user:
            name = majority(Counter(f.identity for f in fs if f.identity))
            named_by = "identity" if name else None
        out.append(Person(pid, name, named_by, fs, rep, sorted(merged.get(pid, []))))
    out.sort(key=lambda p: (-len(p.faces), p.id))
    return out


def name_person(person: int, name: str, model: Optional[str] = None, *, db: Optional[str] = None,
                uri: Optional[str] = None, token: Optional[str] = None, profile: Optional[str] = None,
                settings: Optional[Settings] = None, store=None) -> int:
    """Give person `person` a name ('' removes it; Python twin of `lookalike people name`). A person
    merged into another names that one. Returns the id named. Raises PeopleError for an unknown
    person or a name over 256 characters."""
    name = str(name).strip()
    if len(name) > 256:
        raise PeopleError(f"a person's name is at most 256 characters, got {len(name)}")
    settings = resolve(settings, db=db, uri=uri, token=token, profile=profile)
    store, own = _open(settings, store)
    try:
        book = _Book(store, _pick_model(store, model))
        if not book.known(int(person)):
            raise UnknownPerson(f"no person {person} (run lookalike people first)")
        pid = book.root(int(person))
        book.save_person(pid, name=name)
        return pid
    finally:
        if own:
            store.close()


def merge_persons(keep: int, others: Sequence[int], model: Optional[str] = None, *, db: Optional[str] = None,
                  uri: Optional[str] = None, token: Optional[str] = None, profile: Optional[str] = None,
                  settings: Optional[Settings] = None, store=None) -> int:
    """Merge persons `others` into `keep` (Python twin of `lookalike people merge KEEP OTHER...`):
    their faces become `keep`'s, now and after any recluster (each keeps pointing at `keep`). A
    name of `keep` stays; where it has none, it takes the first name among the others. Returns
    the id kept."""
    settings = resolve(settings, db=db, uri=uri, token=token, profile=profile)
    store, own = _open(settings, store)
    try:
        book = _Book(store, _pick_model(store, model))
        for pid in [keep, *others]:
            if not book.known(int(pid)):
                raise UnknownPerson(f"no person {pid} (run lookalike people first)")
        target = book.root(int(keep))
        roots = [book.root(int(p)) for p in others]
        if all(r == target for r in roots):
            raise PeopleError(f"persons {', '.join(map(str, others))} are already person {target}")
        name = book.records.get(target, {}).get("name") or next(
            (book.records[r]["name"] for r in roots if book.records.get(r, {}).get("name")), "")
        for r in dict.fromkeys(roots):
            if r != target:
                book.save_person(r, merged_into=target)
        book.save_person(target, name=name)
        return target
    finally:
        if own:
            store.close()


def render_people(result: PeopleResult, path: str, min_faces: int = 1, max_people: int = 60,
                  per_row: int = 10) -> str:
    """A contact sheet of the persons (largest first, at most `max_people`): one row each, its id,
    name and counts, then up to `per_row` of its faces, the representative first. Returns `path`."""
    from PIL import Image, ImageDraw, ImageOps

    from lookalike.query.render import THUMB, _font, source_crop

    shown = [p for p in result.people if len(p.faces) >= min_faces][:max_people]
    label_w, gap, margin, row_h = 190, 6, 12, THUMB + 12
    w = 2 * margin + label_w + per_row * (THUMB + gap)
    h = 2 * margin + max(1, len(shown)) * row_h + 20
    sheet = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, small = _font(15), _font(12)
    draw.text((margin, margin), f"{len(result.people)} persons ({result.model}); {len(result.unclustered)} faces "
                                f"below quality {result.min_quality:g} not clustered", fill=(20, 20, 20), font=small)
    for r, p in enumerate(shown):
        y = margin + 20 + r * row_h
        draw.text((margin, y + 4), f"person {p.id}", fill=(20, 20, 20), font=font)
        draw.text((margin, y + 26), (p.label or "(no name)")[:26], fill=(20, 20, 20), font=font)
        draw.text((margin, y + 48), f"{len(p.faces)} faces, {p.photos} photos", fill=(90, 90, 90), font=small)
        faces = ([p.representative] if p.representative else []) + [f for f in p.faces if f is not p.representative]
        for c, f in enumerate(faces[:per_row]):
            crop = source_crop(f.source, f.box)
            tile = (Image.new("RGB", (THUMB, THUMB), (170, 170, 170)) if crop is None else
                    ImageOps.pad(crop, (THUMB, THUMB), method=Image.Resampling.BILINEAR, color=(235, 235, 235)))
            sheet.paste(tile, (margin + label_w + c * (THUMB + gap), y))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
