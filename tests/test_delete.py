"""Erasure (`lookalike delete`, `ingest.delete`): real ingest of sample photos into a real Milvus
Lite file with two face collections (dlib and a DINOv2 layer variant on a tiny local model), then
deletion by image, content hash and identity, checked through search, counts and the ledger."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, read_ledger, read_rows

from lookalike import ingest
from lookalike.query import search_photo
from lookalike.schemas import LEDGER_COLLECTION

PEOPLE = DATA / "people"
CELEBA = DATA / "celeba"
TOM = sorted((PEOPLE / "Tom_Hanks").iterdir())[:3]
OBAMA = sorted((PEOPLE / "obama").iterdir())[:2]
MODELS = ["dlib", "dinov2_l2"]
COLLECTIONS = [f"faces_{m}" for m in MODELS]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_settings(settings, tmp_path_factory):
    from test_transformers import build_tiny_models

    tiny = build_tiny_models(tmp_path_factory.mktemp("hf"))
    return settings.with_(dinov2_model=str(tiny["dinov2"]))


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_settings):
    """A database made by two ingests: people photos (a list file with identities, and a copy of
    one photo under another name) and three CelebA photos, each into faces_dlib and
    faces_dinov2_l2. Tests work on copies of it."""
    root = tmp_path_factory.mktemp("erase")
    copy = root / "copies" / "tom_copy.jpg"
    copy.parent.mkdir()
    shutil.copy(TOM[0], copy)
    src = root / "list.txt"
    src.write_text("".join(f"{p}\t{p.parent.name}\n" for p in [*TOM, *OBAMA, copy]))
    db = root / "template.db"
    for source, limit in ((src, None), (CELEBA, 3)):
        s = ingest.run(str(source), models="dlib,dinov2", layer=2, limit=limit, workers=0,
                       progress=False, settings=tiny_settings.with_(db=str(db)), report=str(root / "r.txt"))
        assert s.models == MODELS and s.images_failed == 0
    return {"db": db, "list": src, "copy": copy}


@pytest.fixture
def db(template, tmp_path):
    work = tmp_path / "work.db"
    shutil.copytree(template["db"], work)
    return work


def counts(db: Path) -> dict:
    from lookalike.ingest.store import Store

    with Store(str(db)) as store:
        return {n: store.count(n) for n in [*COLLECTIONS, LEDGER_COLLECTION]}


def stored_shas(db: Path, model: str) -> list:
    return [r["image_sha256"] for r in read_rows(db, model, with_vectors=False).values()]


def test_delete_image_erases_every_copy_search_and_ledger_then_reingest_restores(db, template, tiny_settings):
    photo, h = TOM[0], sha(TOM[0])
    n = stored_shas(db, "dlib").count(h)
    assert n >= 1 and stored_shas(db, "dinov2_l2").count(h) == n
    before = counts(db)
    # before: searching with the photo itself finds it first, in both collections
    r = search_photo(photo, model="all", top_k=5, settings=tiny_settings.with_(db=str(db)))
    # (its good face: the photo also holds a face cut by its left edge, below the quality gate,
    # which the gallery search leaves out)
    good = [f for f in r.faces if not f.low_quality]
    assert good and all(f.matches_by_model[m][0].image_sha256 == h for f in good[:1] for m in MODELS)

    s = ingest.delete(image=str(photo), db=str(db))
    assert s.faces == {c: n for c in COLLECTIONS}
    # both paths holding these bytes lose their ledger rows, one per model
    assert s.paths == sorted([str(photo), str(template["copy"])]) and s.ledger_rows == 4
    assert s.sha256s == [h] and s.images == 1 and not s.dry_run
    after = counts(db)
    assert after == {**{c: before[c] - n for c in COLLECTIONS}, LEDGER_COLLECTION: before[LEDGER_COLLECTION] - 4}
    assert h not in stored_shas(db, "dlib") + stored_shas(db, "dinov2_l2")
    assert all(row["image_sha256"] != h for row in read_ledger(db).values())

    # search (HNSW, k above the row count: every remaining row comes back) never returns it ...
    k = after["faces_dlib"] + 5
    r = search_photo(photo, model="all", top_k=k, settings=tiny_settings.with_(db=str(db)), min_quality=0)
    assert r.faces
    for f in r.faces:
        for m in MODELS:
            got = f.matches_by_model[m]
            assert len(got) == after[f"faces_{m}"] and all(x.image_sha256 != h for x in got)
    # ... nor does the exact search of a filtered query
    r = search_photo(photo, model="dlib", top_k=50, filter="has_attributes == false",
                     settings=tiny_settings.with_(db=str(db)))
    assert r.search[0].mode == "exact"
    assert all(x.image_sha256 != h for f in r.faces for x in f.matches)

    # idempotent: a second run removes nothing and says so
    again = ingest.delete(image=str(photo), db=str(db))
    assert again.faces_removed == 0 and again.ledger_rows == 0 and again.images == 0
    assert "removed 0 faces, 0 ledger rows, 0 images" in again.lines()[-1]
    assert "nothing matched" in again.lines()[-1]
    assert counts(db) == after

    # ingesting the same source again stores it again (nothing remembers the erasure)
    s2 = ingest.run(str(template["list"]), models="dlib,dinov2", layer=2, workers=0,
                    progress=False, settings=tiny_settings.with_(db=str(db)), report=str(db.parent / "r.txt"))
    assert s2.images_skipped == len(TOM) + len(OBAMA) + 1 - 2 and s2.images_done == 2
    assert counts(db) == before
    r = search_photo(photo, model="dlib", top_k=1, settings=tiny_settings.with_(db=str(db)))
    assert r.faces[0].matches[0].image_sha256 == h


def test_delete_identity_removes_the_persons_faces_in_every_collection(db):
    rows = read_rows(db, "dlib", with_vectors=False)
    obama = {i for i, r in rows.items() if r["identity"] == "obama"}
    assert len(obama) == len(OBAMA)
    celeb = next(r["identity"] for r in rows.values() if r["has_attributes"])
    celeb_ids = {i for i, r in rows.items() if r["identity"] == celeb}
    bystanders = {i for i, r in rows.items() if r["identity"] == ""
                  and r["image_sha256"] in {rows[j]["image_sha256"] for j in obama | celeb_ids}}
    before = counts(db)
    s = ingest.delete(identity=["obama", celeb], db=str(db))
    gone = len(obama | celeb_ids)
    assert s.faces == {c: gone for c in COLLECTIONS}
    for m in MODELS:
        left = read_rows(db, m, with_vectors=False)
        assert not (obama | celeb_ids) & left.keys()
        assert bystanders <= left.keys()  # other people in those photos are not that person
        assert len(left) == before[f"faces_{m}"] - gone
    ledger = read_ledger(db)
    obama_paths = {str(p) for p in OBAMA}
    assert not obama_paths & ledger.keys()
    assert len(ledger) == before[LEDGER_COLLECTION] // 2 - s.ledger_rows // 2  # one row per model
    again = ingest.delete(identity=["obama", celeb], db=str(db))
    assert again.faces_removed == 0 and again.ledger_rows == 0


def test_dry_run_and_sha256_and_hostile_values(db):
    h = sha(OBAMA[1])
    before = counts(db)
    dry = ingest.delete(sha256=h.upper(), db=str(db), dry_run=True)
    assert dry.dry_run and dry.faces_removed == 2 * stored_shas(db, "dlib").count(h) > 0
    assert dry.ledger_rows == 2 and dry.lines()[-1].startswith("would remove")
    assert counts(db) == before
    # a value built to widen the expression stays one string value: nothing matches
    for evil in ['") or (1 == 1', "obama\" or identity != \"", "%"]:
        assert ingest.delete(identity=evil, db=str(db)).faces_removed == 0
    assert counts(db) == before
    s = ingest.delete(sha256=h, db=str(db))
    assert s.to_dict()["faces"] == dry.faces and s.ledger_rows == dry.ledger_rows
    assert h not in stored_shas(db, "dlib")
    with pytest.raises(ingest.DeleteError, match="64 hexadecimal"):
        ingest.delete(sha256="abc", db=str(db))
    with pytest.raises(ingest.DeleteError, match="must not be empty"):
        ingest.delete(identity="", db=str(db))
    with pytest.raises(ingest.DeleteError, match="nothing to delete"):
        ingest.delete(db=str(db))


def test_image_found_by_its_ledger_rows_once_the_file_is_gone(tmp_path, settings):
    """The file was deleted before its faces: the ledger still knows its content."""
    photo = tmp_path / "gone" / "me.jpg"
    photo.parent.mkdir()
    shutil.copy(OBAMA[0], photo)
    db = tmp_path / "g.db"
    ingest.run(str(photo.parent), workers=0, progress=False, settings=settings.with_(db=str(db)),
               report=str(tmp_path / "r.txt"))
    assert read_rows(db, "dlib", with_vectors=False)
    photo.unlink()
    s = ingest.delete(image=str(photo), db=str(db))
    assert s.faces["faces_dlib"] >= 1 and s.ledger_rows == 1
    assert not read_rows(db, "dlib", with_vectors=False) and not read_ledger(db)
    s = ingest.delete(image=str(photo), db=str(db))  # neither file nor rows: 0, with a note
    assert s.faces_removed == 0 and "cannot be read" in s.notes[0]


def _lookalike(*args, cwd=None):
    script = Path(sys.executable).parent / "lookalike"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "lookalike.query.app.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli(db, template):
    # (a Lite database opened in this process stays locked by it: count on the template)
    photo = TOM[1]
    n = stored_shas(template["db"], "dlib").count(sha(photo))
    # a relative path resolves like ingest's: against the working directory
    r = _lookalike("delete", "--image", photo.name, "--db", str(db), cwd=photo.parent)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == f"removed {2 * n} faces, 2 ledger rows, 1 images from {db}"
    assert any(line.split()[:2] == ["faces_dinov2_l2", str(n)] for line in lines)
    r = _lookalike("delete", "--image", str(photo), "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["faces_removed"] == 0 and doc["ledger_rows"] == 0 and doc["faces"] == {c: 0 for c in COLLECTIONS}
    for args, msg in ((["--sha256", "zz"], "64 hexadecimal"), ([], "nothing to delete"),
                      (["--image", str(PEOPLE)], "is a folder")):
        r = _lookalike("delete", *args, "--db", str(db))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr
    r = _lookalike("delete", "--identity", "Obama", "--db", str(db))  # stored as the folder name: obama
    assert r.returncode == 0 and "removed 0 faces" in r.stdout
    assert r.stderr.count("\n") == 1 and "did you mean 'obama'" in r.stderr, r.stderr
    r = _lookalike("delete", "--identity", "nobody_at_all", "--db", str(db), "--dry-run")
    assert r.returncode == 0 and "no face is labelled 'nobody_at_all'" in r.stderr and "query a photo" in r.stderr
    r = _lookalike("delete", "--identity", "obama", "--db", str(db.parent / "missing.db"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (db.parent / "missing.db").exists()
    # what the command removed is gone for a later process too
    assert sha(photo) not in stored_shas(db, "dlib") + stored_shas(db, "dinov2_l2")
    assert str(photo) not in read_ledger(db)


@pytest.mark.server
def test_delete_on_a_server(server_uri, settings, tmp_path):
    """The same erasure against a real Milvus server: counts follow at once, search no longer
    returns the image, a compaction is requested, a second run removes 0."""
    src = tmp_path / "list.txt"
    src.write_text("".join(f"{p}\t{p.parent.name}\n" for p in [*TOM, *OBAMA]))
    s = ingest.run(str(src), workers=0, progress=False, settings=settings.with_(uri=server_uri),
                   report=str(tmp_path / "r.txt"))
    assert s.images_failed == 0 and s.models == ["dlib"]
    from lookalike.ingest.store import Store

    with Store(None, uri=server_uri) as store:
        before = store.count("faces_dlib")
    h = sha(TOM[2])
    d = ingest.delete(image=str(TOM[2]), identity="obama", uri=server_uri)
    assert d.ledger_rows == 3 and d.faces["faces_dlib"] >= 3 and d.images == 3
    with Store(None, uri=server_uri) as store:
        assert store.count("faces_dlib") == before - d.faces["faces_dlib"]
        assert store.count(LEDGER_COLLECTION) == len(TOM) + len(OBAMA) - 3
    r = search_photo(TOM[2], top_k=50, settings=settings.with_(uri=server_uri))
    assert r.faces and all(m.image_sha256 != h and m.identity != "obama" for f in r.faces for m in f.matches)
    again = ingest.delete(image=str(TOM[2]), identity="obama", uri=server_uri)
    assert again.faces_removed == 0 and again.ledger_rows == 0
