#!/usr/bin/env python
"""Scale benchmark (issue 22): `lookalike ingest` over N generated CelebA-like photos, a kill -9 and
its resume, then stats, group-photo queries, erasure and a second process opening the database.

    python bench/bench_scale.py --photos 200000 [--step 10000] [--workers 2] [--scratch DIR]
                                [--kill-at 0.75] [--reference K] [--out bench/results/scale]

1. Photos: N distinct JPEGs made from the 617 in-the-wild CelebA sample photos (random crop,
   mirror, resize, brightness, JPEG quality; deterministic from --seed), in CelebA's layout
   (img_celeba/ + identity_CelebA.txt + list_attr_celeba.txt naming each file with its source's
   identity and attributes), in --scratch (default bench/.cache/scale/celeba_<N>, never committed).
   A folder that already holds the same N photos of the same seed is reused.
2. Load: the real CLI, `lookalike ingest SCRATCH --db DB --workers W`, in a subprocess of its own.
   Every --sample-seconds this process reads the progress bar from its stderr (photos, faces) and
   the RSS of the CLI process (the driver), of its Dask worker processes and of Milvus Lite's
   server process (psutil), and at each --step photos the database folder's size on disk.
   Commit times: the CLI runs through a launcher (`bench_scale.py _cli LOG ingest ...`) that wraps
   `ingest.pipeline.Writer.commit` / `close` and `Store.build_indexes` with a clock and calls the
   same entry point as `lookalike` (lookalike.query.app.cli:main); the product code is not changed.
3. Kill and resume: the same photos into a second database; at --kill-at x N photos the CLI's
   whole process group gets SIGKILL; then the same command again: time until the bar appears (the
   ledger read), until new photos flow again, and to the end. Both databases are then compared:
   rows per collection and ledger status, the set of ids, and --vector-sample rows (vector with
   np.allclose, every other field except ingested_at equal).
   With --reference K (how the 200,000 run was made: a second whole load would be another hour),
   the measured load itself is killed at --kill-at x N and resumed, and then compared with an
   uninterrupted run over K of the photos (those around the kill mark and a random sample, linked
   into a CelebA folder of their own): ledger status and face count per photo, face ids, every
   field and vector; the whole database is checked for one ledger row per photo and for exactly
   the faces the ledger says.
4. After the load (the uninterrupted database), each a fresh CLI process, timed from outside:
   `lookalike stats`, `lookalike query groups/photos/multiface.jpg -k 10 --json` without and with
   `--filter 'Eyeglasses == true'` (the default verdict and quality filter included),
   `lookalike delete --identity ID --dry-run`, and on a copy of the database the real delete;
   a second process opening the database (`Store(db)` + first count, timed inside it); then the
   same warm inside this process: `query.Searcher` (the query after one cold call), Store stats.

Writes OUT.json (every figure, the samples, each commit) and OUT.txt (the tables). Measures;
asserts nothing. Milvus Lite takes one process per database: the steps run one after another.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GEN_VERSION = 1  # bump when the generator changes: a folder of another version is regenerated


def data_dir(arg: Optional[str]) -> Path:
    return Path(arg or os.environ.get("LOOKALIKE_DATA") or ROOT.parent / "shared" / "data").resolve()


# ------------------------------------------------------------------------------------------------
# 1. photos
# ------------------------------------------------------------------------------------------------
def _sources(celeba: Path) -> Tuple[List[str], Dict[str, str], Dict[str, str], List[str]]:
    """Source file names, name -> identity, name -> attribute row text, attribute header."""
    names = sorted(f for f in os.listdir(celeba / "img_celeba") if f.lower().endswith(".jpg"))
    want = set(names)
    ids: Dict[str, str] = {}
    with open(celeba / "identity_CelebA.txt", encoding="utf-8") as fh:
        for line in fh:
            p = line.split()
            if len(p) == 2 and p[0] in want:
                ids[p[0]] = p[1]
    attrs: Dict[str, str] = {}
    with open(celeba / "list_attr_celeba.txt", encoding="utf-8") as fh:
        fh.readline()
        header = fh.readline().split()
        for line in fh:
            p = line.split()
            if len(p) == len(header) + 1 and p[0] in want:
                attrs[p[0]] = " ".join(p[1:])
    return names, ids, attrs, header


def _variant(img, rng: random.Random):
    """One random edit of a photo: crop keeping 85-100 % of each side (faces mostly stay whole),
    mirror half the time, resize to 60-100 %, brightness 0.8-1.2; the JPEG quality is drawn by
    the caller."""
    from PIL import Image, ImageEnhance

    w, h = img.size
    cw, ch = max(1, int(w * rng.uniform(0.85, 1.0))), max(1, int(h * rng.uniform(0.85, 1.0)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    s = rng.uniform(0.6, 1.0)
    out = out.resize((max(1, round(cw * s)), max(1, round(ch * s))), Image.Resampling.BILINEAR)
    return ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))


def _make_group(args: Tuple[str, List[int], str, int]) -> List[Tuple[int, str]]:
    """Every variant of one source photo (decoded once): [(index, sha256)]. Each variant's edits
    come from (seed, index) alone, so the set does not depend on how the work is split."""
    import io

    from PIL import Image

    src, indices, out_dir, seed = args
    with Image.open(src) as im:
        img = im.convert("RGB")
    done: List[Tuple[int, str]] = []
    for i in indices:
        rng = random.Random(f"{seed}:{i}")
        v = _variant(img, rng)
        q = rng.randint(70, 95)
        for extra in range(8):  # another quality when two variants happen to share bytes
            buf = io.BytesIO()
            v.save(buf, "JPEG", quality=max(50, q - extra))
            data = buf.getvalue()
            sha = hashlib.sha256(data).hexdigest()
            # the same source's variants are made here, in this loop: a collision is with one of them
            if all(sha != s for _, s in done[-2000:]):
                break
        with open(os.path.join(out_dir, _name(i)), "wb") as f:
            f.write(data)
        done.append((i, sha))
    return done


def _name(i: int) -> str:
    return f"{i + 1:07d}.jpg"


def generate(n: int, scratch: Path, celeba: Path, seed: int, jobs: int) -> Dict[str, Any]:
    """N photos in CelebA's layout under `scratch`; reused when its manifest says the same."""
    manifest = scratch / "generated.json"
    want = {"version": GEN_VERSION, "photos": n, "seed": seed, "source": str(celeba)}
    img_dir = scratch / "img_celeba"
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if {k: have.get(k) for k in want} == want and img_dir.is_dir() and \
                sum(1 for _ in os.scandir(img_dir)) == n:
            have["reused"] = True
            return have
    if scratch.exists():
        shutil.rmtree(scratch)
    img_dir.mkdir(parents=True)
    names, ids, attrs, header = _sources(celeba)
    order = names[:]
    random.Random(seed).shuffle(order)  # which source each index uses: every source in turn
    groups: Dict[str, List[int]] = {}
    for i in range(n):
        groups.setdefault(order[i % len(order)], []).append(i)
    t0 = time.perf_counter()
    tasks = [(str(celeba / "img_celeba" / s), idx, str(img_dir), seed) for s, idx in groups.items()]
    shas: Dict[int, str] = {}
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for part in pool.map(_make_group, tasks, chunksize=1):
            shas.update(part)
    seconds = time.perf_counter() - t0
    source_of = {i: s for s, idx in groups.items() for i in idx}
    with open(scratch / "identity_CelebA.txt", "w", encoding="utf-8") as f:
        for i in range(n):
            s = source_of[i]
            if s in ids:
                f.write(f"{_name(i)} {ids[s]}\n")
    with open(scratch / "list_attr_celeba.txt", "w", encoding="utf-8") as f:
        rows = [(i, attrs[source_of[i]]) for i in range(n) if source_of[i] in attrs]
        f.write(f"{len(rows)}\n{' '.join(header)}\n")
        for i, row in rows:
            f.write(f"{_name(i)} {row}\n")
    size = sum(e.stat().st_size for e in os.scandir(img_dir))
    identity_counts = Counter(ids[source_of[i]] for i in range(n) if source_of[i] in ids)
    info = dict(want, sources=len(names), distinct_sha256=len(set(shas.values())),
                bytes=size, seconds=round(seconds, 1), jobs=jobs,
                identities=len(identity_counts),
                top_identity=identity_counts.most_common(1)[0] if identity_counts else None,
                eyeglasses_share=round(_share(rows, header, "Eyeglasses"), 4), reused=False)
    manifest.write_text(json.dumps(info, indent=1))
    return info


def _share(rows: List[Tuple[int, str]], header: List[str], attr: str) -> float:
    k = header.index(attr)
    return sum(r.split()[k] == "1" for _, r in rows) / max(1, len(rows))


# ------------------------------------------------------------------------------------------------
# the CLI, with a clock on the writer's commits (runs in the subprocess)
# ------------------------------------------------------------------------------------------------
def hooked_cli(log_path: str, argv: List[str]) -> int:
    """`lookalike ARGV` with each commit, the final flush and the index build appended to
    LOG as JSON lines (start and end wall clock, photos, faces)."""
    from lookalike.ingest import pipeline
    from lookalike.ingest.store import Store

    log = open(log_path, "a", buffering=1, encoding="utf-8")

    def record(kind: str, t0: float, **kw: Any) -> None:
        log.write(json.dumps({"kind": kind, "start": t0, "end": time.time(), **kw}) + "\n")

    commit, close, build = pipeline.Writer.commit, pipeline.Writer.close, Store.build_indexes

    def timed_commit(self) -> None:
        photos, faces, t0 = len(self._pending), self._pending_faces, time.time()
        commit(self)
        if photos:
            record("commit", t0, photos=photos, faces=faces)

    def timed_close(self) -> None:
        t0 = time.time()
        close(self)
        record("flush", t0)

    def timed_build(self, names) -> None:
        t0 = time.time()
        build(self, names)
        record("build_indexes", t0)

    pipeline.Writer.commit = timed_commit  # type: ignore[method-assign]
    pipeline.Writer.close = timed_close  # type: ignore[method-assign]
    Store.build_indexes = timed_build  # type: ignore[method-assign]
    from lookalike.query.app.cli import main

    return main(argv)


# ------------------------------------------------------------------------------------------------
# 2. a monitored ingest
# ------------------------------------------------------------------------------------------------
_BAR = re.compile(r"(\d+)(?:/(\d+)|img) \[")  # "N/TOTAL [" or, before the skip pass ends, "Nimg ["
_FACES = re.compile(r"faces=(\d+)")


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under `path` (du)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass  # a segment file replaced meanwhile
    return total


class Target:
    """Where a run writes: a Milvus Lite file (`db`) or a database on a Milvus server (`uri`, with
    the server's data folder as `disk`, and its process for memory)."""

    def __init__(self, db: Optional[Path] = None, uri: Optional[str] = None, disk: Optional[Path] = None,
                 server_pid: Optional[int] = None):
        self.db, self.uri, self.server_pid = db, uri, server_pid
        disk = disk if disk is not None else db
        assert disk is not None, "a server target names its data folder (disk)"
        self.disk: Path = disk

    def args(self) -> List[str]:
        return ["--db", str(self.db)] if self.db is not None else ["--uri", str(self.uri)]

    def kwargs(self) -> Dict[str, str]:
        return {"db": str(self.db)} if self.db is not None else {"uri": str(self.uri)}

    def store(self):
        from lookalike.ingest.store import Store

        return Store(db=str(self.db)) if self.db is not None else Store(db=None, uri=self.uri)

    def __str__(self) -> str:
        return str(self.db if self.db is not None else self.uri)


def _tree_rss(pid: Optional[int]) -> int:
    """RSS of a process and its descendants (a Milvus server), 0 when gone."""
    import psutil

    if not pid:
        return 0
    try:
        p = psutil.Process(pid)
        return p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
    except psutil.Error:
        return 0


def _kind(p) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - gone meanwhile
        return "gone"
    if "spawn_main" in cmd:
        return "worker"
    return "other"


def _rss_split(proc) -> Dict[str, Any]:
    """RSS of the driver (Milvus Lite 3 serves the database from threads of this process), its
    Dask workers (each) and any other child process."""
    import psutil

    out: Dict[str, Any] = {"driver": 0, "workers": [], "other": 0}
    try:
        out["driver"] = proc.memory_info().rss
        kids = proc.children(recursive=True)
    except psutil.Error:
        return out
    for c in kids:
        try:
            rss = c.memory_info().rss
        except psutil.Error:
            continue
        if _kind(c) == "worker":
            out["workers"].append(rss)
        else:
            out["other"] += rss
    return out


class Ingest:
    """One `lookalike ingest` subprocess: its progress bar read as it moves (a table row each time
    it passes a multiple of `step`), the memory of its processes sampled meanwhile."""

    def __init__(self, src: Path, db: Target, workers: int, log_dir: Path, label: str,
                 env: Dict[str, str], step: int, photos: int, sample_seconds: float,
                 kill_at: Optional[int] = None):
        self.src, self.db, self.workers, self.label = src, db, workers, label
        self.step, self.photos, self.sample_seconds, self.kill_at = step, photos, sample_seconds, kill_at
        self.commit_log = log_dir / f"{label}.commits.jsonl"
        self.stderr_log = log_dir / f"{label}.stderr.txt"
        self.report = log_dir / f"{label}.report.jsonl"
        self.env = env
        self.count = 0  # photos the bar shows (this run's)
        self.total: Optional[int] = None  # the bar's total (photos not yet in the ledger)
        self.faces = 0
        self.t_bar: Optional[float] = None  # the bar appeared (ledger read; cluster and models still to start)
        self.t_first: Optional[float] = None  # first photos done
        self.t_last: Optional[float] = None  # last bar movement
        self.first_count = 0
        self.killed_at: Optional[int] = None
        self.steps: List[Dict[str, Any]] = []
        self.rss: Dict[str, Any] = {"driver": 0, "workers": [], "other": 0}  # the latest sample
        self.step_peak = {"driver": 0, "worker": 0}
        self._prev: Optional[Tuple[float, int, int]] = None  # (t, photos, faces) at the last row
        self._next = step

    def _read(self, fd: int) -> None:
        buf, keep = b"", open(self.stderr_log, "wb")
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            keep.write(chunk)
            buf += chunk
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            for p in parts:
                self._parse(p.decode("utf-8", "replace"))
            if buf.endswith(b"]"):  # tqdm ends a state with the next one's \r: read it now
                self._parse(buf.decode("utf-8", "replace"))
        keep.close()

    def _parse(self, line: str) -> None:
        m = _BAR.search(line)
        if not m:
            return
        now = time.perf_counter() - self.t0
        count = int(m.group(1))
        if self.t_bar is None:
            self.t_bar = now
        f = _FACES.search(line)
        if f:
            self.faces = int(f.group(1))
        if count > 0 and self.t_first is None:
            self.t_first, self.first_count = now, count
        if count > self.count:
            self.t_last = now
        self.count = count
        if m.group(2) is None:  # photos flow while the skip pass still runs: how many it skips is not known yet
            return
        total = int(m.group(2))
        if self.total is None:
            self.total = total
        done = self.photos - total + count  # skipped + this run's
        if count > 0 and self._prev is None:
            self._prev = (now, done, self.faces)
            self._next = (done // self.step + 1) * self.step
        if self.kill_at is not None and self.killed_at is None and done >= self.kill_at:
            # here, as the bar passes the mark, not at the next sample
            os.killpg(self.pid, signal.SIGKILL)
            self.killed_at = done
            return
        while self._prev is not None and (done >= self._next or (count == total and done > self._prev[1])):
            self._row(now, done)

    def _row(self, now: float, done: int) -> None:
        t, photos, faces = self._prev  # type: ignore[misc]
        dt = now - t
        self.steps.append({
            "photos": min(self._next, done), "at_photos": done, "t": round(now, 2),
            "images_per_s": round((done - photos) / dt, 2) if dt > 0 else None,
            "faces_per_s": round((self.faces - faces) / dt, 2) if dt > 0 else None,
            "faces": self.faces, "driver_rss": self.rss["driver"],
            "worker_rss_max": max(self.rss["workers"], default=0),
            "driver_rss_peak": self.step_peak["driver"], "worker_rss_peak": self.step_peak["worker"],
            "db_bytes": disk_usage(self.db.disk), "server_rss": _tree_rss(self.db.server_pid),
        })
        self._prev = (now, done, self.faces)
        self.step_peak = {"driver": 0, "worker": 0}
        self._next = (done // self.step + 1) * self.step

    def run(self) -> Dict[str, Any]:
        import psutil

        self.commit_log.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "_cli", str(self.commit_log), "ingest", str(self.src),
               *self.db.args(), "--workers", str(self.workers), "--report", str(self.report)]
        r, w = os.pipe()
        self.t0 = time.perf_counter()
        wall0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=w, env=self.env, cwd=str(ROOT),
                                start_new_session=True)
        self.pid = proc.pid
        os.close(w)
        reader = threading.Thread(target=self._read, args=(r,), daemon=True)
        ps = psutil.Process(proc.pid)
        reader.start()
        samples: List[Dict[str, Any]] = []
        peak = {"driver": 0, "worker": 0}
        while proc.poll() is None:
            rss = _rss_split(ps)
            if rss["driver"]:
                self.rss = rss
                wmax = max(rss["workers"], default=0)
                for k, v in (("driver", rss["driver"]), ("worker", wmax)):
                    peak[k] = max(peak[k], v)
                    self.step_peak[k] = max(self.step_peak[k], v)
                samples.append({"t": round(time.perf_counter() - self.t0, 2),
                                "photos": (self.photos - self.total if self.total is not None else 0) + self.count,
                                "faces": self.faces, "driver_rss": rss["driver"], "worker_rss": rss["workers"],
                                "other_rss": rss["other"]})
            time.sleep(self.sample_seconds)
        rc = proc.wait()
        end = time.perf_counter() - self.t0
        survivors = []
        if self.killed_at is not None:
            survivors = self._survivors(proc.pid)
        reader.join(timeout=10)
        if self.steps and self.killed_at is None:
            # the run's last faces are committed after its bar reached the end: count them in its last row
            last = self.steps[-1]
            before = self.steps[-2] if len(self.steps) > 1 else None
            t_prev = before["t"] if before else (self.t_first or 0.0)
            f_prev = before["faces"] if before else 0
            if self.faces > last["faces"] and last["t"] > t_prev:
                last["faces"] = self.faces
                last["faces_per_s"] = round((self.faces - f_prev) / (last["t"] - t_prev), 2)
        stdout = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
        steady = None
        if self.t_first is not None and self.t_last is not None and self.t_last > self.t_first:
            steady = (self.count - self.first_count) / (self.t_last - self.t_first)
        return {
            "label": self.label, "rc": rc, "killed_at_photos": self.killed_at, "survivors_of_kill": survivors,
            "seconds": round(end, 2), "bar_seconds": _r(self.t_bar), "first_photos_seconds": _r(self.t_first),
            "last_photos_seconds": _r(self.t_last),
            "bar_total": self.total, "photos_skipped": (self.photos - self.total) if self.total is not None else None,
            "photos_done_this_run": self.count, "faces": self.faces, "steady_images_per_s": _r(steady),
            "steps": self.steps, "peak_rss": peak, "db_bytes": disk_usage(self.db.disk),
            "commits": self._commits(wall0), "summary": stdout.strip().splitlines(),
            "samples": samples[::max(1, len(samples) // 500)],  # thinned: the peaks above saw them all
        }

    @staticmethod
    def _survivors(sid: int) -> List[str]:
        """Processes of the killed run's session still running 5 s after the SIGKILL (a dead child
        stays a zombie until someone reaps it: not counted); any left are killed, so that none
        holds the database for the resume."""
        import psutil

        left: List[str] = []
        deadline = time.time() + 5
        while True:
            left = []
            for p in psutil.process_iter(["pid", "name", "status"]):
                try:
                    if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                        left.append(f"{p.pid} {p.info['name']} ({p.info['status']}, pgid {os.getpgid(p.pid)})")
                except (ProcessLookupError, PermissionError, psutil.Error):
                    pass
            if not left or time.time() > deadline:
                break
            time.sleep(0.2)
        for entry in left:
            with _ignore_errors():
                psutil.Process(int(entry.split()[0])).kill()  # this run's; it must not hold the database
        return left

    def _commits(self, wall0: float) -> List[Dict[str, Any]]:
        out = []
        if self.commit_log.is_file():
            for line in self.commit_log.read_text().splitlines():
                try:
                    c = json.loads(line)
                except ValueError:
                    continue  # the line a kill cut short
                out.append({"kind": c["kind"], "at": round(c["start"] - wall0, 2),
                            "seconds": round(c["end"] - c["start"], 3),
                            **{k: c[k] for k in ("photos", "faces") if k in c}})
        return out


class _ignore_errors:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], Exception)


def _r(x: Optional[float], n: int = 2) -> Optional[float]:
    return None if x is None else round(x, n)


def commits_per_step(run: Dict[str, Any]) -> None:
    """Each step's commits: how many, their total and longest time."""
    cs = [c for c in run["commits"] if c["kind"] == "commit"]
    prev_t = 0.0
    for i, s in enumerate(run["steps"]):
        end = s["t"] if i < len(run["steps"]) - 1 else float("inf")  # the last row: the run's last commit too
        mine = [c for c in cs if prev_t <= c["at"] < end]
        s["commits"] = len(mine)
        s["commit_seconds_mean"] = _r(statistics.mean(c["seconds"] for c in mine), 3) if mine else None
        s["commit_seconds_max"] = _r(max(c["seconds"] for c in mine), 3) if mine else None
        prev_t = s["t"]


# ------------------------------------------------------------------------------------------------
# 3. compare two databases
# ------------------------------------------------------------------------------------------------
def read_db(db: Target) -> Dict[str, Any]:
    from lookalike.schemas import LEDGER_COLLECTION

    out: Dict[str, Any] = {"collections": {}, "ledger": {}}
    with db.store() as store:
        for name in store.face_collections():
            out["collections"][name] = {r["id"] for r in store.iterate(name, ["id"])}
        out["ledger"] = {r["id"]: r["status"] for r in store.iterate(LEDGER_COLLECTION, ["id", "status"])}
    return out


def sample_rows(db: Target, name: str, ids: List[str]) -> Dict[str, Dict[str, Any]]:
    from lookalike.schemas import OUTPUT_FIELDS, model_for_collection

    fields = [f for f in OUTPUT_FIELDS if f != "ingested_at"] + ["vector"]
    with db.store() as store:
        rows = store.get(model_for_collection(name) or name, ids, output_fields=fields)
    return {r["id"]: r for r in rows}


def compare(db_a: Target, db_b: Target, n_sample: int, seed: int) -> Dict[str, Any]:
    import numpy as np

    a, b = read_db(db_a), read_db(db_b)
    out: Dict[str, Any] = {"collections": {}, "ledger": {
        "rows_a": len(a["ledger"]), "rows_b": len(b["ledger"]),
        "status_a": dict(Counter(a["ledger"].values())), "status_b": dict(Counter(b["ledger"].values())),
        "same_ids": a["ledger"].keys() == b["ledger"].keys(), "same_status": a["ledger"] == b["ledger"]}}
    for name in sorted(set(a["collections"]) | set(b["collections"])):
        ia, ib = a["collections"].get(name, set()), b["collections"].get(name, set())
        c: Dict[str, Any] = {"rows_a": len(ia), "rows_b": len(ib), "same_ids": ia == ib,
                             "only_a": sorted(ia - ib)[:5], "only_b": sorted(ib - ia)[:5]}
        ids = sorted(ia & ib)
        pick = random.Random(seed).sample(ids, min(n_sample, len(ids)))
        ra, rb = sample_rows(db_a, name, pick), sample_rows(db_b, name, pick)
        close, diff, fields_differ = 0, 0.0, Counter[str]()
        for i in pick:
            va, vb = np.asarray(ra[i]["vector"]), np.asarray(rb[i]["vector"])
            close += bool(np.allclose(va, vb))
            diff = max(diff, float(np.abs(va - vb).max()))
            for k in ra[i]:
                if k != "vector" and ra[i][k] != rb[i].get(k):
                    fields_differ[k] += 1
        c.update(vectors_sampled=len(pick), vectors_allclose=close, vector_max_abs_diff=diff,
                 other_fields_differing=dict(fields_differ))
        out["collections"][name] = c
    out["identical"] = out["ledger"]["same_status"] and all(
        c["same_ids"] and c["vectors_allclose"] == c["vectors_sampled"] and not c["other_fields_differing"]
        for c in out["collections"].values())
    return out


def reference_names(n: int, at: int, k: int, seed: int) -> List[str]:
    """K photo names for the reference run: the half before the kill mark and a quarter after it
    (where photos were in flight, committed or redone), and a random quarter of the rest."""
    lo, hi = max(0, at - k // 2), min(n, at + k // 4)
    rest = [i for i in range(n) if not lo <= i < hi]
    pick = list(range(lo, hi)) + random.Random(seed).sample(rest, min(len(rest), k - (hi - lo)))
    return sorted(_name(i) for i in pick)


def make_reference(scratch: Path, ref: Path, names: List[str]) -> None:
    """A CelebA folder of `names` only: links to the generated photos, the same annotation files."""
    if ref.exists():
        shutil.rmtree(ref)
    (ref / "img_celeba").mkdir(parents=True)
    for name in names:
        os.symlink(scratch / "img_celeba" / name, ref / "img_celeba" / name)
    for f in ("identity_CelebA.txt", "list_attr_celeba.txt"):
        shutil.copy(scratch / f, ref / f)


def compare_reference(db: Target, ref_db: Target, n: int) -> Dict[str, Any]:
    """The killed-and-resumed database against an uninterrupted run over a sample of its photos
    (rows are a function of the photo: ids from the content, vectors from the model), and the whole
    database checked for consistency: one ledger row per photo, every face belonging to a photo
    the ledger has done, as many faces as the ledger says."""
    import numpy as np

    from lookalike.schemas import LEDGER_COLLECTION, OUTPUT_FIELDS

    fields = [f for f in OUTPUT_FIELDS if f not in ("ingested_at", "source_path")]
    lfields = ["source_path", "status", "faces", "image_sha256"]
    with ref_db.store() as s:
        ref_ledger = {Path(r["source_path"]).name: r for r in s.iterate(LEDGER_COLLECTION, lfields)}
        ref_faces = {r["id"]: r for r in s.iterate("faces_dlib", fields + ["vector"])}
    with db.store() as s:
        ledger = [r for r in s.iterate(LEDGER_COLLECTION, lfields)]
        faces = [r for r in s.iterate("faces_dlib", ["id", "image_sha256"])]
        got = {r["id"]: r for r in s.get("dlib", sorted(ref_faces), output_fields=fields + ["vector"])}
    by_name = {Path(r["source_path"]).name: r for r in ledger}
    done_sha = {r["image_sha256"] for r in ledger if r["status"] == "done"}
    face_ids = {r["id"] for r in faces}
    ids_of: Dict[str, set] = {}
    for r in faces:
        ids_of.setdefault(r["image_sha256"], set()).add(r["id"])
    ref_ids_of: Dict[str, set] = {}
    for i, r in ref_faces.items():
        ref_ids_of.setdefault(r["image_sha256"], set()).add(i)
    ledger_diff = [nm for nm, r in ref_ledger.items()
                   if nm not in by_name or (by_name[nm]["status"], by_name[nm]["faces"]) != (r["status"], r["faces"])]
    missing = sorted(set(ref_faces) - set(got))
    close, worst, differ = 0, 0.0, Counter[str]()
    for i, r in ref_faces.items():
        if i not in got:
            continue
        va, vb = np.asarray(r["vector"]), np.asarray(got[i]["vector"])
        close += bool(np.allclose(va, vb))
        worst = max(worst, float(np.abs(va - vb).max()))
        differ.update(f for f in fields if f != "id" and r[f] != got[i].get(f))
    ref_shas = {r["image_sha256"] for r in ref_ledger.values() if r["status"] == "done"}
    out: Dict[str, Any] = {
        "reference_photos": len(ref_ledger),
        "whole": {"ledger_rows": len(ledger), "photos": n, "distinct_names": len(by_name),
                  "status": dict(Counter(r["status"] for r in ledger)),
                  "faces_rows": len(faces), "distinct_face_ids": len(face_ids),
                  "ledger_faces_of_done": sum(r["faces"] for r in ledger if r["status"] == "done"),
                  "faces_of_photos_not_done": sum(1 for r in faces if r["image_sha256"] not in done_sha)},
        "sample": {"ledger_rows_differing": len(ledger_diff), "examples": ledger_diff[:5],
                   "faces": len(ref_faces), "faces_missing": len(missing),
                   "photos_with_other_face_ids": sum(ids_of.get(h, set()) != ref_ids_of.get(h, set()) for h in ref_shas),
                   "vectors_allclose": close, "vector_max_abs_diff": worst,
                   "other_fields_differing": dict(differ)},
    }
    w, sm = out["whole"], out["sample"]
    out["identical"] = (w["ledger_rows"] == n == w["distinct_names"] and w["faces_rows"] == w["distinct_face_ids"]
                        == w["ledger_faces_of_done"] and not w["faces_of_photos_not_done"]
                        and not sm["ledger_rows_differing"] and not sm["faces_missing"]
                        and not sm["photos_with_other_face_ids"] and sm["vectors_allclose"] == sm["faces"]
                        and not sm["other_fields_differing"])
    return out


# ------------------------------------------------------------------------------------------------
# 4. after the load
# ------------------------------------------------------------------------------------------------
def timed_cli(env: Dict[str, str], args: List[str], label: str) -> Tuple[Dict[str, Any], str]:
    """`lookalike ARGS` in a fresh process (the console script's entry point), timed from outside."""
    t0 = time.perf_counter()
    code = "import sys; from lookalike.query.app.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=str(ROOT))
    out = {"what": label, "argv": ["lookalike", *args], "seconds": round(time.perf_counter() - t0, 2),
           "rc": p.returncode}
    if p.returncode != 0:
        out["stderr"] = p.stderr.strip().splitlines()[-3:]
    return out, p.stdout


def summarize_query(doc: Dict[str, Any]) -> Dict[str, Any]:
    photo = doc["photos"][0]
    faces = photo.get("faces", [])
    same = sum(any(m.get("same_person") for ms in (f.get("matches_by_model") or {"": f.get("matches", [])}).values()
                   for m in ms) for f in faces)
    return {"faces": len(faces), "faces_with_same_person": same,
            "low_quality_faces": sum(bool(f.get("low_quality")) for f in faces),
            "min_quality": photo.get("min_quality"),
            "search": [{k: s.get(k) for k in ("model", "rows", "filtered_rows", "mode", "seconds")}
                       for s in photo.get("search", [])],
            "timings": photo.get("timings")}


OPEN_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
from lookalike.ingest.store import Store
from lookalike.schemas import collection_name
t1 = time.perf_counter()
s = Store(**json.loads(sys.argv[1]))
t2 = time.perf_counter()
name = s.face_collections()[0]
n = s.count(name)
t3 = time.perf_counter()
s.close()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "first_count_s": t3 - t2, "open_and_count_s": t3 - t1,
                  "close_s": time.perf_counter() - t3, "collection": name, "rows": n}))
"""


def post_load(db: Target, env: Dict[str, str], data: Path, work: Path, identity: str, reps: int) -> Dict[str, Any]:
    photo = str(data / "groups" / "photos" / "multiface.jpg")
    flt = "Eyeglasses == true"
    res: Dict[str, Any] = {"photo": photo, "filter": flt, "identity": identity, "cli": [], "warm": {}}
    r, out = timed_cli(env, ["stats", *db.args(), "--json"], "stats")
    with _ignore():
        r["stats"] = json.loads(out)
    res["cli"].append(r)
    for label, extra in (("query k=10", []), ("query k=10 filtered", ["--filter", flt])):
        r, out = timed_cli(env, ["query", photo, "-k", "10", *db.args(), "--json", *extra], label)
        with _ignore():
            r["result"] = summarize_query(json.loads(out))
        res["cli"].append(r)
    r, out = timed_cli(env, ["delete", "--identity", identity, "--dry-run", "--json", *db.args()],
                       "delete --identity --dry-run")
    with _ignore():
        r["result"] = _trim(json.loads(out))
    res["cli"].append(r)
    if db.db is not None:  # on a copy; a server's database is deleted from at the very end
        copy = work / "delete_copy.db"
        if copy.exists():
            shutil.rmtree(copy)
        t0 = time.perf_counter()
        shutil.copytree(db.db, copy)
        res["copy_seconds"] = round(time.perf_counter() - t0, 2)
        real_delete(env, Target(db=copy), identity, res, "delete --identity (copy)")
        shutil.rmtree(copy, ignore_errors=True)

    opens = []
    for _ in range(reps):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", OPEN_SNIPPET, json.dumps(db.kwargs())], capture_output=True, text=True,
                           env=env, cwd=str(ROOT))
        o = json.loads(p.stdout) if p.returncode == 0 else {"rc": p.returncode, "stderr": p.stderr[-500:]}
        o["process_seconds"] = round(time.perf_counter() - t0, 2)
        opens.append({k: round(v, 3) if isinstance(v, float) else v for k, v in o.items()})
    res["second_process_open"] = opens

    res["warm"] = warm_in_process(db, photo, flt, identity, reps)
    if db.db is None:
        real_delete(env, db, identity, res, "delete --identity")
    return res


def real_delete(env: Dict[str, str], db: Target, identity: str, res: Dict[str, Any], label: str) -> None:
    r, out = timed_cli(env, ["delete", "--identity", identity, "--json", *db.args()], label)
    with _ignore():
        r["result"] = _trim(json.loads(out))
    res["cli"].append(r)


def _trim(d: Dict[str, Any]) -> Dict[str, Any]:
    """A delete summary without its lists of paths and hashes (their lengths instead)."""
    return {k: len(v) if isinstance(v, list) and k in ("paths", "sha256s", "unhashed_paths") else v
            for k, v in d.items()}


class _ignore:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ValueError, KeyError, IndexError))


def warm_in_process(db: Target, photo: str, flt: str, identity: str, reps: int) -> Dict[str, Any]:
    from lookalike import ingest
    from lookalike.ingest.settings import resolve
    from lookalike.query import Searcher

    out: Dict[str, Any] = {}
    t0 = time.perf_counter()
    with Searcher(resolve(None, **db.kwargs())) as s:
        out["open_seconds"] = round(time.perf_counter() - t0, 3)
        t = time.perf_counter()
        s.search_photo(photo, top_k=10)
        out["first_query_seconds"] = round(time.perf_counter() - t, 3)
        runs = {"query k=10": None, "query k=10 filtered": flt}
        times: Dict[str, List[float]] = {label: [] for label in runs}
        last: Dict[str, Any] = {}
        s.search_photo(photo, top_k=10, filter=flt)  # the filter's first probe
        # interleaved (a b a b ...): a busy minute on a shared machine slows both alike
        for _ in range(reps):
            for label, f in runs.items():
                t = time.perf_counter()
                last[label] = s.search_photo(photo, top_k=10, filter=f)
                times[label].append(time.perf_counter() - t)
        for label, ts in times.items():
            out[label] = {"seconds": [round(x, 3) for x in ts], "median": round(statistics.median(ts), 3),
                          "result": summarize_query({"photos": [json.loads(last[label].model_dump_json())]})}
        stats_times = []
        for _ in range(reps):
            t = time.perf_counter()
            s.store.stats()
            s.store.ledger_counts()
            stats_times.append(time.perf_counter() - t)
        out["stats"] = {"seconds": [round(x, 3) for x in stats_times], "median": round(statistics.median(stats_times), 3)}
        t = time.perf_counter()
        d = ingest.delete(identity=identity, dry_run=True, store=s.store)
        out["delete --identity --dry-run"] = {"seconds": round(time.perf_counter() - t, 3),
                                              "result": _trim(d.to_dict())}
    return out


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def _mib(b: Optional[int], digits: int = 0) -> str:
    return "-" if b is None else f"{b / 2**20:,.{digits}f}"


def text_report(res: Dict[str, Any]) -> str:
    L: List[str] = []
    g, a = res["generation"], res["load"]
    backend = (f"a Milvus {res['server'].get('version', '')} server (the workers write)".replace("  ", " ")
               if res.get("server") else "Milvus Lite (the driver writes)")
    L.append(f"Scale benchmark: {res['photos']:,} photos into {backend}, step {res['step']:,}, {res['workers']} workers, "
             f"{res['when']} on {res['machine']['cpus']} CPUs ({res['machine']['platform']})")
    L.append(f"photos: {g['photos']:,} from {g['sources']} CelebA sample photos, {g['distinct_sha256']:,} distinct, "
             f"{g['bytes'] / 2**20:,.0f} MiB, " + ("reused" if g.get("reused") else f"made in {g['seconds']} s"))
    L.append("")
    k: Dict[str, Any] = res.get("kill") or {}
    killed_main = res.get("mode") == "killed and resumed"
    if killed_main:
        r2 = k["resume"]
        L.append(f"Load, killed with kill -9 at {a['killed_at_photos']:,} photos and resumed: {a['seconds']} s + "
                 f"{r2['seconds']} s, rc {r2['rc']}; bar after {a['bar_seconds']} s, first photos after "
                 f"{a['first_photos_seconds']} s; {a['steady_images_per_s']} img/s before the kill, "
                 f"{r2['steady_images_per_s']} after the resume")
    else:
        L.append(f"Load (uninterrupted): rc {a['rc']}, {a['seconds']} s in all; bar after {a['bar_seconds']} s, "
                 f"first photos after {a['first_photos_seconds']} s, last after {a['last_photos_seconds']} s: "
                 f"{a['steady_images_per_s']} img/s between them")
    L.append("")
    L.append("Per step: photos/s and faces/s over the step (the first from the first photos done), RSS (MiB)")
    L.append("at the step and the step's peak, the database folder on disk, the writer's commits in the step.")
    L.append(f"{'photos':>9} {'img/s':>7} {'faces/s':>8} {'driver':>7} {'peak':>6} {'worker':>7} {'peak':>6} "
             f"{'db MiB':>8} {'commits':>7} {'mean s':>7} {'max s':>6}")
    steps = a["steps"] + ([{"resume": True}] + k["resume"]["steps"] if killed_main else [])
    for s in steps:
        if s.get("resume"):
            L.append(f"{'':>9} kill -9, then the resume")
            continue
        L.append(f"{s['photos']:>9,} {s['images_per_s'] or 0:>7.1f} {s['faces_per_s'] or 0:>8.1f} "
                 f"{_mib(s['driver_rss']):>7} {_mib(s['driver_rss_peak']):>6} {_mib(s['worker_rss_max']):>7} "
                 f"{_mib(s['worker_rss_peak']):>6} {_mib(s['db_bytes'], 1):>8} {s['commits']:>7} "
                 f"{s['commit_seconds_mean'] or 0:>7.3f} {s['commit_seconds_max'] or 0:>6.3f}")
    runs = [a, k["resume"]] if killed_main else [a]
    pk = {x: max(r["peak_rss"][x] for r in runs) for x in ("driver", "worker")}
    if res.get("server"):
        L.append(f"server data folder {_mib((k['resume'] if killed_main else a)['db_bytes'], 1)} MiB; peak RSS "
                 f"driver {_mib(pk['driver'])}, worker {_mib(pk['worker'])}, server "
                 f"{_mib(max((s.get('server_rss', 0) for s in steps if not s.get('resume')), default=0))} MiB "
                 f"(at the steps)")
    else:
        L.append(f"final db {_mib((k['resume'] if killed_main else a)['db_bytes'], 1)} MiB; peak RSS driver "
                 f"{_mib(pk['driver'])}, worker {_mib(pk['worker'])} MiB (Milvus Lite runs "
                 f"inside the driver)")
    if res.get("rate_ratio") is not None:
        L.append(f"images/s at the last full step before the end / at the first: {res['rate_ratio']:.3f}")
    if res.get("rate_end_vs_10k"):
        e = res["rate_end_vs_10k"]
        L.append(f"images/s at the step ending {e['end_step']:,} / at the step ending {e['step']:,}: {e['ratio']:.3f}")
    last = k["resume"] if killed_main else a
    for c in last["commits"]:
        if c["kind"] != "commit":
            L.append(f"{c['kind']}: {c['seconds']} s at {c['at']} s")
    L.append("summary: " + " | ".join(x.strip() for x in last["summary"]))
    if killed_main:
        r2, c = k["resume"], k["compare"]
        w, sm = c["whole"], c["sample"]
        L.append("")
        L.append(f"Resume: ledger held {r2['photos_skipped']:,} ({a['killed_at_photos'] - (r2['photos_skipped'] or 0):,} "
                 f"to redo); bar after {r2['bar_seconds']} s, new photos flowing after {r2['first_photos_seconds']} s "
                 f"(the first start: {a['first_photos_seconds']} s); survivors of the kill: {a['survivors_of_kill'] or 'none'}")
        L.append(f"identical to an uninterrupted run: {c['identical']}")
        L.append(f"  whole database: {w['ledger_rows']:,} ledger rows for {w['photos']:,} photos ({w['distinct_names']:,} "
                 f"distinct names; {w['status']}), {w['faces_rows']:,} face rows, {w['distinct_face_ids']:,} distinct ids, "
                 f"{w['ledger_faces_of_done']:,} faces by the ledger, {w['faces_of_photos_not_done']} faces of photos "
                 f"not done")
        L.append(f"  against an uninterrupted run over {c['reference_photos']:,} of the photos (the kill's "
                 f"neighbourhood and a random sample; {k['reference_run']['seconds']} s): ledger rows differing "
                 f"{sm['ledger_rows_differing']}, {sm['faces']:,} faces, missing {sm['faces_missing']}, photos with "
                 f"other face ids {sm['photos_with_other_face_ids']}, vectors allclose {sm['vectors_allclose']:,}/"
                 f"{sm['faces']:,} (max |diff| {sm['vector_max_abs_diff']:.2e}), other fields differing: "
                 f"{sm['other_fields_differing'] or 'none'}")
    elif k:
        r1, r2 = k["killed"], k["resume"]
        L.append("")
        L.append(f"Kill -9 at {r1['killed_at_photos']:,} photos ({r1['seconds']} s into the run; survivors: "
                 f"{r1['survivors_of_kill'] or 'none'}); resume: ledger held {r2['photos_skipped']:,} "
                 f"({r1['killed_at_photos'] - (r2['photos_skipped'] or 0):,} to redo)")
        L.append(f"resume: bar after {r2['bar_seconds']} s, new photos flowing after {r2['first_photos_seconds']} s "
                 f"(uninterrupted run: {a['first_photos_seconds']} s), done after {r2['seconds']} s, rc {r2['rc']}")
        c = k["compare"]
        L.append(f"against the uninterrupted run: identical = {c['identical']}; ledger {c['ledger']['rows_a']:,} / "
                 f"{c['ledger']['rows_b']:,} rows, same ids {c['ledger']['same_ids']}, same status "
                 f"{c['ledger']['same_status']}")
        for name, cc in c["collections"].items():
            L.append(f"  {name}: rows {cc['rows_a']:,} / {cc['rows_b']:,}, same ids {cc['same_ids']}, vectors "
                     f"allclose {cc['vectors_allclose']}/{cc['vectors_sampled']} (max |diff| "
                     f"{cc['vector_max_abs_diff']:.2e}), other fields differing: {cc['other_fields_differing'] or 'none'}")
    p = res.get("post_load")
    if p:
        L.append("")
        L.append(f"After the load ({p['photo'].split('/')[-1]}, filter '{p['filter']}', identity {p['identity']}):")
        for r in p["cli"]:
            extra = ""
            if "result" in r and isinstance(r["result"], dict) and "faces_with_same_person" in r["result"]:
                q = r["result"]
                extra = (f"; {q['faces']} faces, {q['faces_with_same_person']} with a same-person match, "
                         f"{q['low_quality_faces']} low quality; search "
                         + ", ".join(f"{s['mode']} {s['rows']}/{s['filtered_rows']} rows {s['seconds']:.3f} s"
                                     for s in q["search"]))
            elif "result" in r and isinstance(r["result"], dict):
                d = r["result"]
                extra = f"; {d.get('faces_removed')} faces, {d.get('ledger_rows')} ledger rows, {d.get('images')} images"
            L.append(f"  cli  {r['what']:<30} {r['seconds']:>7.2f} s  rc {r['rc']}{extra}")
        if "copy_seconds" in p:
            L.append(f"  copy of the database for the real delete: {p['copy_seconds']} s")
        for o in p["second_process_open"]:
            L.append(f"  second process: Store(db) {o.get('open_s')} s + first count {o.get('first_count_s')} s "
                     f"({o.get('rows')} rows); process {o['process_seconds']} s")
        w = p["warm"]
        L.append(f"  warm Searcher: open {w['open_seconds']} s, first (cold) query {w['first_query_seconds']} s")
        for label in ("query k=10", "query k=10 filtered", "stats"):
            L.append(f"  warm {label:<30} median {w[label]['median']:.3f} s of {w[label]['seconds']}")
        d = w["delete --identity --dry-run"]
        L.append(f"  warm delete --identity --dry-run {d['seconds']} s ({d['result'].get('faces_removed')} faces)")
    return "\n".join(L) + "\n"


def machine() -> Dict[str, Any]:
    import importlib.metadata as md

    vers = {}
    for p in ("pymilvus", "milvus-lite", "dask", "distributed", "torch", "deepface", "opencv-python-headless", "pillow"):
        try:
            vers[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "versions": vers}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_cli":
        return hooked_cli(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, required=True, help="N photos to generate and ingest")
    ap.add_argument("--step", type=int, default=None, help="photos per table row (default N/20, at most 10,000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scratch", default=None, help="generated photos (default bench/.cache/scale/celeba_N)")
    ap.add_argument("--work", default=None, help="databases and logs (default bench/.cache/scale/run_N)")
    ap.add_argument("--kill-at", type=float, default=0.75, help="share of N at which the second run is killed "
                    "(0: no kill/resume)")
    ap.add_argument("--out", default=str(RESULTS / "scale"), help="OUT.json and OUT.txt")
    ap.add_argument("--data", default=None, help="sample data (default $LOOKALIKE_DATA or ../shared/data)")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--gen-jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sample-seconds", type=float, default=1.0)
    ap.add_argument("--vector-sample", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each warm timing")
    ap.add_argument("--skip-post", action="store_true", help="no timings after the load")
    ap.add_argument("--server", action="store_true",
                    help="into the tests' Milvus 2.3.5 server (started here; the workers write) instead of Milvus Lite")
    ap.add_argument("--reference", type=int, default=0,
                    help="K > 0: kill and resume the measured run itself, and compare it with an uninterrupted "
                         "run over K of its photos (instead of a second whole run, killed and resumed)")
    args = ap.parse_args()
    n = args.photos
    step = args.step or max(1, min(10_000, n // 20))
    data = data_dir(args.data)
    cache = ROOT / "bench" / ".cache" / "scale"
    scratch = Path(args.scratch or cache / f"celeba_{n}").resolve()
    work = Path(args.work or cache / f"run_{n}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               LOOKALIKE_DATA=str(data), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("LOOKALIKE_DB", None)
    env.pop("LOOKALIKE_URI", None)
    res: Dict[str, Any] = {"photos": n, "step": step, "workers": args.workers, "seed": args.seed,
                           "when": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit(), "machine": machine()}

    print(f"generating {n} photos in {scratch} ...", flush=True)
    res["generation"] = generate(n, scratch, data / "celeba", args.seed, args.gen_jobs)
    print(f"  {res['generation']['distinct_sha256']} distinct, "
          f"{'reused' if res['generation']['reused'] else str(res['generation']['seconds']) + ' s'}", flush=True)

    server = None
    if args.server:
        # the tests' Milvus 2.3.5 standalone (tests/milvus_server.py), on a fresh data folder
        sys.path.insert(0, str(ROOT / "tests"))
        from milvus_server import MilvusServerProcess, server_python

        if (work / "server").exists():
            shutil.rmtree(work / "server")
        server = MilvusServerProcess(server_python(), work / "server").start()
        ver = re.search(r"milvus-server-([\d.]+)", str(server_python()))
        res["server"] = {"uri": server.uri, "start_seconds": round(server.start_seconds or 0, 1),
                         "version": ver.group(1) if ver else "", **server.info}
        print(f"Milvus server at {server.uri}", flush=True)
    try:
        return _main(args, res, n, step, data, scratch, work, env, server)
    finally:
        if server is not None:
            server.stop(signal.SIGTERM)


def _main(args, res: Dict[str, Any], n: int, step: int, data: Path, scratch: Path, work: Path,
          env: Dict[str, str], server) -> int:
    def fresh(name: str) -> Target:
        if server is not None:  # a database of its own on the server
            from pymilvus import MilvusClient

            dbname = name.removesuffix(".db")
            c = MilvusClient(uri=server.uri)
            if dbname not in c.list_databases():
                c.create_database(dbname)
            c.close()
            return Target(uri=f"{server.uri}/{dbname}", disk=server.base_dir, server_pid=server.proc.pid)
        p = work / name
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return Target(db=p)

    db = fresh("scale.db")
    at = max(1, int(n * args.kill_at))

    def kill_and_resume(target: Target, label: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """A load into `target` killed with kill -9 at `at` photos, then the same command again."""
        print(f"ingesting into {target}, kill -9 at {at} ...", flush=True)
        killed = Ingest(scratch, target, args.workers, work, label, env, step, n, args.sample_seconds,
                        kill_at=at).run()
        commits_per_step(killed)
        print(f"  killed at {killed['killed_at_photos']} after {killed['seconds']} s; resuming ...", flush=True)
        resume = Ingest(scratch, target, args.workers, work, "resume", env, step, n, args.sample_seconds).run()
        commits_per_step(resume)
        print(f"  rc {resume['rc']}, {resume['seconds']} s", flush=True)
        return killed, resume
    if args.reference:
        # The measured run is the one killed and resumed (one load instead of two: at 200,000
        # photos a second load is another hour); an uninterrupted run over a sample is the reference.
        load, resume = kill_and_resume(db, "load")
        print(f"  reference run over {args.reference} photos ...", flush=True)
        ref = work / "reference"
        make_reference(scratch, ref, reference_names(n, load["killed_at_photos"] or at, args.reference, args.seed))
        ref_db = fresh("reference.db")
        reference = Ingest(ref, ref_db, args.workers, work, "reference", env, step, args.reference,
                           args.sample_seconds).run()
        res["mode"] = "killed and resumed"
        res["load"] = load
        res["kill"] = {"killed": load, "resume": resume, "reference_run": {
            k: reference[k] for k in ("rc", "seconds", "summary")}, "compare": compare_reference(db, ref_db, n)}
        steps = load["steps"] + resume["steps"]
        print(f"  identical: {res['kill']['compare']['identical']}", flush=True)
    else:
        print(f"ingesting into {db} ...", flush=True)
        load = Ingest(scratch, db, args.workers, work, "load", env, step, n, args.sample_seconds).run()
        commits_per_step(load)
        res["load"] = load
        steps = load["steps"]
        print(f"  rc {load['rc']}, {load['seconds']} s, {len(load['steps'])} steps", flush=True)
    # full steps, less the run's last (its tail of small batches and the last commit land in it)
    full = [s for s in steps if s["images_per_s"] and s["photos"] % step == 0 and s["photos"] < n]
    res["rate_ratio"] = round(full[-1]["images_per_s"] / full[0]["images_per_s"], 3) if len(full) >= 2 else None
    if len(full) >= 2:
        ref_step = next((s for s in full if s["photos"] == 10_000), full[0])
        res["rate_end_vs_10k"] = {"step": ref_step["photos"], "end_step": full[-1]["photos"],
                                  "ratio": round(full[-1]["images_per_s"] / ref_step["images_per_s"], 3)}

    if args.kill_at > 0 and not args.reference:
        db2 = fresh("scale_killed.db")
        killed, resume = kill_and_resume(db2, "killed")
        res["kill"] = {"killed": killed, "resume": resume,
                       "compare": compare(db, db2, args.vector_sample, args.seed)}

    if not args.skip_post:
        print("after the load: stats, queries, delete, second process ...", flush=True)
        ident = str(res["generation"]["top_identity"][0])
        res["post_load"] = post_load(db, env, data, work, ident, args.reps)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    txt = text_report(res)
    out.with_suffix(".txt").write_text(txt)
    print(txt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
