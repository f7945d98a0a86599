#!/usr/bin/env python
"""Ingest throughput into a Milvus server with 1 and 2 writers, beside Milvus Lite's single writer.

    python bench/bench_server_ingest.py [--images 120]

The real Milvus 2.3.5 standalone server of the tests (tests/milvus_server.py, its own virtualenv)
is started here. On a server every Dask worker writes its own batches (1 worker = 1 writer, 2
workers = 2 writers); on Lite the driver is the only writer whatever the workers. Each run ingests
the same CelebA images into an empty database; images/s counts the whole `ingest.run` call
(cluster start and model load included, as a user sees it) and the steady rate after the first
batch. The server shares the 2 cores with the workers. Results: bench/results/server_ingest.json/.txt
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' server launcher; tests/ is no package

from milvus_server import MilvusServerProcess, ServerUnavailable, server_python  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def run_once(source: str, limit: int, workers: int, work: Path, uri: Optional[str] = None,
             db: Optional[str] = None) -> dict:
    from lookalike import ingest
    t0 = time.perf_counter()
    s = ingest.run(source, limit=limit, workers=workers, uri=uri, db=db, progress=False,
                   report=str(work / "report.txt"))
    wall = time.perf_counter() - t0
    return {"workers": workers, "images": s.images_seen, "faces": s.faces_stored, "failed": s.images_failed,
            "seconds": round(wall, 2), "images_per_second": round(s.images_seen / wall, 2),
            "pipeline_seconds": round(s.wall_seconds, 2),
            "pipeline_images_per_second": round(s.images_seen / max(s.wall_seconds, 1e-9), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--source", default=str(Path(os.environ.get("LOOKALIKE_DATA", ROOT.parent / "shared" / "data"))
                                         / "celeba"))
    ap.add_argument("--out", default=str(RESULTS / "server_ingest.json"))
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    work = Path(tempfile.mkdtemp(prefix="bench-server-ingest-"))
    server = MilvusServerProcess(server_python(), work / "server")
    runs = []
    try:
        try:
            server.start()
        except ServerUnavailable as e:
            raise SystemExit(str(e)) from e
        print(f"Milvus server at {server.uri} (started in {server.start_seconds:.1f} s)", flush=True)
        for backend, workers in (("lite", 1), ("lite", 2), ("server", 1), ("server", 2)):
            if backend == "server":
                db_name = f"w{workers}"
                from pymilvus import MilvusClient

                c = MilvusClient(uri=server.uri)
                c.create_database(db_name)
                c.close()
                r = run_once(args.source, args.images, workers, work, uri=f"{server.uri}/{db_name}")
            else:
                r = run_once(args.source, args.images, workers, work, db=str(work / f"lite{workers}.db"))
            r["backend"] = backend
            r["writers"] = workers if backend == "server" else 1
            runs.append(r)
            print(f"{backend:6s} workers={workers} writers={r['writers']}: {r['images_per_second']:.2f} img/s "
                  f"({r['seconds']:.1f} s; pipeline {r['pipeline_images_per_second']:.2f} img/s), "
                  f"{r['faces']} faces, {r['failed']} failed", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    ips = {(r["backend"], r["workers"]): r["pipeline_images_per_second"] for r in runs}
    ratios = {
        "server 2 writers / 1 writer": ips[("server", 2)] / ips[("server", 1)],
        "lite 2 workers / 1 worker": ips[("lite", 2)] / ips[("lite", 1)],
        "server / lite, 2 workers": ips[("server", 2)] / ips[("lite", 2)],
    }
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
              "images": args.images, "source": args.source, "server": "Milvus 2.3.5 standalone (milvus package)",
              "runs": runs, "ratios": {k: round(v, 3) for k, v in ratios.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Ingest into Milvus Lite vs a Milvus 2.3.5 server, {args.images} CelebA images, "
             f"{os.cpu_count()} CPUs (the server shares them)", "",
             "back end  workers  writers  img/s (whole run)  img/s (pipeline)  faces"]
    for r in runs:
        lines.append(f"{r['backend']:8s}  {r['workers']:7d}  {r['writers']:7d}  {r['images_per_second']:17.2f}  "
                     f"{r['pipeline_images_per_second']:16.2f}  {r['faces']:5d}")
    lines += [""] + [f"{k}: {v:.2f}" for k, v in ratios.items()]
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
