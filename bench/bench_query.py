#!/usr/bin/env python
"""Query benchmark: a group photo with 8 faces against a 200,000-row collection.

    python bench/bench_query.py [--rows 200000] [--reps 5] [--queries 50] [--rebuild] [--profile lite]

Writes bench/results/query.json and query.txt (the table printed); with --profile P other than the
default lite (FLAT), query_P.json / query_P.txt (e.g. --profile lite-hnsw).

- Collection: SYNTHETIC rows, not faces: uniform random unit 128-d vectors (the hardest case for
  HNSW: no cluster structure, near-equal distances) with random attributes (each true with
  p = 0.5), identity s<j mod 1000> (one identity = 0.1 % of the rows) and source paths/boxes
  pointing at real CelebA sample images (so the contact sheet loads real files). Inserted in
  batches of 5,000 into faces_dlib of a Milvus Lite DB cached in bench/.cache/, one per index
  (first run: ~2 minutes for FLAT, ~10 for HNSW, mostly Lite building the graph); later runs reuse it.
- Photo: multiface.jpg and kit_with_rose.jpg tiled side by side (8 faces), dlib + yunet, k = 10.
- Warm end-to-end time per photo (models loaded once per process, the first query excluded) and
  its split: read, detect, embed, search, render (contact sheet PNG), for no filter, a broad
  filter, a restrictive filter and --exclude-same-image (FLAT: one exact search each; HNSW: the
  filter probed, then exact or ANN with ef raised).
- One batched search call for all faces vs one call per face.
- Filtered recall@10 vs brute-force numpy over the same rows, selectivity 0.1 % .. 100 %, for the
  query path's policy and for a plain search of the index with the filter at the profile's
  parameters.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
BATCH = 5000
IDENTITIES = 1000
DIM = 128
SEED = 20240601


# ---------------------------------------------------------------------------------------------
# synthetic collection
# ---------------------------------------------------------------------------------------------
def celeba_sources(data_dir: Path) -> List[tuple]:
    """(path, central box) of the CelebA sample images, so synthetic rows point at real files."""
    from PIL import Image

    out = []
    folder = data_dir / "celeba" / "img_celeba"
    for p in sorted(folder.glob("*.jpg")):
        with Image.open(p) as im:
            w, h = im.size
        s = min(w, h) // 2
        out.append((str(p), ((w - s) // 2, (h - s) // 3, s, s)))
    return out or [("synthetic/missing.jpg", (0, 0, 100, 100))]


def synthetic_batch(start: int, n: int) -> Dict[str, np.ndarray]:
    """Vectors and attributes of rows start..start+n, reproducible per batch."""
    from lookalike.schemas import ATTRIBUTES

    rng = np.random.default_rng([SEED, start])
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    attrs = rng.random((n, len(ATTRIBUTES))) < 0.5
    return {"vectors": v, "attrs": attrs}


def synthetic_rows(start: int, n: int, sources: List[tuple]) -> List[Dict[str, Any]]:
    from lookalike.schemas import ATTRIBUTES

    b = synthetic_batch(start, n)
    rows = []
    for i in range(n):
        j = start + i
        path, (x, y, w, h) = sources[j % len(sources)]
        r = {"id": f"{j:064x}_0", "image_sha256": f"{j:064x}", "source_path": path, "face_index": 0,
             "box_x": x, "box_y": y, "box_w": w, "box_h": h, "confidence": 1.0, "detector": "synthetic",
             "identity": f"s{j % IDENTITIES:04d}", "has_attributes": True, "ingested_at": 0, "face_size": 100,
             "sharpness": 0.5, "frontal": 1.0, "quality": 1.0,
             "vector": b["vectors"][i].tolist()}
        r.update({a: bool(b["attrs"][i, k]) for k, a in enumerate(ATTRIBUTES)})
        rows.append(r)
    return rows


def ensure_db(rows: int, sources: List[tuple], rebuild: bool, log, profile: str) -> Dict[str, Any]:
    from lookalike.ingest.store import Store
    from lookalike.schemas import get_profile

    index = get_profile(profile).index_type

    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    db, marker = cache_paths(rows, profile)
    want = {"rows": rows, "seed": SEED, "dim": DIM, "identities": IDENTITIES, "batch": BATCH,
            "sources": len(sources), "index": index}
    if not rebuild and marker.exists():
        info = json.loads(marker.read_text())
        if all(info.get(k) == v for k, v in want.items()) and db.exists():
            info["reused"] = True
            return info
    import shutil

    shutil.rmtree(db, ignore_errors=True)
    log(f"building {rows:,} synthetic rows in {db} (batches of {BATCH:,}; a few minutes)")
    t0 = time.perf_counter()
    store = Store(str(db), profile=profile)
    store.ensure_collection("dlib")
    for start in range(0, rows, BATCH):
        store.upsert_faces("dlib", synthetic_rows(start, min(BATCH, rows - start), sources))
        if (start // BATCH) % 8 == 7:
            log(f"  {start + BATCH:,} rows, {time.perf_counter() - t0:.0f} s")
    store.flush(["faces_dlib"])
    t_insert = time.perf_counter() - t0
    # A flushed segment is searched brute force until its HNSW index exists; load() builds it.
    t1 = time.perf_counter()
    store.build_indexes(["faces_dlib"])
    t_index = time.perf_counter() - t1
    n = store.count("faces_dlib")
    store.close()
    # Lite may compact on close; reopening and loading builds any index still missing.
    t2 = time.perf_counter()
    with Store(str(db), profile=profile) as store:
        store.count("faces_dlib")
    t_reload = time.perf_counter() - t2
    if n != rows:
        raise SystemExit(f"built {n} rows, wanted {rows}")
    info = dict(want, insert_seconds=round(t_insert, 1), index_seconds=round(t_index, 1),
                reload_seconds=round(t_reload, 1), built_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    marker.write_text(json.dumps(info, indent=2))
    info["reused"] = False
    return info


def cache_paths(rows: int, profile: str):
    from lookalike.schemas import get_profile

    stem = CACHE / f"query_{rows}_{get_profile(profile).index_type.lower()}"
    return stem.with_suffix(".db"), stem.with_suffix(".json")


def all_vectors(rows: int):
    vs, attrs = [], []
    for start in range(0, rows, BATCH):
        b = synthetic_batch(start, min(BATCH, rows - start))
        vs.append(b["vectors"])
        attrs.append(b["attrs"])
    return np.concatenate(vs), np.concatenate(attrs)


# ---------------------------------------------------------------------------------------------
# photo
# ---------------------------------------------------------------------------------------------
def tiled_photo(data_dir: Path) -> Path:
    from PIL import Image

    out = CACHE / "group8.jpg"
    if out.exists():
        return out
    g = data_dir / "groups" / "photos"
    ims = [Image.open(g / n).convert("RGB") for n in ("multiface.jpg", "kit_with_rose.jpg")]
    h = 700
    ims = [im.resize((round(im.width * h / im.height), h), Image.Resampling.LANCZOS) for im in ims]
    tile = Image.new("RGB", (sum(i.width for i in ims), h))
    x = 0
    for im in ims:
        tile.paste(im, (x, 0))
        x += im.width
    tile.save(out, quality=92)
    return out


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def run_scenario(searcher, photo, k, reps, out_dir, keep_probes=False, **kw) -> Dict[str, Any]:
    from lookalike.query.render import render_sheet

    runs = []
    last = None
    if keep_probes:  # the situation of the 2nd, 3rd, ... photo of one run with the same filter
        searcher.search_photo(photo, top_k=k, **kw)
    for _ in range(reps):
        if not keep_probes:
            searcher.clear_cache()
        t0 = time.perf_counter()
        r = searcher.search_photo(photo, top_k=k, keep_image=True, **kw)
        t1 = time.perf_counter()
        render_sheet(r).save(out_dir / "result.png", compress_level=1)
        t2 = time.perf_counter()
        runs.append(dict(r.timings, render=t2 - t1, query=t1 - t0, total=t2 - t0))
        last = r
    assert last is not None, "reps must be at least 1"
    split = {key: med([x[key] for x in runs]) for key in runs[0]}
    return {"faces": len(last.faces), "split_median_s": {k2: round(v, 4) for k2, v in split.items()},
            "totals_s": [round(x["total"], 4) for x in runs],
            "search": [s.model_dump() for s in last.search], "filter": last.filter,
            "matches_per_face": [len(f.matches) for f in last.faces]}


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--queries", type=int, default=50, help="random query vectors for recall")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--profile", default="lite", help="index profile of the collection (lite = FLAT, lite-hnsw)")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not os.environ.get("DEEPFACE_HOME"):
        os.environ["DEEPFACE_HOME"] = tempfile.mkdtemp(prefix="lookalike-deepface-")
    from lookalike.ingest.settings import Settings
    from lookalike.ingest.store import Store
    from lookalike.query.search import EF_MAX, EXACT_MAX_ROWS, Searcher
    from lookalike.schemas import ATTRIBUTES
    from lookalike.schemas.filters import compile_filter

    lines: List[str] = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    settings = Settings()
    sources = celeba_sources(settings.data_dir)
    build = ensure_db(args.rows, sources, args.rebuild, log, args.profile)
    db = cache_paths(args.rows, args.profile)[0]
    photo = tiled_photo(settings.data_dir)
    out_dir = CACHE / "out"
    out_dir.mkdir(exist_ok=True)
    k = args.k

    result: Dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()},
        "collection": {"rows": args.rows, "data": "synthetic: uniform random unit 128-d vectors, random "
                       "attributes (p=0.5), identity s<j mod 1000>; not faces", **build},
        "photo": {"path": str(photo.relative_to(ROOT)), "made_of": ["multiface.jpg", "kit_with_rose.jpg"]},
        "k": k, "policy": {"exact_max_rows": EXACT_MAX_ROWS, "ef_max": EF_MAX},
    }

    t0 = time.perf_counter()
    store = Store(str(db), profile=args.profile)
    n_rows = store.count("faces_dlib")
    t_open = time.perf_counter() - t0
    index = store.index_type("faces_dlib")
    searcher = Searcher(settings.with_(db=str(db), detector="yunet", profile=args.profile), store=store)
    assert n_rows == args.rows, n_rows

    # cold: first query of the process loads the models
    t0 = time.perf_counter()
    first = searcher.search_photo(photo, top_k=k)
    t_cold = time.perf_counter() - t0
    eng1 = searcher.analyzer(["dlib"]).engine
    eng2 = searcher.analyzer(["dlib"]).engine
    result["cold"] = {"open_and_load_collection_s": round(t_open, 3), "first_query_s": round(t_cold, 3),
                      "engine_reused": eng1 is eng2, "faces": len(first.faces)}

    broad = "Smiling and not Eyeglasses"  # ~25 %
    narrow = 'identity in ["s0001", "s0002", "s0003", "s0004", "s0005"]'  # 0.5 %
    reused = "" if index == "FLAT" else " (probe reused)"  # FLAT searches never probe
    scenarios: Dict[str, Dict[str, Any]] = {
        "no filter": {},
        f"filter {broad} (~25 %)": {"filter": broad},
        "filter identity in 5 ids (0.5 %)": {"filter": narrow},
        "exclude same image": {"exclude_same_image": True},
        f"filter ~25 %, next photo of the run{reused}": {"filter": broad, "keep_probes": True},
        f"filter 0.5 %, next photo of the run{reused}": {"filter": narrow, "keep_probes": True},
    }
    result["warm"] = {}
    for name, kw in scenarios.items():
        result["warm"][name] = run_scenario(searcher, photo, k, args.reps, out_dir, **kw)

    # batched vs per-face search
    from lookalike.ingest.images import load

    qv = searcher.analyzer(["dlib"]).analyse(load(photo)).vectors("dlib")
    batched, single = [], []
    for _ in range(args.reps):
        t = time.perf_counter()
        store.search("dlib", qv, k)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        for v in qv:
            store.search("dlib", v[None, :], k)
        single.append(time.perf_counter() - t)
    result["batching"] = {"faces": len(qv), "one_call_s": round(med(batched), 4),
                          "one_call_per_face_s": round(med(single), 4),
                          "ratio": round(med(single) / med(batched), 2)}

    # recall vs brute force
    vecs, attrs = all_vectors(args.rows)
    ids = np.array([f"{j:064x}_0" for j in range(args.rows)])
    check = store.get("dlib", [ids[0], ids[args.rows // 2], ids[-1]], output_fields=["id", "vector"])
    for r in check:
        j = int(r["id"].split("_")[0], 16)
        assert np.allclose(r["vector"], vecs[j], atol=1e-6), "cached DB differs from the generator"
    ident = np.arange(args.rows) % IDENTITIES
    col = {a: i for i, a in enumerate(ATTRIBUTES)}
    rng = np.random.default_rng(7)
    q = rng.standard_normal((args.queries, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    def id_filter(n):
        return "identity in [" + ", ".join(f'"s{i:04d}"' for i in range(n)) + "]"

    sels = [(0.001, id_filter(1)), (0.005, id_filter(5)), (0.01, id_filter(10)), (0.02, id_filter(20)),
            (0.05, id_filter(50)), (0.10, id_filter(100)), (0.25, "Male and Smiling"), (0.5, "Male"),
            (1.0, "has_attributes")]
    recall_rows = []
    profile_ef = int(store.search_params("faces_dlib").get("ef", 0)) or None
    for _, expr in sels:  # the selectivity reported is the one measured, mask.mean()
        flt = compile_filter(expr)
        assert flt is not None
        # the predicate itself, evaluated per row on the fields it uses
        fields = flt.fields()
        mask = np.fromiter((flt.evaluate({
            f: (f"s{ident[j]:04d}" if f == "identity" else True if f == "has_attributes" else bool(attrs[j, col[f]]))
            for f in fields}) for j in range(args.rows)), dtype=np.bool_, count=args.rows)
        sub = np.nonzero(mask)[0]
        scores = q @ vecs[sub].T
        top = np.argsort(-scores, axis=1)[:, :10]
        truth = [set(ids[sub[t]]) for t in top]
        t = time.perf_counter()
        searcher.clear_cache()
        got, info = searcher.search_vectors("dlib", q, 10, flt, output_fields=["id"])
        t_policy = time.perf_counter() - t
        rec = float(np.mean([len(tr & {m.id for m in g}) / 10 for tr, g in zip(truth, got)]))
        t = time.perf_counter()
        raw = store.search("dlib", q, 10, flt, output_fields=["id"])
        t_raw = time.perf_counter() - t
        rec_raw = float(np.mean([len(tr & {h["id"] for h in g}) / 10 for tr, g in zip(truth, raw)]))
        shown = expr if len(expr) < 60 else expr[:57] + "..."
        recall_rows.append({"selectivity": round(float(mask.mean()), 5), "filter": shown,
                            "rows": int(mask.sum()), "recall_policy": round(rec, 4), "mode": info.mode,
                            "ef": info.ef, "policy_s": round(t_policy, 3),
                            "recall_plain": round(rec_raw, 4), "plain_index": index, "plain_ef": profile_ef,
                            "plain_s": round(t_raw, 3)})
    # unfiltered plain path (profile ef) for reference
    top = np.argsort(-(q @ vecs.T), axis=1)[:, :10]
    truth = [set(ids[t]) for t in top]
    got, info = searcher.search_vectors("dlib", q, 10, None, output_fields=["id"])
    rec_unf = float(np.mean([len(tr & {m.id for m in g}) / 10 for tr, g in zip(truth, got)]))
    result["recall"] = {"queries": args.queries, "k": 10, "rows": recall_rows,
                        "unfiltered_profile_ef": {"ef": info.ef, "recall": round(rec_unf, 4)}}
    result["load_average_at_end"] = os.getloadavg()
    store.close()

    # ---- report ----
    log()
    load0 = result["machine"]["load_average_at_start"][0]
    log(f"Lookalike query benchmark  ({os.cpu_count()} CPUs, load average {load0:.1f} at start, "
        f"{result['load_average_at_end'][0]:.1f} at end)")
    log(f"collection: {args.rows:,} SYNTHETIC rows (uniform random unit 128-d vectors, random attributes), "
        f"Milvus Lite {index} (profile {args.profile}), {'reused cache' if build.get('reused') else 'built now'}"
        f" (insert {build.get('insert_seconds')} s, index {build.get('index_seconds')} s)")
    log(f"photo: {result['photo']['path']} ({result['cold']['faces']} faces), model dlib, detector yunet, k={k}")
    log(f"cold: open+load collection {t_open:.2f} s, first query (loads models) {t_cold:.2f} s; "
        f"engine reused afterwards: {result['cold']['engine_reused']}")
    log()
    log(f"warm end-to-end per photo (median of {args.reps}), seconds; total = query + render (contact "
        f"sheet PNG); query = read + detect + embed + search")
    log(f"{'scenario':<52} {'total':>6} {'query':>6} {'read':>6} {'detect':>6} {'embed':>6} {'search':>6} "
        f"{'render':>6}  how")
    for name, sc in result["warm"].items():
        s = sc["split_median_s"]
        how = "; ".join(f"{x['mode']}" + (f" ef {x['ef']}" if x["ef"] else "") +
                        (f", {x['filtered_rows']} rows" if x["filtered_rows"] is not None else "")
                        for x in sc["search"])
        log(f"{name:<52} {s['total']:6.3f} {s['query']:6.3f} {s['read']:6.3f} {s['detect']:6.3f} {s['embed']:6.3f} "
            f"{s['search']:6.3f} {s['render']:6.3f}  {how}")
    b = result["batching"]
    log()
    log(f"search of {b['faces']} faces: one batched call {b['one_call_s']:.3f} s, one call per face "
        f"{b['one_call_per_face_s']:.3f} s -> batching is {b['ratio']:.1f}x faster")
    log()
    policy = ("FLAT index: every search exact, no probe" if index == "FLAT" else
              f"probe; exact when the filter keeps <= {EXACT_MAX_ROWS} rows, else {index} with ef raised "
              f"(max {EF_MAX})")
    log(f"recall@10 vs brute force ({args.queries} random queries), policy: {policy}")
    plain = f"plain {index}" + (f" ef {profile_ef}" if profile_ef else "")
    log(f"{'selectivity':>11} {'rows':>7} {'policy':>7} {'mode':>6} {'ef':>5} {'time':>6}   "
        f"{plain:>14} {'time':>6}")
    for r in recall_rows:
        log(f"{100 * r['selectivity']:10.2f}% {r['rows']:7d} {r['recall_policy']:7.3f} {r['mode']:>6} "
            f"{(r['ef'] or '-'):>5} {r['policy_s']:6.2f}   {r['recall_plain']:14.3f} {r['plain_s']:6.2f}")
    log(f"no filter ({index}" + (f", profile ef {info.ef}" if info.ef else "") + f"): recall@10 {rec_unf:.3f}"
        + (" (uniform random data is HNSW's worst case)" if index != "FLAT" else ""))

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / ("query" if args.profile == "lite" else f"query_{args.profile}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
