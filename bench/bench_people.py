"""Clustering quality of `lookalike people`, against dlib's Chinese whispers and average linkage on
the same embeddings, in one run; and the clustering's time on synthetic vectors.

    python bench/bench_people.py [--work DIR] [--synthetic 200000]    # ~3 min on 2 cores (+ ingest)

Sets: the LFW fold-1 images (lfw/lfw, 807 photos, folder = identity) and the CelebA sample
(celeba/, 617 photos, CelebA identities), each ingested with the product's defaults (YuNet + dlib)
into a Lite database of its own (kept in --work, reused when there). Ground truth: the identity
of each labelled face (a photo's label goes to its largest face; bystanders are unlabelled and
not scored, but they are clustered like every stored face).

Methods, on the same stored vectors:
- product: `query.people.people(recluster=True)` on the database (kNN graph from the store's
  batched search, average linkage, the quality gate: faces below it are not clustered and count
  as faces on their own);
- chinese-whispers: `dlib.chinese_whispers_clustering` (euclidean on the normalised vectors);
- average-linkage: full all-pairs average linkage (an independent dense implementation: every
  pair, Lance-Williams updates), the reference the product's graph version must equal.
Each is run at the threshold that gives the best pairwise F1 on the *other* set (never on the set
measured; sweep 0.900-0.960 in cosine). dlib's own 0.5 (euclidean) is a distance between raw
descriptors; the stored vectors are normalised, where it would mean cosine 0.875, at which Chinese
whispers puts almost every face of both sets into one cluster (measured: pairwise precision
0.003-0.005), so it is not a fair baseline here and is not run.
Scores: pairwise precision / recall / F1 (pairs of labelled faces put together) and BCubed
(per face: the share of its cluster that is its identity, and of its identity that is in its
cluster). Two scopes: "gated" (the faces at or above the quality gate, every method) and "all"
(every labelled face; the product counts the faces below the gate as persons of one face).
Written to bench/results/people.json and people.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SWEEP = np.round(np.arange(0.900, 0.9601, 0.0025), 4)


def scores(pred: Iterable[Any], true: Iterable[Any]) -> Dict[str, float]:
    """Pairwise and BCubed precision, recall, F1 of a clustering against the truth."""
    p, t = [str(x) for x in pred], [str(x) for x in true]
    both = Counter(zip(p, t))
    a, b = Counter(p), Counter(t)

    def pairs(c: Counter) -> float:
        return float(sum(v * (v - 1) / 2 for v in c.values()))

    tp, pp, tt = pairs(both), pairs(a), pairs(b)
    P, R = (tp / pp if pp else 1.0), (tp / tt if tt else 1.0)
    bp = float(np.mean([both[(x, y)] / a[x] for x, y in zip(p, t)]))
    br = float(np.mean([both[(x, y)] / b[y] for x, y in zip(p, t)]))

    def f1(x: float, y: float) -> float:
        return 2 * x * y / (x + y) if x + y else 0.0

    return {"pairwise_p": P, "pairwise_r": R, "pairwise_f1": f1(P, R), "bcubed_p": bp, "bcubed_r": br,
            "bcubed_f1": f1(bp, br)}


def dense_average_linkage(x: np.ndarray, threshold: float) -> np.ndarray:
    """All-pairs average linkage (what scipy's linkage(method='average') cut at 1 - threshold
    gives on cosine distances): the full similarity matrix, the best pair merged while its mean
    similarity reaches the threshold, Lance-Williams updates."""
    n = len(x)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    size = np.ones(n)
    label = np.arange(n)
    alive = np.ones(n, dtype=bool)
    while True:
        i, j = np.unravel_index(int(np.argmax(s)), s.shape)
        if s[i, j] < threshold:
            break
        new = (size[i] * s[i] + size[j] * s[j]) / (size[i] + size[j])
        s[i, :] = new
        s[:, i] = new
        s[i, i] = -np.inf
        s[j, :] = -np.inf
        s[:, j] = -np.inf
        size[i] += size[j]
        alive[j] = False
        label[label == j] = i
    return label


def chinese_whispers(x: np.ndarray, cosine: float) -> np.ndarray:
    import dlib

    euclid = float(np.sqrt(max(0.0, 2 - 2 * cosine)))
    return np.asarray(dlib.chinese_whispers_clustering([dlib.vector(v.tolist()) for v in x], euclid))


def ingest_set(name: str, source: Path, work: Path) -> str:
    from lookalike import ingest

    db = work / f"{name}.db"
    if not db.exists():
        t0 = time.time()
        s = ingest.run(str(source), db=str(db), models="dlib", workers=2, progress=False,
                       report=str(work / f"{name}.report.jsonl"))
        print(f"ingested {name}: {s.images_seen} photos, {s.faces_stored} faces in {time.time() - t0:.0f} s", flush=True)
    return str(db)


def load(db: str) -> Dict[str, Any]:
    from lookalike.ingest.store import Store

    with Store(db) as store:
        rows = list(store.iterate("faces_dlib", ["id", "identity", "quality", "vector"]))
    x = np.asarray([r["vector"] for r in rows], dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return {"ids": [r["id"] for r in rows], "identity": np.array([r["identity"] for r in rows]),
            "quality": np.array([r["quality"] for r in rows], dtype=float), "x": x}


def product_labels(db: str, d: Dict[str, Any], threshold: float, min_quality: float) -> Tuple[np.ndarray, float]:
    from lookalike.query.people import people

    t0 = time.perf_counter()
    r = people("dlib", db=db, recluster=True, threshold=threshold, min_quality=min_quality)
    took = time.perf_counter() - t0
    person = {f.id: p.id for p in r.people for f in p.faces}
    return np.array([f"p{person[i]}" if i in person else f"alone:{i}" for i in d["ids"]]), took


def sweep_best(d: Dict[str, Any], gate: np.ndarray, method: str) -> float:
    """The threshold of the sweep with the best pairwise F1 (ties: the lower) on this set's gated faces."""
    from lookalike.query.people import average_linkage

    x, lab = d["x"][gate], d["identity"][gate] != ""
    truth = d["identity"][gate][lab]
    best: Tuple[float, float] = (-1.0, 0.0)
    for t in SWEEP:
        if method == "chinese-whispers":
            pred = chinese_whispers(x, float(t))
        else:
            s = x @ x.T
            pred = average_linkage(x, np.argwhere(np.triu(s >= t, 1)), float(t))
        f = scores(pred[lab], truth)["pairwise_f1"]
        if f > best[0] + 1e-12:
            best = (f, float(t))
    return best[1]


def synthetic(n: int, k: int, threshold: float, seed: int = 0) -> Dict[str, Any]:
    """Clustering time at n faces: persons of 1-20 faces around random centres (128-d, normalised),
    their kNN graph (exact, faiss inner product; the store's search is what the product uses),
    then the product's average linkage on it."""
    import faiss

    from lookalike.query.people import average_linkage

    rng = np.random.default_rng(seed)
    sizes: List[int] = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 21)))
    sizes[-1] -= sum(sizes) - n
    centres = rng.standard_normal((len(sizes), 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[truth] + rng.standard_normal((n, 128)).astype(np.float32) * 0.022
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t0 = time.perf_counter()
    faiss.omp_set_num_threads(2)
    index = faiss.IndexFlatIP(128)
    index.add(x)
    sims, nbrs = index.search(x, k + 1)
    t_knn = time.perf_counter() - t0
    keep = sims >= threshold
    rows = np.repeat(np.arange(n), k + 1).reshape(n, k + 1)
    e = np.stack([rows[keep], nbrs[keep]], axis=1)
    e = e[e[:, 0] != e[:, 1]]
    t1 = time.perf_counter()
    labels = average_linkage(x, e.tolist(), threshold)
    t_cluster = time.perf_counter() - t1
    sc = scores(labels, truth)
    return {"faces": n, "persons": len(sizes), "k": k, "threshold": threshold, "edges": int(len(e)),
            "knn_seconds": round(t_knn, 1), "cluster_seconds": round(t_cluster, 1),
            "pairwise_f1": round(sc["pairwise_f1"], 4), "bcubed_f1": round(sc["bcubed_f1"], 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("LOOKALIKE_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--work", default=None, help="folder of the sets' databases (kept; reused when there)")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="also time the clustering of N synthetic faces")
    args = ap.parse_args()

    from lookalike.ingest.quality import DEFAULT_MIN_QUALITY
    from lookalike.query.people import NEIGHBOURS, PEOPLE_THRESHOLDS, average_linkage

    data = Path(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_people_"))
    work.mkdir(parents=True, exist_ok=True)
    sets = {"lfw_fold1": ingest_set("lfw_fold1", data / "lfw" / "lfw", work),
            "celeba_sample": ingest_set("celeba_sample", data / "celeba", work)}
    loaded = {name: load(db) for name, db in sets.items()}
    gates = {name: d["quality"] >= DEFAULT_MIN_QUALITY for name, d in loaded.items()}
    chosen = {name: {m: sweep_best(d, gates[name], m) for m in ("average-linkage", "chinese-whispers")}
              for name, d in loaded.items()}
    other = {"lfw_fold1": "celeba_sample", "celeba_sample": "lfw_fold1"}
    out: Dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.platform(),
                           "cpus": os.cpu_count(), "min_quality": DEFAULT_MIN_QUALITY, "k": NEIGHBOURS,
                           "product_default_threshold": PEOPLE_THRESHOLDS["dlib"],
                           "chosen_on_each_set": chosen, "sets": {}}
    for name, d in loaded.items():
        gate, lab = gates[name], d["identity"] != ""
        tune = other[name]
        t_al, t_cw = chosen[tune]["average-linkage"], chosen[tune]["chinese-whispers"]
        res: Dict[str, Any] = {"faces": len(d["ids"]), "labelled": int(lab.sum()),
                               "identities": len(set(d["identity"][lab])),
                               "below_gate": int((~gate).sum()), "labelled_below_gate": int((~gate & lab).sum()),
                               "threshold_from": tune, "methods": {}}
        pred, took = product_labels(sets[name], d, t_al, DEFAULT_MIN_QUALITY)
        runs = {f"product (average linkage, kNN graph, t={t_al:.4f})": ("product", t_al, None),
                f"average-linkage all pairs (t={t_al:.4f})": ("average-linkage", t_al, None),
                f"chinese-whispers (t={t_cw:.4f})": ("chinese-whispers", t_cw, None)}
        for label, (method, t, _) in runs.items():
            entry: Dict[str, Any] = {"threshold": t}
            for scope in ("gated", "all"):
                keep = gate if scope == "gated" else np.ones(len(gate), dtype=bool)
                if method == "product":
                    p = pred[keep]
                    entry["seconds"] = round(took, 2)
                elif method == "average-linkage":
                    p = dense_average_linkage(d["x"][keep], t)
                    if scope == "gated":  # the graph version equals the all-pairs one
                        s = d["x"][keep] @ d["x"][keep].T
                        g = average_linkage(d["x"][keep], np.argwhere(np.triu(s >= t, 1)), t)
                        entry["graph_equals_all_pairs"] = scores(g, p)["bcubed_f1"] > 1 - 1e-12
                else:
                    p = chinese_whispers(d["x"][keep], t)
                sel = lab[keep]
                entry[scope] = {k: round(v, 4) for k, v in scores(np.asarray(p)[sel], d["identity"][keep][sel]).items()}
            res["methods"][label] = entry
        out["sets"][name] = res
        print(name, "done", flush=True)
    if args.synthetic:
        out["synthetic"] = synthetic(args.synthetic, NEIGHBOURS, PEOPLE_THRESHOLDS["dlib"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "people.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"lookalike people: clustering quality (bench/bench_people.py, {out['when']}, {out['cpus']} cpus)",
             f"quality gate {DEFAULT_MIN_QUALITY}, k = {NEIGHBOURS}; product default threshold "
             f"{PEOPLE_THRESHOLDS['dlib']}; thresholds chosen on the other set (best pairwise F1): "
             + ", ".join(f"{n}: AL {c['average-linkage']}, CW {c['chinese-whispers']}" for n, c in chosen.items()), ""]
    for name, res in out["sets"].items():
        lines.append(f"{name}: {res['faces']} faces, {res['labelled']} labelled of {res['identities']} identities, "
                     f"{res['labelled_below_gate']} labelled below the gate; thresholds chosen on {res['threshold_from']}")
        lines.append(f"  {'method':<62} {'scope':<6} {'pair P':>6} {'pair R':>6} {'pair F1':>7} "
                     f"{'B3 P':>6} {'B3 R':>6} {'B3 F1':>6}")
        for label, e in res["methods"].items():
            for scope in ("gated", "all"):
                s = e[scope]
                lines.append(f"  {label:<62} {scope:<6} {s['pairwise_p']:>6.3f} {s['pairwise_r']:>6.3f} "
                             f"{s['pairwise_f1']:>7.3f} {s['bcubed_p']:>6.3f} {s['bcubed_r']:>6.3f} {s['bcubed_f1']:>6.3f}")
        lines.append("")
    if "synthetic" in out:
        s = out["synthetic"]
        lines.append(f"synthetic: {s['faces']} faces ({s['persons']} persons), kNN k={s['k']} {s['knn_seconds']} s "
                     f"(faiss exact), average linkage {s['cluster_seconds']} s over {s['edges']} edges; "
                     f"pairwise F1 {s['pairwise_f1']}, BCubed F1 {s['bcubed_f1']}")
    (RESULTS / "people.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
