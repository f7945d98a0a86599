"""dlib's face ResNet on each engine, side by side in one run: ONNX Runtime fp32 (the default),
its int8 graph (onnx-int8), the torch port, and dlib's own C++ (the reference).

    python bench/bench_engines.py [--faces 64] [--rounds 5]

Real chips: the CelebA sample's faces through the product's analysis (YuNet, dlib's 5-point chip).
One thread per engine, as in a Dask worker. Per engine and batch size (1 and 32): ms per face
(the best of --rounds, engines interleaved round by round so that a busy machine slows all of them
alike), the largest difference of its vectors from torch's, and the lowest and mean cosine of its
(normalised) descriptors to torch's. Written to bench/results/engines.json
and engines.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ENGINES = ("torch", "onnx", "onnx-int8", "dlib")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default=os.environ.get("LOOKALIKE_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()

    from lookalike.ingest.settings import pin_threads

    pin_threads(1)  # before numpy / torch / ONNX Runtime start their pools
    import numpy as np

    from lookalike.ingest.analysis import Analyzer
    from lookalike.ingest.images import load
    from lookalike.ingest.models import make_embedder
    from lookalike.ingest.settings import Settings

    settings = Settings()
    analyzer = Analyzer(settings, "yunet", ["dlib"]).load()
    chips = []
    for p in sorted((Path(args.data) / "celeba" / "img_celeba").iterdir()):
        image = load(str(p))
        photo = analyzer.detect(image)
        chips += [analyzer.model_input("dlib", image, f.face) for f in photo.faces]
        if len(chips) >= args.faces:
            break
    chips = chips[:args.faces]
    nets = {}
    for engine in ENGINES:
        emb = make_embedder("dlib", settings.with_(dlib_engine=engine))
        emb.load()
        nets[engine] = emb._predict_inputs  # the forward alone: chips are made once, above
    ref = nets["torch"](chips)
    best = {(e, b): float("inf") for e in ENGINES for b in (1, 32)}
    for _ in range(args.rounds):
        for engine, fn in nets.items():
            for batch in (1, 32):
                t0 = time.perf_counter()
                for i in range(0, len(chips), batch):
                    fn(chips[i:i + batch])
                best[engine, batch] = min(best[engine, batch], (time.perf_counter() - t0) / len(chips))
    rows = []
    for engine, fn in nets.items():
        got = fn(chips)
        diff = float(np.abs(got - ref).max())
        cos = (got / np.linalg.norm(got, axis=1, keepdims=True) * (ref / np.linalg.norm(ref, axis=1, keepdims=True))).sum(1)
        rows.append({"engine": engine, "cosine_min": round(float(cos.min()), 5),
                     "cosine_mean": round(float(cos.mean()), 5), "ms_per_face_batch1": round(1000 * best[engine, 1], 2),
                     "ms_per_face_batch32": round(1000 * best[engine, 32], 2), "max_abs_diff_vs_torch": diff,
                     "speed_vs_torch_batch32": round(best["torch", 32] / best[engine, 32], 2)})
    out = {"faces": len(chips), "rounds": args.rounds, "threads": 1, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "python": sys.version.split()[0], "engines": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"dlib ResNet forward, {len(chips)} CelebA sample chips, 1 thread, best of {args.rounds} rounds "
             f"(engines interleaved)", f"{'engine':<8} {'ms/face b1':>10} {'ms/face b32':>11} {'x torch b32':>11} "
             f"{'max |diff| vs torch':>20} {'cos min':>8} {'cos mean':>8}"]
    lines += [f"{r['engine']:<8} {r['ms_per_face_batch1']:>10.2f} {r['ms_per_face_batch32']:>11.2f} "
              f"{r['speed_vs_torch_batch32']:>11.2f} {r['max_abs_diff_vs_torch']:>20.2e} {r['cosine_min']:>8.5f} "
              f"{r['cosine_mean']:>8.5f}" for r in rows]
    (RESULTS / "engines.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
