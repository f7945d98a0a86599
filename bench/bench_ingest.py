#!/usr/bin/env python
"""Ingestion benchmark: model-bound rate vs the Dask pipeline (1 and 2 workers) vs the seed's naive
loop, plus peak RSS per worker at two dataset sizes. A benchmark, not a test: nothing here asserts.

    python bench/bench_ingest.py                 # 600 images, 5 rounds, RSS at 300 and 1500 (~18 min, 2 cores)
    python bench/bench_ingest.py --images 100 --rounds 1 --skip-rss

Every measurement runs in a fresh Python process (this script re-invoked with --phase), one after
the other, so no phase inherits another's models, threads or page of memory. a, b and c run in
interleaved rounds (a b c a b c a b c) and each is reported at its best round: on a shared machine
other tenants only slow a run down, by 10-20 % from one minute to the next here.

  a   model-bound: ingest.models engine (detector + embedder), one process, tight loop over images
      decoded before timing (ingest.images.load), in the pipeline's batches (detect each image,
      then one forward pass per model for the batch's faces); model load and one warm-up image
      excluded. Threads pinned like a pipeline worker (thread_env(1) + cv2.setNumThreads(1)); also
      reported with library-default threads, embedding image by image (a1), decoding each image
      in the loop (ad), and with the mapper's whole work (pipeline.process_batch: read, sha256,
      decode, detect, embed: a+).
  b/c ingest.run(list, workers=1|2) into a fresh Milvus Lite db. "total" is the whole run() call;
      "steady" excludes start-up: images / (end of the last batch's write - return of the workers'
      warm-up, i.e. cluster started and models loaded, + the writer's last commit and its flush,
      which run after the cluster is closed). The instants are taken by wrapping
      distributed.Client.run and pipeline.Writer.write/commit/close in the benchmark process
      (measurement only, the product code is unchanged). summary.wall_seconds (the whole call) and
      summary.work_seconds (the photos' part, the summary's rates) are reported too.
  d   the seed project's loop: DeepFace.represent(path) per image, one MilvusClient.insert per face,
      a flush at the end; the first represent() (model load) is excluded. Library-default threads,
      as the seed ran. Run with the product's detector and model (yunet + Dlib, env
      yunet_score_threshold like the product) and with the seed's defaults (DeepFace's defaults are
      opencv + VGG-Face; VGG-Face weights cannot be downloaded here, so opencv + Dlib).
  rss ingest.run(workers=2) on the first 300 and 1500 of every photo under the data dir (a fixed
      shuffle, so both sizes hold the same mix; beyond the ~1,640 photos there, mirrored copies);
      per worker: summary.worker_peak_rss (RSS after each batch, reported by the worker) and VmHWM
      sampled from /proc while the run goes.

Results: bench/results/ingest.json and ingest.txt (override with --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, cast

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif", ".jfif"}
ALL_SETS = ["celeba/img_celeba", "lfw/lfw", "people", "groups/photos", "pairs/deepface"]

TARGETS = {"b/a": 0.9, "c/b": 1.8, "c/d": 2.0}


# ------------------------------------------------------------------------------------------------
# image lists
# ------------------------------------------------------------------------------------------------
def default_data_dir() -> Path:
    env = os.environ.get("LOOKALIKE_DATA")
    return Path(env).expanduser() if env else ROOT.parent / "shared" / "data"


def image_files(folder: Path) -> List[str]:
    out: List[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if Path(f).suffix.lower() in SUFFIXES)
    return out


def sample_paths(data: Path, n: int) -> List[str]:
    """The first n in-the-wild CelebA images (sorted), then LFW, then the rest, to reach n."""
    out: List[str] = []
    for s in ALL_SETS:
        if len(out) >= n:
            break
        if (data / s).is_dir():
            out.extend(image_files(data / s))
    if len(out) < n:
        raise SystemExit(f"only {len(out)} images under {data}, --images asks for {n}")
    return out[:n]


def rss_paths(data: Path) -> List[str]:
    """Every photo of the sample sets in a fixed shuffled order (each prefix holds the same mix)."""
    out: List[str] = []
    for s in ALL_SETS:
        if (data / s).is_dir():
            out.extend(image_files(data / s))
    random.Random(0).shuffle(out)
    return out


def extend_with_mirrors(paths: List[str], n: int, folder: Path) -> List[str]:
    """`paths` grown to n photos with left-right mirrored copies (new bytes, so new images to the
    pipeline, with the same faces), for a run longer than the sample data holds."""
    from PIL import Image, ImageOps

    out = list(paths)
    folder.mkdir(parents=True, exist_ok=True)
    i = 0
    while len(out) < n:
        src = paths[i % len(paths)]
        dst = folder / f"mirror{i:05d}_{Path(src).stem}.jpg"
        if not dst.exists():
            with Image.open(src) as im:
                ImageOps.mirror(ImageOps.exif_transpose(im).convert("RGB")).save(dst, quality=92)
        out.append(str(dst))
        i += 1
    return out


def write_list(paths: List[str], file: Path) -> Path:
    file.write_text("".join(p + "\n" for p in paths), encoding="utf-8")
    return file


def read_list(file: str) -> List[str]:
    return [line.rstrip("\n") for line in open(file, encoding="utf-8") if line.strip()]


# ------------------------------------------------------------------------------------------------
# process probes
# ------------------------------------------------------------------------------------------------
def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_snapshot(pids: Optional[List[int]] = None) -> Dict[int, float]:
    """CPU seconds (user + system) of this process and every live descendant (or of `pids`: finding
    the descendants scans /proc, ~1.5 ms of the driver's CPU each time)."""
    import psutil

    me = psutil.Process()
    out = {me.pid: sum(me.cpu_times()[:2])}
    for pid in ([ch.pid for ch in me.children(recursive=True)] if pids is None else pids):
        try:
            out[pid] = sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.Error:
            pass
    return out


def thread_cpu() -> Dict[str, float]:
    """CPU seconds of this process's live threads, by Python thread name (trailing pool numbers
    dropped, so a pool's threads add up): who in the driver uses the cores the workers need."""
    import re

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: Dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid))
        key = re.sub(r"[-_]\d+(_\d+)?$", "", name) if name else "native (gRPC core, BLAS, ...)"
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class Sampler(threading.Thread):
    """Peak RSS / VmHWM of this process's descendants, sampled every `every` seconds."""

    def __init__(self, every: float = 0.25):
        super().__init__(daemon=True)
        self.every = every
        self.hwm: Dict[int, int] = {}
        self.rss: Dict[int, int] = {}
        self.series: Dict[int, List[tuple]] = {}  # pid -> [(perf_counter, VmRSS bytes)]
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._halt.is_set():
            for ch in me.children(recursive=True):
                hwm, rss = _status_kb(ch.pid, "VmHWM"), _status_kb(ch.pid, "VmRSS")
                self.hwm[ch.pid] = max(self.hwm.get(ch.pid, 0), hwm)
                self.rss[ch.pid] = max(self.rss.get(ch.pid, 0), rss)
                self.series.setdefault(ch.pid, []).append((time.perf_counter(), rss))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _settings():
    from lookalike.ingest.settings import Settings

    return Settings()


# ------------------------------------------------------------------------------------------------
# phases (each in its own process)
# ------------------------------------------------------------------------------------------------
def phase_model(args) -> Dict[str, Any]:
    """(a) detector + embedder forward only, in one process, on images decoded beforehand."""
    import inspect

    from lookalike.ingest import images, pipeline
    from lookalike.ingest.models import get_engine
    from lookalike.ingest.pipeline import process_batch, resolve_models, warm_worker
    from lookalike.ingest.sources import ImageRecord

    settings = _settings()
    det = args.detector or settings.detector
    models = resolve_models(args.models, settings)
    # the smallest face the product keeps (ingest.run's default), so a counts the faces b/c store
    min_face = inspect.signature(pipeline.run).parameters["min_face"].default
    paths = read_list(args.list)
    t = time.perf_counter()
    if args.pinned:
        warm_worker(settings, det, models)  # exactly what a pipeline worker does: cv2 1 thread + load
    engine = get_engine(settings, det, models).load()
    load_s = time.perf_counter() - t
    import cv2

    decoded = [images.load(p) for p in paths]
    # one untimed image: first-call allocations of the detector and the embedder
    f0 = engine.detector.detect(decoded[0])
    for emb in engine.embedders.values():
        emb.embed(decoded[0], f0)

    if args.start_file:  # paired run: start the timed loop together with the other process
        Path(f"{args.start_file}.ready.{os.getpid()}").touch()
        while not os.path.exists(args.start_file):
            time.sleep(0.01)
    # The pipeline's unit: a batch of images, detected one by one, then one forward pass per model
    # for all their faces. (a1 below: the same loop embedding image by image.)
    batch = inspect.signature(pipeline.run).parameters["batch_size"].default

    def loop(per_image: bool, decode: bool = False):
        faces = noface = 0
        t_det = t_emb = 0.0
        c0 = time.process_time()
        t0 = time.perf_counter()
        for k in range(0, len(decoded), batch):
            crops: Dict[str, list] = {name: [] for name in engine.embedders}
            for j in range(k, min(k + batch, len(decoded))):
                img = images.load(paths[j]) if decode else decoded[j]
                a = time.perf_counter()
                found = engine.detector.detect(img, min_face=min_face)
                b = time.perf_counter()
                t_det += b - a
                faces += len(found)
                noface += not found
                for name, emb in engine.embedders.items():
                    if per_image and found:
                        emb.embed(img, found)
                    else:
                        crops[name] += [emb.model_input(img, f) for f in found]
                t_emb += time.perf_counter() - b
            b = time.perf_counter()
            for name, emb in engine.embedders.items():
                emb.embed_inputs(crops[name])
            t_emb += time.perf_counter() - b
        return faces, noface, t_det, t_emb, time.perf_counter() - t0, time.process_time() - c0

    faces, noface, t_det, t_emb, wall, cpu = loop(per_image=False)

    n = len(paths)
    res = {
        "detector": det, "models": models, "min_face": min_face, "threads": "pinned (thread_env(1), cv2 1 thread)"
        if args.pinned else "library defaults", "cv2_threads": cv2.getNumThreads(), "images": n, "faces": faces,
        "images_noface": noface, "model_load_seconds": round(load_s, 3), "seconds": round(wall, 3),
        "images_per_second": n / wall, "faces_per_second": faces / wall, "embed_batch_images": batch,
        "detect_seconds": round(t_det, 3), "embed_seconds": round(t_emb, 3), "cpu_per_wall": cpu / wall,
        "cpu_seconds_per_image": cpu / n,
    }
    if args.start_file or args.quick:
        return res
    faces1, _, det1, emb1, wall1, _ = loop(per_image=True)
    res["per_image"] = {"seconds": round(wall1, 3), "images_per_second": n / wall1,
                        "faces_per_second": faces1 / wall1, "detect_seconds": round(det1, 3),
                        "embed_seconds": round(emb1, 3)}
    # the same loop decoding each photo just before detecting it (what the mapper does): the cost
    # of decoding plus what it does to the caches the models were using
    faces2, _, det2, emb2, wall2, _ = loop(per_image=False, decode=True)
    res["decode_in_loop"] = {"seconds": round(wall2, 3), "images_per_second": n / wall2,
                             "faces_per_second": faces2 / wall2, "detect_seconds": round(det2, 3),
                             "embed_seconds": round(emb2, 3)}
    # the mapper's whole work (read, sha256, decode, detect, embed), batch by batch, no Dask, no writer
    records = [ImageRecord(p) for p in paths]
    t1 = time.perf_counter()
    full_faces = 0
    for k in range(0, len(records), batch):
        full_faces += sum(len(r.faces) for r in process_batch(records[k:k + batch], settings, det, models,
                                                              min_face).images)
    full_wall = time.perf_counter() - t1
    res["full_mapper"] = {"seconds": round(full_wall, 3), "faces": full_faces,
                          "images_per_second": n / full_wall, "faces_per_second": full_faces / full_wall}
    return res


def phase_pipeline(args) -> Dict[str, Any]:
    """(b)/(c)/rss: ingest.run(list, workers=N) into a fresh Milvus Lite db, instrumented from outside."""
    import distributed

    from lookalike.ingest import pipeline
    from lookalike.ingest.store import Store

    marks: Dict[str, float] = {}
    cpu: Dict[str, Dict[Any, float]] = {}  # by pid (start, end) or by thread name (threads_start, threads_end)
    writes = {"n": 0, "seconds": 0.0, "cpu_seconds": 0.0, "flush_seconds": 0.0, "flushes": 0}
    progress: List[tuple] = []  # (perf_counter, images written so far)

    orig_client_run = distributed.Client.run

    def client_run(self, *a, **k):
        r = orig_client_run(self, *a, **k)
        if "warm_done" not in marks:  # the pipeline's only client.run is the workers' warm-up
            marks["warm_done"] = time.perf_counter()
            cpu["start"] = cpu_snapshot()
            cpu["threads_start"] = thread_cpu()
        return r

    orig_write = pipeline.Writer.write

    def write(self, results):
        t, tc = time.perf_counter(), time.thread_time()
        writing["now"] = True
        try:
            orig_write(self, results)
        finally:
            writing["now"] = False
        e = time.perf_counter()
        writes["n"] += 1
        writes["seconds"] += e - t
        writes["cpu_seconds"] += time.thread_time() - tc
        progress.append((e, progress[-1][1] + len(results) if progress else len(results)))
        marks.setdefault("first_write_end", e)
        marks["last_write_end"] = e
        cpu["end"] = cpu_snapshot([p for p in cpu["start"] if p != os.getpid()])
        cpu["threads_end"] = thread_cpu()

    orig_flush = Store.flush

    def flush(self, names):
        t = time.perf_counter()
        orig_flush(self, names)
        writes["flush_seconds"] += time.perf_counter() - t
        writes["flushes"] += 1

    # A writer that commits (faces + ledger) in groups has a last commit after the cluster closes,
    # then its flush: their duration counts as steady-state work. Commits made inside write() are
    # already inside the window (counting them again inflated b's and c's steady time by 5-8 %).
    tail = {"seconds": 0.0}
    writing = {"now": False}
    orig_commit = getattr(pipeline.Writer, "commit", None)

    def commit(self, *a, **k):
        t = time.perf_counter()
        assert orig_commit is not None
        r = orig_commit(self, *a, **k)
        if not writing["now"] and "last_write_end" in marks and t > marks["last_write_end"]:
            tail["seconds"] += time.perf_counter() - t
        return r

    orig_close = getattr(pipeline.Writer, "close", None)

    def close(self, *a, **k):  # the run's one flush, after its last commit: steady-state work too
        t = time.perf_counter()
        assert orig_close is not None
        r = orig_close(self, *a, **k)
        tail["seconds"] += time.perf_counter() - t
        return r

    # patched in place (cast: mypy forbids assigning to a method) for the run this process times
    if orig_commit is not None:
        cast(Any, pipeline.Writer).commit = commit
    if orig_close is not None:
        cast(Any, pipeline.Writer).close = close
    cast(Any, distributed.Client).run = client_run
    cast(Any, pipeline.Writer).write = write
    cast(Any, Store).flush = flush

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    sampler = Sampler(every=1.0)  # VmHWM is the kernel's own peak; sampling often costs driver CPU
    sampler.start()
    t0 = time.perf_counter()
    try:
        summary = pipeline.run(args.list, db=str(tmp / "bench.db"), models=args.models, detector=args.detector,
                               workers=args.workers, progress=False, report=str(tmp / "report.txt"),
                               **({"batch_size": args.batch_size} if args.batch_size else {}))
        total = time.perf_counter() - t0
    finally:
        sampler.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    n = summary.images_done + summary.images_noface + summary.images_failed
    steady = marks["last_write_end"] - marks["warm_done"] + tail["seconds"]
    me = os.getpid()
    workers = sorted(pid for pid, rss in summary.worker_peak_rss.items() if pid and rss)
    cpu_s = {pid: cpu["end"].get(pid, 0.0) - cpu["start"].get(pid, 0.0) for pid in cpu.get("end", {})}
    return {
        "workers": args.workers, "detector": summary.detector, "models": summary.models, "images": n,
        "faces": summary.faces_stored, "images_noface": summary.images_noface,
        "images_failed": summary.images_failed, "failure_kinds": summary.failure_kinds,
        "total_seconds": round(total, 3), "summary_wall_seconds": round(summary.wall_seconds, 3),
        "summary_work_seconds": round(summary.work_seconds, 3),
        "startup_seconds": round(marks["warm_done"] - t0, 3),
        "steady_seconds": round(steady, 3),
        "images_per_second_total": n / total, "faces_per_second_total": summary.faces_stored / total,
        "images_per_second_wall": summary.images_per_second, "faces_per_second_wall": summary.faces_per_second,
        "images_per_second": n / steady, "faces_per_second": summary.faces_stored / steady,
        "driver_write": {"batches": writes["n"], "seconds": round(writes["seconds"], 3),
                         "main_thread_cpu_seconds": round(writes["cpu_seconds"], 3),
                         "flushes": writes["flushes"], "flush_seconds": round(writes["flush_seconds"], 3)},
        # CPU seconds spent during the steady window, per process: where the 2 cores went
        "steady_cpu_seconds": {"driver (scheduler, nanny, writer, Milvus Lite)": round(cpu_s.get(me, 0.0), 2),
                               **{f"worker {pid}": round(cpu_s.get(pid, 0.0), 2) for pid in workers},
                               "other": round(sum(v for p, v in cpu_s.items() if p != me and p not in workers), 2)},
        "steady_driver_threads_cpu_seconds": {
            k: round(v - cpu["threads_start"].get(k, 0.0), 3)
            for k, v in sorted(cpu.get("threads_end", {}).items(), key=lambda kv: -kv[1])
            if v - cpu["threads_start"].get(k, 0.0) >= 0.005},
        # CPU seconds per image: robust to other load on the machine, unlike the rates
        "worker_cpu_seconds_per_image": sum(cpu_s.get(pid, 0.0) for pid in workers) / n,
        "driver_cpu_seconds_per_image": cpu_s.get(me, 0.0) / n,
        "worker_peak_rss": {str(pid): summary.worker_peak_rss[pid] for pid in workers},
        # a plateau vs a slope tells a high-water mark from a leak
        "worker_rss_by_progress": _rss_by_progress(progress, sampler.series, workers, marks["warm_done"]),
        "worker_vmhwm": {str(pid): sampler.hwm.get(pid, 0) for pid in workers},
    }


def _rss_by_progress(progress: List[tuple], series: Dict[int, List[tuple]], workers: List[int],
                     since: float) -> Dict[str, Any]:
    """Per worker, the max VmRSS sampled after the warm-up (model load excluded) up to the moment
    20 %, 40 % ... of the images were written."""
    out: Dict[str, Any] = {}
    if not progress:
        return out
    total = progress[-1][1]
    for i in range(1, 6):
        k = total * i / 5
        t = next(tt for tt, cnt in progress if cnt >= k)
        out[str(int(k))] = {str(pid): max((r for ts, r in series.get(pid, []) if since <= ts <= t), default=0)
                            for pid in workers}
    return out


def phase_naive(args) -> Dict[str, Any]:
    """(d) the seed's loop: DeepFace.represent per image, one MilvusClient.insert per face."""
    from lookalike.ingest.models import DLIB_LANDMARKS_FILE, YUNET_FILE, provision_weights
    from lookalike.schemas import get_model

    settings = _settings()
    # the weights the seed would have downloaded, linked from their local copies
    for f in (get_model("dlib").weights_file, YUNET_FILE, DLIB_LANDMARKS_FILE):
        provision_weights(settings, f)
    os.environ["yunet_score_threshold"] = str(settings.yunet_threshold)
    os.environ["DEEPFACE_HOME"] = str(Path(settings.deepface_home).expanduser())

    import contextlib
    import io

    from deepface import DeepFace
    from pymilvus import MilvusClient

    paths = read_list(args.list)
    tmp = Path(tempfile.mkdtemp(prefix="bench-naive-"))
    try:
        client = MilvusClient(str(tmp / "naive.db"))
        client.create_collection("faces", dimension=128, metric_type="COSINE")
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            DeepFace.represent(img_path=paths[0], model_name=args.naive_model,
                               detector_backend=args.naive_detector, enforce_detection=False)
        load_s = time.perf_counter() - t
        faces = noface = failed = 0
        next_id = 0
        t0 = time.perf_counter()
        for p in paths:
            try:
                reps = DeepFace.represent(img_path=p, model_name=args.naive_model,
                                          detector_backend=args.naive_detector)
            except ValueError as e:
                if "could not be detected" in str(e).lower():
                    noface += 1
                else:
                    failed += 1
                continue
            for r in reps:
                client.insert("faces", [{"id": next_id, "vector": r["embedding"], "path": p,
                                         "box": json.dumps(r["facial_area"], default=str),
                                         "confidence": float(r.get("face_confidence") or 0.0)}])
                next_id += 1
                faces += 1
        client.flush("faces")
        wall = time.perf_counter() - t0
        client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(paths)
    return {"detector": args.naive_detector, "model": args.naive_model, "images": n, "faces": faces,
            "images_noface": noface, "images_failed": failed, "model_load_seconds": round(load_s, 3),
            "seconds": round(wall, 3), "images_per_second": n / wall, "faces_per_second": faces / wall}


PHASES = {"model": phase_model, "pipeline": phase_pipeline, "naive": phase_naive}


# ------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------
def _busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_idle(max_wait: float, log, busy_below: float = 0.15) -> float:
    """Wait (at most max_wait s) until other processes leave the cores alone: a 2-core benchmark
    shared with another job measures that job. Returns the busy fraction last seen."""
    import psutil

    t0 = time.monotonic()
    pct = psutil.cpu_percent(interval=2.0) / 100
    while pct > busy_below and time.monotonic() - t0 < max_wait:
        log(f"           machine {pct:.0%} busy with other processes; waiting")
        pct = psutil.cpu_percent(interval=10.0) / 100
    return pct


def run_phase(label: str, argv: List[str], env: Dict[str, str], log, idle_wait: float = 0.0) -> Dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--phase-out", out]
    busy_before = wait_idle(idle_wait, log) if idle_wait > 0 else None
    log(f"[{time.strftime('%H:%M:%S')}] {label} ...")
    t = time.perf_counter()
    busy0, ours0 = _busy_cpu(), _children_cpu()
    proc = subprocess.run(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    busy, ours = _busy_cpu() - busy0, _children_cpu() - ours0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"{label} failed (exit {proc.returncode})")
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    wall = time.perf_counter() - t
    res["process_seconds"] = round(wall, 1)
    # CPU that processes outside this benchmark used meanwhile, in cores (0 on a quiet machine)
    res["foreign_cores"] = round(max(0.0, busy - ours) / wall, 3)
    if busy_before is not None:
        res["busy_before"] = round(busy_before, 3)
    warn = f"; WARNING: other processes used {res['foreign_cores']:.2f} cores meanwhile" \
        if res["foreign_cores"] > 0.1 else ""
    log(f"           {res.get('images_per_second', 0):.2f} images/s, {res.get('faces_per_second', 0):.2f} faces/s "
        f"({res['process_seconds']} s in all{warn})")
    return res


def run_pair(label: str, argv: List[str], env: Dict[str, str], log, idle_wait: float = 0.0) -> Dict[str, Any]:
    """Two model-bound processes at once, their timed loops started together: the most two cores
    give this work with no pipeline at all (the ceiling for c/b)."""
    import glob

    work = tempfile.mkdtemp(prefix="bench-pair-")
    start = os.path.join(work, "go")
    outs = [os.path.join(work, f"{i}.json") for i in range(2)]
    busy_before = wait_idle(idle_wait, log) if idle_wait > 0 else None
    log(f"[{time.strftime('%H:%M:%S')}] {label} ...")
    t = time.perf_counter()
    busy0, ours0 = _busy_cpu(), _children_cpu()
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv, "--start-file", start,
                               "--phase-out", out], env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace") for out in outs]
    while len(glob.glob(start + ".ready.*")) < 2:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    Path(start).touch()
    logs = [p.communicate()[0] for p in procs]
    busy, ours = _busy_cpu() - busy0, _children_cpu() - ours0
    for p, out in zip(procs, logs):
        if p.returncode != 0:
            sys.stderr.write(out[-4000:])
            raise SystemExit(f"{label} failed (exit {p.returncode})")
    runs = [json.loads(Path(o).read_text()) for o in outs]
    shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t
    res = {"processes": runs, "images": sum(r["images"] for r in runs),
           "images_per_second": sum(r["images_per_second"] for r in runs),
           "faces_per_second": sum(r["faces_per_second"] for r in runs),
           "cpu_seconds_per_image": statistics.mean(r["cpu_seconds_per_image"] for r in runs),
           "process_seconds": round(wall, 1), "foreign_cores": round(max(0.0, busy - ours) / wall, 3)}
    if busy_before is not None:
        res["busy_before"] = round(busy_before, 3)
    warn = f"; WARNING: other processes used {res['foreign_cores']:.2f} cores meanwhile" \
        if res["foreign_cores"] > 0.1 else ""
    log(f"           {res['images_per_second']:.2f} images/s, {res['faces_per_second']:.2f} faces/s together "
        f"({res['process_seconds']} s in all{warn})")
    return res


def _ratio(x: Dict[str, Any], y: Dict[str, Any], key: str = "images_per_second") -> float:
    return x[key] / y[key] if y.get(key) else float("nan")


def _mib(b: int) -> float:
    return b / 2**20


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip()
        info["ingest_modified"] = subprocess.run(["git", "status", "--porcelain", "ingest"], cwd=ROOT,
                                                 capture_output=True, text=True).stdout.split("\n")[0:10]
    except OSError:
        pass
    try:
        from importlib.metadata import version

        info["versions"] = {p: version(p) for p in ("deepface", "dlib-bin", "opencv-contrib-python-headless",
                                                      "tensorflow", "dask", "distributed", "pymilvus", "milvus-lite")}
    except Exception:  # noqa: BLE001
        pass
    return info


def rss_block(res: Dict[str, Any]) -> Dict[str, Any]:
    peaks = list(res["worker_peak_rss"].values())
    hwm = list(res["worker_vmhwm"].values())
    return {"images": res["images"], "faces": res["faces"], "worker_peak_rss": res["worker_peak_rss"],
            "worker_vmhwm": res["worker_vmhwm"], "max_peak_rss": max(peaks), "mean_peak_rss": statistics.mean(peaks),
            "max_vmhwm": max(hwm) if hwm else 0}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=600, help="images for a-d (default 600)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of a, b, c, interleaved; each is reported at its best round (default 5)")
    ap.add_argument("--rss-base", type=int, default=300, help="smaller size for the RSS check (default 300)")
    ap.add_argument("--rss-images", type=int, default=1500,
                    help="larger size for the RSS check (default 1500; mirrored copies beyond the sample's photos)")
    ap.add_argument("--skip-rss", action="store_true", help="skip the RSS runs")
    ap.add_argument("--data", default=str(default_data_dir()), help="sample data dir (default ../shared/data)")
    ap.add_argument("--detector", default="yunet", help="product detector for a-d (default yunet)")
    ap.add_argument("--models", default="dlib", help="product model(s) for a-c (default dlib)")
    ap.add_argument("--deepface-home", default=None,
                    help="DEEPFACE_HOME for every phase (default: a fresh temp dir, weights linked from packages)")
    ap.add_argument("--wait-idle", type=float, default=120.0, metavar="S",
                    help="before each run, wait up to S s for other processes to leave the CPUs (default 120; 0: no wait)")
    ap.add_argument("--out", default=str(RESULTS / "ingest.json"), help="JSON result (a .txt table goes beside it)")
    # internal: one phase in this process
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--phase-out", help=argparse.SUPPRESS)
    ap.add_argument("--list", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start-file", help=argparse.SUPPRESS)
    ap.add_argument("--naive-detector", default="yunet", help=argparse.SUPPRESS)
    ap.add_argument("--naive-model", default="Dlib", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.phase:
        if args.models in ("auto", ""):
            args.models = None
        if args.detector in ("default", ""):
            args.detector = None
        res = PHASES[args.phase](args)
        Path(args.phase_out).write_text(json.dumps(res, default=float))
        return 0
    return orchestrate(args)


def orchestrate(args) -> int:
    def log(msg: str) -> None:
        print(msg, flush=True)

    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    home = args.deepface_home or os.environ.get("BENCH_DEEPFACE_HOME") or str(work / "deepface-home")
    Path(home).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DEEPFACE_HOME=home, LOOKALIKE_DATA=str(data), PYTHONUNBUFFERED="1")
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "yunet_score_threshold"):
        env.pop(v, None)  # every phase starts from library defaults unless it pins them itself
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from lookalike.ingest.settings import thread_env

    pinned_env = dict(env, **thread_env(1))

    paths = sample_paths(data, args.images)
    sample = write_list(paths, work / "sample.txt")
    sets = sorted({str(Path(p).relative_to(data)).split(os.sep)[0] for p in paths})
    common = ["--detector", args.detector, "--models", args.models, "--list", str(sample)]
    log(f"{len(paths)} images from {', '.join(sets)} under {data}; DEEPFACE_HOME={home}")

    def phase(label: str, argv: List[str], penv: Dict[str, str]) -> Dict[str, Any]:
        return run_phase(label, argv, penv, log, args.wait_idle)

    res: Dict[str, Any] = {}
    t_all = time.perf_counter()
    try:
        # a, b and c in interleaved rounds, each reported at its best round: on a shared machine
        # other tenants only ever slow a run down (the same code varies by 10-20 % from minute to
        # minute here), and interleaving exposes the three to the same periods.
        rounds: List[Dict[str, Any]] = []
        for i in range(max(1, args.rounds)):
            tag = f"round {i + 1}/{max(1, args.rounds)}"
            rnd = {"a": phase(f"a  model-bound, threads pinned like a worker ({tag})",
                              ["--phase", "model", "--pinned", *common, *(["--quick"] if i else [])], pinned_env),
                   "b": phase(f"b  ingest.run workers=1 ({tag})", ["--phase", "pipeline", "--workers", "1", *common], env),
                   "c": phase(f"c  ingest.run workers=2 ({tag})", ["--phase", "pipeline", "--workers", "2", *common], env)}
            rounds.append(rnd)
        res["rounds"] = rounds
        for k in ("a", "b", "c"):
            res[k] = dict(max((r[k] for r in rounds), key=lambda x: x["images_per_second"]))
        for extra in ("per_image", "decode_in_loop", "full_mapper"):  # measured in round 1 only
            res["a"].setdefault(extra, rounds[0]["a"][extra])
        res["a_default_threads"] = phase("a' model-bound, library-default threads",
                                             ["--phase", "model", "--quick", *common], env)
        res["a2"] = run_pair("a2 two model-bound processes at once (pinned threads)",
                             ["--phase", "model", "--pinned", *common], pinned_env, log, args.wait_idle)
        naive_model = _naive_model_name(args.models)
        res["d"] = phase(f"d  naive DeepFace.represent + insert per face ({args.detector} + {naive_model})",
                             ["--phase", "naive", "--naive-detector", args.detector, "--naive-model", naive_model,
                              "--list", str(sample)], env)
        # Product defaults: what `lookalike ingest` picks with no --detector / --models here.
        from lookalike.ingest.models import default_face_model
        from lookalike.ingest.settings import Settings

        st = Settings().with_(deepface_home=home)
        default_model, default_det = default_face_model(st), st.detector
        if (default_det, default_model) == (args.detector, args.models):
            res["c_product_defaults"] = {"same_as": "c", "detector": default_det, "models": [default_model]}
        else:
            res["c_product_defaults"] = phase(
                f"c* ingest.run workers=2, product defaults ({default_det} + {default_model})",
                ["--phase", "pipeline", "--workers", "2", "--detector", "default", "--models", "auto",
                 "--list", str(sample)], env)
        res["d_seed_defaults"] = phase(
            "d* naive loop, seed defaults (opencv + Dlib; VGG-Face weights not downloadable)",
            ["--phase", "naive", "--naive-detector", "opencv", "--naive-model", "Dlib", "--list", str(sample)],
            env)
        if not args.skip_rss:
            every = rss_paths(data)
            if args.rss_images > len(every):  # the sample data holds ~1,640 photos
                every = extend_with_mirrors(every, args.rss_images, work / "mirrors")
            for n in (args.rss_base, args.rss_images):
                lst = write_list(every[:n], work / f"rss{n}.txt")
                res[f"rss_{n}"] = phase(f"rss ingest.run workers=2 on {n} mixed photos",
                                            ["--phase", "pipeline", "--workers", "2", "--detector", args.detector,
                                             "--models", args.models, "--list", str(lst)], env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = build_report(args, res, paths, sets, home, time.perf_counter() - t_all)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    table = render_table(report)
    out.with_suffix(".txt").write_text(table)
    print()
    print(table, end="")
    print(f"wrote {out} and {out.with_suffix('.txt')}")
    return 0


def _naive_model_name(models: str) -> str:
    from lookalike.schemas import get_model

    first = models.split(",")[0].strip()
    return get_model(first).deepface_name


def build_report(args, res: Dict[str, Any], paths: List[str], sets: List[str], home: str,
                 seconds: float) -> Dict[str, Any]:
    a, b, c, d = res["a"], res["b"], res["c"], res["d"]
    cd = res["c_product_defaults"]
    c_def = c if cd.get("same_as") == "c" else cd
    ratios = {
        "b/a": _ratio(b, a), "c/b": _ratio(c, b), "c/d": _ratio(c, d),
        "c/d product defaults vs seed defaults": _ratio(c_def, res["d_seed_defaults"]),
        "b_total/a": b["images_per_second_total"] / a["images_per_second"],
        "c_total/b_total": c["images_per_second_total"] / b["images_per_second_total"],
        "a2/a (2-core ceiling for c/b)": _ratio(res["a2"], a),
        "c/a2": _ratio(c, res["a2"]),
        "b/a_default_threads": _ratio(b, res["a_default_threads"]),
        "b/a_full_mapper": b["images_per_second"] / a["full_mapper"]["images_per_second"],
        "b/a_decode_in_loop": b["images_per_second"] / a["decode_in_loop"]["images_per_second"],
        "c/d faces/s": _ratio(c, d, "faces_per_second"),
    }
    per_round = [{"b/a": _ratio(r["b"], r["a"]), "c/b": _ratio(r["c"], r["b"]),
                  **{k: round(r[k]["images_per_second"], 2) for k in ("a", "b", "c")}} for r in res["rounds"]]
    checks = {k: {"target": t, "measured": round(ratios[k], 3), "met": ratios[k] >= t} for k, t in TARGETS.items()}
    report: Dict[str, Any] = {
        "benchmark": "ingest", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
        "images": len(paths), "image_sets": sets, "image_selection": "first N of sorted celeba/img_celeba "
        "(in-the-wild), then lfw/lfw, ... to reach N", "deepface_home": home,
        "product": {"detector": args.detector, "models": args.models.split(",")},
        "rate_definitions": {
            "a": "detect + embed on images decoded before timing; model load and 1 warm-up image excluded",
            "a/b/c": "best of the interleaved rounds (a, b, c, a, b, c, ...), each run a fresh process",
            "b/c images_per_second": "steady: images / (last batch written - workers warmed up "
                                     "+ the writer's last commit and flush); "
                                     "excludes cluster start, model load, cluster close",
            "b/c images_per_second_total": "whole ingest.run() call (store open, ledger read, cluster start, "
                                           "model load, processing, cluster close)",
            "b/c images_per_second_wall": "ingest.run summary.wall_seconds (cluster start .. close)",
            "d": "DeepFace.represent + MilvusClient.insert per face, final flush; first represent excluded",
        },
        "results": res, "ratios": {k: round(v, 3) for k, v in ratios.items()}, "targets": checks,
        "per_round": [{k: round(v, 3) for k, v in r.items()} for r in per_round],
        "per_round_median": {k: round(statistics.median(r[k] for r in per_round), 3) for k in ("b/a", "c/b")},
        "bench_seconds": round(seconds, 1),
    }
    if f"rss_{args.rss_images}" in res:
        small, big = rss_block(res[f"rss_{args.rss_base}"]), rss_block(res[f"rss_{args.rss_images}"])
        growth = big["max_peak_rss"] / small["max_peak_rss"] - 1
        growth_hwm = big["max_vmhwm"] / small["max_vmhwm"] - 1 if small["max_vmhwm"] else float("nan")
        report["rss"] = {str(args.rss_base): small, str(args.rss_images): big,
                         "growth_max_peak_rss": round(growth, 4), "growth_max_vmhwm": round(growth_hwm, 4),
                         "flat_within_10pct": abs(growth) <= 0.10 and abs(growth_hwm) <= 0.10}
    return report


def render_table(r: Dict[str, Any]) -> str:
    res = r["results"]
    lines = [f"Lookalike ingest benchmark, {r['date']}, {r['machine'].get('cpus')} CPUs ({r['machine'].get('cpu', '?')})",
             f"{r['images']} images ({', '.join(r['image_sets'])}); product: {r['product']['detector']} + "
             f"{', '.join(r['product']['models'])}", "",
             f"{'run':<52}{'images/s':>9}{'faces/s':>9}{'img/s incl. start-up':>22}{'other load':>12}"]

    def row(label: str, x: Dict[str, Any]) -> None:
        tot = f"{x['images_per_second_total']:.2f} ({x['total_seconds']:.0f} s)" if "images_per_second_total" in x else "-"
        lines.append(f"{label:<52}{x['images_per_second']:>9.2f}{x['faces_per_second']:>9.2f}{tot:>22}"
                     f"{x.get('foreign_cores', 0):>11.2f}c")

    row("a  model-bound, 1 process (pinned threads)", res["a"])
    row("a' model-bound, library-default threads", res["a_default_threads"])
    row("a2 two model-bound processes at once (sum)", res["a2"])
    a1 = res["a"]["per_image"]
    lines.append(f"{'a1 model-bound, embedding image by image':<52}{a1['images_per_second']:>9.2f}"
                 f"{a1['faces_per_second']:>9.2f}{'-':>22}")
    a2d = res["a"]["decode_in_loop"]
    lines.append(f"{'ad model-bound, decoding each image in the loop':<52}{a2d['images_per_second']:>9.2f}"
                 f"{a2d['faces_per_second']:>9.2f}{'-':>22}")
    fm = res["a"]["full_mapper"]
    lines.append(f"{'a+ + read/sha256/decode (process_batch)':<52}{fm['images_per_second']:>9.2f}"
                 f"{fm['faces_per_second']:>9.2f}{'-':>22}")
    row("b  ingest.run workers=1", res["b"])
    row("c  ingest.run workers=2", res["c"])
    row(f"d  naive represent+insert ({res['d']['detector']} + {res['d']['model']})", res["d"])
    if "same_as" not in res["c_product_defaults"]:
        row("c* ingest.run workers=2, product defaults", res["c_product_defaults"])
    ds = res["d_seed_defaults"]
    row(f"d* naive, seed defaults ({ds['detector']} + {ds['model']})", ds)
    lines.append("(other load: cores used by processes outside the benchmark during the run; ~0 on a quiet machine)")
    lines += ["", "ratios (images/s; b, c steady state; a, b, c at their best of "
              f"{len(res['rounds'])} interleaved rounds)"]
    for k, v in r["ratios"].items():
        t = r["targets"].get(k)
        mark = f"   target >= {t['target']}: {'met' if t['met'] else 'MISSED'}" if t else ""
        lines.append(f"  {k:<40}{v:>7.3f}{mark}")
    lines.append("  per round (a, b, c images/s: b/a, c/b): " + "; ".join(
        f"{x['a']:.1f}, {x['b']:.1f}, {x['c']:.1f}: {x['b/a']:.3f}, {x['c/b']:.3f}" for x in r["per_round"])
        + f"; medians {r['per_round_median']['b/a']:.3f}, {r['per_round_median']['c/b']:.3f}")
    lines.append(f"  CPU s/image: a {res['a']['cpu_seconds_per_image']:.3f}; "
                 f"a2 {res['a2']['cpu_seconds_per_image']:.3f}; " + "; ".join(
        f"{k} workers {res[k]['worker_cpu_seconds_per_image']:.3f} + driver {res[k]['driver_cpu_seconds_per_image']:.3f}"
        for k in ("b", "c")))
    for key in ("b", "c"):
        x = res[key]
        w = x["driver_write"]
        lines.append(f"  {key}: start-up {x['startup_seconds']:.1f} s, steady {x['steady_seconds']:.1f} s, "
                     f"driver writes {w['batches']} batches {w['seconds']:.1f} s (flush {w['flush_seconds']:.1f} s); "
                     f"steady CPU s: " + ", ".join(f"{k} {v}" for k, v in x["steady_cpu_seconds"].items()))
        lines.append("     driver threads, steady CPU s: " + ", ".join(
            f"{k} {v}" for k, v in x.get("steady_driver_threads_cpu_seconds", {}).items()))
    if "rss" in r:
        rs = r["rss"]
        lines += ["", "peak RSS per worker, workers=2 (MiB; summary.worker_peak_rss / sampled VmHWM)"]
        for n, blk in rs.items():
            if not isinstance(blk, dict):
                continue
            per = ", ".join(f"{_mib(v):.0f}/{_mib(blk['worker_vmhwm'].get(pid, 0)):.0f}"
                            for pid, v in blk["worker_peak_rss"].items())
            lines.append(f"  {n:>5} images ({blk['faces']} faces): {per}")
        big = res.get(f"rss_{max(int(k) for k in rs if k.isdigit())}", {})
        prog = big.get("worker_rss_by_progress", {})
        if prog:
            lines.append("  sampled RSS after warm-up in the larger run, max so far at N images written: " + ", ".join(
                f"{n}: " + "/".join(f"{_mib(v):.0f}" for v in per.values()) for n, per in prog.items()))
        lines.append(f"  growth {rs['growth_max_peak_rss']:+.1%} (peak RSS), {rs['growth_max_vmhwm']:+.1%} (VmHWM): "
                     f"{'flat within 10%' if rs['flat_within_10pct'] else 'NOT flat within 10%'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
