"""Reliability (issue #7) with real processes and real faults: a Dask worker SIGKILLed mid-run, a
file that kills its worker every time, a read-only database folder, a disk that fills up mid-ingest
(a real tmpfs of a few hundred KB), and a Milvus server that is unreachable or goes away.

The mount tests run their commands in a private mount namespace (`unshare -m`): the tmpfs and
read-only mounts exist only there and vanish with it, so nothing leaks into the machine's mount
table. Where mounting is not permitted (no CAP_SYS_ADMIN) they are skipped, saying so.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, read_ledger, read_rows, wait_for_progress

from lookalike import ingest

CELEBA = DATA / "celeba"
N = 40  # CelebA images of the worker-kill and disk-full runs
ROOT = Path(__file__).resolve().parent.parent

# ingest.run (the Python API) in a process of its own; its summary as one JSON line on stdout.
_RUN = r"""
import json, sys
from lookalike import ingest
s = ingest.run(**json.loads(sys.argv[1]))
print(json.dumps({"seen": s.images_seen, "done": s.images_done, "noface": s.images_noface,
                  "failed": s.images_failed, "skipped": s.images_skipped, "failures": s.failures,
                  "worker_pids": sorted(s.worker_peak_rss)}))
"""


def _popen_run(**kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _RUN, json.dumps(kw)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _cli(*args: str) -> list:
    return [sys.executable, "-m", "lookalike.query.app.cli", *args]


def assert_same_rows(got: dict, expected: dict, atol: float = 1e-5) -> None:
    assert got.keys() == expected.keys()
    for k, e in expected.items():
        assert {f: v for f, v in got[k].items() if f != "vector"} == {f: v for f, v in e.items() if f != "vector"}
        np.testing.assert_allclose(got[k]["vector"], e["vector"], atol=atol)


def assert_ledger_only_for_stored_faces(db: Path) -> dict:
    """Every image the ledger calls done has all its faces in the collection."""
    rows = read_rows(db, "dlib", with_vectors=False)
    per_image: dict = {}
    for r in rows.values():
        per_image[r["image_sha256"]] = per_image.get(r["image_sha256"], 0) + 1
    ledger = read_ledger(db)
    for path, r in ledger.items():
        if r["status"] == "done":
            assert per_image.get(r["image_sha256"], 0) == r["faces"], (path, r)
    return ledger


@pytest.fixture(scope="module")
def reference(tmp_path_factory, settings):
    """The first N CelebA images, ingested without interruption (in-process, batches of 4)."""
    db = tmp_path_factory.mktemp("reference") / "clean.db"
    s = ingest.run(str(CELEBA), limit=N, workers=0, batch_size=4, progress=False,
                   settings=settings.with_(db=str(db)), report=str(db.parent / "r.txt"))
    assert s.images_failed == 0
    return read_rows(db, "dlib")


def _dask_workers(driver_pid: int) -> list:
    """The Dask worker processes of a driver running a LocalCluster: the nannies live in the
    driver; each worker is a multiprocessing-spawned child of it (the resource tracker is not)."""
    import psutil

    out = []
    for p in psutil.Process(driver_pid).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing.spawn" in cmd and "resource_tracker" not in cmd:
            out.append(p)
    return out


# -- 1. Dask workers dying ----------------------------------------------------------------------
@pytest.mark.slow
def test_worker_killed_mid_run_gives_the_uninterrupted_result(tmp_path, reference):
    db = tmp_path / "killed.db"
    proc = _popen_run(source=str(CELEBA), db=str(db), limit=N, workers=2, batch_size=4, progress=True,
                      report=str(tmp_path / "r.txt"))
    try:
        # a batch is stored; the others are in flight
        done_at_kill, buf = wait_for_progress(proc, N, 4, timeout=400)
        assert 4 <= done_at_kill < N and proc.poll() is None, f"run ended before the kill:\n{buf[-2000:]}"
        workers = _dask_workers(proc.pid)
        assert len(workers) == 2, workers
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (buf + err)[-3000:]
    summary = _summary(out)
    assert summary["seen"] == N and summary["failed"] == 0, summary
    assert summary["done"] + summary["noface"] == N
    assert_same_rows(read_rows(db, "dlib"), reference)
    ledger = read_ledger(db)
    assert len(ledger) == N and all(r["status"] in ("done", "noface") for r in ledger.values())


_WAL_WRITER = r"""
import sys, time
from lookalike.ingest.store import Store
from lookalike.schemas import FACE_FIELDS
zero = {"BOOL": False, "FLOAT": 0.5, "INT32": 1, "INT64": 2, "VARCHAR": "v"}
store = Store(sys.argv[1])
store.ensure_collection("dlib")
store.ensure_ledger()
for b in range(5):  # as the Writer commits: faces, then their ledger rows; never a flush
    faces = [{**{f.name: zero[f.kind] for f in FACE_FIELDS}, "id": f"{b}_{i}", "vector": [0.1] * 128}
             for i in range(100)]
    store.upsert_faces("dlib", faces)
    store.record_images([{"id": f"dlib:{b}_{i}", "model": "dlib", "source_path": f"/x/{b}_{i}.jpg",
                          "image_sha256": "", "status": "done", "faces": 1, "reason": "",
                          "detector": "yunet", "ingested_at": 0} for i in range(100)])
print("acknowledged", flush=True)
time.sleep(600)
"""


def test_acknowledged_lite_writes_survive_kill_9_without_a_flush(tmp_path):
    """The Lite Writer does not flush per commit (only every 20,000 photos and at the end): it relies
    on Milvus Lite (>= 3) logging every write before acknowledging it. Upserts through the Store, no flush, kill -9:
    reopened, every row is there."""
    from lookalike.ingest.store import Store
    from lookalike.schemas import LEDGER_COLLECTION

    db = tmp_path / "wal.db"
    proc = subprocess.Popen([sys.executable, "-c", _WAL_WRITER, str(db)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None  # PIPE
    try:
        assert proc.stdout.readline().strip() == "acknowledged", proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with Store(str(db)) as store:
        assert len(list(store.iterate("faces_dlib", ["id"]))) == 500
        assert len(list(store.iterate(LEDGER_COLLECTION, ["id"]))) == 500


class _PoisonWatcher:
    """Makes `path` (a regular file) one that kills whichever process opens it, every time.

    It stands in for a file that crashes its decoder (a segfault in native code). The watcher
    holds a write lease on the file (fcntl F_SETLEASE): a reader's open() then waits in the kernel
    (in __break_lease, /proc/PID/task/TID/wchan) for the lease to be given up; the watcher finds it there,
    SIGKILLs it, and takes the lease again for the next one. Only descendants of `root_pid` are
    touched. (The lease holder is sent SIGIO when a reader comes: ignored meanwhile.)"""

    F_SETLEASE = 1024

    def __init__(self, path: Path, root_pid: int):
        self.path, self.root_pid = path, root_pid
        self.kills = 0
        self._fd = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _lease(self) -> None:
        import fcntl

        if self._fd >= 0:
            fcntl.fcntl(self._fd, self.F_SETLEASE, fcntl.F_UNLCK)
            os.close(self._fd)
        deadline = time.time() + 10
        while True:
            self._fd = os.open(self.path, os.O_WRONLY)
            try:
                fcntl.fcntl(self._fd, self.F_SETLEASE, fcntl.F_WRLCK)
                return
            except OSError:  # a reader has it open (it got in between): wait for it to go
                os.close(self._fd)
                self._fd = -1
                assert time.time() < deadline, "could not take a lease on the poison file"
                time.sleep(0.01)

    def __enter__(self):
        self._old_sigio = signal.signal(signal.SIGIO, signal.SIG_IGN)
        self._lease()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        if self._fd >= 0:
            os.close(self._fd)
        signal.signal(signal.SIGIO, self._old_sigio)

    def _openers(self):
        import psutil

        out: list = []
        try:
            children = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.Error:  # the run has ended (or is ending): nobody left to kill
            return out
        for p in children:
            try:  # any thread: Dask computes in a thread of its own
                for tid in os.listdir(f"/proc/{p.pid}/task"):
                    with open(f"/proc/{p.pid}/task/{tid}/wchan") as f:
                        if f.read().strip() == "__break_lease":
                            out.append(p)
                            break
            except OSError:
                continue
        return out

    def _loop(self):
        import psutil

        while not self._stop.is_set():
            victims = self._openers()
            if victims:
                # Every opener waits on the same lease break, and giving the lease up lets them all
                # in: each one waiting is killed before it is taken again.
                while victims:
                    for p in victims:
                        try:
                            p.send_signal(signal.SIGKILL)
                        except psutil.NoSuchProcess:  # it exited on its own meanwhile
                            continue
                        self.kills += 1
                    psutil.wait_procs(victims, timeout=10)
                    victims = self._openers()
                self._lease()
            time.sleep(0.02)


@pytest.mark.slow
def test_file_that_kills_its_worker_every_time_is_quarantined(tmp_path):
    photos = sorted((CELEBA / "img_celeba").iterdir())[:6]
    poison = tmp_path / "poison.jpg"
    poison.write_bytes(photos[0].read_bytes()[:1000])
    src = tmp_path / "list.txt"
    src.write_text("\n".join(str(p) for p in photos[:3] + [poison] + photos[3:]))
    db = tmp_path / "q.db"
    t0 = time.perf_counter()
    proc = _popen_run(source=str(src), db=str(db), workers=2, batch_size=2, progress=False,
                      report=str(tmp_path / "r.txt"))
    with _PoisonWatcher(poison, proc.pid) as watcher:
        try:
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, err[-3000:]
    summary = _summary(out)
    assert summary["failed"] == 1 and summary["done"] + summary["noface"] == 6, summary
    [(path, reason)] = summary["failures"]
    assert path == str(poison) and reason == ("worker crashed on this file: every worker process that read it "
                                              "died (4 in a row: a crash in a decoder or model, or out of memory)"), reason
    # Dask runs a task on up to 4 workers (allowed-failures 3) before it gives up on it: the batch
    # holding the file 4 times, then the file alone 4 times. Bounded, never forever.
    assert watcher.kills == 8, (watcher.kills, err[-2000:])
    print(f"\nquarantined after {watcher.kills} worker kills in {seconds:.0f} s")
    # A re-run skips it (it is in the ledger as failed; --retry-failed would try it again). Before
    # this process opens the database: Milvus Lite keeps it locked here until the process ends.
    proc = _popen_run(source=str(src), db=str(db), workers=2, progress=False, report=str(tmp_path / "r2.txt"))
    with _PoisonWatcher(poison, proc.pid) as watcher:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    ledger = read_ledger(db)
    assert ledger[str(poison)]["status"] == "failed"
    assert ledger[str(poison)]["reason"].startswith("worker crashed on this file")
    assert all(ledger[str(p)]["status"] == "done" for p in photos)
    assert {r["source_path"] for r in read_rows(db, "dlib", with_vectors=False).values()} == {str(p) for p in photos}
    assert _summary(out)["skipped"] == 7 and watcher.kills == 0


# -- 2. Milvus Lite faults: read-only folder, full disk ---------------------------------------------
def _private_mounts_possible() -> str:
    """'' where `unshare -m` + `mount -t tmpfs` work here, else why not."""
    probe = Path(f"/tmp/lookalike-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare/mount unavailable: {e}"
    finally:
        probe.rmdir()
    return "" if r.returncode == 0 else f"cannot mount a tmpfs in a private mount namespace: {r.stderr.strip()}"


needs_mounts = pytest.mark.skipif(bool(_private_mounts_possible()), reason=_private_mounts_possible() or "-")


def _in_mount_namespace(script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "bash", "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lookalike: "), stderr
    return lines[0]


@needs_mounts
def test_read_only_database_folder_gives_one_line_and_exit_6(tmp_path):
    """As root, permission bits do not stop a write: a read-only file system does. Two cases: a new
    database on a read-only mount, and an existing one whose folder is remounted read-only."""
    from lookalike.ingest.store import Store

    existing = tmp_path / "existing"
    existing.mkdir()
    with Store(str(existing / "faces.db")) as s:
        s.ensure_ledger()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    py, src = shlex.quote(sys.executable), shlex.quote(str(CELEBA))
    ingest_cmd = f"{py} -m lookalike.query.app.cli ingest {src} --limit 2 --workers 0 -q --report {tmp_path}/r.txt --db"
    script = f"""
        mount -t tmpfs -o ro,size=1m tmpfs {fresh} || exit 100
        mount --bind -o ro {existing} {existing} || exit 100
        {ingest_cmd} {fresh}/faces.db 2>{tmp_path}/fresh.err; echo $? >{tmp_path}/fresh.rc
        {ingest_cmd} {existing}/faces.db 2>{tmp_path}/existing.err; echo $? >{tmp_path}/existing.rc
    """
    r = _in_mount_namespace(script)
    assert r.returncode == 0, r.stderr
    for case, where in (("fresh", fresh / "faces.db"), ("existing", existing / "faces.db" / "LOCK")):
        assert (tmp_path / f"{case}.rc").read_text().strip() == "6", (tmp_path / f"{case}.err").read_text()
        line = _one_line((tmp_path / f"{case}.err").read_text())
        assert "Read-only file system" in line and str(where) in line, line


@needs_mounts
@pytest.mark.slow
def test_disk_full_mid_ingest_stops_cleanly_and_resume_completes(tmp_path, reference):
    """A 16 MB tmpfs filled but for 90 KB (an empty database takes ~30 KB, the N images' write-ahead
    logs ~120 KB, their segments more):
    the ingest stops with one line and exit 6, the ledger holds only images whose faces are stored,
    and after the filler is deleted the same command completes with the uninterrupted result."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    py, src = shlex.quote(sys.executable), shlex.quote(str(CELEBA))
    # every batch written as it completes, so the disk fills part-way (buffered, the 40 images
    # take less room and could all fit)
    cmd = (f"LOOKALIKE_COMMIT_SECONDS=0 {py} -m lookalike.query.app.cli ingest {src} --limit {N} --workers 0 "
           f"--batch-size 4 --db {mnt}/faces.db")
    script = f"""
        set -u
        mount -t tmpfs -o size=16m tmpfs {mnt} || exit 100
        avail=$(df -k --output=avail {mnt} | tail -1)
        fallocate -l $(( (avail - 90) * 1024 )) {mnt}/filler || exit 101
        {cmd} -q --report {tmp_path}/r1.txt 2>{tmp_path}/full.err; echo $? >{tmp_path}/full.rc
        cp -a {mnt}/faces.db {tmp_path}/after_full.db
        rm {mnt}/filler
        {cmd} -q --report {tmp_path}/r2.txt 2>{tmp_path}/resume.err; echo $? >{tmp_path}/resume.rc
        cp -a {mnt}/faces.db {tmp_path}/resumed.db
    """
    r = _in_mount_namespace(script)
    assert r.returncode == 0, r.stderr
    full_err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "6", full_err
    line = _one_line(full_err)
    assert "No space left on device" in line, line
    ledger = assert_ledger_only_for_stored_faces(tmp_path / "after_full.db")
    assert len(ledger) < N
    print(f"\ndisk full after {len(ledger)} of {N} images recorded: {line}")
    assert (tmp_path / "resume.rc").read_text().strip() == "0", (tmp_path / "resume.err").read_text()
    assert_same_rows(read_rows(tmp_path / "resumed.db", "dlib"), reference)
    ledger = assert_ledger_only_for_stored_faces(tmp_path / "resumed.db")
    assert len(ledger) == N and all(r["status"] in ("done", "noface") for r in ledger.values())


# -- 3. transient Milvus errors: bounded retries ----------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _LiteServer:
    """Milvus Lite's own gRPC server (`python -m milvus_lite server`) as a process of its own: a
    real server on a real port, that can be killed -9 and started again on the same port."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port = data_dir, _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "_LiteServer":
        self.proc = proc = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
             "--port", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, "milvus_lite server exited"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise AssertionError("milvus_lite server did not listen")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def lite_server(tmp_path):
    server = _LiteServer(tmp_path / "server.db").start()
    yield server
    server.kill()


def _ledger_row(i: int) -> dict:
    return {"id": f"t:{i}", "model": "dlib", "source_path": f"/x/{i}.jpg", "image_sha256": "", "status": "noface",
            "faces": 0, "reason": "", "detector": "yunet", "ingested_at": 0}


def test_unreachable_server_fails_at_once_with_one_line():
    from lookalike.ingest.store import Store, StoreError

    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens: connection refused
    with pytest.raises(StoreError) as e:
        Store(None, uri=uri)
    msg = str(e.value)
    # at once: a refused connection is not worth a retry budget (no "gave up after N attempts")
    assert "\n" not in msg and uri in msg and "cannot open Milvus" in msg and "attempt" not in msg, msg


def test_server_gone_mid_session_retries_with_backoff_then_one_line(lite_server):
    from lookalike.ingest.store import Store, StoreError

    store = Store(None, uri=lite_server.uri, retries=3, retry_seconds=30)
    store.ensure_ledger()
    store.record_images([_ledger_row(1)])
    assert store.count("lookalike_images") == 1
    lite_server.kill()
    with pytest.raises(StoreError) as e:
        store.record_images([_ledger_row(2)])
    msg = str(e.value)
    # 4 attempts (0.5 + 1 + 2 s apart: the backoff's timing is bench/'s business, not a test's)
    assert "\n" not in msg and lite_server.uri in msg and "gave up after 4 attempts" in msg, msg
    # the time budget bounds it too, whatever the number of retries: a 2-s budget leaves room for
    # a handful of the doubling waits, far from the 101 attempts the count alone would allow
    store.retries, store.retry_seconds = 100, 2.0
    with pytest.raises(StoreError, match="unavailable, gave up after") as e:
        store.count("lookalike_images")
    m = re.search(r"gave up after (\d+) attempt", str(e.value))
    assert m, str(e.value)
    attempts = int(m.group(1))
    assert 2 <= attempts <= 5, str(e.value)
    store.close()


def test_server_back_within_the_retry_budget_loses_nothing(lite_server):
    from lookalike.ingest.store import Store

    store = Store(None, uri=lite_server.uri, retries=8, retry_seconds=30)
    store.ensure_ledger()
    store.record_images([_ledger_row(1)])
    store.flush(["lookalike_images"])
    lite_server.kill()
    restart = threading.Timer(1.5, lite_server.start)
    restart.start()
    try:
        store.record_images([_ledger_row(2)])  # retried until the server is back
        store.flush(["lookalike_images"])
    finally:
        restart.join()  # then the fixture stops the restarted server
    store.close()
    with Store(None, uri=lite_server.uri) as fresh:  # the write went to the restarted server
        assert fresh.count("lookalike_images") == 2


def test_only_transient_errors_are_retried(tmp_path):
    """Classification on real exceptions from real failing calls."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    from lookalike.ingest.store import Store, StoreError, transient

    with pytest.raises(MilvusException) as refused:
        MilvusClient(f"http://127.0.0.1:{_free_port()}")
    assert transient(refused.value)  # connection refused: the server may be restarting
    with Store(str(tmp_path / "t.db"), retries=8, retry_seconds=30) as store:
        store.ensure_ledger()
        store.record_images([_ledger_row(1)])
        for bad in (lambda: store.client.query("lookalike_images", filter="id >>> 3"),  # bad filter
                    lambda: store.client.upsert("lookalike_images", [{"id": "x"}]),  # schema
                    lambda: store.client.upsert("no_such_collection", [_ledger_row(2)])):
            with pytest.raises(MilvusException) as e:
                bad()
            assert not transient(e.value), e.value
        # and through the Store: one line at once, no retries
        with pytest.raises(StoreError) as e:
            store.count("lookalike_images", extra_filter="id >>> 3")
        assert "attempt" not in str(e.value) and "\n" not in str(e.value)


def test_unreadable_file_is_reported_and_the_rest_stored(tmp_path, settings):
    """A photo the process may not read (mode 000) ends as one report line, the run completes.
    Root reads any file whatever its mode, so as root the run is started without the two
    capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): a real EACCES."""
    import shutil

    folder = tmp_path / "photos" / "Jackie_Chan"
    folder.mkdir(parents=True)
    src = sorted((DATA / "people" / "Jackie_Chan").iterdir())
    shutil.copy(src[0], folder / "readable.jpg")
    shutil.copy(src[1], folder / "locked.jpg")
    os.chmod(folder / "locked.jpg", 0)
    prefix: list = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: cannot make a file unreadable")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    report = tmp_path / "report.txt"
    r = subprocess.run(prefix + _cli("ingest", str(tmp_path / "photos"), "--db", str(tmp_path / "p.db"),
                                     "--workers", "0", "--report", str(report)),
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "DEEPFACE_HOME": settings.deepface_home})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    [head, *records] = [json.loads(ln) for ln in report.read_text().splitlines()]
    assert head["images_failed"] == 1 and len(records) == 1
    assert records[0]["path"] == str(folder / "locked.jpg") and records[0]["status"] == "failed"
    assert records[0]["reason"] == "unreadable: permission denied"
    os.chmod(folder / "locked.jpg", 0o644)
    stored = {Path(v["source_path"]).name for v in read_rows(tmp_path / "p.db", "dlib", with_vectors=False).values()}
    assert stored == {"readable.jpg"}


def test_index_file_still_being_written_is_waited_for(tmp_path):
    """Milvus Lite writes a segment's index file in a background thread after a flush, not
    atomically; a load meeting it half-written (seen in a full suite run) is retried until the
    file is complete, then the collection loads with every row."""
    import glob

    from pymilvus.exceptions import MilvusException
    from test_query import fill_synthetic

    from lookalike.ingest.store import Store, transient

    db = str(tmp_path / "x.db")
    with Store(db, profile="lite-hnsw") as store:
        fill_synthetic(store, 300)
        deadline = time.time() + 30
        while not glob.glob(f"{db}/collections/faces_dlib/**/indexes/*.idx", recursive=True):
            assert time.time() < deadline
            time.sleep(0.1)
        time.sleep(0.5)  # Lite's background thread is done with it
        index_file = glob.glob(f"{db}/collections/faces_dlib/**/indexes/*.idx", recursive=True)[0]
        whole = Path(index_file).read_bytes()
        Path(index_file).write_bytes(whole[:64])  # as a reader finds it mid-write
        with pytest.raises(MilvusException) as e:
            store.client.release_collection("faces_dlib")
            store.client.load_collection("faces_dlib")
        assert transient(e.value), e.value
        threading.Timer(0.3, Path(index_file).write_bytes, [whole]).start()  # the writer finishes
        store.build_indexes(["faces_dlib"])
        assert store.count("faces_dlib") == 300


# -- 4. hostile files: one report line each, never the batch they travel in ------------------------
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


FORGED = "evil.jpg\nFORGED.jpg\tFORGED: a fake record.jpg"


def _hostile_folder(root: Path) -> dict:
    """Good photos and hostile files side by side in one folder (so in one batch). Returns the
    good names and, per hostile name, the reason its report record must give."""
    import shutil

    from PIL import Image

    from lookalike.ingest.images import MAX_FILE_BYTES

    root.mkdir(parents=True)
    people = sorted((DATA / "people" / "Tom_Hanks").iterdir())
    good = ["a_good.jpg", "b_good.jpg", "caf\\xe9.jpg"]  # the last one's name holds a backslash
    for name, src in zip(good, people):
        shutil.copy(src, root / name)
    os.mkfifo(root / "z.jpg")
    os.symlink("/dev/zero", root / "zero.jpg")
    os.symlink(root / "nowhere.jpg", root / "dangling.jpg")
    with open(root / "huge.tif", "wb") as f:  # sparse: the size is refused before any read
        f.truncate(MAX_FILE_BYTES + 1)
    (root / "bomb.png").write_bytes(_png_claiming(10_000, 10_000))
    (root / "bigger_bomb.png").write_bytes(_png_claiming(20_000, 20_000))
    data = people[3].read_bytes()
    (root / "corrupt.jpg").write_bytes(data[: len(data) // 3] + b"\xff\xd9")  # still ends with EOI
    (root / FORGED).write_text("not a picture\n")
    bad_name = os.fsencode(root) + b"/caf\xe9.jpg"  # Latin-1 byte: not UTF-8, escapes like good[2]
    shutil.copy(people[4], bad_name)
    Image.fromarray(np.asarray(Image.open(people[5]).convert("RGB").resize((10_000, 10)))).save(root / "strip.png")
    failed = {
        "z.jpg": "unreadable: a named pipe (FIFO), not a regular file: not read",
        "zero.jpg": "unreadable: a character device, not a regular file: not read",
        "dangling.jpg": "unreadable: file not found (or a broken symbolic link)",
        "huge.tif": f"unreadable: file too large ({(MAX_FILE_BYTES + 1) / 1e6:,.0f} MB, the limit is "
                    f"{MAX_FILE_BYTES / 1e6:,.0f} MB)",
        "bomb.png": "image too large: 10000x10000 px (100 MP), the limit is 80 MP",
        "bigger_bomb.png": "image too large: 400 MP, the limit is 80 MP",
        "corrupt.jpg": "corrupt JPEG data (premature end of data segment): part of the picture is missing "
                       "or garbled; repair or re-export it",
        FORGED: "not an image (unrecognised format)",
        os.fsdecode(b"caf\xe9.jpg"): "file name is not valid UTF-8; rename the file",
    }
    return {"good": good, "failed": failed, "noface": ["strip.png"]}


@pytest.mark.slow
def test_hostile_files_cost_one_report_line_each_and_the_good_photos_are_stored(tmp_path):
    root = tmp_path / "hostile"
    expect = _hostile_folder(root)
    db, report = tmp_path / "h.db", tmp_path / "report.jsonl"
    t0 = time.perf_counter()
    r = subprocess.run(_cli("ingest", str(root), "--db", str(db), "--workers", "1", "--batch-size", "32",
                            "--report", str(report), "-q"),
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(f"\nhostile folder ingested in {time.perf_counter() - t0:.0f} s")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Corrupt JPEG" not in r.stderr, r.stderr[-3000:]
    # the report: a summary record, then exactly one record per failed file, names exact
    [head, *lines] = [json.loads(ln) for ln in report.read_bytes().decode("utf-8").splitlines()]
    assert head["format"] == "lookalike-ingest-report/3" and head["images_failed"] == len(expect["failed"])
    records = [rec for rec in lines if rec["status"] != "noface"]
    assert [os.path.basename(rec["path"]) for rec in lines if rec["status"] == "noface"] == expect["noface"]
    got = {os.path.basename(rec["path"]): rec["reason"] for rec in records}
    assert len(records) == len(got) == len(expect["failed"])
    assert got == expect["failed"]
    assert all(rec["status"] == "failed" and os.path.dirname(rec["path"]) == str(root) for rec in records)
    # the good photos of the batch are stored, the one whose name reads like the undecodable one too
    rows = read_rows(db, "dlib", with_vectors=False)
    stored = {Path(v["source_path"]).name for v in rows.values()}
    assert stored == set(expect["good"]), stored
    from lookalike.ingest.pipeline.paths import _ledger_id
    from lookalike.ingest.store import Store
    from lookalike.schemas import LEDGER_COLLECTION

    with Store(str(db)) as store:
        status = {r["id"]: r["status"] for r in store.iterate(LEDGER_COLLECTION, ["id", "status"],
                                                              filter='model == "dlib"')}
    names = os.listdir(os.fsencode(root))
    assert len(status) == len(names) == len(expect["good"]) + len(expect["failed"]) + len(expect["noface"])
    for raw in names:
        name = os.fsdecode(raw)
        want = "done" if name in expect["good"] else "noface" if name in expect["noface"] else "failed"
        assert status[_ledger_id("dlib", os.path.join(str(root), name))] == want, name
    # a second run skips every file, the real `caf\xe9.jpg` photo included
    r = subprocess.run(_cli("ingest", str(root), "--db", str(db), "--workers", "0", "--report", str(report), "-q"),
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and f"{len(names)} already done" in r.stdout, r.stdout + r.stderr[-2000:]
    # query refuses the special files at once, one line, exit 4
    for name in ("z.jpg", "zero.jpg"):
        q = subprocess.run(_cli("query", str(root / name), "--db", str(db)), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert q.returncode == 4, q.stderr[-2000:]
        assert _one_line(q.stderr) == f"lookalike: {root / name}: {expect['failed'][name].split(': ', 1)[1]}"


def test_ctrl_c_stops_an_ingest_with_exit_130_and_no_traceback(tmp_path):
    """Ctrl-C in a terminal signals the whole process group: the driver and its Dask workers."""
    proc = subprocess.Popen(_cli("ingest", str(CELEBA), "--limit", "300", "--workers", "2", "--batch-size", "4",
                                 "--db", str(tmp_path / "c.db"), "--report", str(tmp_path / "r.jsonl")),
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        seen, buf = wait_for_progress(proc, 300, 8, timeout=300)
        assert seen and proc.poll() is None, buf[-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (out, err[-3000:])
    assert "Traceback" not in buf + err and "KeyboardInterrupt" not in buf + err, (buf + err)[-3000:]
    assert "interrupted: re-run the same command to resume" in out
    head = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert head["interrupted"] is True


def test_db_without_the_db_suffix_is_a_usage_error(tmp_path):
    for args in (("stats",), ("ingest", str(CELEBA), "--limit", "1")):
        r = subprocess.run(_cli(*args, "--db", str(tmp_path / "mydb")), cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        line = _one_line(r.stderr)
        assert line.startswith("lookalike: --db") and f"{tmp_path / 'mydb'}: " in line and "must end in .db" in line, line
    assert not (tmp_path / "mydb").exists()


def test_ledger_ids_of_utf8_names_are_those_of_existing_databases():
    """Resume finds a file by its ledger id: for a valid UTF-8 name it is what earlier versions
    wrote (sha1 of the UTF-8 path), and names that differ in any byte get different ids."""
    import hashlib

    from lookalike.ingest.pipeline.paths import _ledger_id, storable

    for name in ("/data/people/Tom_Hanks/x.jpg", "/d/Zoë 李/été 2024.jpg", "/d/a\\xe9.jpg"):
        assert _ledger_id("dlib", name) == "dlib:" + hashlib.sha1(name.encode("utf-8")).hexdigest()
        assert storable(name) == name
    names = [os.fsdecode(b) for b in (b"/d/caf\xe9.jpg", b"/d/caf\\xe9.jpg", b"/d/caf\\\xe9.jpg", b"/d/caf\\\\xe9.jpg")]
    assert len({_ledger_id("dlib", n) for n in names}) == 4
    assert len({storable(n) for n in names if storable(n) != n}) == 2  # the two undecodable ones
