"""Ingestion end to end: real images, real DeepFace models, real Milvus Lite, real Dask."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, read_ledger, read_rows, wait_for_progress

from lookalike import ingest
from lookalike.schemas import ATTRIBUTES, CELEBA_ATTRIBUTE_NAMES, MODELS

CELEBA = DATA / "celeba"
N_CELEBA = 24


def celeba_annotations():
    ids = {}
    for line in open(CELEBA / "identity_CelebA.txt"):
        p = line.split()
        if len(p) == 2 and p[1].isdigit():
            ids[p[0]] = p[1]
    attrs = {}
    with open(CELEBA / "list_attr_celeba.txt") as f:
        f.readline()
        names = f.readline().split()
        for line in f:
            p = line.split()
            attrs[p[0]] = dict(zip(names, (v == "1" for v in p[1:])))
    return ids, attrs


@pytest.fixture(scope="module")
def celeba_db(tmp_path_factory, settings):
    db = tmp_path_factory.mktemp("celeba") / "faces.db"
    summary = ingest.run(str(CELEBA), limit=N_CELEBA, workers=0, progress=False,
                         settings=settings.with_(db=str(db)), report=str(db.parent / "report.txt"))
    return db, summary


def test_celeba_rows_match_annotations(celeba_db):
    db, summary = celeba_db
    assert summary.images_seen == N_CELEBA
    assert summary.images_failed == 0
    assert summary.models == ["dlib"]  # no FaceNet weights on this machine: the documented fallback
    rows = read_rows(db, "dlib")
    ledger = read_ledger(db)
    assert len(ledger) == N_CELEBA
    # one row per detected face, as the ledger counted them
    assert len(rows) == sum(r["faces"] for r in ledger.values()) == summary.faces_stored
    assert summary.images_done >= N_CELEBA - 2  # CelebA photos are portraits
    ids, attrs = celeba_annotations()
    by_image: dict[str, list[dict]] = {}
    for row in rows.values():
        by_image.setdefault(row["image_sha256"], []).append(row)
    for faces in by_image.values():
        # the annotation describes the photo's subject: the largest face; bystanders get none
        subject = max(faces, key=lambda r: r["box_w"] * r["box_h"])
        for row in faces:
            if row is not subject:
                assert row["identity"] == "" and row["has_attributes"] is False and row["Male"] is None  # unknown: null
    for row in (max(f, key=lambda r: r["box_w"] * r["box_h"]) for f in by_image.values()):
        name = Path(row["source_path"]).name
        assert row["identity"] == ids[name]
        assert row["has_attributes"] is True
        for celeba_name in CELEBA_ATTRIBUTE_NAMES:
            field = "Five_o_Clock_Shadow" if celeba_name == "5_o_Clock_Shadow" else celeba_name
            assert row[field] == attrs[name][celeba_name], (name, celeba_name)
    for row in rows.values():
        assert row["id"] == f"{row['image_sha256']}_{row['face_index']}"
        v = np.asarray(row["vector"], dtype=np.float64)
        assert v.shape == (MODELS["dlib"].dim,)
        assert abs(np.linalg.norm(v) - 1) < 1e-4
        assert row["box_w"] > 20 and row["box_h"] > 20 and 0 < row["confidence"] <= 1
        assert row["detector"] == "yunet"
        import hashlib

        assert hashlib.sha256(Path(row["source_path"]).read_bytes()).hexdigest() == row["image_sha256"]


def test_rerun_is_idempotent(celeba_db, settings):
    db, _ = celeba_db
    before = read_rows(db, "dlib")
    summary = ingest.run(str(CELEBA), limit=N_CELEBA, workers=0, progress=False,
                         settings=settings.with_(db=str(db)), report=str(db.parent / "report2.txt"))
    assert summary.images_skipped == N_CELEBA and summary.faces_stored == 0
    after = read_rows(db, "dlib")
    assert after.keys() == before.keys()
    for k in before:
        assert after[k] == before[k]


def test_same_pictures_again_under_other_names_are_not_duplicated(celeba_db, settings, tmp_path):
    """Re-ingesting identical bytes under new paths (another folder) adds no face rows."""
    db, _ = celeba_db
    before = read_rows(db, "dlib", with_vectors=False)
    copies = tmp_path / "copies" / "someone"
    copies.mkdir(parents=True)
    for p in sorted((CELEBA / "img_celeba").iterdir())[:3]:
        shutil.copy(p, copies / f"copy_{p.name}")
    # the ledger holds the copies; the face rows stay keyed by content
    work = tmp_path / "db.db"
    shutil.copytree(db, work)
    summary = ingest.run(str(copies.parent), workers=0, progress=False, settings=settings.with_(db=str(work)),
                         report=str(tmp_path / "r.txt"))
    assert summary.images_done == 3
    after = read_rows(work, "dlib", with_vectors=False)
    assert after.keys() == before.keys()
    ledger = read_ledger(work)
    assert all(ledger[str(p)]["status"] == "done" for p in copies.iterdir())


def test_two_workers_give_the_same_rows_as_one(tmp_path, settings):
    src = tmp_path / "list.txt"
    photos = sorted((CELEBA / "img_celeba").iterdir())[:10] + sorted((DATA / "groups" / "photos").iterdir())[:4]
    src.write_text("\n".join(str(p) for p in photos))
    rows = {}
    for workers in (1, 2):
        db = tmp_path / f"w{workers}.db"
        s = ingest.run(str(src), workers=workers, batch_size=3, progress=False,
                       settings=settings.with_(db=str(db)), report=str(tmp_path / f"r{workers}.txt"))
        assert s.images_failed == 0
        assert 1 <= len(s.worker_peak_rss) <= workers
        rows[workers] = read_rows(db, "dlib")
    assert rows[1].keys() == rows[2].keys() and len(rows[1]) >= 14
    for k, r in rows[1].items():
        r2 = rows[2][k]
        assert {f: v for f, v in r.items() if f != "vector"} == {f: v for f, v in r2.items() if f != "vector"}
        np.testing.assert_allclose(r["vector"], r2["vector"], atol=1e-6)


def _bad_folder(root: Path) -> dict:
    """Good photos mixed with files that must be reported, not stored."""
    good = root / "person_a"
    good.mkdir(parents=True)
    for p in sorted((DATA / "people" / "Tom_Hanks").iterdir())[:3]:
        shutil.copy(p, good / p.name)
    bad = root / "junk"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("this is not a picture\n")
    data = (DATA / "people" / "Tom_Hanks" / sorted(os.listdir(DATA / "people" / "Tom_Hanks"))[0]).read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    shutil.copy(DATA / "groups" / "photos" / "no-faces.jpg", bad / "landscape.jpg")
    return {"good": 3, "failed": {"empty.jpg", "notes.jpg"}, "noface": {"landscape.jpg"}}


def test_bad_files_are_reported_and_the_rest_ingested(tmp_path, settings):
    expect = _bad_folder(tmp_path / "photos")
    db = tmp_path / "bad.db"
    report = tmp_path / "report.txt"
    s = ingest.run(str(tmp_path / "photos"), workers=0, progress=False, settings=settings.with_(db=str(db)),
                   report=str(report))
    assert s.images_seen == 7
    failed = {Path(p).name: reason for p, reason in s.failures}
    assert expect["failed"] <= set(failed), failed
    assert "empty" in failed["empty.jpg"] and "not an image" in failed["notes.jpg"]
    # a truncated JPEG either decodes partially (PIL pads it) or is reported; never crashes
    records = [json.loads(line) for line in report.read_text().splitlines()[1:]]
    assert {Path(r["path"]).name: r["reason"] for r in records if r["status"] == "failed"} == failed
    # the photos read without a face are listed too (a user looks for them in the report)
    nofaces = {Path(r["path"]).name for r in records if r["status"] == "noface"}
    assert nofaces == {Path(p).name for p in s.nofaces}
    assert "landscape.jpg" in nofaces and nofaces <= {"landscape.jpg", "truncated.jpg"}
    assert {r["status"] for r in records} == {"failed", "noface"}
    ledger = {Path(p).name: r for p, r in read_ledger(db).items()}
    assert ledger["landscape.jpg"]["status"] == "noface"
    rows = read_rows(db, "dlib", with_vectors=False)
    assert {r["identity"] for r in rows.values()} - {""} == {"person_a"}
    assert sum(1 for r in rows.values() if r["identity"] == "person_a") >= expect["good"]
    assert all(r["has_attributes"] is False and r["Smiling"] is None for r in rows.values())
    # a second run skips the failed files too (they are in the ledger), and loses nothing
    s2 = ingest.run(str(tmp_path / "photos"), workers=0, progress=False, settings=settings.with_(db=str(db)),
                    report=str(report))
    assert s2.images_skipped == 7
    assert read_rows(db, "dlib", with_vectors=False) == rows


def _lookalike(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lookalike.query.app.cli", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def test_a_finished_ingest_leaves_the_database_to_other_processes(tmp_path, settings):
    """pymilvus keeps Milvus Lite's server (and the folder's lock, and its background index
    writes) for the life of the process; ingest.run() closes the database when it returns, so a
    notebook can ingest and then query from the command line. A Store still open keeps it."""
    from lookalike.ingest.store import Store

    src = tmp_path / "list.txt"
    src.write_text("\n".join(str(p) for p in sorted((CELEBA / "img_celeba").iterdir())[:3]))
    db = tmp_path / "shared.db"
    ingest.run(str(src), workers=0, progress=False, settings=settings.with_(db=str(db)), report=str(tmp_path / "r.txt"))
    held = Store(str(db))
    r = _lookalike("stats", "--db", str(db))
    assert r.returncode != 0 and "in use by another process" in r.stderr, r.stderr
    held.close()
    r = _lookalike("stats", "--db", str(db))
    assert r.returncode == 0 and "faces_dlib" in r.stdout, r.stderr


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, settings):
    photos = sorted((CELEBA / "img_celeba").iterdir())[:16]
    src = tmp_path / "list.txt"
    src.write_text("\n".join(str(p) for p in photos))
    clean = tmp_path / "clean.db"
    ingest.run(str(src), workers=0, batch_size=2, progress=False, settings=settings.with_(db=str(clean)),
               report=str(tmp_path / "r0.txt"))
    expected = read_rows(clean, "dlib")
    for seed in (1, 2):
        db = tmp_path / f"killed{seed}.db"
        rng = np.random.default_rng(seed)
        # seed 1 commits every batch (the kill lands between or inside commits), seed 2 every
        # 0.3 s (it may land with finished batches still buffered, unwritten)
        env = dict(os.environ, LOOKALIKE_COMMIT_SECONDS="0" if seed == 1 else "0.3")
        proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike.query.app.cli", "ingest", str(src), "--db", str(db), "--workers", "0",
             "--batch-size", "2", "--report", str(tmp_path / "r.txt")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        # wait until some batches are written, then kill at a random moment
        wanted = int(rng.integers(2, 12))
        wait_for_progress(proc, 16, wanted)
        time.sleep(float(rng.uniform(0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = _lookalike("ingest", str(src), "--db", str(db), "--workers", "0", "--batch-size", "2",
                       "--report", str(tmp_path / "r2.txt"), "-q")
        assert r.returncode == 0, r.stderr[-2000:]
        got = read_rows(db, "dlib")
        assert got.keys() == expected.keys(), f"seed {seed}: killed at {wanted}"
        for k in expected:
            assert {f: v for f, v in got[k].items() if f != "vector"} == \
                   {f: v for f, v in expected[k].items() if f != "vector"}
            np.testing.assert_allclose(got[k]["vector"], expected[k]["vector"], atol=1e-6)
        ledger = read_ledger(db)
        assert len(ledger) == 16 and all(r["status"] in ("done", "noface") for r in ledger.values())


def test_facenet_through_deepface_with_weights_built_from_its_architecture(tmp_path, settings, monkeypatch):
    """FaceNet has no shipped weights here: build the file DeepFace expects from DeepFace's own
    architecture (random weights) and run the real loading and ingestion path on it."""
    from lookalike.ingest.settings import Settings

    home = tmp_path / "home"
    # Loading points DeepFace (os.environ) at this home; restore the session's afterwards, or later
    # tests' subprocesses would find FaceNet weights and make it their default face model.
    monkeypatch.setenv("DEEPFACE_HOME", str(home))
    weights = home / ".deepface" / "weights"
    weights.mkdir(parents=True)
    # The published facenet_weights.h5 is a Keras-2 (legacy HDF5) weights file: write that format.
    code = (
        "import sys, os, h5py; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'\n"
        "from deepface.models.facial_recognition.tf.Facenet import InceptionResNetV1\n"
        "from keras.src.legacy.saving import legacy_h5_format\n"
        "with h5py.File(sys.argv[1], 'w') as f:\n"
        "    legacy_h5_format.save_weights_to_hdf5_group(f, InceptionResNetV1(dimension=128))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(weights / "facenet_weights.h5")], check=True, timeout=600)
    s = Settings(deepface_home=str(home), data_dir=DATA)
    from lookalike.ingest.models import default_face_model

    assert default_face_model(s) == "facenet"
    db = tmp_path / "fn.db"
    summary = ingest.run(str(DATA / "people"), limit=3, workers=0,
                         progress=False, settings=s.with_(db=str(db)), report=str(tmp_path / "r.txt"))
    assert summary.models == ["facenet"] and summary.faces_stored >= 3
    rows = read_rows(db, "facenet")
    for r in rows.values():
        v = np.asarray(r["vector"])
        assert v.shape == (128,) and abs(np.linalg.norm(v) - 1) < 1e-4
    # first folder in sorted order; one subject per photo
    assert sum(r["identity"] == "Angelina_Jolie" for r in rows.values()) == 3


def test_missing_weights_give_one_line_naming_the_file(tmp_path):
    home = tmp_path / "empty_home"
    env = dict(os.environ, DEEPFACE_HOME=str(home), LOOKALIKE_DATA=str(tmp_path / "nodata"))
    r = subprocess.run([sys.executable, "-m", "lookalike.query.app.cli", "ingest", str(DATA / "people" / "Tom_Hanks"),
                        "--db", str(tmp_path / "x.db"), "--models", "facenet", "--workers", "0",
                        "--detector", "dlib", "-q"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 5, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "facenet_weights.h5" in line and str(home / ".deepface" / "weights") in line
    assert "Traceback" not in r.stderr


def test_gpu_profile_refused_on_lite(tmp_path):
    from lookalike.ingest.store import Store, StoreError

    with pytest.raises(StoreError, match="silently"):
        Store(str(tmp_path / "g.db"), profile="gpu")


def test_sources(tmp_path):
    from lookalike.ingest.sources import CelebASource, FolderSource, ListSource, SourceError, open_source

    src = open_source(str(CELEBA), limit=5)
    assert isinstance(src, CelebASource)
    recs = list(src)
    assert len(recs) == 5 and all(r.identity and r.attributes is not None for r in recs)
    assert recs[0].attribute_dict().keys() == set(ATTRIBUTES)
    people = open_source(str(DATA / "people"))
    assert isinstance(people, FolderSource)
    idents = {r.identity for r in people}
    assert {"Tom_Hanks", "obama", "biden"} <= idents
    lst = tmp_path / "l.txt"
    lst.write_text(f"# comment\n{DATA / 'people' / 'obama' / os.listdir(DATA / 'people' / 'obama')[0]}\tObama\n\n")
    recs = list(open_source(str(lst)))
    assert isinstance(open_source(str(lst)), ListSource) and recs[0].identity == "Obama"
    with pytest.raises(SourceError):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="partition"):
        open_source(str(CELEBA), partition="train")  # no list_eval_partition.txt in the sample


def test_messy_folder_every_file_ends_stored_or_reported(tmp_path, settings):
    """What real photo folders hold: odd names, formats from phones, links, copies, junk."""
    from PIL import Image

    root = tmp_path / "messy"
    person = root / "Jackie Chan ★"
    person.mkdir(parents=True)
    src = sorted((DATA / "people" / "Jackie_Chan").iterdir())
    portrait = Image.open(src[0]).convert("RGB")
    portrait.save(person / "phone photo.heic", "HEIF")
    portrait.save(person / "modern.avif", "AVIF")
    Image.open(src[1]).convert("RGBA").save(person / "with alpha.png")
    shutil.copy(src[2], person / "été 2024.jpg")
    shutil.copy(src[2], person / "same picture again.jpg")  # duplicate bytes
    bad_name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 byte: not valid UTF-8
    shutil.copy(src[3], os.path.join(os.fsencode(person), os.fsencode(bad_name)))
    os.symlink(root, person / "loop")  # a symlink loop must not trap the walk
    s = ingest.run(str(root), workers=0, progress=False, settings=settings.with_(db=str(tmp_path / "m.db")),
                   report=str(tmp_path / "r.txt"))
    assert s.images_seen == 6
    failed = {Path(p).name: reason for p, reason in s.failures}
    assert list(failed) == [bad_name] and "UTF-8" in failed[bad_name]
    rows = read_rows(tmp_path / "m.db", "dlib", with_vectors=False)
    stored = {Path(r["source_path"]).name for r in rows.values()}
    assert {"phone photo.heic", "modern.avif", "with alpha.png"} <= stored
    # the duplicate is stored once, under the smaller path; both paths are in the ledger
    assert ("same picture again.jpg" in stored) != ("été 2024.jpg" in stored)
    assert {r["identity"] for r in rows.values()} - {""} == {"Jackie Chan ★"}
    ledger = {Path(p).name: r for p, r in read_ledger(tmp_path / "m.db").items()}
    assert ledger["été 2024.jpg"]["image_sha256"] == ledger["same picture again.jpg"]["image_sha256"]
    assert "caf\\xe9.jpg" in ledger and ledger["caf\\xe9.jpg"]["status"] == "failed"
    # a re-run skips everything, the undecodable name included
    s2 = ingest.run(str(root), workers=0, progress=False, settings=settings.with_(db=str(tmp_path / "m.db")),
                    report=str(tmp_path / "r.txt"))
    assert s2.images_skipped == 6
