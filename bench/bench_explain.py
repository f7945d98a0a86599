"""Faithfulness and cost of the explanations (query/explain.py), for every method/model pair.

Deletion test per pair (query face, a same-identity face from ../shared/data/people): grey out
the 20 % most important pixels of the match crop by the map, and 20 % random pixels; report the
mean similarity drop for each (a faithful map drops more), the share of pairs where the map wins,
and the time of one full explanation (both maps) per method.

Models: dlib (real weights, shipped in a package); FaceNet with RANDOM weights built from
DeepFace's InceptionResNetV1 (no trained weights here); tiny random CLIP / DINOv2 (as in
tests/test_transformers.py). Random-weight figures are reported, not asserted.

    python bench/bench_explain.py [--pairs 20] [--occ-patch 0.1667 --occ-stride 0.0833]
writes bench/results/explain.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# tests/ is no package: its helpers (same_identity_pairs, build_tiny_models) import by file name
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def facenet_home(root: Path) -> Path:
    """A DeepFace home whose facenet_weights.h5 holds random weights of DeepFace's architecture."""
    import h5py
    from deepface.models.facial_recognition.tf.Facenet import InceptionResNetV1
    from keras.src.legacy.saving import legacy_h5_format

    w = root / ".deepface" / "weights"
    w.mkdir(parents=True, exist_ok=True)
    with h5py.File(w / "facenet_weights.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, InceptionResNetV1(dimension=128))
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--occ-patch", type=float, default=None)
    ap.add_argument("--occ-stride", type=float, default=None)
    ap.add_argument("--models", default="dlib,facenet,clip,dinov2")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "explain.json"))
    a = ap.parse_args()

    from test_explain import same_identity_pairs

    from lookalike.ingest.images import load
    from lookalike.ingest.models import Detector, make_embedder
    from lookalike.ingest.settings import Settings
    from lookalike.query import explain as X

    if a.occ_patch:
        X.OCC_PATCH = a.occ_patch
    if a.occ_stride:
        X.OCC_STRIDE = a.occ_stride
    tmp = Path(tempfile.mkdtemp(prefix="bench_explain_"))
    os.environ["DEEPFACE_HOME"] = str(tmp)
    settings = Settings(deepface_home=str(tmp))
    det = Detector("yunet", settings)
    pairs = []
    for qp, mp in same_identity_pairs(a.pairs):
        qi, mi = load(qp), load(mp)
        qf, mf = det.detect(qi), det.detect(mi)
        if qf and mf:
            pairs.append((qi, max(qf, key=lambda f: f.size), mi, max(mf, key=lambda f: f.size)))
    wanted = a.models.split(",")
    if "facenet" in wanted:
        facenet_home(tmp)
    if {"clip", "dinov2"} & set(wanted):
        from test_transformers import build_tiny_models

        tiny = build_tiny_models(tmp / "hf")
        settings = settings.with_(clip_model=str(tiny["clip"]), dinov2_model=str(tiny["dinov2"]))
    weights = {"dlib": "real", "facenet": "random (DeepFace InceptionResNetV1)",
               "clip": "random tiny (4 blocks, 64 px)", "dinov2": "random tiny (4 blocks, 56 px)"}
    rows = []
    for model in wanted:
        emb = make_embedder(model, settings).load()
        inputs = [(emb.model_input(qi, qf), emb.model_input(mi, mf)) for qi, qf, mi, mf in pairs]
        for method in X.METHODS:
            if X.available(method, emb):
                rows.append({"model": model, "method": method, "weights": weights[model],
                             "available": False, "note": X.available(method, emb)})
                print(f"{model:8s} {method:10s} not available", flush=True)
                continue
            times, dm, dr = [], [], []
            for i, (q, m) in enumerate(inputs):
                t = time.perf_counter()
                ex = X.explain_inputs(emb, method, q, m)
                times.append(time.perf_counter() - t)
                if ex.match_map is None:
                    if i >= 2:
                        break  # layers: no map, timing only
                    continue
                vq = emb.embed_inputs([q])[0]
                r = X.deletion_test(emb, m, vq, ex.match_map, seed=i)
                dm.append(r["drop_map"])
                dr.append(r["drop_random"])
            row = {"model": model, "method": method, "weights": weights[model], "available": True,
                   "seconds_per_explanation": round(float(np.median(times)), 4)}
            if dm:
                row.update(pairs=len(dm), mean_drop_map=round(float(np.mean(dm)), 5),
                           mean_drop_random=round(float(np.mean(dr)), 5),
                           map_beats_random=round(float(np.mean(np.array(dm) > np.array(dr))), 3),
                           faithful=bool(np.mean(dm) > np.mean(dr)))
            rows.append(row)
            print(f"{model:8s} {method:10s} " + " ".join(f"{k}={v}" for k, v in row.items()
                                                       if k not in ("model", "method", "weights")), flush=True)
    doc = {"occlusion": {"patch": X.OCC_PATCH, "stride": X.OCC_STRIDE}, "delete_fraction": X.DELETE_FRACTION,
           "pairs_requested": a.pairs, "cpu_threads": os.cpu_count(), "results": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
