"""The same-person verdict on strangers: how many faces of people who are not in the gallery get a
"same person" match, through the product's detector, quality, embedding and verdict.

    python bench/bench_verdict.py            # ~5 min on 2 cores; writes bench/results/verdict.{txt,json}
    python bench/bench_verdict.py --cache /tmp/verdict_vectors.npz   # embed once, re-run the splits

1. Held-out identities. Every photo of the CelebA sample (largest face, CelebA identity), the LFW
   fold-1 images (face nearest the centre, the folder's name) and people/ (same, the folder's name;
   a file already seen is skipped) is embedded once by the product's Analyzer (YuNet + dlib, quality
   of ingest/quality.py). In each of SPLITS random splits half of the identities form the gallery
   (every face stored, as ingest does, the search leaving out those below DEFAULT_MIN_QUALITY) and
   the other half are strangers: each stranger face is searched against the gallery (exact cosine
   top-1, which is what the FLAT index of the embedded default returns) and called someone when
   the score reaches `Verdict.threshold_for(n)`, n the gallery's stored faces, as Searcher does.
   Gallery sizes: the whole half, and random subsets of it (fewer faces: a lower threshold). Of the
   gallery identities with 2+ faces one face is held out as a mated query (found and called the
   same / called someone else). The verdict's false-accept rate on strangers is the share of
   good-quality stranger faces (quality >= DEFAULT_MIN_QUALITY; a query face below it is "too poor to
   judge" and gets no verdict) called someone; the same share over every stranger face is what the
   verdict gave before the quality gate. Note: the verdict's impostor tail was fitted on these
   same LFW fold-1 and CelebA images (schemas.VERDICTS), so this part is in-sample for the
   calibration, not for the split.
2. Group photos through the whole product: celeba + people ingested into a fresh Milvus Lite file
   (the demo database), every group photo queried (`Searcher.search_photo`, defaults). Strangers:
   every face of t1.jpg and multiface.jpg (nobody of the gallery there; faces.csv, checked by eye);
   and, in the photos with gallery people, a "same person" match to someone not in the photo is a
   false accept too. Out of sample: none of these photos took part in the calibration.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from lookalike.ingest.analysis import Analyzer, nearest_centre
from lookalike.ingest.images import load, read_bytes, sha256_bytes
from lookalike.ingest.quality import DEFAULT_MIN_QUALITY
from lookalike.ingest.settings import Settings, default_data_dir
from lookalike.schemas import VERDICTS

ROOT = Path(__file__).resolve().parent.parent
SPLITS = 20
SUBSET_SIZES = (10, 100, 300)  # gallery faces, besides the whole half
STRANGER_PHOTOS = ("t1.jpg", "multiface.jpg")


def wilson(k: int, n: int, z: float = 1.96) -> List[float]:
    """95 % Wilson interval of k successes in n."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


def embed_all(data: Path, settings: Settings) -> Dict[str, Any]:
    """One face per photo: vector, quality, identity, set."""
    analyzer = Analyzer(settings, "yunet", ["dlib"]).load()

    def largest(faces, image):
        return [max(faces, key=lambda f: f.box[2] * f.box[3])] if faces else []

    ids = dict(line.split() for line in open(data / "celeba" / "identity_CelebA.txt"))
    todo = [(p, "celeba_" + ids[os.path.basename(p)], "celeba", largest)
            for p in sorted(glob.glob(str(data / "celeba" / "img_celeba" / "*.jpg")))]
    todo += [(p, Path(p).parent.name, "lfw", nearest_centre)
             for p in sorted(glob.glob(str(data / "lfw" / "lfw" / "*" / "*.jpg")))]
    todo += [(p, Path(p).parent.name, "people", nearest_centre)
             for p in sorted(glob.glob(str(data / "people" / "*" / "*"))) if os.path.isfile(p)]
    seen, vecs, qual, ident, sets = set(), [], [], [], []
    no_face: Counter[str] = Counter()
    for path, who, where, select in todo:
        sha = sha256_bytes(read_bytes(path))
        if sha in seen:
            continue
        seen.add(sha)
        photo = analyzer.analyse(load(path), select=select)
        if not photo.faces:
            no_face[where] += 1
            continue
        vecs.append(photo.faces[0].vectors["dlib"])
        qual.append(photo.faces[0].quality.score)
        ident.append(who)
        sets.append(where)
    return {"vectors": np.asarray(vecs, np.float32), "quality": np.asarray(qual, np.float32),
            "identity": np.asarray(ident), "set": np.asarray(sets), "no_face": dict(no_face)}


def held_out(emb: Dict[str, Any], splits: int, seed: int = 0) -> Dict[str, Any]:
    verdict = VERDICTS["dlib"]
    V, Q, ident = emb["vectors"], emb["quality"], emb["identity"]
    good = Q >= DEFAULT_MIN_QUALITY
    people = sorted(set(ident.tolist()))
    rng = np.random.default_rng(seed)
    acc: Dict[str, Dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    sizes: Dict[str, List[int]] = defaultdict(list)
    split_far: Dict[str, List[float]] = defaultdict(list)
    for _ in range(splits):
        chosen = set(rng.permutation(people)[: len(people) // 2].tolist())
        in_gallery = np.array([i in chosen for i in ident.tolist()])
        # of each gallery identity with 2+ faces, one face (a good one when there is) is a mated query
        mated = np.zeros(len(ident), bool)
        by_id: Dict[str, List[int]] = defaultdict(list)
        for j in np.flatnonzero(in_gallery):
            by_id[ident[j]].append(int(j))
        for js in by_id.values():
            if len(js) >= 2:
                pick = [j for j in js if good[j]] or js
                mated[int(rng.choice(pick))] = True
        gallery_all = np.flatnonzero(in_gallery & ~mated)
        strangers = np.flatnonzero(~in_gallery)
        for label, size in [("whole half", None)] + [(f"{n} faces", n) for n in SUBSET_SIZES]:
            g = gallery_all if size is None else rng.choice(gallery_all, size=min(size, len(gallery_all)),
                                                            replace=False)
            n_stored = len(g)
            searched = g[good[g]]  # the search leaves out stored faces below the minimum quality
            thr = verdict.threshold_for(n_stored)
            a = acc[label]
            sizes[label].append(n_stored)
            a["threshold_sum"] += thr
            top = (V[strangers] @ V[searched].T).max(1) if len(searched) else np.full(len(strangers), -1.0)
            called = top >= thr
            a["strangers"] += len(strangers)
            a["strangers_good"] += int(good[strangers].sum())
            a["called_all"] += int(called.sum())
            a["called_good"] += int((called & good[strangers]).sum())
            a["called_poor"] += int((called & ~good[strangers]).sum())
            split_far[label].append(float((called & good[strangers]).sum() / max(1, good[strangers].sum())))
            if size is None:  # mated queries against the whole half only (a subset drops their people)
                mq = np.flatnonzero(mated & good)
                S = V[mq] @ V[searched].T
                best = S.argmax(1)
                hit = S[np.arange(len(mq)), best] >= thr
                right = ident[searched][best] == ident[mq]
                a["mated_good"] += len(mq)
                a["mated_found_same"] += int((hit & right).sum())
                a["mated_wrong_same"] += int((hit & ~right).sum())
    out: Dict[str, Any] = {"splits": splits, "faces": int(len(ident)), "identities": len(people),
                           "faces_by_set": dict(Counter(emb["set"].tolist())), "no_face": emb["no_face"],
                           "faces_below_min_quality": int((~good).sum()), "galleries": {}}
    for label, a in acc.items():
        row = {"gallery_faces_mean": round(float(np.mean(sizes[label])), 1),
             "gallery_faces_range": [int(min(sizes[label])), int(max(sizes[label]))],
             "threshold_mean": round(a["threshold_sum"] / splits, 4),
             "stranger_searches": a["strangers"], "good_stranger_searches": a["strangers_good"],
             "false_accepts_good": a["called_good"], "false_accepts_all": a["called_all"],
             "far_good": a["called_good"] / max(1, a["strangers_good"]),
             "far_good_95ci": wilson(a["called_good"], a["strangers_good"]),
             "far_good_split_range": [round(min(split_far[label]), 4), round(max(split_far[label]), 4)],
             "poor_stranger_searches": a["strangers"] - a["strangers_good"], "false_accepts_poor": a["called_poor"],
             "far_all_faces": a["called_all"] / max(1, a["strangers"]),
             "far_all_faces_95ci": wilson(a["called_all"], a["strangers"])}
        if a.get("mated_good"):
            row.update(mated_searches=a["mated_good"], found_and_called_same=a["mated_found_same"] / a["mated_good"],
                     wrong_person_called_same=a["mated_wrong_same"] / a["mated_good"])
        out["galleries"][label] = row
    return out


def group_photos(data: Path, settings: Settings) -> Dict[str, Any]:
    from lookalike import ingest
    from lookalike.query.search import Searcher

    tmp = Path(tempfile.mkdtemp(prefix="lookalike-verdict-"))
    db = str(tmp / "demo.db")
    for src in ("celeba", "people"):
        ingest.run(str(data / src), db=db, workers=2, progress=False, report=str(tmp / f"report-{src}.txt"))
    people = {}
    for row in csv.DictReader(open(data / "groups" / "faces.csv")):
        people[row["file"]] = set(filter(None, row["people_in_gallery"].split(";")))
    # faces.csv leaves out two photos' gallery people (checked by eye; bench/bench_accuracy.py)
    people["couple.jpg"] |= {"Angelina_Jolie"}
    people["two_people.jpg"] |= {"obama", "biden"}
    res: Dict[str, Any] = {"gallery_faces": 0, "threshold": None, "photos": {}}
    strangers = dict(faces=0, good=0, called_good=0, would_be_called_poor=0)
    others = dict(faces=0, good=0, called_other_good=0, would_be_called_other_poor=0, called_own=0)
    with Searcher(settings.with_(db=db)) as s:
        for photo in sorted(people):
            r = s.search_photo(str(data / "groups" / "photos" / photo), top_k=5)
            if not r.faces:
                continue
            thr = r.search[0].same_person_threshold
            res["gallery_faces"], res["threshold"] = r.search[0].rows, thr
            rows = []
            for f in r.faces:
                m = f.matches[0] if f.matches else None
                # what the verdict said before the quality gate: every match at or above the threshold
                raw = {x.identity for x in f.matches if thr is not None and x.score >= thr}
                called = {x.identity for x in f.matches if x.same_person}
                assert not (f.low_quality and called), "a face too poor to judge was called someone"
                rows.append({"face": f.index + 1, "box": list(f.box), "quality": f.quality, "verdict": f.verdict,
                             "top": None if m is None else m.identity, "score": None if m is None else round(m.score, 4),
                             "called": sorted(called), "before_gate": sorted(raw)})
                if photo in STRANGER_PHOTOS:
                    strangers["faces"] += 1
                    strangers["good"] += not f.low_quality
                    strangers["called_good"] += bool(called)
                    strangers["would_be_called_poor"] += bool(f.low_quality and raw)
                else:
                    others["faces"] += 1
                    others["good"] += not f.low_quality
                    others["called_other_good"] += bool(called - people[photo])
                    others["would_be_called_other_poor"] += bool(f.low_quality and raw - people[photo])
                    others["called_own"] += bool(called & people[photo])
            res["photos"][photo] = rows
    res["stranger_photos"] = strangers
    res["photos_with_gallery_people"] = others
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "verdict"))
    ap.add_argument("--splits", type=int, default=SPLITS)
    ap.add_argument("--cache", default=None, help="an .npz of the embedded faces (written when missing)")
    ap.add_argument("--no-groups", action="store_true", help="skip the group photos (no ingest)")
    args = ap.parse_args()
    data = Path(args.data)
    os.environ.setdefault("DEEPFACE_HOME", tempfile.mkdtemp(prefix="lookalike-dfhome-"))
    settings = Settings()
    t = time.time()
    if args.cache and os.path.exists(args.cache):
        z = np.load(args.cache, allow_pickle=True)
        emb = {k: z[k] for k in ("vectors", "quality", "identity", "set")} | {"no_face": z["no_face"].item()}
    else:
        emb = embed_all(data, settings)
        if args.cache:
            np.savez(args.cache, **emb)
    v = VERDICTS["dlib"]
    out: Dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M"), "min_quality": DEFAULT_MIN_QUALITY,
                           "fpir_target": v.fpir, "held_out": held_out(emb, args.splits)}
    if not args.no_groups:
        out["group_photos"] = group_photos(data, settings)
    out["seconds"] = round(time.time() - t, 1)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))

    pct = lambda x: f"{100 * x:5.2f} %"  # noqa: E731
    H = out["held_out"]
    lines = [f"bench_verdict {out['when']} (dlib, query faces of quality >= {DEFAULT_MIN_QUALITY} judged; "
             f"threshold_for(n) aims at {pct(v.fpir).strip()} of strangers)", "",
             f"Held-out identities: {H['faces']} faces of {H['identities']} identities ({H['faces_by_set']}; "
             f"{H['faces_below_min_quality']} below quality {DEFAULT_MIN_QUALITY}), {H['splits']} random splits, "
             "half the identities stored, the other half searched as strangers",
             "(searches summed over the splits; a face is a stranger in about half of them, so the splits' "
             "range says more than a binomial interval would)",
             "  gallery (stored faces)   threshold  stranger searches (good)  good ones called same: all splits, "
             "range over splits   poor ones called   every face, no gate   mated: found+same  wrong same"]
    for label, g in H["galleries"].items():
        lo, hi = g["far_good_split_range"]
        mated = (f"   {pct(g['found_and_called_same'])}       {pct(g['wrong_person_called_same'])}"
                 if "mated_searches" in g else "")
        lines.append(f"  {label:<11} {g['gallery_faces_mean']:>6.0f}      {g['threshold_mean']:.4f}   "
                     f"{g['stranger_searches']:>8} ({g['good_stranger_searches']})     {g['false_accepts_good']:>5} = "
                     f"{pct(g['far_good'])}, {100 * lo:.2f}-{100 * hi:.2f} %               "
                     f"{g['false_accepts_poor']:>3} of {g['poor_stranger_searches']:<4}     "
                     f"{pct(g['far_all_faces'])}{mated}")
    if "group_photos" in out:
        G = out["group_photos"]
        S, other = G["stranger_photos"], G["photos_with_gallery_people"]
        lines += ["", f"Group photos through the product (celeba + people: {G['gallery_faces']} stored faces, "
                  f"threshold {G['threshold']})",
                  f"  strangers ({', '.join(STRANGER_PHOTOS)}): {S['faces']} faces, {S['good']} good; called the "
                  f"same person as someone: {S['called_good']}; too poor to judge that the verdict would have "
                  f"called someone before the gate: {S['would_be_called_poor']}",
                  f"  the other photos: {other['faces']} faces, {other['good']} good; called the same person as someone "
                  f"not in the photo: {other['called_other_good']} (too poor to judge, would have been before the "
                  f"gate: {other['would_be_called_other_poor']}); as one of its people: {other['called_own']}"]
        for photo, rows in G["photos"].items():
            for r in rows:
                if r["called"] or r["before_gate"] or r["verdict"] == "too_poor":
                    lines.append(f"    {photo[:40]:<40} face {r['face']} {r['box'][2]}x{r['box'][3]} q {r['quality']:.2f} "
                                 f"{r['verdict']:<11} top {r['top'] or '-'} {r['score']}"
                                 + (f"; before the gate: {', '.join(x or 'an unlabelled face' for x in r['before_gate'])}"
                                    if r["before_gate"] and r["verdict"] == "too_poor" else ""))
    lines.append(f"\n{out['seconds']} s")
    text = "\n".join(lines) + "\n"
    Path(args.out + ".txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
