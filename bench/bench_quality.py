"""Defocus and truncation in the quality gate (issue 32, item 2): junk in the group photos' top-5
matches with the quality formula before and after the change, on the demo database.

    python bench/bench_quality.py     # ~6 min on 2 cores; writes bench/results/quality.{txt,json}

1. The CelebA sample and the people gallery are ingested into a Milvus Lite database by the
   product (`ingest.run`): its `quality` field is today's formula (ingest/quality.py, "after").
2. Every stored face's quality is also computed with the formula before the change (OLD_*
   below, kept here as the baseline: sharpness on the whole face box, no truncation), from the
   same detections (the photo detected again; faces matched by index, boxes checked equal).
3. A copy of the database gets the old values in its `quality` field ("before").
4. Every group photo (../shared/data/groups/photos) is queried through the product's search
   (`Searcher.search_photo`, top 5, default minimum quality 0.4) on both databases.

Junk, counted over all top-5 match slots of all query faces, by criteria that need no manual
labels and that neither formula defines:
* bystander or small: a stored face that is not its photo's labelled subject (the ingest labels
  only the largest face of a photo with its folder name / CelebA identity) or under 50 px (the
  criterion of bench_accuracy.py);
* hub: a stored face in the top 5 of faces of at least 3 different group photos in that run,
  photos of its own identity not counted (everyone's lookalike: what the issue reported);
and, for the record, the share of slots taken by faces the new formula gates (quality < 0.4);
after the change it is 0 by construction.
People found: for each group photo and each gallery person in it (groups/faces.csv
people_in_gallery, plus the two by-eye additions of bench_accuracy.py, counted apart), whether the
person's identity is in the top 5 of one of the photo's faces.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

from lookalike.ingest.analysis import Analyzer
from lookalike.ingest.images import load
from lookalike.ingest.quality import DEFAULT_MIN_QUALITY, frontal
from lookalike.ingest.settings import Settings, default_data_dir

ROOT = Path(__file__).resolve().parent.parent

# -- the quality formula before issue 32 item 2 (the baseline) ---------------------------------
OLD_SHARP_SIDE = 64
OLD_SIZE_RAMP = (24.0, 64.0)
OLD_CONFIDENCE_RAMP = (0.5, 0.8)
OLD_SHARPNESS_RAMP = (0.03, 0.12)
OLD_FRONTAL_RAMP = (0.0, 0.4)


def _ramp(v: float, lo_hi: Tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(min(1.0, max(0.0, (v - lo) / (hi - lo))))


def old_sharpness(bgr: np.ndarray, dbox: Tuple[int, int, int, int]) -> float:
    """Laplacian variance of the whole face box, grey, at 64 px, over its contrast."""
    import cv2

    x, y, w, h = dbox
    crop = bgr[max(0, y):y + h, max(0, x):x + w]
    if crop.size == 0:
        return 0.0
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    interp = cv2.INTER_AREA if min(grey.shape[:2]) > OLD_SHARP_SIDE else cv2.INTER_LINEAR
    sq = cv2.resize(grey, (OLD_SHARP_SIDE, OLD_SHARP_SIDE), interpolation=interp).astype(np.float32)
    contrast = float(sq.var())
    return 0.0 if contrast < 1.0 else float(cv2.Laplacian(sq, cv2.CV_32F).var() / contrast)


def old_quality(image, face) -> float:
    size = int(min(face.box[2], face.box[3]))
    front = frontal(face.left_eye, face.right_eye, getattr(face, "nose", None))
    return round(_ramp(size, OLD_SIZE_RAMP) * _ramp(face.confidence, OLD_CONFIDENCE_RAMP)
                 * _ramp(old_sharpness(image.bgr, face.dbox), OLD_SHARPNESS_RAMP)
                 * (1.0 if front < 0 else _ramp(front, OLD_FRONTAL_RAMP)), 4)


# -- the run ------------------------------------------------------------------------------------
def gallery_people(data: Path) -> Tuple[Dict[str, Set[str]], Dict[str, Set[str]]]:
    """faces.csv's people per photo, and the by-eye additions of bench_accuracy.py."""
    listed = {row["file"]: set(filter(None, row["people_in_gallery"].split(";")))
              for row in csv.DictReader(open(data / "groups" / "faces.csv"))}
    by_eye = {"couple.jpg": {"Angelina_Jolie"}, "two_people.jpg": {"obama", "biden"}}
    return listed, by_eye


def ingest_demo(data: Path, work: Path, settings: Settings, workers: int) -> str:
    from lookalike import ingest

    db = str(work / "after.db")
    for src in ("celeba", "people"):
        s = ingest.run(str(data / src), workers=workers, progress=False, report=str(work / "report.txt"),
                       settings=settings.with_(db=db))
        assert s.images_failed == 0, s.failures
    return db


def stored_rows(db: str) -> List[Dict[str, Any]]:
    from lookalike.ingest.store import Store
    from lookalike.schemas import FACE_FIELDS

    with Store(db) as store:
        return list(store.iterate("faces_dlib", [f.name for f in FACE_FIELDS] + ["vector"]))


def old_qualities(rows: List[Dict[str, Any]], settings: Settings) -> Tuple[Dict[str, float], int]:
    """id -> quality by the old formula, from the photo detected again; and how many stored faces
    did not match a detection (index and box): they keep their stored value."""
    analyzer = Analyzer(settings, settings.detector, []).load()
    by_path: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_path[r["source_path"]].append(r)
    old, unmatched = {}, 0
    for path, rs in by_path.items():
        image = load(path)
        faces = {fa.index: fa.face for fa in analyzer.detect(image).faces}
        for r in rs:
            f = faces.get(r["face_index"])
            if f is None or tuple(f.box) != (r["box_x"], r["box_y"], r["box_w"], r["box_h"]):
                unmatched += 1
                old[r["id"]] = float(r["quality"])
            else:
                old[r["id"]] = old_quality(image, f)
    return old, unmatched


def write_before(after_db: str, work: Path, rows: List[Dict[str, Any]], old: Dict[str, float]) -> str:
    from lookalike.ingest.store import Store

    db = str(work / "before.db")
    shutil.rmtree(db, ignore_errors=True)
    shutil.copytree(after_db, db)
    with Store(db) as store:
        changed = [dict(r, quality=old[r["id"]]) for r in rows if old[r["id"]] != r["quality"]]
        for i in range(0, len(changed), 200):
            store.upsert_faces("dlib", changed[i:i + 200])
        store.flush(["faces_dlib"])
    return db


def query_all(db: str, photos: List[Path], settings: Settings) -> Dict[str, List[Tuple[int, Optional[float], List[Any]]]]:
    """photo name -> [(face index, face quality, its top-5 matches)]."""
    from lookalike.query.search import Searcher

    out = {}
    with Searcher(settings.with_(db=db)) as s:
        for p in photos:
            r = s.search_photo(str(p), top_k=5)
            out[p.name] = [(f.index, f.quality, list(f.matches)) for f in r.faces]
    return out


def measure(results, rows_by_id: Dict[str, Dict[str, Any]], new_q: Dict[str, float],
            listed: Dict[str, Set[str]], by_eye: Dict[str, Set[str]], strangers: Set[str]) -> Dict[str, Any]:
    # the group photos each stored face is a top-5 match in, leaving out photos of its own
    # identity (Bill Gates's gallery photos in the top 5 of three Bill Gates photos are right)
    photos_of: Dict[str, Set[str]] = defaultdict(set)
    for photo, faces in results.items():
        present = listed.get(photo, set()) | by_eye.get(photo, set())
        for _, _, ms in faces:
            for m in ms:
                if not (m.identity and m.identity in present):
                    photos_of[m.id].add(photo)

    def shares(names) -> Dict[str, Any]:
        slots = [m.id for ph in names for _, _, ms in results[ph] for m in ms]
        n = max(1, len(slots))
        small = [i for i in slots if not rows_by_id[i]["identity"] or rows_by_id[i]["face_size"] < 50]
        hubs = [i for i in slots if len(photos_of[i]) >= 3]
        gated = [i for i in slots if new_q[i] < DEFAULT_MIN_QUALITY]
        junk = set(small) | set(hubs)
        return {"query_faces": sum(len(results[ph]) for ph in names), "top5_slots": len(slots),
                "bystander_or_small_share": len(small) / n, "hub_share": len(hubs) / n,
                "junk_share": sum(1 for i in slots if i in junk) / n,
                "new_gated_share": len(gated) / n,
                "hubs": sorted({i for i in hubs}, key=lambda i: -len(photos_of[i]))}

    def found(people: Dict[str, Set[str]]) -> Dict[str, Any]:
        want = [(ph, who) for ph, ws in sorted(people.items()) for who in sorted(ws) if ph in results]
        hit = {f"{ph}:{who}": [idx for idx, _, ms in results[ph] if any(m.identity == who for m in ms)]
               for ph, who in want}
        return {"people": len(want), "found": sum(1 for v in hit.values() if v), "faces": hit}

    res = {"all_photos": shares(sorted(results)),
           "strangers_photos": shares(sorted(strangers & set(results))),
           "people_listed": found(listed), "people_by_eye": found(by_eye)}
    res["all_photos"]["hub_faces"] = {i: {"photos": len(photos_of[i]), "identity": rows_by_id[i]["identity"],
                                          "source": Path(rows_by_id[i]["source_path"]).name,
                                          "face_index": rows_by_id[i]["face_index"],
                                          "quality_after": rows_by_id[i]["quality"]}
                                      for i in res["all_photos"].pop("hubs")}
    res["strangers_photos"].pop("hubs")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--work", default="", help="folder for the two databases (default: a new temporary one)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality"))
    args = ap.parse_args()
    data = Path(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="lookalike-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DEEPFACE_HOME", tempfile.mkdtemp(prefix="lookalike-dfhome-"))
    settings = Settings()
    t = time.time()
    after_db = ingest_demo(data, work, settings, args.workers)
    t_ingest = time.time() - t
    rows = stored_rows(after_db)
    rows_by_id = {r["id"]: r for r in rows}
    new_q = {r["id"]: float(r["quality"]) for r in rows}
    old_q, unmatched = old_qualities(rows, settings)
    before_db = write_before(after_db, work, rows, old_q)
    listed, by_eye = gallery_people(data)
    strangers = {ph for ph, ws in listed.items() if not ws}
    photos = sorted((data / "groups" / "photos").glob("*.jpg"))
    out: Dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M"), "min_quality": DEFAULT_MIN_QUALITY,
                           "work": str(work), "stored_faces": len(rows), "stored_unmatched_redetection": unmatched}
    subjects = [r for r in rows if r["identity"]]
    for label, q in (("before", old_q), ("after", new_q)):
        out[label] = {"stored_below_min_quality": sum(1 for v in q.values() if v < DEFAULT_MIN_QUALITY),
                      "subjects_below_min_quality": sum(1 for r in subjects if q[r["id"]] < DEFAULT_MIN_QUALITY),
                      "bystanders_below_min_quality": sum(1 for r in rows if not r["identity"]
                                                          and q[r["id"]] < DEFAULT_MIN_QUALITY)}
        out[label].update(measure(query_all(before_db if label == "before" else after_db, photos, settings),
                                  rows_by_id, new_q, listed, by_eye, strangers))
    out["subjects"], out["bystanders"] = len(subjects), len(rows) - len(subjects)
    out["seconds"] = {"ingest": round(t_ingest, 1), "total": round(time.time() - t, 1)}
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))

    pct = lambda v: f"{100 * v:5.1f} %"  # noqa: E731
    ratio = lambda a, b: "n/a" if not b else f"{a / b:.2f}x"  # noqa: E731
    B, A = out["before"], out["after"]
    lines = [f"bench_quality {out['when']} (min quality {DEFAULT_MIN_QUALITY}); celeba + people: "
             f"{len(rows)} stored faces ({out['subjects']} labelled subjects, {out['bystanders']} bystanders); "
             f"{len(photos)} group photos, top 5", "",
             "stored faces below the minimum     before  after",
             f"  all                              {B['stored_below_min_quality']:6d} {A['stored_below_min_quality']:6d}",
             f"  labelled subjects                {B['subjects_below_min_quality']:6d} {A['subjects_below_min_quality']:6d}",
             f"  bystanders                       {B['bystanders_below_min_quality']:6d} "
             f"{A['bystanders_below_min_quality']:6d}", ""]
    for key, title in (("all_photos", "all group photos"),
                       ("strangers_photos", "strangers' photos (faces.csv lists no gallery person)")):
        b, a = B[key], A[key]
        lines += [f"top-5 matches, {title}: {b['query_faces']} query faces, {b['top5_slots']} slots",
                  "                                   before   after   after/before"]
        for k, name in (("junk_share", "junk (bystander/small or hub)"), ("bystander_or_small_share", "bystander or < 50 px"),
                        ("hub_share", "hub (top 5 of >= 3 photos)"), ("new_gated_share", "gated by the new formula")):
            lines.append(f"  {name:<31} {pct(b[k])} {pct(a[k])}   {ratio(a[k], b[k])}")
        lines.append("")
    for key, title in (("people_listed", "gallery people in faces.csv"), ("people_by_eye", "gallery people added by eye")):
        lines.append(f"{title}: found in a face's top 5: before {B[key]['found']}/{B[key]['people']}, "
                     f"after {A[key]['found']}/{A[key]['people']}")
        lines.append("  " + ", ".join(f"{k} (face {'/'.join(str(i + 1) for i in v) or '-'})"
                                      for k, v in A[key]["faces"].items()))
        missing = [k for k, v in A[key]["faces"].items() if not v]
        if missing:
            lines.append(f"  not found after: {', '.join(missing)}"
                         + (" (nor before)" if all(not B[key]["faces"][k] for k in missing) else ""))
    lines += ["", "hubs after (stored face: group photos whose top 5 it is in):"]
    lines += [f"  {v['source']} face {v['face_index']} ({v['identity'] or 'bystander'}, q {v['quality_after']:.2f}): "
              f"{v['photos']}" for v in A["all_photos"]["hub_faces"].values()]
    lines += ["hubs before:"]
    lines += [f"  {v['source']} face {v['face_index']} ({v['identity'] or 'bystander'}, q after {v['quality_after']:.2f}): "
              f"{v['photos']}" for v in B["all_photos"]["hub_faces"].values()]
    text = "\n".join(lines) + "\n"
    Path(args.out + ".txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
