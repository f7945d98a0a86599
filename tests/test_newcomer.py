"""What a newcomer trips over (ingest side): a failed model load leaves no empty collection and
the default query model skips one; `stats` lists face collections only; a plain run prints the
progress bar and the summary and nothing else, its bar ending on the summary's face count; a dlib
query does not import TensorFlow; every embedder says which explanations it supports.

Real parts: Milvus Lite files, the sample images, DeepFace's YuNet and dlib's weights, Dask."""
from __future__ import annotations

import errno
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA

from lookalike import ingest
from lookalike.ingest.models import WeightsMissing
from lookalike.ingest.store import Store
from lookalike.schemas import LEDGER_COLLECTION, collection_name

PEOPLE = DATA / "people"
NO_FACE = DATA / "groups" / "photos" / "no-faces.jpg"
QUERY_PHOTO = PEOPLE / "biden" / "biden.jpg"


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "lookalike.query.app.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _gallery(root: Path) -> Path:
    """Six photos with faces, one without, one that is not an image."""
    src = root / "gallery"
    for person in ("obama", "biden", "Keanu_Reeves"):
        (src / person).mkdir(parents=True)
        for p in sorted((PEOPLE / person).iterdir())[:2]:
            shutil.copy(p, src / person / p.name)
    shutil.copy(NO_FACE, src / NO_FACE.name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return src


# pymilvus pings every 10 s; Milvus Lite's gRPC server answered a minute or so of that on an idle
# connection with a "too_many_pings" GOAWAY, which gRPC's C core logs to stderr (seen after 65 to
# 80 s idle, never after 50). The idle client holds its connection open, with no sleep of its own,
# while the module's other tests run (several minutes of ingests and queries); the last test
# closes its stdin, then it uses the connection once more and says what it saw.
IDLE_CLIENT = """
import sys, time
from lookalike.ingest.store import Store
from lookalike.schemas import LEDGER_COLLECTION
with Store({db!r}) as store:
    store.ensure_ledger()
    t0 = time.monotonic()
    sys.stdin.read()
    assert store.count(LEDGER_COLLECTION) == 0
    print(round(time.monotonic() - t0))
"""


@pytest.fixture(scope="module", autouse=True)
def idle_client(tmp_path_factory):
    db = tmp_path_factory.mktemp("idle") / "idle.db"
    p = subprocess.Popen([sys.executable, "-c", IDLE_CLIENT.format(db=str(db))], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield p
    if p.poll() is None:
        p.kill()
        p.communicate()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    return _gallery(tmp_path_factory.mktemp("newcomer"))


@pytest.fixture(scope="module")
def dlib_db(tmp_path_factory, gallery, settings):
    db = tmp_path_factory.mktemp("dlibdb") / "faces.db"
    summary = ingest.run(str(gallery), workers=0, progress=False, settings=settings.with_(db=str(db)),
                         report=str(db.parent / "report.jsonl"))
    assert summary.models == ["dlib"] and summary.faces_stored >= 6
    return db, summary


# -- 1. a model that cannot load leaves no collection; the default query skips empty ones --------
def test_missing_weights_leave_no_collection_in_process(tmp_path, gallery, settings):
    db = tmp_path / "f.db"
    with pytest.raises(WeightsMissing, match="facenet_weights.h5"):
        ingest.run(str(gallery), models="facenet", workers=0, progress=False, settings=settings.with_(db=str(db)),
                   report=str(tmp_path / "r.jsonl"))
    with Store(str(db)) as store:
        assert store.face_collections() == []
        assert store.models() == []


def test_missing_weights_leave_no_collection_on_dask(tmp_path, gallery, dlib_db):
    """`lookalike ingest --models facenet` without FaceNet's weights, on the Dask path, into a
    database that holds dlib faces: exit 5 with one line, and the database as it was."""
    db = tmp_path / "f.db"
    shutil.copytree(dlib_db[0], db)
    p = _cli("ingest", gallery, "--db", db, "--models", "facenet", "--workers", "1",
             "--report", tmp_path / "r.jsonl")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 5, err
    assert "facenet_weights.h5" in err.strip().splitlines()[-1]
    with Store(str(db)) as store:
        assert store.face_collections() == [collection_name("dlib")]


def _with_facenet(src: Path, dst: Path, rows: bool) -> Path:
    """A copy of a dlib database plus a faces_facenet collection: empty (what a failed run of an
    earlier version left) or holding rows (stored where FaceNet's weights were; 128-d like dlib)."""
    shutil.copytree(src, dst)
    with Store(str(dst)) as store:
        store.ensure_collection("facenet", source="deepface:Facenet")
        got = []
        if rows:
            dlib = collection_name("dlib")
            got = list(store.iterate(dlib, store.field_names(dlib) + ["vector"]))
            store.upsert_faces("facenet", got)
        assert store.count(collection_name("facenet")) == len(got)
    return dst


@pytest.mark.parametrize("rows", [False, True], ids=["empty", "no-weights"])
def test_default_query_model_skips_unusable_collections(tmp_path, dlib_db, settings, rows):
    """facenet comes first in the default order; an empty collection, or one whose weights are
    not on this machine, is passed over for dlib, and the query does not import TensorFlow (it
    loaded FaceNet's Keras model, to fail, before). An explicit --model facenet is still obeyed."""
    db = _with_facenet(dlib_db[0], tmp_path / "q.db", rows)
    from lookalike.query.search import Searcher

    with Searcher(settings.with_(db=str(db))) as s:
        assert s.resolve_models() == ["dlib"]
        assert s.resolve_models("facenet") == ["facenet"]
    code = ("import sys\n"
            "from lookalike.query.search import search_photo\n"
            f"r = search_photo({str(QUERY_PHOTO)!r}, db={str(db)!r}, top_k=2)\n"
            "assert r.models == ['dlib'] and r.faces and r.faces[0].matches, r\n"
            "assert 'tensorflow' not in sys.modules, 'a dlib query imported tensorflow'\n"
            "assert 'keras' not in sys.modules and 'tf_keras' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr


def test_only_a_weightless_collection_is_still_chosen(tmp_path, dlib_db, settings):
    """With nothing better the default is the collection with faces, whose search then names the
    missing weights (not "no collection")."""
    db = _with_facenet(dlib_db[0], tmp_path / "only.db", rows=True)
    with Store(str(db)) as store:
        store.client.drop_collection(collection_name("dlib"))
    from lookalike.query.search import Searcher

    with Searcher(settings.with_(db=str(db))) as s:
        assert s.resolve_models() == ["facenet"]


# -- 2. stats: face collections only, the ledger as photo counts -----------------------------------
def test_stats_lists_face_collections_only(dlib_db):
    db, summary = dlib_db
    with Store(str(db)) as store:
        assert store.has_collection(LEDGER_COLLECTION)
        stats = store.stats()
        counts = store.ledger_counts()
    assert [s.name for s in stats] == [collection_name("dlib")]
    assert stats[0].rows == summary.faces_stored and stats[0].dim == 128
    assert counts == {"dlib": {"done": summary.images_done, "noface": summary.images_noface,
                               "failed": summary.images_failed}}
    assert summary.images_noface == 1 and summary.images_failed == 1
    out, err = _cli("stats", "--db", db).communicate(timeout=300)
    assert LEDGER_COLLECTION not in out and " 2  FLAT" not in out, out
    assert out.splitlines()[1:] == [
        f"{'faces_dlib':<22} {'dlib':<12} {summary.faces_stored:>9} {128:>5}  FLAT (IP)",
        f"photos dlib: {summary.images_done} with faces, 1 without a face, 1 failed"], out


# -- 3, 4. a plain run prints the bar and the summary, and nothing else ----------------------------
SUMMARY_KEYS = ("source", "models", "images", "faces", "wall time", "failed", "report")


def _hold_port(port: int):
    """Listen on `port` unless something already does: either way a cluster cannot have it."""
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port))
        s.listen(1)
        return s
    except OSError as e:
        s.close()
        if e.errno != errno.EADDRINUSE:
            raise
        return None


def test_plain_runs_print_the_bar_and_the_summary_only(tmp_path, gallery):
    """Two ingests at once with Dask's dashboard port taken (by the test, or by someone else):
    stderr holds progress bar updates only, stdout the summary only, and the bar's last face count
    is the summary's, which is what the database holds."""
    held = _hold_port(8787)
    try:
        procs = [_cli("ingest", gallery, "--db", tmp_path / f"run{i}.db", "--report", tmp_path / f"r{i}.jsonl",
                      *extra) for i, extra in enumerate([(), ("--workers", "2")])]
        results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    finally:
        if held is not None:
            held.close()
    for i, (out, err, code) in enumerate(results):
        assert code == 0, err
        pieces = [x for x in re.split(r"[\r\n]+", err) if x.strip()]
        assert pieces and all(x.startswith("ingest: ") for x in pieces), err
        # the summary, with its "failed" line (broken.jpg)
        assert [ln.split("  ")[0] for ln in out.splitlines()] == list(SUMMARY_KEYS), out
        m = re.search(r"^faces\s+(\d+) stored", out, re.M)
        assert m, out
        stored = int(m.group(1))
        m = re.search(r"faces=(\d+)", pieces[-1])
        assert m and m.group(1) == str(stored), pieces[-1]
        with Store(str(tmp_path / f"run{i}.db")) as store:
            assert [(s.name, s.rows) for s in store.stats()] == [(collection_name("dlib"), stored)]
        report = [json.loads(x) for x in (tmp_path / f"r{i}.jsonl").read_text().splitlines()]
        assert report[0]["faces_stored"] == stored and report[1]["path"].endswith("broken.jpg")


# -- 4. TensorFlow's own loading lines -------------------------------------------------------------
def test_tensorflow_loads_without_a_word():
    """Where FaceNet loads (a worker, a query), TensorFlow's native libraries would log "could not
    find cuda drivers" and a oneDNN notice to stderr whatever TF_CPP_MIN_LOG_LEVEL says."""
    code = ("from lookalike.ingest.models import import_tensorflow\n"
            "tf = import_tensorflow()\n"
            "assert int(tf.constant(2) + 1) == 3\n"
            "import sys; print('still here', file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "still here\n", r.stderr


# -- 6. embedders say which explanations they support ------------------------------------------------
def test_embedders_declare_their_explanation_methods(settings):
    from lookalike.ingest.models import ClipEmbedder, DeepFaceEmbedder, Dinov2Embedder, DlibEmbedder, make_embedder
    from lookalike.query import explain as X

    every = ("occlusion", "gradcam", "attention", "layers")
    # dlib's torch port has gradients (the onnx engine loads it for them); dlib's own C++ network does not
    dlib_methods = ("occlusion", "gradcam", "layers") if settings.dlib_engine in ("torch", "onnx") else ("occlusion",)
    kinds = {"dlib": (DlibEmbedder, dlib_methods),
             "facenet": (DeepFaceEmbedder, ("occlusion", "gradcam", "layers")),
             "clip": (ClipEmbedder, every), "dinov2_l3": (Dinov2Embedder, every)}
    for key, (cls, methods) in kinds.items():
        emb = make_embedder(key, settings)
        assert type(emb) is cls and set(emb.explain_methods) == set(methods)
        for m in every:
            why = X.available(m, emb)
            assert (why is None) == (m in methods), (key, m, why)
            assert why is None or ("\n" not in why and f"{m} is not available for {key}" in why)
    # explain.py asks the embedder: a model that drops a method is not offered it
    dino = make_embedder("dinov2", settings)
    dino.explain_methods = ("occlusion", "layers")
    assert X.available("attention", dino) and X.available("gradcam", dino)
    assert X.available("layers", dino) is None
    # the C++ engine is offered occlusion only, whatever the default
    cpp = make_embedder("dlib", settings.model_copy(update={"dlib_engine": "dlib"}))
    assert set(cpp.explain_methods) == {"occlusion"} and X.available("gradcam", cpp)


# -- 4. an idle Milvus Lite connection ---------------------------------------------------------------
def test_an_idle_lite_connection_says_nothing(idle_client):
    out, err = idle_client.communicate("", timeout=120)
    assert idle_client.returncode == 0, err
    assert err == "", err


HOLDER = """
import sys
from lookalike.ingest.store import Store
with Store({db!r}) as store:
    store.ensure_ledger()
    print("open", flush=True)
    sys.stdin.read()
"""


def test_serve_on_a_database_in_use_is_one_line_and_exit_6_before_announcing(tmp_path):
    """As query and stats do: Milvus Lite opens a database in one process at a time."""
    db = tmp_path / "held.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(db=str(db))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        from milvus_server import free_port

        serve = _cli("serve", "--db", db, "--port", free_port(), "--no-warm")
        out, err = serve.communicate(timeout=120)
        assert serve.returncode == 6, err
        assert out == "" and len(err.strip().splitlines()) == 1 and "in use by another process" in err, err
    finally:
        holder.communicate(input="", timeout=60)


@pytest.mark.parametrize("command", [["stats"], ["stats", "--json"], ["eval", "head"], ["train-head"]])
def test_read_only_commands_do_not_create_a_mistyped_database(tmp_path, command):
    db = tmp_path / "typo.db"
    p = _cli(*command, "--db", db)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, (out, err)
    assert f"database {db} does not exist" in err and len(err.strip().splitlines()) == 1, err
    assert not db.exists()


# -- an empty source, a source where every file fails -----------------------------------------------
def test_ingest_of_an_empty_folder_is_a_usage_error_and_creates_nothing(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not a photo\n")
    db = tmp_path / "e.db"
    p = _cli("ingest", empty, "--db", db, "-q")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, (out, err)
    assert out == "" and err.strip() == f"lookalike: {empty}: no image in it, nothing to ingest", err
    assert not db.exists() and not (tmp_path / "e.reports").exists()


def test_ingest_where_every_file_fails_says_so_and_exits_4(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("not a picture\n")
    (bad / "b.png").write_bytes(b"")
    report = tmp_path / "r.jsonl"
    p = _cli("ingest", bad, "--db", tmp_path / "b.db", "--workers", "0", "--report", report, "-q")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 4, (out, err)
    assert re.search(r"^images\s+2 seen: 0 with faces, 0 without a face, 0 already done, 2 failed$", out, re.M), out
    assert err.strip() == f"lookalike: every photo of {bad} failed (2); the reasons are in {report}", err
    assert [json.loads(x)["status"] for x in report.read_text().splitlines()[1:]] == ["failed", "failed"]


# -- the run report: one per run, beside the database, photos without a face listed -----------------
def test_each_run_keeps_its_own_report_beside_the_database(tmp_path, gallery, settings):
    import time

    db = tmp_path / "albums" / "mine.db"
    db.parent.mkdir()
    s = settings.with_(db=str(db))
    first = ingest.run(str(gallery), workers=0, progress=False, settings=s)
    t0 = time.perf_counter()
    second = ingest.run(str(gallery), workers=0, progress=False, settings=s)  # a resume: all done
    took = time.perf_counter() - t0
    reports = sorted((tmp_path / "albums" / "mine.reports").iterdir())
    assert first.report_path is not None and second.report_path is not None
    assert [str(p) for p in reports] == sorted([first.report_path, second.report_path]), reports
    assert all(re.fullmatch(r"ingest-\d{8}-\d{6}-gallery(-\d+)?\.jsonl", p.name) for p in reports), reports
    records = [json.loads(x) for x in Path(first.report_path).read_text().splitlines()]
    assert records[0]["format"] == "lookalike-ingest-report/3"
    assert {(Path(r["path"]).name, r["status"]) for r in records[1:]} == {("broken.jpg", "failed"),
                                                                          (NO_FACE.name, "noface")}
    # the resumed run's wall time is the whole call's (it was "0.0 s": only the photos' part counted)
    assert second.images_skipped == 8 and second.work_seconds <= second.wall_seconds <= took
    assert second.wall_seconds >= 0.5 * took, (second.wall_seconds, took)
    line = next(x for x in second.lines() if x.startswith("wall time"))
    assert line == f"wall time   {second.wall_seconds:.1f} s"


# -- the bar's face count moves with the photos, not with the writer's commits -----------------------
def test_the_bars_face_count_follows_the_photos_analysed(tmp_path, gallery, settings, capfd):
    """The writer commits every few seconds (here: only at the end); the bar counted committed faces,
    so it stood still between commits."""
    s = settings.with_(db=str(tmp_path / "bar.db"), commit_seconds=3600)
    summary = ingest.run(str(gallery), workers=0, batch_size=1, progress=True, settings=s,
                         report=str(tmp_path / "r.jsonl"))
    err = capfd.readouterr().err
    seen = [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"\| (\d+)/8 .*?faces=(\d+)", err)]
    assert seen and seen[-1] == (8, summary.faces_stored), err[-2000:]
    before_the_end = [faces for n, faces in seen if n < 8]
    assert before_the_end and max(before_the_end) > 0, seen  # it moved before the one commit
    assert [f for _, f in seen] == sorted(f for _, f in seen), seen
