"""Identity retrieval (`evaluate_retrieval`): a source ingested by the product's own pipeline,
then every face searched, exactly, against the others.

* SOURCE (CelebA directory, folder gallery or list file) is ingested with `ingest.run` into the
  database (resumable: an existing database is reused, images already there are skipped). With
  several detectors, each gets its own database (`<db stem>-<detector><suffix>`): the ledger is
  per model, not per detector.
* the collection's vectors and identities (restricted to SOURCE's images, and to `--filter`) are
  fetched once (`Store.iterate`) and the search is computed exactly with numpy (every query
  against every other face) — the collections here are small, and this measures the embeddings,
  not the HNSW index.
* one face per image by default: the largest (an in-the-wild CelebA photo can hold bystanders,
  who would carry the photo's identity); `faces="all"` keeps every face.
* leave-one-out: each face whose identity has a face in another image queries all faces except
  those of its own image. Recall@k: a face of the same identity is among the k best; AP: average
  precision of the full ranking; mAP: its mean over queries. `recall_at_1_strict` (one face per
  image, no filter) also counts as misses the images of such identities where no face was found.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lookalike.ingest.metrics import retrieval_metrics
from lookalike.query.evaluation.errors import EvalError
from lookalike.query.evaluation.report import pct

# Reference figures, printed beside ours
REFERENCE_RETRIEVAL: Dict[str, List[Tuple[float, str]]] = {
    "celeba/dlib": [
        (55.0, "Recall@1, DeepFace.represent (YuNet + Dlib, eye-line crop), held-out photos"),
        (91.0, "Recall@1, dlib's own pipeline (HOG + 5-point chip), held-out photos"),
    ],
}

RETRIEVAL_FIELDS = ["id", "image_sha256", "source_path", "face_index", "box_w", "box_h", "identity",
                    "detector", "vector"]


def db_for_detector(db: str, detector: str, several: bool) -> str:
    """The database a detector's faces go to: `db` itself for one detector, else
    `<stem>-<detector><suffix>` beside it."""
    if not several:
        return db
    p = Path(db)
    return str(p.with_name(f"{p.stem}-{detector}{p.suffix or '.db'}"))


def _largest_per_image(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    best: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        key = r["image_sha256"]
        area = int(r["box_w"]) * int(r["box_h"])
        if key not in best or area > int(best[key]["box_w"]) * int(best[key]["box_h"]):
            best[key] = r
    return list(best.values())


def evaluate_retrieval(source: str, db: str, models: Sequence[str] = ("dlib",),
                       detectors: Sequence[str] = ("yunet",), filter: Optional[str] = None,
                       settings=None, workers: int = 2, faces: str = "largest", limit: Optional[int] = None,
                       progress: bool = False, report_dir: Optional[str] = None,
                       uri: Optional[str] = None, token: Optional[str] = None,
                       profile: Optional[str] = None) -> Dict[str, Any]:
    """Ingest `source` (resumable) for every detector, then leave-one-out identity retrieval per
    (model, detector) over the source's faces, exactly with numpy. Returns the report dict."""
    from lookalike.ingest import run as ingest_run
    from lookalike.ingest.settings import resolve
    from lookalike.ingest.sources import SourceError, open_source
    from lookalike.ingest.store import Store
    from lookalike.schemas import collection_name
    from lookalike.schemas.filters import combine, compile_filter

    settings = resolve(settings)
    if faces not in ("largest", "all"):
        raise EvalError(f"faces must be 'largest' or 'all', got {faces!r}")
    flt = compile_filter(filter) if filter else None  # FilterError: one line, exit 2
    try:
        src = open_source(source, limit=limit)
        records = [r for r in src]
    except (SourceError, OSError) as e:
        raise EvalError(str(e)) from None
    src_paths = {os.path.abspath(r.path): r.identity for r in records}
    by_identity = Counter(i for i in src_paths.values() if i)
    expected_queries = sum(1 for i in src_paths.values() if i and by_identity[i] >= 2)
    several = len(detectors) > 1 and not uri
    runs = []
    for det in detectors:
        target_db = db_for_detector(db, det, several)
        t0 = time.perf_counter()
        rep = os.path.join(report_dir, f"eval_retrieval_ingest_{det}.txt") if report_dir else os.devnull
        summary = ingest_run(source, models=list(models), workers=workers, limit=limit, progress=progress,
                             report=rep, settings=settings.with_(db=target_db, uri=uri, token=token,
                                                                 profile=profile, detector=det))
        ingest_seconds = time.perf_counter() - t0
        if summary.interrupted:
            raise KeyboardInterrupt
        with Store.from_settings(settings.with_(db=target_db, uri=uri, token=token, profile=profile)) as store:
            for model in summary.models:
                t1 = time.perf_counter()
                rows = [r for r in store.iterate(collection_name(model), RETRIEVAL_FIELDS,
                                                 filter=combine([flt.render() if flt else None]))
                        if r["source_path"] in src_paths]
                other = Counter(r["detector"] for r in rows if r["detector"] != det)
                if other:
                    raise EvalError(
                        f"database {target_db} holds faces of these images detected by "
                        f"{', '.join(other)}, not {det}; evaluate {det} with another --db")
                ledger = store.ledger(model)
                status = Counter(ledger.get(p, {}).get("status", "absent") for p in src_paths)
                kept = _largest_per_image(rows) if faces == "largest" else rows
                kept.sort(key=lambda r: r["id"])
                vec = np.array([r["vector"] for r in kept], dtype=np.float32).reshape(len(kept), -1)
                ids = [str(r["identity"]) for r in kept]
                imgs = [str(r["image_sha256"]) for r in kept]
                m = retrieval_metrics(vec, ids, imgs)
                strict = None  # per image: only with one face per image and no filter
                if expected_queries and m["queries"] and faces == "largest" and flt is None:
                    strict = float(np.sum(np.array(m["first_hit_ranks"]) <= 1) / expected_queries)
                runs.append({
                    "model": model, "detector": det, "db": target_db, **{k: v for k, v in m.items()},
                    "faces_in_collection": len(rows), "faces_evaluated": len(kept),
                    "images": len(src_paths), "images_with_face": status.get("done", 0),
                    "images_without_face": status.get("noface", 0), "images_failed": status.get("failed", 0),
                    "expected_queries": expected_queries, "recall_at_1_strict": strict,
                    "ingest_seconds": round(ingest_seconds, 1),
                    "ingest_images_processed": summary.images_done + summary.images_noface + summary.images_failed,
                    "ingest_images_already_done": summary.images_skipped,
                    "eval_seconds": round(time.perf_counter() - t1, 2),
                })
    layout = "celeba" if src.kind == "celeba" else "folder"
    ref: Dict[str, Any] = {}
    for model_name in models:
        if f"{layout}/{model_name}" in REFERENCE_RETRIEVAL:
            ref[model_name] = [{"recall_at_1": a, "source": where}
                               for a, where in REFERENCE_RETRIEVAL[f"{layout}/{model_name}"]]
    return {
        "kind": "retrieval", "version": 1, "source": str(Path(source).resolve()), "source_kind": src.kind,
        "filter": flt.render() if flt else None, "faces": faces,
        "images": len(src_paths), "identities": len(by_identity),
        "identities_with_2_images": sum(1 for n in by_identity.values() if n >= 2),
        "expected_queries": expected_queries,
        "protocol": ("leave-one-out: each face whose identity has a face in another image queries every "
                     "other face of the collection except those of its own image; "
                     + ("one face per image (the largest)" if faces == "largest" else "every face")),
        "search": "exact: all vectors and identities fetched once (Store.iterate), cosine similarity "
                  "computed with numpy against every face (not the HNSW index)",
        "runs": runs, "reference": ref,
    }


def format_retrieval(report: Dict[str, Any]) -> str:
    lines = [f"identity retrieval: {report['source']} ({report['images']} images, {report['identities']} identities, "
             f"{report['identities_with_2_images']} with >= 2 images)",
             f"protocol: {report['protocol']}",
             f"search: {report['search']}"]
    if report["filter"]:
        lines.append(f"filter: {report['filter']}")
    head = (f"{'model':<11} {'detector':<10} {'queries':>8} {'R@1':>8} {'R@5':>8} {'R@10':>8} {'mAP':>8} "
            f"{'R@1 strict':>11} {'no face':>8}")
    lines += ["", head, "-" * len(head)]
    for r in report["runs"]:
        lines.append(
            f"{r['model']:<11} {r['detector']:<10} {r['queries']:>8} {pct(r['recall_at_1'], 1):>8} "
            f"{pct(r['recall_at_5'], 1):>8} {pct(r['recall_at_10'], 1):>8} {pct(r['map'], 1):>8} "
            f"{pct(r['recall_at_1_strict'], 1):>11} {r['images_without_face']:>4} img")
    if any(r["recall_at_1_strict"] is not None for r in report["runs"]):
        lines.append(f"R@1 strict: hits / {report['expected_queries']} images of identities with >= 2 images "
                     f"(images without a face count as misses)")
    else:
        lines.append("R@1 strict: n/a (only with one face per image and no filter)")
    if report["filter"]:
        lines.append("no face: images of the whole source without a face (the filter applies to stored faces)")
    ref = [(m, i["recall_at_1"], i["source"]) for m, items in report["reference"].items() for i in items]
    if ref:
        lines += ["", "reference figures (this sample):"]
        lines += [f"  {m:<11} {a:>5.1f} %  {s}" for m, a, s in ref]
    return "\n".join(lines)

