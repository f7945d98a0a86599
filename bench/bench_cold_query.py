"""A cold `lookalike query` (a new process, as a user types it) per dlib engine, side by side.

    python bench/bench_cold_query.py [--rounds 3] [--photo PATH]

A Lite database of the people gallery (ingested once, cached under bench/.cache), then per round
and engine (interleaved, so that a busy machine slows each alike): the wall time of
`python -X importtime -m lookalike.query.app.cli query PHOTO -k 5 --json`, and from its import
log the cumulative import time of the heavy packages (torch, TensorFlow, pymilvus, ONNX Runtime,
OpenCV, dlib, DeepFace) and whether each was imported at all. The medians go to
bench/results/cold_query.json and cold_query.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache" / "cold_query"
ENGINES = ("torch", "onnx")
PACKAGES = ("torch", "tensorflow", "pymilvus", "onnxruntime", "cv2", "dlib", "deepface", "transformers")
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)$")


def imports(log: str) -> Dict[str, float]:
    """Seconds of cumulative import time of each top-level package in PACKAGES that was imported."""
    out: Dict[str, float] = {}
    for line in log.splitlines():
        m = _LINE.match(line)
        if m and m.group(4) in PACKAGES:
            out[m.group(4)] = max(out.get(m.group(4), 0.0), int(m.group(2)) / 1e6)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    data = Path(os.environ.get("LOOKALIKE_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--photo", default=str(data / "groups" / "photos" / "obama_and_biden.jpg"))
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    db = CACHE / "people.db"
    cli = [sys.executable, "-m", "lookalike.query.app.cli"]
    if not db.exists():
        subprocess.run(cli + ["ingest", str(data / "people"), "--db", str(db), "-q", "--report", str(CACHE / "r.jsonl")],
                       check=True, capture_output=True)
    runs: Dict[str, List[dict]] = {e: [] for e in ENGINES}
    for _ in range(args.rounds):
        for engine in ENGINES:
            env = {**os.environ, "LOOKALIKE_DLIB_ENGINE": engine}
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-X", "importtime", *cli[1:], "query", args.photo, "--db", str(db),
                                "-k", "5", "--json"], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                print(r.stderr[-2000:], file=sys.stderr)
                return 1
            faces = len(json.loads(r.stdout)["photos"][0]["faces"])
            runs[engine].append({"seconds": wall, "imports": imports(r.stderr), "faces": faces})
    summary = {}
    for engine, rs in runs.items():
        seen = sorted({p for r in rs for p in r["imports"]})
        summary[engine] = {
            "seconds_median": round(statistics.median(r["seconds"] for r in rs), 3),
            "seconds_all": [round(r["seconds"], 3) for r in rs], "faces": rs[0]["faces"],
            "imports_seconds_median": {p: round(statistics.median(r["imports"].get(p, 0.0) for r in rs), 3) for p in seen},
            "not_imported": [p for p in PACKAGES if p not in seen]}
    base = summary["torch"]["seconds_median"]
    out = {"photo": args.photo, "db": "people gallery (Lite)", "rounds": args.rounds, "cpus": os.cpu_count(),
           "engines": summary, "speedup_onnx_vs_torch": round(base / summary["onnx"]["seconds_median"], 2)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cold_query.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"cold `lookalike query {Path(args.photo).name} -k 5 --json` on the people gallery, median of "
             f"{args.rounds} (engines interleaved), {os.cpu_count()} cpus"]
    for engine, s in summary.items():
        parts = ", ".join(f"{p} {v:.2f} s" for p, v in sorted(s["imports_seconds_median"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{engine:<6} {s['seconds_median']:.2f} s  ({s['faces']} faces)  imports: {parts}; "
                     f"not imported: {', '.join(s['not_imported']) or '-'}")
    lines.append(f"onnx / torch: {out['speedup_onnx_vs_torch']:.2f}x faster")
    (RESULTS / "cold_query.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
