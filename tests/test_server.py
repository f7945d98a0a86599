"""Server mode (issue #8), against a real Milvus 2.3.5 standalone server (tests/milvus_server.py):
cpu profile, Dask workers writing straight to the server, kill -9 and resume, queries equal to
Lite's, an existing Dask scheduler, and the errors of an unreachable or stopped server.

Each test gets a database of its own on the session's server (`--uri http://host:port/<db>`).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, wait_for_progress
from milvus_server import free_port, start_server

import lookalike.ingest.store  # noqa: F401  (ingest.store below)
from lookalike import ingest

pytestmark = pytest.mark.server

CELEBA = DATA / "celeba"
N = 64  # CelebA images ingested into the server (16 batches of 4 over 2 workers)
_db_counter = itertools.count()


def _new_db(server_uri: str, label: str) -> str:
    from pymilvus import MilvusClient

    name = f"t{next(_db_counter)}_{re.sub(r'[^A-Za-z0-9_]', '_', label)[:40]}"
    c = MilvusClient(uri=server_uri)
    try:
        if name not in c.list_databases():
            c.create_database(name)
    finally:
        c.close()
    return f"{server_uri}/{name}"


@pytest.fixture
def server_db(milvus_server, request) -> str:
    """A URI selecting a fresh database of the session's server."""
    return _new_db(milvus_server, request.node.name)


def rows(target: str, model: str = "dlib", vectors: bool = True) -> dict:
    """Every face row (ingest time left out) of a server URI or a Lite .db path, keyed by id."""
    from lookalike.ingest.store import Store
    from lookalike.schemas import OUTPUT_FIELDS, collection_name

    fields = [f for f in OUTPUT_FIELDS if f != "ingested_at"] + (["vector"] if vectors else [])
    store = Store(uri=target) if target.startswith("http") else Store(target)
    with store:
        return {r["id"]: r for r in store.iterate(collection_name(model), fields)}


def ledger(uri: str) -> dict:
    from lookalike.ingest.store import Store
    from lookalike.schemas import LEDGER_COLLECTION

    with Store(uri=uri) as store:
        return {r["source_path"]: r for r in store.iterate(
            LEDGER_COLLECTION, ["source_path", "status", "faces", "reason", "image_sha256", "model"])}


def count_and_distinct(uri: str, model: str = "dlib") -> tuple:
    """count(*) as the server reports it, and the number of distinct ids it returns."""
    from lookalike.ingest.store import Store
    from lookalike.schemas import collection_name

    with Store(uri=uri) as store:
        name = collection_name(model)
        ids = [r["id"] for r in store.iterate(name, ["id"])]
        return store.count(name), len(ids), len(set(ids))


def _known(row: dict) -> dict:
    """A row with unknown attributes as None: Milvus 2.3 has no nullable fields and stores them as
    false beside has_attributes == false (the documented equivalent of Lite's null)."""
    from lookalike.schemas import ATTRIBUTES

    out = {f: v for f, v in row.items() if f != "vector"}
    if not out.get("has_attributes", True):
        assert all(out[a] in (None, False) for a in ATTRIBUTES if a in out)
        out.update({a: None for a in ATTRIBUTES if a in out})
    return out


def same_rows(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        assert _known(g) == _known(w), k
        np.testing.assert_allclose(g["vector"], w["vector"], atol=1e-5)


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lookalike.query.app.cli", *args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 600), **kw)


@pytest.fixture(scope="module")
def server_ingest(milvus_server, settings, tmp_path_factory):
    """The CelebA sample's first N images ingested into the server by 2 Dask workers."""
    uri = _new_db(milvus_server, "ingest")
    report = tmp_path_factory.mktemp("server_ingest") / "report.txt"
    t0 = time.perf_counter()
    summary = ingest.run(str(CELEBA), limit=N, workers=2, batch_size=4, progress=False,
                         settings=settings.with_(uri=uri), report=str(report))
    print(f"\n[server] {N} images, 2 workers writing: {time.perf_counter() - t0:.1f} s wall "
          f"({summary.images_per_second:.1f} img/s after warm-up)")
    return uri, summary


# -- (a) cpu profile --------------------------------------------------------------------------------
def test_cpu_profile_creates_hnsw_collections(server_db):
    from lookalike.ingest.store import Store

    with Store(uri=server_db) as store:
        assert store.server and store.profile.name == "cpu"  # the default profile of --uri
        store.ensure_collection("dlib")
        store.ensure_ledger()
        stats = {s.name: s for s in store.stats()}
        ledger_index = store.index_type("lookalike_images")
    assert stats["faces_dlib"].index_type == "HNSW" and stats["faces_dlib"].metric == "IP"
    assert stats["faces_dlib"].dim == 128 and stats["faces_dlib"].rows == 0
    assert "lookalike_images" not in stats and ledger_index == "FLAT"  # the ledger is no face collection
    r = _cli("stats", "--uri", server_db)
    assert r.returncode == 0, r.stderr
    assert re.search(r"faces_dlib\s+dlib\s+0\s+128\s+HNSW \(IP\)", r.stdout), r.stdout
    # a profile the server cannot honour for an existing collection is refused, not mixed
    with pytest.raises(ingest.store.StoreError, match="index is HNSW"):
        Store(uri=server_db, profile="gpu").ensure_collection("dlib")


# -- (b) Dask workers write straight to the server ----------------------------------------------------
def test_workers_write_to_the_server_and_counts_match_the_ledger(server_ingest, settings):
    uri, s = server_ingest
    assert s.images_seen == N and s.images_failed == 0 and s.images_skipped == 0
    # the batches were written by both worker processes, not by this (the driver's) process
    assert len(s.worker_peak_rss) == 2 and os.getpid() not in s.worker_peak_rss
    got = rows(uri, vectors=False)
    led = ledger(uri)
    assert len(led) == N and all(r["status"] in ("done", "noface") for r in led.values())
    assert len(got) == sum(r["faces"] for r in led.values() if r["status"] == "done") == s.faces_stored
    count, n_ids, distinct = count_and_distinct(uri)
    assert count == n_ids == distinct == len(got)
    for r in got.values():
        assert r["id"] == f"{r['image_sha256']}_{r['face_index']}"
    # the annotation went to each photo's subject, as on Lite
    assert sum(1 for r in got.values() if r["has_attributes"]) == s.images_done
    # an unchanged re-run (a resume with nothing left) skips everything and writes nothing
    again = ingest.run(str(CELEBA), limit=N, workers=0, progress=False, settings=settings.with_(uri=uri),
                       report=os.devnull)
    assert again.images_skipped == N and again.faces_stored == 0
    assert count_and_distinct(uri)[0] == count


# -- (c) kill -9 mid-run, then resume ------------------------------------------------------------------
def test_kill_9_driver_mid_run_then_resume(server_ingest, server_db, tmp_path):
    expected = rows(server_ingest[0])
    rng = np.random.default_rng(int(os.environ.get("LOOKALIKE_TEST_SEED", "8")))
    wanted = int(rng.integers(8, N - 16))
    args = ["ingest", str(CELEBA), "--limit", str(N), "--uri", server_db, "--workers", "2",
            "--batch-size", "4", "--report", str(tmp_path / "r.txt")]
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.query.app.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen, buf = wait_for_progress(proc, N, wanted)
        time.sleep(float(rng.uniform(0, 0.5)))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the driver ...
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # ... and its orphaned Dask workers with it
        proc.wait()
    assert seen >= wanted, f"the run never got to {wanted} images: {buf[-500:]}"
    partial = len(ledger(server_db))
    assert partial < N, "killed too late to test a resume"
    r = _cli(*args[:-2], "--report", str(tmp_path / "r2.txt"), "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{partial} already done" in r.stdout, r.stdout
    same_rows(rows(server_db), expected)
    count, n_ids, distinct = count_and_distinct(server_db)
    assert count == n_ids == distinct == len(expected), (count, n_ids, distinct)
    led = ledger(server_db)
    assert len(led) == N and all(v["status"] in ("done", "noface") for v in led.values())


# -- (d) same answers as Lite ---------------------------------------------------------------------------
def test_filtered_queries_match_a_lite_ingest_of_the_same_images(server_ingest, settings, tmp_path):
    from lookalike.query import Searcher

    uri, _ = server_ingest
    lite = tmp_path / "lite.db"
    s = ingest.run(str(CELEBA), limit=N, workers=0, progress=False, settings=settings.with_(db=str(lite)),
                   report=str(tmp_path / "r.txt"))
    assert s.images_failed == 0
    same_rows(rows(uri), rows(str(lite)))
    photos = [p for p in sorted((CELEBA / "img_celeba").iterdir())][:3] + \
        [DATA / "groups" / "photos" / "obama_and_biden.jpg"]
    filters = [None, "has_attributes == true and Male == false", 'Smiling == true or identity in ["2880", "1"]',
               'source_path != "x\\") or (1 == 1"']
    compared = 0
    with Searcher(settings.with_(uri=uri)) as on_server, Searcher(settings.with_(db=str(lite))) as on_lite:
        for photo, flt in itertools.product(photos, filters):
            a = on_server.search_photo(photo, top_k=5, filter=flt)
            b = on_lite.search_photo(photo, top_k=5, filter=flt)
            assert len(a.faces) == len(b.faces) >= 1
            for fa, fb in zip(a.faces, b.faces):
                ma, mb = fa.matches, fb.matches
                assert [m.id for m in ma] == [m.id for m in mb], (photo.name, flt, fa.index)
                assert [m.identity for m in ma] == [m.identity for m in mb]
                np.testing.assert_allclose([m.score for m in ma], [m.score for m in mb], atol=1e-4)
                compared += len(ma)
    assert compared > 50


# -- (e) an existing Dask cluster --------------------------------------------------------------------
def test_ingest_through_an_existing_dask_scheduler(server_ingest, server_db, tmp_path, settings):
    from lookalike.ingest.settings import thread_env

    bindir = Path(sys.executable).parent
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, **thread_env(1))
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(bindir / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                 "--no-dashboard", "--host", "127.0.0.1"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        from distributed import Client

        with Client(address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=120)
            worker_pids = set(c.run(os.getpid).values())
        n = 16
        s = ingest.run(str(CELEBA), limit=n, scheduler=address, batch_size=4, progress=False,
                       settings=settings.with_(uri=server_db), report=str(tmp_path / "r.txt"))
        assert s.images_seen == n and s.images_failed == 0
        assert set(s.worker_peak_rss) <= worker_pids and len(s.worker_peak_rss) == 2
        got = rows(server_db)
        first = {str(p) for p in list(ledger(server_db))}
        assert len(first) == n
        want = {k: v for k, v in rows(server_ingest[0]).items() if v["source_path"] in first}
        same_rows(got, want)
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


# -- (f) unreachable and failing servers ------------------------------------------------------------
def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 6, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lookalike: "), r.stderr
    return lines[0]


def test_unreachable_server_gives_one_line_and_exit_6(tmp_path):
    port = free_port()  # nothing listens there: connection refused
    # bounded: the command's own timeouts answer well inside these (a hang would raise TimeoutExpired)
    r = _cli("ingest", str(CELEBA), "--limit", "4", "--uri", f"http://127.0.0.1:{port}", "--workers", "0",
             "-q", "--report", str(tmp_path / "r.txt"), timeout=30)
    line = _one_line_error(r)
    assert f"127.0.0.1:{port}" in line and "cannot open Milvus" in line
    # a port that accepts connections but never answers (a hung server, a wrong service)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        r = _cli("stats", "--uri", f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=45)
        line = _one_line_error(r)
    assert "cannot open Milvus" in line


def test_server_killed_mid_run_gives_up_after_bounded_retries_then_resume_completes(server_ingest, tmp_path):
    """The server crashes (kill -9) under a 2-worker ingest: the writers retry with backoff
    (ingest.store._retry, bounded here to 10 s a call), then the run stops with one line and exit
    6; after a restart the same command completes with the uninterrupted result. A private server:
    stopping the session's would disturb the other tests."""
    expected = rows(server_ingest[0], vectors=False)
    server = start_server(tmp_path / "private-server")
    try:
        args = ["ingest", str(CELEBA), "--limit", str(N), "--uri", server.uri, "--workers", "2",
                "--batch-size", "4", "--report", str(tmp_path / "r.txt")]
        env = dict(os.environ, LOOKALIKE_MILVUS_RETRY_SECONDS="10")
        proc = subprocess.Popen([sys.executable, "-m", "lookalike.query.app.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
        assert proc.stderr is not None  # PIPE
        buf = ""
        while True:
            ch = proc.stderr.read(1)
            if not ch:
                break
            buf += ch
            got = re.findall(rf"(\d+)/{N}", buf[-80:])
            if got and int(got[-1]) >= 12:
                break
        server.stop(signal.SIGKILL)
        try:  # bounded: the writers' retry budget (10 s a call) ends the run well inside this
            out, err = proc.communicate(timeout=90)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        err = buf + err
        assert proc.returncode == 6, (proc.returncode, err[-2000:])
        assert "Traceback" not in err
        last = [ln for ln in err.splitlines() if ln.strip()][-1]
        assert last.startswith("lookalike: ") and "unavailable, gave up after" in last, last
        server.start()
        r = _cli(*args, "-q")
        assert r.returncode == 0, r.stderr[-2000:]
        stored = rows(server.uri, vectors=False)
        assert stored == expected
        count, n_ids, distinct = count_and_distinct(server.uri)
        assert count == n_ids == distinct == len(expected)
    finally:
        server.stop()
