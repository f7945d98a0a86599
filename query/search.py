"""Search the faces of a photo against the stored faces (the read path of `lookalike query`).

Every face of a query photo is detected, aligned and embedded by the same code ingestion uses
(`lookalike.ingest.analysis.Analyzer`, models built once per process), then all faces of the photo are
searched in ONE `Store.search` call per model (a batch of query vectors). When a filtered search
is exact and how wide an ANN search goes: query/policy.py.

Results: query/results.py (typed models; the JSON shape of --json, results.json and the web API).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from lookalike.ingest.analysis import AnalysisError, Analyzer
from lookalike.ingest.images import ImageError, decode, read_bytes, sha256_bytes
from lookalike.ingest.quality import DEFAULT_MIN_QUALITY
from lookalike.ingest.settings import Settings, resolve
from lookalike.ingest.store import Store
from lookalike.query.policy import (  # noqa: F401  (re-exported: the policy used to live here)
    _BREADTH_PARAM,
    DEFAULT_MODEL_ORDER,
    EF_FACTOR,
    EF_MAX,
    EXACT_MAX_ROWS,
    PROBE_TTL,
    ef_for,
    exact_topk,
    quality_filter,
    same_image_filter,
)
from lookalike.query.results import (  # noqa: F401
    DEFAULT_TOP_K,
    TOP_K_MAX,
    Match,
    PersonAnswer,
    PhotoResult,
    QueryError,
    QueryFace,
    SearchInfo,
    check_min_quality,
    check_top_k,
    judge,
    results_document,
    verdict_for,
)
from lookalike.schemas import EXACT_INDEXES, OUTPUT_FIELDS, VECTOR_FIELD, breadth_max, collection_name, get_model
from lookalike.schemas.filters import CompiledFilter, combine, compile_filter


# ---------------------------------------------------------------------------------------------
# Searcher: a store + the process-wide engine
# ---------------------------------------------------------------------------------------------
class Searcher:
    """Holds one Store and searches photos or vectors against it. Models load once per process
    (`lookalike.ingest.analysis.Analyzer`); a Searcher can be reused for many photos."""

    def __init__(self, settings: Optional[Settings] = None, store: Optional[Store] = None,
                 exact_max_rows: int = EXACT_MAX_ROWS, ef_max: int = EF_MAX,
                 explicit_sources: Iterable[str] = ()):
        self.settings = resolve(settings)
        # transformer bases ("clip", "dinov2") whose weights the caller chose (--clip-model ...)
        self.explicit_sources = set(explicit_sources)
        self._own_store = store is None
        self.store = store or Store.from_settings(self.settings)
        self.exact_max_rows = exact_max_rows
        self.ef_max = ef_max
        self._rows: Dict[str, int] = {}
        self._engine_settings: Dict[Tuple[str, ...], Settings] = {}
        self._heads_checked: set = set()  # (head model, digest) checked against its collection
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
        from lookalike.schemas import layer_key

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
                from lookalike.schemas import MODELS

                raise QueryError(f"unknown model '{m}' (known: {', '.join(MODELS)}, "
                                 f"<clip|dinov2>_l<N>, all)") from None
            if key not in present:
                head_of = get_model(key).head_of
                if head_of:
                    raise QueryError(f"no collection {collection_name(key)} in DB; train it with "
                                     f"lookalike train-head --model {head_of}")
                hint = f"--models {get_model(key).base}" + (f" --layer {layer}" if key != m else "")
                raise QueryError(f"no collection {collection_name(key)} in DB; ingest with {hint}")
            out.append(key)
        return list(dict.fromkeys(out))

    def _default_model(self, present: List[str]) -> str:
        """The first of facenet, dlib, then the other collections, that holds faces and whose
        weights are here (files checked, nothing loaded); if none is both, the first that holds
        faces (its search says what is missing), else the first."""
        from lookalike.ingest.models import weights_present

        order = [m for m in DEFAULT_MODEL_ORDER if m in present] + \
                [m for m in present if m not in DEFAULT_MODEL_ORDER]
        first_filled = None
        for m in order:
            if self.rows(m) > 0:
                if weights_present(m, self.settings):
                    return m
                first_filled = first_filled or m
        return first_filled or order[0]

    def analyzer(self, models: Sequence[str], detector: Optional[str] = None) -> Analyzer:
        """The photo analysis of these models (models load once per process). Each model embeds as
        its collection records (a transformer model's weights, dlib's int8 or fp32 variant), unless
        the caller chose a source explicitly."""
        key = tuple(models)
        settings = self._engine_settings.get(key)
        if settings is None:
            from lookalike.ingest.models import settings_for_source

            settings = self.settings
            for m in models:
                spec = get_model(m)
                if spec.base not in self.explicit_sources:
                    recorded = self.store.model_source(m)
                    if recorded:
                        settings = settings_for_source(m, recorded, settings)
            self._engine_settings[key] = settings
        analyzer = Analyzer(settings, detector or settings.detector, list(models)).load()
        for m in models:
            emb: Any = analyzer.model(m)  # a HeadEmbedder where the model is a head
            if get_model(m).head_of and (m, emb.head.digest) not in self._heads_checked:
                from lookalike.ingest.head import check_head

                # the head file must be the one its collection was written with
                check_head(self.store, emb.head, emb.path)
                self._heads_checked.add((m, emb.head.digest))
        return analyzer

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
        info = SearchInfo(model=model, collection=name, rows=total, mode="ann", seconds=0.0)
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
        # The faces this search compared against: the filter's rows where probed, else all rows.
        searched = info.filtered_rows if info.filtered_rows is not None else total
        if verdict is not None:
            info.same_person_threshold = round(verdict.threshold_for(searched), 4)
        out: List[List[Match]] = []
        for per in hits:
            ms = [(s, r) for s, r in per if min_score is None or s >= min_score]
            out.append([Match.from_row(i + 1, s, r, verdict, searched) for i, (s, r) in enumerate(ms)])
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
        process and the embedder holds this process' core for every face: done one after the other
        they add up, overlapped the probe is hidden (bench/bench_query.py times the steps;
        bench/results/query.txt)."""
        if flt is None or self.exact_max_rows <= 0:
            return
        for m in models:
            name = collection_name(m)
            key = (name, flt.render(), extra)
            if key in self._inflight or self._fresh_probe(key) or self._exact_index(name):
                continue
            if len(self._inflight) >= 16:  # started but never used (e.g. photos without faces)
                self._inflight.pop(next(iter(self._inflight)))
            self._inflight[key] = self._background().submit(self._fetch_probe, name, flt, extra)

    def preload(self, models: Sequence[str]) -> None:
        """Load the collections of `models` in the background thread, while the face models load
        and the photo's faces are found: a first query in a new process otherwise pays both one
        after the other. A failure there is left to the search, which loads again and reports it."""
        for m in models:
            name = collection_name(m)
            if not self.store.loaded(name):
                self._background().submit(self.store.load, name)

    def _background(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-probe")
        return self._pool

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
                row_hits.append((float(h["distance"]), ent))
            out.append(row_hits)
        return out

    # -- photos ----------------------------------------------------------------------------------
    def search_photo(self, photo: Union[str, Path, bytes], *, model: Optional[Union[str, Sequence[str]]] = None,
                     top_k: int = DEFAULT_TOP_K, filter: Optional[Union[str, CompiledFilter]] = None,
                     where: Iterable[str] = (), where_not: Iterable[str] = (),
                     exclude_same_image: bool = False, min_face: int = 0,
                     min_score: Optional[float] = None, detector: Optional[str] = None,
                     keep_image: bool = False, models: Optional[List[str]] = None,
                     min_quality: Optional[float] = None, name: Optional[str] = None) -> PhotoResult:
        """Detect every face of `photo` (a path, or the file's bytes with an optional `name` for
        messages), and search each model once with all faces.

        Stored faces below `min_quality` (default DEFAULT_MIN_QUALITY; 0 keeps every face, e.g. to
        find oneself in one's own photo archive) are left out; a query face below it (below
        DEFAULT_MIN_QUALITY when `min_quality` is 0) is still answered, marked `low_quality` and
        too poor to judge: verdict "too_poor", no match called the same person. `keep_image`
        keeps the decoded photo and its detected faces on the result, for rendering and for `query.explain.explain_result`.

        Raises ImageError (unreadable photo, message starts with the path), QueryError,
        FilterError, StoreError, WeightsMissing/ModelError. A photo without a face gives a
        result with `faces == []`.
        """
        k = check_top_k(top_k)
        q_min = check_min_quality(min_quality)
        flt = filter if isinstance(filter, CompiledFilter) else compile_filter(filter, where, where_not)
        models = models or self.resolve_models(model)
        det = detector or self.settings.detector
        path = name or ("upload" if isinstance(photo, (bytes, bytearray)) else str(photo))
        timings: Dict[str, float] = {}
        t0 = t = time.perf_counter()
        try:  # read first: an unreadable photo fails before any model loads
            data = bytes(photo) if isinstance(photo, (bytes, bytearray)) else read_bytes(str(photo))
            sha = sha256_bytes(data)
            image = decode(data)
            del data
        except ImageError as e:
            raise ImageError(f"{path}: {e}") from None
        timings["read"] = time.perf_counter() - t
        extras = {m: self.system_filter(m, sha if exclude_same_image else None, q_min) for m in models}
        self.preload(models)
        for m in models:
            self.prefetch([m], flt, extras[m])
        t = time.perf_counter()
        analyzer = self.analyzer(models, det)
        timings["load_models"] = time.perf_counter() - t  # ~0 once loaded in this process
        analysed = analyzer.detect(image, min_face=min_face)
        timings["detect"] = analysed.timings["detect"]
        res = PhotoResult(path=path, sha256=sha, width=image.width, height=image.height, detector=det,
                          models=list(models), top_k=k, filter=flt.render() if flt else None,
                          exclude_same_image=exclude_same_image, min_face=min_face, min_score=min_score,
                          min_quality=q_min, faces_skipped_small=analysed.skipped_small, timings=timings,
                          image=image if keep_image else None, detected=[fa.face for fa in analysed.faces] if keep_image else [],
                          analysis=analysed if keep_image else None)
        timings = res.timings  # the model holds a copy of the dict it was given
        mark = q_min or DEFAULT_MIN_QUALITY
        for fa in analysed.faces:
            f, q = fa.face, fa.quality.score
            res.faces.append(QueryFace(index=f.index, box=tuple(int(v) for v in f.box), confidence=float(f.confidence),
                                       dbox=tuple(int(v) for v in f.dbox), quality=q, low_quality=q < mark))
        timings["embed"] = timings["search"] = 0.0
        if not analysed.faces:
            timings["total"] = time.perf_counter() - t0
            return res
        for m in models:
            t = time.perf_counter()
            analyzer.embed([analysed], [m])
            if analysed.error:
                raise AnalysisError(f"{path}: {analysed.error}")
            timings["embed"] += time.perf_counter() - t
            t = time.perf_counter()
            matches, info = self.search_vectors(m, analysed.vectors(m), k, flt, extras[m], min_score)
            timings["search"] += time.perf_counter() - t
            res.search.append(info)
            for qf, ms in zip(res.faces, matches):
                qf.matches_by_model[m] = ms
        for qf in res.faces:
            if qf.low_quality:  # too poor to judge: the verdict's calibration does not hold for it
                qf.withhold_verdict()
        t = time.perf_counter()
        self.answer_persons(res, models[0])
        timings["persons"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return res

    def answer_persons(self, res: PhotoResult, model: str) -> None:
        """Set each face's `person` (QueryFace.person) from the persons `lookalike people` stored:
        one batched lookup for the photo's best same-person matches (query.people.persons_of_faces).
        Nothing is set where people never ran on this database for `model`."""
        from lookalike.query.people import persons_of_faces

        best = {qf.index: next((m for m in qf.matches if m.same_person), None) for qf in res.faces
                if qf.verdict == "same_person"}
        if not any(qf.verdict in ("same_person", "nobody") for qf in res.faces):
            return
        book = persons_of_faces(self.store, model, [m.id for m in best.values() if m is not None])
        if book is None:
            return
        for qf in res.faces:
            if qf.verdict == "nobody":
                qf.person = PersonAnswer(answer="unknown")
                continue
            m = best.get(qf.index)
            if m is None:
                continue
            ref = book.get(m.id)
            if ref is not None:
                qf.person = (PersonAnswer(id=ref.id, name=ref.name, named_by=ref.named_by, answer="named")  # type: ignore[arg-type]
                             if ref.name else PersonAnswer(id=ref.id, answer="unnamed"))
            elif m.identity:  # grouped at the next `lookalike people`: its label meanwhile
                qf.person = PersonAnswer(name=m.identity, named_by="identity", answer="named")
            else:
                qf.person = PersonAnswer(answer="unknown")


def search_photo(photo: Union[str, Path, bytes], *, db: Optional[str] = None, uri: Optional[str] = None,
                 token: Optional[str] = None, profile: Optional[str] = None,
                 model: Optional[Union[str, Sequence[str]]] = None, top_k: int = DEFAULT_TOP_K,
                 filter: Optional[str] = None, where: Iterable[str] = (), where_not: Iterable[str] = (),
                 exclude_same_image: bool = False, min_face: int = 0, min_score: Optional[float] = None,
                 detector: Optional[str] = None, settings: Optional[Settings] = None,
                 store: Optional[Store] = None, keep_image: bool = False, explain: Optional[str] = None,
                 explain_top: int = 3, explain_dir: Optional[str] = None,
                 min_quality: Optional[float] = None) -> PhotoResult:
    """Python twin of `lookalike query PHOTO`: the faces of one photo and their top-k matches.

    `explain` ("occlusion", "gradcam", "attention", "layers", a comma list or "all") then explains
    the top `explain_top` matches of every face (query.explain.explain_result), with PNG panels
    under `explain_dir`/explain/ when it is given.

    >>> r = search_photo("group.jpg", db="lookalike.db", top_k=5, filter="Smiling == true")
    >>> [(f.index, f.matches[0].identity, round(f.matches[0].score, 2)) for f in r.faces]
    """
    settings = resolve(settings, db=db, uri=uri, token=token, profile=profile, detector=detector)
    with Searcher(settings, store=store) as s:
        r = s.search_photo(photo, model=model, top_k=top_k, filter=filter, where=where, where_not=where_not,
                           exclude_same_image=exclude_same_image, min_face=min_face, min_score=min_score,
                           keep_image=keep_image or bool(explain), min_quality=min_quality)
        if explain:
            from lookalike.query.explain import explain_result  # lazy: off by default

            explain_result(s, r, explain, explain_top, explain_dir)
        return r


def search_photos(photos: Sequence[Union[str, Path]], **kwargs) -> List[PhotoResult]:
    """search_photo for several photos over one store; raises on the first unreadable photo."""
    keys = ("db", "uri", "token", "profile", "detector")
    conn = {k: kwargs.pop(k, None) for k in keys}
    settings = resolve(kwargs.pop("settings", None), **conn)
    store = kwargs.pop("store", None)
    with Searcher(settings, store=store) as s:
        models = s.resolve_models(kwargs.pop("model", None))
        return [s.search_photo(p, models=models, **kwargs) for p in photos]
