"""Search the faces of a photo against the stored faces (the read path of `lookalike query`).

Every face of a query photo is detected, aligned and embedded by the same code ingestion uses
(`ingest.models`, one engine per process via `get_engine`), then all faces of the photo are
searched in ONE `Store.search` call per model (a batch of query vectors).

Filtered search stays accurate
------------------------------
On the default Milvus Lite profile the collections are FLAT (schemas: Lite scans its rows in
Python on every call, so an index buys little there): Milvus applies the filter and compares the
query with every row it keeps, exact at any selectivity, in the one search call (mode "exact").

An ANN index (HNSW on a server or with the lite-hnsw profile) needs more care.
Milvus Lite's HNSW loses true neighbours under a restrictive filter (measured on 20,000 uniform
random 128-d rows: a filter keeping 0.1 % gives recall@10 0.13 at ef 64 and 0.95 at ef 2048).
So a filtered search first probes the filter with one query capped at `exact_max_rows + 1` rows,
fetching ids and vectors:

* the filter keeps <= `exact_max_rows` rows -> those rows are searched exactly with numpy
  (mode "exact"); the probe IS the fetch, so a restrictive filter costs one query;
* the filter keeps more -> its selectivity is at least (exact_max_rows + 1) / rows, and the ANN
  search runs with ef raised to `ef_for(k, selectivity)` (mode "ann").

The probe replaces a `count(*)`: on Milvus Lite a filtered count costs as much as fetching the
rows it counts (measured: 1.1 s for a filter keeping 10,000 of 20,000 rows), while a capped probe
never costs more than `exact_max_rows` rows. A search whose only filter is the system filter of
`exclude_same_image` (it removes one image's faces, selectivity ~1) skips the probe. A Searcher
remembers a probe for PROBE_TTL seconds, so the photos of one run sharing a filter probe once.

Results (JSON shape)
--------------------
`PhotoResult.to_dict()` (one entry of `"photos"` in `lookalike query --json` / results.json)::

    RESULT_SCHEMA = {
      "path": str, "sha256": str, "width": int, "height": int,   # original upright pixels
      "detector": str, "models": [str], "top_k": int,
      "filter": str | None,            # the validated filter as rendered for Milvus
      "exclude_same_image": bool, "min_face": int, "min_score": float | None,
      "min_quality": float,            # stored faces below it were left out (0: every face)
      "error": str | None,             # one-line reason when the photo could not be read
      "faces_skipped_small": int,      # faces under --min-face
      "timings": {"read": float, "load_models": float, "detect": float, "embed": float,
                  "search": float, "total": float},   # seconds; load_models ~0 after the first photo
      "search": [{"model": str, "collection": str, "rows": int, "filtered_rows": int | None,
                  "mode": "ann" | "exact" | "empty", "ef": int | None, "seconds": float,
                  "note": str}],         # how the search was chosen
      "faces": [{
          "index": int, "box": [x, y, w, h], "confidence": float,
          "quality": float | None,     # ingest/quality.py; None with --min-quality 0
          "low_quality": bool,         # below min_quality: answered, but its matches mean little
          "matches": [MATCH],          # models[0]
          "matches_by_model": {model: [MATCH]},   # only when more than one model was searched
      }],
    }
    MATCH = {"rank": int, "score": float,   # cosine similarity (IP of L2-normalised vectors)
             "distance": float,             # 1 - score
             "id": str, "identity": str, "source_path": str, "image_sha256": str,
             "face_index": int, "box": [x, y, w, h], "confidence": float, "detector": str,
             "has_attributes": bool,        # false: the 40 attributes are unknown
             "attributes": {name: bool | null},  # the 40 CelebA attributes (null: unknown)
             "quality": float | null, "face_size": int | null,   # null: stored before quality existed
             "same_person": bool | null,    # score >= the model's calibrated threshold (schemas.VERDICTS);
                                            # null: the model has none (CLIP, DINOv2)
             "same_person_probability": float | null,   # calibrated P(same person | score)
             "explanations": [EXPLANATION]}  # only with --explain, for the top --explain-top matches
    EXPLANATION = {"method": "occlusion" | "gradcam" | "attention" | "layers",
                   "png": str,              # panel, relative to the --out directory
                   "seconds": float,        # time to compute it
                   "layer_scores": [float]} # "layers" only: query-match cosine per block

`RESULT_SCHEMA` / `MATCH_SCHEMA` below hold the same shape as Python types, and
`validate_result` checks a dict against them (used by the tests).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ingest.images import Decoded, ImageError, decode, read_bytes, sha256_bytes
from ingest.settings import Settings
from ingest.store import Store
from ingest.quality import DEFAULT_MIN_QUALITY, assess
from schemas import (ATTRIBUTES, EXACT_INDEXES, OUTPUT_FIELDS, VECTOR_FIELD, VERDICTS, Verdict, breadth_max,
                     collection_name, get_model)
from schemas.filters import CompiledFilter, combine, compile_filter, encode_literal

# ---------------------------------------------------------------------------------------------
# Tunables (measured on Milvus Lite, bench/bench_query.py)
# ---------------------------------------------------------------------------------------------
TOP_K_MAX = 1000
DEFAULT_TOP_K = 5
# Models tried, in order, when --model is not given.
DEFAULT_MODEL_ORDER = ("facenet", "dlib")
# A filter keeping at most this many rows is searched exactly (numpy over the fetched vectors).
# On Milvus Lite a probe costs a scan of the collection (~0.45 s at 200k rows) plus ~0.15 ms per
# row returned, so this also bounds what a broad filter pays before its ANN search (measured at
# 200k rows: overflowing a 2,000-row probe cost 0.77 s, a 1,000-row one ~0.55 s).
EXACT_MAX_ROWS = 1000
# ANN breadth under a filter keeping a fraction s of the rows: ef = EF_FACTOR * k / s, bounded to
# [profile ef, EF_MAX]. Measured on 200,000 uniform random 128-d rows (the hardest case for
# HNSW): ef 8192 gives recall@10 0.99-1.0 for every selectivity from 0.5 % to 100 %, ef 4096
# 0.92-0.99; search time grows from ~0.3 s (ef 128) to ~0.5 s (ef 8192) for 10 queries.
EF_FACTOR = 10.0
EF_MAX = 8192
# Seconds a filter probe is reused (the photos of one `lookalike query` run share a filter).
PROBE_TTL = 60.0
# Search parameter that sets the breadth of the ANN search, per index type.
_BREADTH_PARAM = {"HNSW": "ef", "HNSW_SQ": "ef", "GPU_CAGRA": "itopk_size"}


class QueryError(ValueError):
    """A query that cannot run as asked (unknown model, missing collection, bad -k); one line."""


# ---------------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------------
Box = Tuple[int, int, int, int]


@dataclass
class Match:
    rank: int
    score: float  # cosine similarity
    distance: float  # 1 - score
    id: str
    identity: str
    source_path: str
    image_sha256: str
    face_index: int
    box: Box
    confidence: float
    detector: str
    has_attributes: bool
    attributes: Dict[str, Optional[bool]]  # None: unknown (a face without CelebA annotation)
    quality: Optional[float] = None  # None: stored before quality existed
    face_size: Optional[int] = None
    same_person: Optional[bool] = None  # None: no calibrated threshold for this model
    same_person_probability: Optional[float] = None
    explanations: List[Any] = field(default_factory=list, repr=False)  # query.explain.Explanation

    @classmethod
    def from_row(cls, rank: int, score: float, row: Dict[str, Any], verdict: Optional[Verdict] = None) -> "Match":
        known = bool(row.get("has_attributes", False))
        same, prob = judge(score, verdict)
        return cls(
            rank=rank, score=float(score), distance=float(1.0 - score), id=str(row["id"]),
            identity=str(row.get("identity", "")), source_path=str(row.get("source_path", "")),
            image_sha256=str(row.get("image_sha256", "")), face_index=int(row.get("face_index", 0)),
            box=(int(row.get("box_x", 0)), int(row.get("box_y", 0)), int(row.get("box_w", 0)),
                 int(row.get("box_h", 0))),
            confidence=float(row.get("confidence", 0.0)), detector=str(row.get("detector", "")),
            has_attributes=known,
            attributes={a: (bool(row.get(a)) if known and row.get(a) is not None else None) for a in ATTRIBUTES},
            quality=None if row.get("quality") is None else round(float(row["quality"]), 4),
            face_size=None if row.get("face_size") is None else int(row["face_size"]),
            same_person=same, same_person_probability=prob,
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "rank": self.rank, "score": self.score, "distance": self.distance, "id": self.id,
            "identity": self.identity, "source_path": self.source_path,
            "image_sha256": self.image_sha256, "face_index": self.face_index, "box": list(self.box),
            "confidence": self.confidence, "detector": self.detector,
            "has_attributes": self.has_attributes, "attributes": dict(self.attributes),
            "quality": self.quality, "face_size": self.face_size, "same_person": self.same_person,
            "same_person_probability": self.same_person_probability,
            **({"explanations": [e.to_dict() for e in self.explanations]} if self.explanations else {}),
        }


@dataclass
class QueryFace:
    index: int  # 0-based, detector order (left to right); shown as index + 1
    box: Box  # original upright pixels of the query photo
    confidence: float
    matches_by_model: Dict[str, List[Match]] = field(default_factory=dict)
    dbox: Optional[Box] = field(default=None, repr=False)  # decoded-image pixels (rendering)
    quality: Optional[float] = None
    low_quality: bool = False  # below the search's minimum quality: answered, but treat with care

    @property
    def same_person(self) -> List[Match]:
        """Matches (first model) judged the same person; empty: nobody in the collection is."""
        return [m for m in self.matches if m.same_person]

    @property
    def matches(self) -> List[Match]:
        """Matches of the first searched model."""
        return next(iter(self.matches_by_model.values()), [])

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "index": self.index, "box": list(self.box), "confidence": self.confidence,
            "quality": self.quality, "low_quality": self.low_quality,
            "matches": [m.to_dict() for m in self.matches],
        }
        if len(self.matches_by_model) > 1:
            out["matches_by_model"] = {k: [m.to_dict() for m in v] for k, v in self.matches_by_model.items()}
        return out


@dataclass
class SearchInfo:
    """How one model's search ran."""

    model: str
    collection: str
    rows: int  # rows in the collection
    filtered_rows: Optional[int]  # rows the filter keeps; None when not probed (no user filter)
    mode: str  # "ann" | "exact" | "empty"
    ef: Optional[int]  # breadth parameter given to the ANN search
    seconds: float
    note: str = ""  # how the search was chosen, for people reading --json

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PhotoResult:
    path: str
    sha256: str
    width: int
    height: int
    detector: str
    models: List[str]
    top_k: int
    filter: Optional[str]
    exclude_same_image: bool = False
    min_face: int = 0
    min_score: Optional[float] = None
    min_quality: float = 0.0
    faces: List[QueryFace] = field(default_factory=list)
    faces_skipped_small: int = 0
    search: List[SearchInfo] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    image: Optional[Decoded] = field(default=None, repr=False)  # kept for rendering when asked
    notes: List[str] = field(default_factory=list, repr=False)  # e.g. explanation methods skipped

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "path": self.path, "sha256": self.sha256, "width": self.width, "height": self.height,
            "detector": self.detector, "models": list(self.models), "top_k": self.top_k,
            "filter": self.filter, "exclude_same_image": self.exclude_same_image,
            "min_face": self.min_face, "min_score": self.min_score, "min_quality": self.min_quality,
            "error": self.error,
            "faces_skipped_small": self.faces_skipped_small,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "search": [s.to_dict() for s in self.search],
            "faces": [f.to_dict() for f in self.faces],
        }


def results_document(results: Sequence[PhotoResult]) -> Dict[str, Any]:
    """The document `--json` prints and `--out` writes as results.json."""
    return {"version": 1, "photos": [r.to_dict() for r in results]}


# Shape of to_dict(), as Python types (a tuple means "one of"); see the module docstring.
MATCH_SCHEMA: Dict[str, Any] = {
    "rank": int, "score": float, "distance": float, "id": str, "identity": str,
    "source_path": str, "image_sha256": str, "face_index": int, "box": [int], "confidence": float,
    "detector": str, "has_attributes": bool, "attributes": {"*": (bool, type(None))},
    "quality": (float, type(None)), "face_size": (int, type(None)),
    "same_person": (bool, type(None)), "same_person_probability": (float, type(None)),
    "explanations?": [{"method": str, "png": str, "seconds": float, "layer_scores?": [float]}],
}
FACE_SCHEMA: Dict[str, Any] = {
    "index": int, "box": [int], "confidence": float, "quality": (float, type(None)), "low_quality": bool,
    "matches": [MATCH_SCHEMA],
    "matches_by_model?": {"*": [MATCH_SCHEMA]},
}
SEARCH_SCHEMA: Dict[str, Any] = {
    "model": str, "collection": str, "rows": int, "filtered_rows": (int, type(None)),
    "mode": str, "ef": (int, type(None)), "seconds": float, "note": str,
}
RESULT_SCHEMA: Dict[str, Any] = {
    "path": str, "sha256": str, "width": int, "height": int, "detector": str, "models": [str],
    "top_k": int, "filter": (str, type(None)), "exclude_same_image": bool, "min_face": int,
    "min_score": (float, int, type(None)), "min_quality": (float, int), "error": (str, type(None)),
    "faces_skipped_small": int,
    "timings": {"*": float}, "search": [SEARCH_SCHEMA], "faces": [FACE_SCHEMA],
}
DOCUMENT_SCHEMA: Dict[str, Any] = {"version": int, "photos": [RESULT_SCHEMA]}


def validate_result(value: Any, schema: Any = DOCUMENT_SCHEMA, where: str = "$") -> List[str]:
    """Problems of `value` against a schema above ([] when it conforms)."""
    problems: List[str] = []
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected object, got {type(value).__name__}"]
        if "*" in schema:
            for k, v in value.items():
                problems += validate_result(v, schema["*"], f"{where}.{k}")
            return problems
        keys = {k.rstrip("?"): k.endswith("?") for k in schema}
        for k, optional in keys.items():
            if k not in value:
                if not optional:
                    problems.append(f"{where}: missing key '{k}'")
                continue
            sub = schema[k + "?"] if optional else schema[k]
            problems += validate_result(value[k], sub, f"{where}.{k}")
        extra = set(value) - set(keys)
        if extra:
            problems.append(f"{where}: unexpected keys {sorted(extra)}")
        return problems
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: expected list, got {type(value).__name__}"]
        for i, v in enumerate(value):
            problems += validate_result(v, schema[0], f"{where}[{i}]")
        return problems
    types = schema if isinstance(schema, tuple) else (schema,)
    ok = any(isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)) for t in types)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True  # JSON does not distinguish 1.0 from 1
    if not ok:
        problems.append(f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__}")
    return problems


# ---------------------------------------------------------------------------------------------
# Search policy
# ---------------------------------------------------------------------------------------------
def check_top_k(k: Any) -> int:
    try:
        kk = int(k)
        if str(k).strip() != str(kk) and not isinstance(k, int):
            raise ValueError
    except (TypeError, ValueError):
        raise QueryError(f"-k/--top-k must be an integer between 1 and {TOP_K_MAX}, got {k!r}") from None
    if not 1 <= kk <= TOP_K_MAX:
        raise QueryError(f"-k/--top-k must be between 1 and {TOP_K_MAX}, got {kk}")
    return kk


def check_min_quality(q: Any) -> float:
    """--min-quality: None -> the default; a number in [0, 1]."""
    if q is None:
        return DEFAULT_MIN_QUALITY
    try:
        v = float(q)
    except (TypeError, ValueError):
        raise QueryError(f"--min-quality must be a number between 0 and 1, got {q!r}") from None
    if not 0.0 <= v <= 1.0:
        raise QueryError(f"--min-quality must be between 0 and 1, got {v:g}")
    return v


def ef_for(k: int, selectivity: float, base: int, ef_max: int = EF_MAX) -> int:
    """ANN breadth for top-k under a filter keeping `selectivity` of the rows."""
    s = min(1.0, max(selectivity, 1e-9))
    want = math.ceil(EF_FACTOR * k / s)
    return int(min(max(base, k, want), max(ef_max, k, base)))


def exact_topk(queries: np.ndarray, vectors: np.ndarray, ids: Sequence[str], k: int
               ) -> List[List[Tuple[str, float]]]:
    """Brute-force top-k by inner product; ties broken by id (deterministic)."""
    if len(ids) == 0:
        return [[] for _ in range(len(queries))]
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T
    ids_arr = np.asarray(ids)
    out = []
    kk = min(k, len(ids))
    for row in scores:
        if kk < len(ids):
            # take everything tied with the k-th score so the id tie-break is exact
            kth = np.partition(row, len(ids) - kk)[len(ids) - kk]
            cand = np.nonzero(row >= kth)[0]
        else:
            cand = np.arange(len(ids))
        order = sorted(cand, key=lambda j: (-row[j], ids_arr[j]))[:kk]
        out.append([(str(ids_arr[j]), float(row[j])) for j in order])
    return out


def judge(score: float, verdict: Optional[Verdict]) -> Tuple[Optional[bool], Optional[float]]:
    """(same person?, P(same person)) of a score under a model's verdict; (None, None) without one."""
    if verdict is None:
        return None, None
    prob = None
    if verdict.logistic is not None:
        a, b = verdict.logistic
        prob = round(1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, a * score + b)))), 4)
    return bool(score >= verdict.threshold), prob


def verdict_for(model: str) -> Optional[Verdict]:
    """The calibrated same-person verdict of a model key (none for block features `_l<N>`)."""
    spec = get_model(model)
    return VERDICTS.get(spec.name)


def quality_filter(min_quality: float) -> str:
    """System filter keeping stored faces of at least this quality (value encoded, never concatenated)."""
    return f"quality >= {encode_literal(float(min_quality))}"


def same_image_filter(sha256: str) -> str:
    """System filter excluding one image's faces (the value is encoded, never concatenated)."""
    return f"image_sha256 != {encode_literal(sha256)}"


# ---------------------------------------------------------------------------------------------
# Searcher: a store + the process-wide engine
# ---------------------------------------------------------------------------------------------
class Searcher:
    """Holds one Store and searches photos or vectors against it. Models load once per process
    (`ingest.models.get_engine`); a Searcher can be reused for many photos."""

    def __init__(self, settings: Optional[Settings] = None, store: Optional[Store] = None,
                 exact_max_rows: int = EXACT_MAX_ROWS, ef_max: int = EF_MAX,
                 explicit_sources: Iterable[str] = ()):
        self.settings = settings or Settings()
        # transformer bases ("clip", "dinov2") whose weights the caller chose (--clip-model ...)
        self.explicit_sources = set(explicit_sources)
        self._own_store = store is None
        self.store = store or Store(self.settings.db, self.settings.uri, self.settings.token,
                                    self.settings.profile)
        self.exact_max_rows = exact_max_rows
        self.ef_max = ef_max
        self._rows: Dict[str, int] = {}
        self._engine_settings: Dict[Tuple[str, ...], Settings] = {}
        self._probes: Dict[Tuple[str, str, str], Tuple[float, Any]] = {}
        # Filter probes started before the faces are embedded (see prefetch).
        self._inflight: Dict[Tuple[str, str, str], Any] = {}
        self._pool: Any = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._inflight.clear()
        if self._own_store:
            self.store.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- models ----------------------------------------------------------------------------------
    def resolve_models(self, model: Optional[Union[str, Sequence[str]]] = None,
                       layer: Optional[int] = None) -> List[str]:
        """Models to search: `model` is a name, a comma list, 'all' or None (the first of
        facenet, dlib present, else the first collection); `layer` picks `<model>_l<N>`."""
        from schemas import get_model, layer_key

        present = self.store.models()
        where = self.settings.uri or self.settings.db
        if isinstance(model, str):
            wanted = [m.strip() for m in model.split(",") if m.strip()]
        else:
            wanted = list(model or [])
        if not present:
            raise QueryError(f"no face collections in {where}; ingest first: lookalike ingest SOURCE --db {where}")
        if wanted == ["all"]:
            return present
        if not wanted:
            wanted = [self._default_model(present)]
        out = []
        for m in wanted:
            try:
                key = layer_key(m, layer)
                get_model(key)
            except KeyError:
                from schemas import MODELS

                raise QueryError(f"unknown model '{m}' (known: {', '.join(MODELS)}, "
                                 f"<clip|dinov2>_l<N>, all)") from None
            if key not in present:
                hint = f"--models {get_model(key).base}" + (f" --layer {layer}" if key != m else "")
                raise QueryError(f"no collection {collection_name(key)} in DB; ingest with {hint}")
            out.append(key)
        return list(dict.fromkeys(out))

    def _default_model(self, present: List[str]) -> str:
        """The first of facenet, dlib, then the other collections, that holds faces and whose
        weights are here (files checked, nothing loaded); if none is both, the first that holds
        faces (its search says what is missing), else the first."""
        from ingest.models import weights_present

        order = [m for m in DEFAULT_MODEL_ORDER if m in present] + \
                [m for m in present if m not in DEFAULT_MODEL_ORDER]
        first_filled = None
        for m in order:
            if self.rows(m) > 0:
                if weights_present(m, self.settings):
                    return m
                first_filled = first_filled or m
        return first_filled or order[0]

    def engine(self, models: Sequence[str], detector: Optional[str] = None):
        """The process-wide engine (models load once per process). A transformer model embeds
        with the weights its collection records, unless the caller chose them explicitly."""
        from ingest.models import get_engine
        from schemas import get_model

        key = tuple(models)
        settings = self._engine_settings.get(key)
        if settings is None:
            settings = self.settings
            for m in models:
                spec = get_model(m)
                if spec.is_transformer and spec.base not in self.explicit_sources:
                    recorded = self.store.model_source(m)
                    if recorded:
                        settings = settings.with_(**{f"{spec.base}_model": recorded})
            self._engine_settings[key] = settings
        engine = get_engine(settings, detector or settings.detector, list(models))
        return engine.load()

    def rows(self, model: str) -> int:
        name = collection_name(model)
        if name not in self._rows:
            self._rows[name] = self.store.count(name)
        return self._rows[name]

    def system_filter(self, model: str, exclude_sha256: Optional[str], min_quality: float) -> str:
        """The filters the product adds to the user's: one image's faces left out, and faces below
        the minimum quality (where the collection has quality; one written before it has not)."""
        parts = [same_image_filter(exclude_sha256) if exclude_sha256 else ""]
        if min_quality > 0 and "quality" in self.store.field_names(collection_name(model)):
            parts.append(quality_filter(min_quality))
        return combine(parts)

    # -- vectors ---------------------------------------------------------------------------------
    def search_vectors(self, model: str, vectors: np.ndarray, top_k: int,
                       flt: Optional[CompiledFilter] = None, extra_filter: str = "",
                       min_score: Optional[float] = None,
                       output_fields: Optional[List[str]] = None) -> Tuple[List[List[Match]], SearchInfo]:
        """Top-k matches for each query vector (one batched search), and how it ran."""
        t0 = time.perf_counter()
        k = check_top_k(top_k)
        q = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        name = collection_name(model)
        fields = output_fields if output_fields is not None else OUTPUT_FIELDS
        total = self.rows(model)
        info = SearchInfo(model, name, total, None, "ann", None, 0.0)
        if len(q) == 0:
            info.mode = "empty"
            return [], info
        hits: List[List[Tuple[float, Dict[str, Any]]]]
        index = self.store.index_type(name)
        if index in EXACT_INDEXES:
            # Exact whatever the filter: Milvus applies it and compares every row it keeps.
            hits = self._ann(model, q, k, flt, extra_filter, fields, None, info)
            info.mode = "empty" if flt is not None and not any(hits) else "exact"
            info.note = (f"{index} index: exact search" + (" with the filter" if flt is not None else "")
                         + ("; the filter keeps no row" if info.mode == "empty" else ""))
        elif flt is None:
            # No user filter: plain ANN (the exclusion filter, if any, removes one image's faces).
            hits = self._ann(model, q, k, None, extra_filter, fields, None, info)
            info.note = f"no filter: ANN search ({index}) with its profile's parameters"
        else:
            probe = self._probe(name, flt, extra_filter)
            if probe is not None:
                n_keep = len(probe[0])
                info.filtered_rows = n_keep
                info.mode = "exact" if n_keep else "empty"
                info.note = (f"filter keeps {n_keep} rows (<= {self.exact_max_rows}): exact search"
                             if n_keep else "filter keeps no row")
                hits = self._exact(model, q, k, probe, fields)
            else:
                selectivity = min(1.0, (self.exact_max_rows + 1) / max(total, 1))
                hits = self._ann(model, q, k, flt, extra_filter, fields, selectivity, info)
                info.note = (f"filter keeps > {self.exact_max_rows} rows (>= {100 * selectivity:.2g} %): "
                             + (f"ANN search, ef raised to {info.ef}" if info.ef is not None else
                                f"ANN search; {index} has no breadth parameter "
                                f"to raise, so neighbours may be missed"))
        verdict = verdict_for(model)
        out: List[List[Match]] = []
        for per in hits:
            ms = [(s, r) for s, r in per if min_score is None or s >= min_score]
            out.append([Match.from_row(i + 1, s, r, verdict) for i, (s, r) in enumerate(ms)])
        info.seconds = time.perf_counter() - t0
        return out, info

    def _probe(self, name: str, flt: CompiledFilter, extra: str) -> Optional[Tuple[List[str], np.ndarray]]:
        """(ids, vectors) of the rows the filter keeps, or None when there are more than
        exact_max_rows. Remembered for PROBE_TTL seconds, so the photos of one run that share a
        filter pay for one probe."""
        cap = self.exact_max_rows
        if cap <= 0:
            return None
        key = (name, flt.render(), extra)
        if self._fresh_probe(key):
            return self._probes[key][1]
        fut = self._inflight.pop(key, None)
        out = fut.result() if fut is not None else self._fetch_probe(name, flt, extra)
        if len(self._probes) >= 16:
            self._probes.pop(next(iter(self._probes)))
        self._probes[key] = (time.monotonic(), out)
        return out

    def _fresh_probe(self, key: Tuple[str, str, str]) -> bool:
        hit = self._probes.get(key)
        return hit is not None and time.monotonic() - hit[0] < PROBE_TTL

    def _fetch_probe(self, name: str, flt: CompiledFilter, extra: str) -> Optional[Tuple[List[str], np.ndarray]]:
        cap = self.exact_max_rows
        rows = self.store.query(name, ["id", VECTOR_FIELD], flt, extra, limit=cap + 1)
        return None if len(rows) > cap else (
            [r["id"] for r in rows],
            np.asarray([r[VECTOR_FIELD] for r in rows], dtype=np.float32) if rows
            else np.zeros((0, 0), dtype=np.float32))

    def prefetch(self, models: Sequence[str], flt: Optional[CompiledFilter], extra: str = "") -> None:
        """Start the filter probes of `models` in a background thread, so they
        run while the photo's faces are detected and embedded. The probe is a scan in the Milvus
        process (~0.2-0.5 s on Lite at 200k rows) and the embedder holds this process' core for
        ~80 ms a face: done one after the other they add up, overlapped the probe is hidden."""
        if flt is None or self.exact_max_rows <= 0:
            return
        from concurrent.futures import ThreadPoolExecutor

        for m in models:
            name = collection_name(m)
            key = (name, flt.render(), extra)
            if key in self._inflight or self._fresh_probe(key) or self._exact_index(name):
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-probe")
            if len(self._inflight) >= 16:  # started but never used (e.g. photos without faces)
                self._inflight.pop(next(iter(self._inflight)))
            self._inflight[key] = self._pool.submit(self._fetch_probe, name, flt, extra)

    def _exact_index(self, name: str) -> bool:
        try:
            return self.store.index_type(name) in EXACT_INDEXES
        except Exception:  # noqa: BLE001 - a missing collection is reported by the search itself
            return False

    def clear_cache(self) -> None:
        """Forget remembered filter probes (after writing to the collection, or to time them)."""
        self._probes.clear()

    def _exact(self, model: str, q: np.ndarray, k: int, probe: Tuple[List[str], np.ndarray],
               fields: List[str]) -> List[List[Tuple[float, Dict[str, Any]]]]:
        ids, vecs = probe
        if not ids:
            return [[] for _ in range(len(q))]
        top = exact_topk(q, vecs, ids, k)
        want = sorted({i for per in top for i, _ in per})
        got = {r["id"]: r for r in self.store.get(model, want, output_fields=list(dict.fromkeys(["id"] + fields)))}
        return [[(s, got[i]) for i, s in per if i in got] for per in top]

    def _ann(self, model: str, q: np.ndarray, k: int, flt: Optional[CompiledFilter], extra: str,
             fields: List[str], selectivity: Optional[float], info: SearchInfo
             ) -> List[List[Tuple[float, Dict[str, Any]]]]:
        index = self.store.index_type(collection_name(model))
        params = self.store.search_params(collection_name(model))
        key = _BREADTH_PARAM.get(index)
        if key and key in params:
            base = int(params[key])
            params[key] = base if selectivity is None else ef_for(k, selectivity, base, self.ef_max)
            # never below k, never above what the index accepts (CAGRA: itopk_size <= 1024)
            params[key] = min(max(int(params[key]), k), breadth_max(index) or EF_MAX)
            info.ef = int(params[key])
        res = self.store.search(model, q, k, flt, extra_filter=extra, output_fields=fields,
                                search_params=params)
        out = []
        for per in res:
            row_hits = []
            for h in per:
                ent = dict(h.get("entity") or {})
                ent.setdefault("id", h.get("id"))
                row_hits.append((float(h.get("distance")), ent))
            out.append(row_hits)
        return out

    # -- photos ----------------------------------------------------------------------------------
    def search_photo(self, photo: Union[str, Path], *, model: Optional[Union[str, Sequence[str]]] = None,
                     top_k: int = DEFAULT_TOP_K, filter: Optional[Union[str, CompiledFilter]] = None,
                     where: Iterable[str] = (), where_not: Iterable[str] = (),
                     exclude_same_image: bool = False, min_face: int = 0,
                     min_score: Optional[float] = None, detector: Optional[str] = None,
                     keep_image: bool = False, models: Optional[List[str]] = None,
                     explain: Optional[str] = None, explain_top: int = 3,
                     explain_dir: Optional[Union[str, Path]] = None,
                     min_quality: Optional[float] = None) -> PhotoResult:
        """Detect every face of `photo`, search each model once with all faces.

        Stored faces below `min_quality` (default DEFAULT_MIN_QUALITY; 0 keeps every face, e.g. to
        find oneself in one's own photo archive) are left out; a query face below it is still
        answered and marked `low_quality`.

        `explain` ("occlusion", "gradcam", "attention", "layers", a comma list or "all") adds
        heat-map explanations to the top `explain_top` matches of every face (query.explain),
        with PNG panels written under `explain_dir`/explain/ when it is given.

        Raises ImageError (unreadable photo, message starts with the path), QueryError,
        FilterError, StoreError, WeightsMissing/ModelError. A photo without a face gives a
        result with `faces == []`.
        """
        k = check_top_k(top_k)
        q_min = check_min_quality(min_quality)
        flt = filter if isinstance(filter, CompiledFilter) else compile_filter(filter, where, where_not)
        models = models or self.resolve_models(model)
        det = detector or self.settings.detector
        path = str(photo)
        timings: Dict[str, float] = {}
        t0 = t = time.perf_counter()
        try:  # read first: an unreadable photo fails before any model loads
            data = read_bytes(path)
            sha = sha256_bytes(data)
            image = decode(data)
            del data
        except ImageError as e:
            raise ImageError(f"{path}: {e}") from None
        timings["read"] = time.perf_counter() - t
        extras = {m: self.system_filter(m, sha if exclude_same_image else None, q_min) for m in models}
        for m in models:
            self.prefetch([m], flt, extras[m])
        t = time.perf_counter()
        engine = self.engine(models, det)
        timings["load_models"] = time.perf_counter() - t  # ~0 once loaded in this process
        t = time.perf_counter()
        found = engine.detector.detect(image, min_face=0)
        faces = [f for f in found if f.size >= min_face]
        for i, f in enumerate(faces):
            f.index = i
        timings["detect"] = time.perf_counter() - t
        res = PhotoResult(path=path, sha256=sha, width=image.width, height=image.height, detector=det,
                          models=list(models), top_k=k, filter=flt.render() if flt else None,
                          exclude_same_image=exclude_same_image, min_face=min_face, min_score=min_score,
                          min_quality=q_min, faces_skipped_small=len(found) - len(faces), timings=timings,
                          image=image if keep_image else None)
        mark = q_min or DEFAULT_MIN_QUALITY
        res.faces = []
        for f in faces:
            q = assess(image, f).score
            res.faces.append(QueryFace(f.index, tuple(int(v) for v in f.box), float(f.confidence),
                                       dbox=tuple(int(v) for v in f.dbox), quality=q, low_quality=q < mark))
        timings["embed"] = timings["search"] = 0.0
        if not faces:
            timings["total"] = time.perf_counter() - t0
            return res
        for m in models:
            t = time.perf_counter()
            vecs = engine.embedders[m].embed(image, faces)
            timings["embed"] += time.perf_counter() - t
            t = time.perf_counter()
            matches, info = self.search_vectors(m, vecs, k, flt, extras[m], min_score)
            timings["search"] += time.perf_counter() - t
            res.search.append(info)
            for qf, ms in zip(res.faces, matches):
                qf.matches_by_model[m] = ms
        if explain:
            from query.explain import explain_photo, parse_methods  # lazy: off by default

            t = time.perf_counter()
            res.notes += explain_photo(self, engine, image, faces, res, parse_methods(explain),
                                       max(0, int(explain_top)), explain_dir)
            timings["explain"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return res


def search_photo(photo: Union[str, Path], *, db: Optional[str] = None, uri: Optional[str] = None,
                 token: Optional[str] = None, profile: Optional[str] = None,
                 model: Optional[Union[str, Sequence[str]]] = None, top_k: int = DEFAULT_TOP_K,
                 filter: Optional[str] = None, where: Iterable[str] = (), where_not: Iterable[str] = (),
                 exclude_same_image: bool = False, min_face: int = 0, min_score: Optional[float] = None,
                 detector: Optional[str] = None, settings: Optional[Settings] = None,
                 store: Optional[Store] = None, keep_image: bool = False, explain: Optional[str] = None,
                 explain_top: int = 3, explain_dir: Optional[str] = None,
                 min_quality: Optional[float] = None) -> PhotoResult:
    """Python twin of `lookalike query PHOTO`: the faces of one photo and their top-k matches.

    >>> r = search_photo("group.jpg", db="lookalike.db", top_k=5, filter="Smiling == true")
    >>> [(f.index, f.matches[0].identity, round(f.matches[0].score, 2)) for f in r.faces]
    """
    settings = (settings or Settings()).with_(db=db, uri=uri, token=token, profile=profile, detector=detector)
    with Searcher(settings, store=store) as s:
        return s.search_photo(photo, model=model, top_k=top_k, filter=filter, where=where,
                              where_not=where_not, exclude_same_image=exclude_same_image,
                              min_face=min_face, min_score=min_score, keep_image=keep_image,
                              explain=explain, explain_top=explain_top, explain_dir=explain_dir,
                              min_quality=min_quality)


def search_photos(photos: Sequence[Union[str, Path]], **kwargs) -> List[PhotoResult]:
    """search_photo for several photos over one store; raises on the first unreadable photo."""
    keys = ("db", "uri", "token", "profile", "detector")
    conn = {k: kwargs.pop(k, None) for k in keys}
    settings = (kwargs.pop("settings", None) or Settings()).with_(**conn)
    store = kwargs.pop("store", None)
    with Searcher(settings, store=store) as s:
        models = s.resolve_models(kwargs.pop("model", None))
        return [s.search_photo(p, models=models, **kwargs) for p in photos]
