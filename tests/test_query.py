"""The query read path: real Milvus Lite, real DeepFace (dlib model, yunet detector), real photos.

A session fixture ingests a small sample (48 CelebA in-the-wild images of 16 identities plus 12
others, and the people/ gallery minus one held-out image per identity); held-out images are the
identity-retrieval queries. A second fixture builds 20,000 synthetic rows to check filtered recall.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA  # noqa: E402  (the sample data folder, $LOOKALIKE_DATA)
from PIL import Image

from lookalike.ingest.images import ImageError, load, read_bytes, sha256_bytes
from lookalike.ingest.settings import Settings
from lookalike.query import search_photo
from lookalike.query.render import (
    GAP,
    HEADER_H,
    MARGIN,
    PHOTO_WIDTH,
    RENDER_MAX_K,
    ROW_GAP,
    ROW_H,
    THUMB,
    sheet_names,
    sheet_size,
)
from lookalike.query.results import Document, Match, PhotoResult, QueryError, check_top_k, validate_document
from lookalike.query.search import EF_MAX, Searcher, ef_for, exact_topk, same_image_filter
from lookalike.schemas import ATTRIBUTES, OUTPUT_FIELDS
from lookalike.schemas.filters import FilterError, compile_filter

CELEBA = DATA / "celeba"
PEOPLE = DATA / "people"
GROUPS = DATA / "groups" / "photos"


def _faces_csv():
    out = {}
    for line in (DATA / "groups" / "faces.csv").read_text().splitlines()[1:]:
        parts = line.split(",")
        out[parts[0]] = (int(parts[1]), int(parts[2]))
    return out


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
def _celeba_subset(root: Path):
    """16 identities with >= 4 images: 3 ingested + 1 held out each, plus 12 single images."""
    have = set(os.listdir(CELEBA / "img_celeba"))
    by_id = defaultdict(list)
    ident = {}
    with open(CELEBA / "identity_CelebA.txt") as f:
        for line in f:
            name, i = line.split()
            if name in have:
                by_id[i].append(name)
                ident[name] = i
    multi = sorted(i for i, names in by_id.items() if len(names) >= 4)[:16]
    singles = sorted(i for i, names in by_id.items() if len(names) == 1)[:12]
    ingest, held = [], []
    for i in multi:
        names = sorted(by_id[i])
        ingest += names[:3]
        held.append((str(CELEBA / "img_celeba" / names[3]), i))
    ingest += [by_id[i][0] for i in singles]
    (root / "img_celeba").mkdir(parents=True)
    for name in ingest:
        os.symlink(CELEBA / "img_celeba" / name, root / "img_celeba" / name)
    for meta in ("identity_CelebA.txt", "list_attr_celeba.txt"):
        os.symlink(CELEBA / meta, root / meta)
    return ingest, held


def _people_subset(root: Path):
    held = []
    for d in sorted(PEOPLE.iterdir()):
        files = sorted(p.name for p in d.iterdir())
        keep = files[:-1] if len(files) >= 2 else files
        if len(files) >= 2:
            held.append((str(d / files[-1]), d.name))
        (root / d.name).mkdir(parents=True)
        for name in keep:
            os.symlink(d / name, root / d.name / name)
    return held


@pytest.fixture(scope="session")
def sample(tmp_path_factory, deepface_home):
    """An ingested sample DB (dlib, yunet) + held-out queries. Returns a dict."""
    from lookalike import ingest
    base = tmp_path_factory.mktemp("query_sample")
    celeba_ingested, celeba_held = _celeba_subset(base / "celeba")
    people_held = _people_subset(base / "people")
    db = str(base / "sample.db")
    settings = Settings().with_(detector="yunet")
    for src in (base / "celeba", base / "people"):
        summary = ingest.run(str(src), models="dlib", workers=0, progress=False,
                             report=str(base / "report.txt"), settings=settings.with_(db=db))
        assert summary.images_failed == 0, summary.failures
    # the CLI tests get their own copy: Milvus Lite allows one process per database
    cli_db = str(base / "cli.db")
    shutil.copytree(db, cli_db)
    return {"db": db, "cli_db": cli_db, "base": base, "settings": settings.with_(db=db),
            "celeba_ingested": [str(base / "celeba" / "img_celeba" / n) for n in celeba_ingested],
            "held": celeba_held + people_held}


@pytest.fixture(scope="session")
def searcher(sample):
    with Searcher(sample["settings"]) as s:
        yield s


@pytest.fixture(scope="session")
def all_rows(searcher):
    """Every stored row with its vector (for brute-force truth)."""
    rows = list(searcher.store.iterate("faces_dlib", OUTPUT_FIELDS + ["vector"]))
    assert len(rows) > 150
    return rows


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------
def test_check_top_k():
    assert check_top_k(1) == 1 and check_top_k("1000") == 1000
    for bad in (0, 1001, -3, "x", "2.5", None):
        with pytest.raises(QueryError) as ei:
            check_top_k(bad)
        assert "\n" not in str(ei.value)


def test_ef_policy():
    assert ef_for(10, 1.0, 128) == 128
    assert ef_for(10, 0.01, 128) == min(EF_MAX, 10_000)
    assert ef_for(10, 0.1, 128) == 1000
    assert ef_for(1000, 1.0, 128) >= 1000  # never below k
    assert ef_for(10, 1e-6, 128) == EF_MAX


def test_exact_topk_breaks_ties_by_id():
    v = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    out = exact_topk(np.array([[1, 0]], dtype=np.float32), v, ["b", "a", "c", "d"], 3)
    assert [i for i, _ in out[0]] == ["a", "b", "d"]
    assert exact_topk(np.ones((2, 2), np.float32), np.zeros((0, 2), np.float32), [], 3) == [[], []]


def test_same_image_filter_is_encoded():
    assert same_image_filter("ab" * 32) == f'image_sha256 != "{"ab" * 32}"'
    assert same_image_filter('x" or 1==1') == 'image_sha256 != "x\\" or 1==1"'
    compile_filter(same_image_filter('x" or 1==1'))  # a valid expression, one string value


def test_validate_document_catches_shape_errors():
    assert validate_document({"version": 1, "photos": []}) == []
    assert validate_document({"version": 1}) == ["photos: Field required"]
    bad = {"version": "x", "photos": [{"path": 3}]}
    problems = validate_document(bad)
    assert any(p.startswith("version") for p in problems) and any(p.startswith("photos.0.sha256") for p in problems)
    extra = {"version": 1, "photos": [], "surprise": True}
    assert validate_document(extra) != []


def test_results_schema_comes_from_the_models():
    """The JSON Schema the web API publishes is the models' own."""
    schema = Document.model_json_schema(mode="serialization")
    match = schema["$defs"]["Match"]["properties"]
    assert {"score", "same_person", "same_person_probability", "quality", "attributes"} <= set(match)
    face = schema["$defs"]["QueryFace"]["properties"]
    assert "matches" in face and "dbox" not in face
    assert "image" not in schema["$defs"]["PhotoResult"]["properties"]


def test_sheet_size_follows_the_layout_constants():
    w, h = sheet_size(1000, 500, 3, 5)
    row_w = THUMB + ROW_GAP + 5 * (THUMB + GAP) - GAP
    assert w == 2 * MARGIN + max(PHOTO_WIDTH, row_w)
    assert h == MARGIN + HEADER_H + 400 + GAP + 3 * ROW_H + MARGIN - GAP
    w10, _ = sheet_size(1000, 500, 3, 50)  # at most RENDER_MAX_K thumbnails drawn
    assert w10 == 2 * MARGIN + THUMB + ROW_GAP + RENDER_MAX_K * (THUMB + GAP) - GAP
    assert sheet_size(1000, 500, 0, 5) == sheet_size(1000, 500, 1, 5)  # "no face" row
    one = PhotoResult(path="/x/a b.jpg", sha256="", width=1, height=1, detector="yunet", models=["dlib"], top_k=1)
    assert sheet_names([one]) == ["result.png"]
    two = one.model_copy(update={"path": "/y/a b.jpg"})
    other = one.model_copy(update={"path": "c.png"})
    assert sheet_names([one, two, other]) == ["result_a_b.png", "result_a_b_2.png", "result_c.png"]


def _marked_jpeg(path: Path, size, box, orientation: int = 1) -> None:
    """A grey JPEG whose upright pixels hold a red square at `box`, stored rotated so that EXIF
    `orientation` turns it upright (6: stored rotated 90 degrees counter-clockwise)."""
    w, h = size
    up = Image.new("RGB", (w, h), (128, 128, 128))
    x, y, bw, bh = box
    up.paste((220, 20, 20), (x, y, x + bw, y + bh))
    stored = up.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else up
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("size, box, orientation", [
    ((640, 480), (100, 50, 120, 140), 1),
    ((640, 480), (300, 200, 150, 150), 6),  # EXIF-rotated phone photo
    ((3000, 2000), (1000, 600, 900, 900), 1),  # decoded at reduced scale (JPEG draft)
])
def test_source_crop_takes_the_upright_box(tmp_path, size, box, orientation):
    from lookalike.query.render import source_crop

    p = tmp_path / "m.jpg"
    _marked_jpeg(p, size, box, orientation)
    up = load(p)
    assert (up.width, up.height) == size  # the stored box is in these coordinates
    crop = source_crop(str(p), box)
    assert crop is not None
    px = np.asarray(crop).reshape(-1, 3).mean(axis=0)
    assert px[0] > 180 and px[1] < 70 and px[2] < 70, px  # all red: the right region
    assert abs(crop.width / crop.height - box[2] / box[3]) < 0.1
    assert source_crop(str(tmp_path / "missing.jpg"), box) is None


def test_missing_source_gives_grey_placeholder(tmp_path):
    from lookalike.query.render import PLACEHOLDER, render_sheet
    from lookalike.query.results import QueryFace

    photo = tmp_path / "q.jpg"
    _marked_jpeg(photo, (400, 300), (50, 50, 100, 100))
    m = Match.from_row(1, 0.83, {"id": "x_0", "identity": "2880", "source_path": str(tmp_path / "gone.jpg"),
                                 "box_x": 0, "box_y": 0, "box_w": 50, "box_h": 50})
    face = QueryFace(index=0, box=(50, 50, 100, 100), confidence=0.9, matches_by_model={"dlib": [m]})
    r = PhotoResult(path=str(photo), sha256="", width=400, height=300, detector="yunet", models=["dlib"],
                    top_k=1, filter=None, faces=[face])
    sheet = render_sheet(r)
    assert sheet.size == sheet_size(400, 300, 1, 1)
    y = MARGIN + HEADER_H + round(300 * PHOTO_WIDTH / 400) + GAP
    x = MARGIN + THUMB + ROW_GAP
    assert sheet.getpixel((x + THUMB // 2, y + THUMB // 2)) == PLACEHOLDER


# ---------------------------------------------------------------------------------------------
# Photos against the sample
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("photo", ["t1.jpg", "multiface.jpg"])
def test_group_photo_every_face_gets_k_matches(searcher, photo):
    lo, hi = _faces_csv()[photo]
    r = searcher.search_photo(GROUPS / photo, top_k=5)
    assert lo <= len(r.faces) <= hi
    assert [f.index for f in r.faces] == list(range(len(r.faces)))
    assert len(r.search) == 1 and r.search[0].mode == "exact"  # one batched search call (FLAT on Lite)
    for f in r.faces:
        assert len(f.matches) == 5
        assert [m.rank for m in f.matches] == [1, 2, 3, 4, 5]
        scores = [m.score for m in f.matches]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0001 <= s <= 1.0001 for s in scores)
        assert all(abs(m.distance - (1 - m.score)) < 1e-9 for m in f.matches)
        assert all(set(m.attributes) == set(ATTRIBUTES) for m in f.matches)
        x, y, w, h = f.box
        assert 0 <= x < r.width and 0 <= y < r.height and w > 0 and h > 0


def test_self_retrieval_and_exclude_same_image(searcher, sample):
    hits = 0
    photos = sample["celeba_ingested"][:6]
    for p in photos:
        sha = sha256_bytes(read_bytes(p))
        r = searcher.search_photo(p, top_k=5, min_quality=0)  # its own face, whatever its quality
        assert r.sha256 == sha and r.faces
        # the face the collection holds for this image comes back first, score ~1
        best = max((m for f in r.faces for m in f.matches[:1]), key=lambda m: m.score)
        assert best.image_sha256 == sha and best.score > 0.999 and best.distance < 1e-3
        hits += any(f.matches[0].image_sha256 == sha for f in r.faces)
        ex = searcher.search_photo(p, top_k=5, exclude_same_image=True, min_quality=0)
        assert all(m.image_sha256 != sha for f in ex.faces for m in f.matches)
        assert all(len(f.matches) == 5 for f in ex.faces)
    assert hits == len(photos)


def test_identity_retrieval_beats_chance(searcher, sample, all_rows):
    """Held-out photos (not in the collection): does the top-5 of the photo's largest face
    contain the identity? Measured: 27 of 28 (0.96); chance ~0.14."""
    per_identity = Counter(r["identity"] for r in all_rows)
    n = len(all_rows)
    found, chance, total = 0, 0.0, 0
    for path, identity in sample["held"]:
        r = searcher.search_photo(path, top_k=5)
        if not r.faces:
            continue
        face = max(r.faces, key=lambda f: f.box[2] * f.box[3])
        total += 1
        found += any(m.identity == identity for m in face.matches)
        p = per_identity[identity] / n
        chance += 1 - (1 - p) ** 5
    assert total >= 25
    rate, chance_rate = found / total, chance / total
    print(f"identity in top-5: {found}/{total} = {rate:.2f} (chance {chance_rate:.2f})")
    assert rate >= 0.8
    assert rate >= 3 * chance_rate


# ---------------------------------------------------------------------------------------------
# Filters agree with brute force
# ---------------------------------------------------------------------------------------------
FILTERS = [
    "Smiling", "Male and not Eyeglasses", "has_attributes == false", 'source_path like "%Bill_Gates%"',
    "box_w > 120 or Young", 'identity == "nobody"', "not has_attributes and box_w < 60",
]


@pytest.fixture(scope="session")
def query_vectors(searcher):
    return searcher.analyzer(["dlib"]).analyse(load(GROUPS / "t1.jpg")).vectors("dlib")


def _brute(rows, q, flt, k):
    keep = [r for r in rows if flt is None or flt.evaluate(r)]
    if not keep:
        return [[] for _ in q]
    v = np.array([r["vector"] for r in keep], dtype=np.float32)
    out = []
    for s in q @ v.T:
        order = sorted(range(len(keep)), key=lambda j: (-s[j], keep[j]["id"]))[:k]
        out.append([(keep[j]["id"], float(s[j])) for j in order])
    return out


@pytest.fixture(scope="session")
def hnsw_store(sample, all_rows):
    """The sample's rows in a Milvus Lite collection indexed with HNSW (profile lite-hnsw), where
    the query path probes a filter and widens the search."""
    from lookalike.ingest.store import Store

    store = Store(str(sample["base"] / "hnsw.db"), profile="lite-hnsw")
    store.ensure_collection("dlib")
    store.upsert_faces("dlib", [dict(r) for r in all_rows])
    store.flush(["faces_dlib"])
    store.build_indexes(["faces_dlib"])  # release + load: builds the segment's HNSW index
    assert store.index_type("faces_dlib") == "HNSW" and store.count("faces_dlib") == len(all_rows)
    yield store
    store.close()


@pytest.mark.parametrize("expr", FILTERS)
@pytest.mark.parametrize("path", ["flat", "probe", "widened"])  # FLAT index; HNSW: exact probe, widened ANN
def test_filtered_search_matches_brute_force(sample, searcher, hnsw_store, all_rows, query_vectors, expr, path):
    flt = compile_filter(expr)
    assert flt is not None
    s = searcher if path == "flat" else \
        Searcher(sample["settings"], store=hnsw_store, exact_max_rows=2000 if path == "probe" else 0)
    got, info = s.search_vectors("dlib", query_vectors, 10, flt)
    want = _brute(all_rows, query_vectors, flt, 10)
    n_keep = sum(flt.evaluate(r) for r in all_rows)
    if path == "flat":
        assert info.mode == ("exact" if n_keep else "empty") and info.filtered_rows is None
    elif path == "probe":
        assert info.filtered_rows == n_keep
        assert info.mode == ("exact" if n_keep else "empty")
    else:
        assert info.mode == "ann" and info.ef is not None and info.ef >= 128
    for g, w in zip(got, want):
        assert [m.id for m in g] == [i for i, _ in w] or \
            np.allclose([m.score for m in g], [s for _, s in w], atol=1e-5)
        assert all(flt.evaluate({**m.attributes, "identity": m.identity, "source_path": m.source_path,
                                 "box_w": m.box[2], "has_attributes": m.has_attributes}) for m in g)
    if n_keep == 0:
        assert all(g == [] for g in got)


def test_flat_index_needs_no_probe(sample, searcher, query_vectors, monkeypatch):
    """On the FLAT lite profile a filtered search is one search call: no probe query."""
    calls = []
    real = searcher.store.query

    def query(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(searcher.store, "query", query)
    searcher.prefetch(["dlib"], compile_filter("Smiling"))
    _, info = searcher.search_vectors("dlib", query_vectors, 5, compile_filter("Smiling"))
    assert calls == [] and info.mode == "exact" and searcher.store.index_type("faces_dlib") == "FLAT"


def test_filter_probe_is_reused_within_a_run(sample, hnsw_store, query_vectors, monkeypatch):
    s = Searcher(sample["settings"], store=hnsw_store)
    calls = []
    real = hnsw_store.query

    def query(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(hnsw_store, "query", query)
    flt = compile_filter("Smiling")
    first, _ = s.search_vectors("dlib", query_vectors, 5, flt)
    again, info = s.search_vectors("dlib", query_vectors, 5, compile_filter("Smiling == true"))
    assert len(calls) == 1 and info.mode == "exact"
    assert [[m.id for m in g] for g in first] == [[m.id for m in g] for g in again]
    s.clear_cache()
    s.search_vectors("dlib", query_vectors, 5, flt)
    assert len(calls) == 2


def test_where_shorthands_and_filter_on_a_photo(searcher):
    a = searcher.search_photo(GROUPS / "obama_and_biden.jpg", top_k=5, where=["Male"], where_not=["Eyeglasses"])
    b = searcher.search_photo(GROUPS / "obama_and_biden.jpg", top_k=5, filter="Male == true and Eyeglasses == false")
    assert a.filter == b.filter
    assert [[m.id for m in f.matches] for f in a.faces] == [[m.id for m in f.matches] for f in b.faces]
    for f in a.faces:
        assert f.matches and all(m.attributes["Male"] and not m.attributes["Eyeglasses"] for m in f.matches)


def test_injection_is_rejected_or_neutralised(searcher):
    with pytest.raises(FilterError):
        searcher.search_photo(GROUPS / "couple.jpg", filter="Smiling == true) or (1 == 1")
    with pytest.raises(FilterError):
        searcher.search_photo(GROUPS / "couple.jpg", filter='identity == "x" or 1 == 1')
    r = searcher.search_photo(GROUPS / "couple.jpg", filter=r'identity == "x\" or 1==1"')
    assert r.faces and all(f.matches == [] for f in r.faces)
    assert r.search[0].mode == "empty"


def test_min_face_min_score_and_unreadable(searcher, tmp_path):
    r = searcher.search_photo(GROUPS / "t1.jpg", top_k=3, min_face=10_000)
    assert r.faces == [] and r.faces_skipped_small >= 6
    r = searcher.search_photo(GROUPS / "t1.jpg", top_k=3, min_score=0.99)
    assert all(m.score >= 0.99 for f in r.faces for m in f.matches)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageError) as ei:
        searcher.search_photo(bad)
    assert str(bad) in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(QueryError, match="no collection faces_facenet in DB; ingest with --models facenet"):
        searcher.search_photo(GROUPS / "t1.jpg", model="facenet")


def test_python_api_search_photo(sample, searcher):
    # a second Store cannot open the same Lite DB in this process's server; reuse the store
    r = search_photo(GROUPS / "couple.jpg", store=searcher.store, settings=sample["settings"], top_k=2)
    assert len(r.faces) == 2 and all(len(f.matches) == 2 for f in r.faces)
    assert {"read", "load_models", "detect", "embed", "search", "total"} <= set(r.timings)
    assert validate_document({"version": 1, "photos": [r.to_json()]}) == []
    assert Match.model_validate(r.faces[0].matches[0].model_dump(mode="json")) == r.faces[0].matches[0]


def test_model_all_gives_one_section_per_model(tmp_path):
    """--model all over a DB holding dlib and a (tiny, random) DINOv2 collection; the DINOv2
    query embeds with the weights its collection recorded, not the settings' default."""
    pytest.importorskip("transformers")
    from test_transformers import build_tiny_models

    from lookalike import ingest
    from lookalike.query.render import render_sheet

    tiny = build_tiny_models(tmp_path / "hf")
    gallery = tmp_path / "gallery"
    for name in ("obama", "biden", "kit_harington"):
        (gallery / name).mkdir(parents=True)
        for f in sorted((PEOPLE / name).iterdir()):
            os.symlink(f, gallery / name / f.name)
    db = str(tmp_path / "two.db")
    ingest.run(str(gallery), models="dlib,dinov2", workers=0, progress=False,
               report=str(tmp_path / "r.txt"), settings=Settings().with_(dinov2_model=str(tiny["dinov2"])).with_(db=db))
    with Searcher(Settings().with_(db=db)) as s:
        assert s.resolve_models() == ["dlib"]
        r = s.search_photo(GROUPS / "obama_and_biden.jpg", model="all", top_k=3, keep_image=True)
    assert r.models == ["dlib", "dinov2"] and len(r.search) == 2
    doc = r.to_json()
    assert validate_document({"version": 1, "photos": [doc]}) == []
    assert PhotoResult.model_validate(doc).faces[0].matches_by_model.keys() == {"dlib", "dinov2"}
    for f in doc["faces"]:
        assert set(f["matches_by_model"]) == {"dlib", "dinov2"}
        assert f["matches"] == f["matches_by_model"]["dlib"]
        assert all(len(v) == 3 for v in f["matches_by_model"].values())
    assert render_sheet(r).size == sheet_size(r.width, r.height, 2 * len(r.faces), 3)


# ---------------------------------------------------------------------------------------------
# CLI (subprocess): exit codes, --json, --out
# ---------------------------------------------------------------------------------------------
def _cli(sample, *args, timeout=240):
    env = dict(os.environ, LOOKALIKE_DB=sample["cli_db"], DEEPFACE_HOME=os.environ["DEEPFACE_HOME"],
               LOOKALIKE_DATA=str(DATA))
    script = Path(sys.executable).parent / "lookalike"  # the console script of this interpreter
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "lookalike.query.app.cli"]
    return subprocess.run(cmd + ["query", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(sample["base"]))


def test_cli_ok_json_and_contact_sheet(sample, tmp_path):
    out = tmp_path / "out"
    photo = GROUPS / "multiface.jpg"
    p = _cli(sample, photo, GROUPS / "couple.jpg", "-k", "4", "--json", "--out", out, "--where", "Young")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert validate_document(doc) == []
    assert json.loads((out / "results.json").read_text()) == doc
    first, second = doc["photos"]
    assert first["path"] == str(photo) and first["top_k"] == 4 and first["filter"] == "(has_attributes == true and Young == true)"
    assert len(first["faces"]) == 6 and all(len(f["matches"]) == 4 for f in first["faces"])
    assert all(m["attributes"]["Young"] and m["has_attributes"] for f in first["faces"] for m in f["matches"])
    with Image.open(out / "result_multiface.png") as im:
        assert im.size == sheet_size(first["width"], first["height"], len(first["faces"]), 4)
        assert im.size == (2 * MARGIN + PHOTO_WIDTH,
                           MARGIN + HEADER_H + round(first["height"] * PHOTO_WIDTH / first["width"])
                           + GAP + 6 * ROW_H + MARGIN - GAP)
        # the photo sits at (MARGIN, MARGIN + HEADER_H); numbered boxes are drawn in colour on it
        px = np.asarray(im.convert("RGB"))
        assert px[MARGIN + HEADER_H:MARGIN + HEADER_H + 50, MARGIN:MARGIN + PHOTO_WIDTH].std() > 5
    with Image.open(out / "result_couple.png") as im:
        assert im.size == sheet_size(second["width"], second["height"], len(second["faces"]), 4)
    # a readable table without --json
    p = _cli(sample, GROUPS / "couple.jpg", "-k", "2")
    assert p.returncode == 0, p.stderr
    assert "face 1" in p.stdout and "face 2" in p.stdout and "score" in p.stdout


def test_cli_no_face_exit_3(sample):
    p = _cli(sample, GROUPS / "no-faces.jpg")
    assert p.returncode == 3, p.stderr
    assert "no face found" in p.stderr


def test_cli_unreadable_exit_4(sample, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    for photo in (bad, tmp_path / "missing.jpg"):
        p = _cli(sample, photo)
        assert p.returncode == 4, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("lookalike:")]
        assert len(lines) == 1 and str(photo) in lines[0]


@pytest.mark.parametrize("args, needle", [
    (["-k", "0"], "'--top-k': 0 is not in the range 1<=x<=1000"),
    (["-k", "1001"], "'--top-k': 1001 is not in the range 1<=x<=1000"),
    (["--filter", "Smilng == true"], "unknown field 'Smilng'"),
    (["--filter", "Smiling == true) or (1 == 1"], "syntax error"),
    (["--where", "identity"], "boolean"),
    (["--model", "facenet"], "no collection faces_facenet in DB; ingest with --models facenet"),
    (["--model", "nope"], "unknown model 'nope'"),
])
def test_cli_usage_errors_exit_2(sample, args, needle):
    p = _cli(sample, GROUPS / "couple.jpg", *args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr


# ---------------------------------------------------------------------------------------------
# Filtered recall on 20,000 synthetic rows
# ---------------------------------------------------------------------------------------------
SYN_N = 20_000
SYN_IDENTITIES = 1000


def synthetic_rows(start: int, n: int, dim: int = 128, seed: int = 0):
    """Uniform random unit vectors (the hardest case for HNSW) with random attributes; identity
    `s<i % 1000>` gives filters of exact selectivity (one identity = 0.1 %)."""
    rng = np.random.default_rng([seed, start])
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    attrs = rng.random((n, len(ATTRIBUTES))) < 0.5
    rows = []
    for i in range(n):
        j = start + i
        r = {"id": f"{j:064x}_0", "image_sha256": f"{j:064x}", "source_path": f"synthetic/{j}.jpg",
             "face_index": 0, "box_x": 0, "box_y": 0, "box_w": 100, "box_h": 100, "confidence": 1.0,
             "detector": "synthetic", "identity": f"s{j % SYN_IDENTITIES:04d}", "has_attributes": True,
             "ingested_at": 0, "face_size": 100, "sharpness": 0.5, "frontal": 1.0, "quality": 1.0, "vector": v[i]}
        r.update({a: bool(attrs[i, k]) for k, a in enumerate(ATTRIBUTES)})
        rows.append(r)
    return rows


def fill_synthetic(store, n: int):
    """`n` synthetic rows upserted into the store's faces_dlib, flushed, indexed (Milvus Lite
    searches a freshly flushed segment brute force until load() builds its index); the rows."""
    store.ensure_collection("dlib")
    rows = []
    for start in range(0, n, 5000):
        batch = synthetic_rows(start, min(5000, n - start))
        rows += batch
        store.upsert_faces("dlib", [{**r, "vector": r["vector"].tolist()} for r in batch])
    store.flush(["faces_dlib"])
    store.build_indexes(["faces_dlib"])
    return rows


def _identity_filter(n: int) -> str:
    return "identity in [" + ", ".join(f'"s{i:04d}"' for i in range(n)) + "]"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from lookalike.ingest.store import Store

    db = str(tmp_path_factory.mktemp("synthetic") / "syn.db")
    store = Store(db, profile="lite-hnsw")  # the probe / widened-ef policy; FLAT is exact by construction
    rows = fill_synthetic(store, SYN_N)  # indexed: the searches below go through HNSW
    assert store.count("faces_dlib") == SYN_N
    yield store, rows
    store.close()


SELECTIVITIES = [(0.001, _identity_filter(1)), (0.01, _identity_filter(10)), (0.05, _identity_filter(50)),
                 (0.10, _identity_filter(100)), (0.25, "Male and Smiling"), (0.5, "Male"),
                 (1.0, "has_attributes")]


def test_filtered_recall_at_10_on_20k_synthetic_rows(synthetic):
    store, rows = synthetic
    vecs = np.stack([r["vector"] for r in rows])
    ids = np.array([r["id"] for r in rows])
    rng = np.random.default_rng(42)
    q = rng.standard_normal((10, 128)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s = Searcher(Settings(), store=store)
    modes, report = set(), []
    for sel, expr in SELECTIVITIES:
        flt = compile_filter(expr)
        assert flt is not None
        mask = np.array([flt.evaluate(r) for r in rows])
        assert abs(mask.mean() - sel) < 0.02, (expr, mask.mean())
        sub = np.nonzero(mask)[0]
        truth = [set(ids[sub[np.argsort(-(vecs[sub] @ qq))[:10]]]) for qq in q]
        got, info = s.search_vectors("dlib", q, 10, flt, output_fields=["id"])
        recall = np.mean([len(t & {m.id for m in g}) / 10 for t, g in zip(truth, got)])
        modes.add(info.mode)
        report.append(f"{sel:.1%}: recall@10 {recall:.3f} ({info.mode}, ef {info.ef}, {info.seconds:.2f} s)")
        assert recall >= 0.99, report
    print("\n".join(report))
    assert modes == {"exact", "ann"}
    # for comparison: Lite's HNSW with the filter alone at the profile's ef loses neighbours
    flt = compile_filter(_identity_filter(1))
    assert flt is not None
    raw = store.search("dlib", q, 10, flt, output_fields=["id"], search_params={"ef": 64})
    sub = np.nonzero(np.array([flt.evaluate(r) for r in rows]))[0]
    truth = [set(ids[sub[np.argsort(-(vecs[sub] @ qq))[:10]]]) for qq in q]
    raw_recall = np.mean([len(t & {h["id"] for h in g}) / 10 for t, g in zip(truth, raw)])
    print(f"0.1% filter, plain HNSW ef 64: recall@10 {raw_recall:.3f}")
    assert raw_recall < 0.9


def test_dlib_resnet_on_torch_matches_dlib(settings, tmp_path):
    """The default torch engine computes dlib's own descriptors (ingest/dlib_resnet.py): the same
    vectors as dlib's compute_face_descriptor through DeepFace, batched or one face at a time;
    a damaged weights file is one line naming it."""

    from lookalike.ingest.models import DlibEmbedder, ModelError, get_engine

    engine = get_engine(settings, settings.detector, ["dlib"]).load()
    image = load(GROUPS / "multiface.jpg")
    faces = engine.detector.detect(image)
    assert len(faces) >= 4
    spec = engine.embedders["dlib"].spec
    torch_net = DlibEmbedder(spec, settings.with_(dlib_engine="torch")).load()
    dlib_net = DlibEmbedder(spec, settings.with_(dlib_engine="dlib")).load()
    onnx_net = DlibEmbedder(spec, settings.with_(dlib_engine="onnx")).load()
    want = dlib_net.embed(image, faces)
    got = torch_net.embed(image, faces)
    assert got.shape == want.shape == (len(faces), 128)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(onnx_net.embed(image, faces) - want).max() < 1e-5  # the default engine
    one_by_one = np.vstack([torch_net.embed(image, [f]) for f in faces])
    assert np.abs(one_by_one - got).max() < 1e-5
    # distinct faces stay distinct (the comparison above is not between constant outputs)
    assert (got @ got.T)[~np.eye(len(faces), dtype=bool)].max() < 0.99

    home = tmp_path / "home"
    weights = home / ".deepface" / "weights"
    weights.mkdir(parents=True)
    real = settings.weights_dir / spec.weights_file
    (weights / spec.weights_file).write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    for runtime in ("torch", "onnx"):
        broken = DlibEmbedder(spec, settings.with_(deepface_home=str(home), dlib_engine=runtime))
        with pytest.raises(ModelError) as err:
            broken.load()
        assert spec.weights_file in str(err.value) and "\n" not in str(err.value), runtime


def test_a_collection_keeps_its_index_and_is_searched_by_it(tmp_path, settings):
    """An HNSW collection (built with lite-hnsw) opened with the default FLAT lite profile: writing
    is refused with the profile that fits; searching works, by the collection's own index."""
    from lookalike.ingest.store import Store, StoreError

    db = str(tmp_path / "hnsw.db")
    with Store(db, profile="lite-hnsw") as store:
        rows = fill_synthetic(store, 600)
    store = Store(db)
    try:
        assert store.profile.index_type == "FLAT" and store.index_type("faces_dlib") == "HNSW"
        with pytest.raises(StoreError, match="index is HNSW, profile lite wants FLAT.*--profile lite-hnsw"):
            store.ensure_collection("dlib")
        assert store.search_params("faces_dlib") == {"ef": 128}
        q = np.stack([r["vector"] for r in rows[:3]])
        flt = compile_filter("Male")
        got, info = Searcher(settings.with_(db=db), store=store).search_vectors("dlib", q, 5, flt)
        assert info.mode == "exact" and info.filtered_rows == sum(r["Male"] for r in rows)  # probed
        want = _brute([{**r, "vector": r["vector"]} for r in rows], q, flt, 5)
        assert [[m.id for m in g] for g in got] == [[i for i, _ in w] for w in want]
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["yunet", "dlib"])
def test_detector_matches_deepface_detect_faces_with_alignment_on_demand(settings, backend):
    """Detector.detect gives DeepFace's detect_faces(align=True) boxes, eyes and aligned crops
    (the crop computed only when a model asks for it); exactly for dlib, nearly for YuNet."""
    from deepface.modules import detection

    from lookalike.ingest.models import get_engine
    from lookalike.ingest.models.detector import _NO_BORDER, _SHRINKS_TO

    det = get_engine(settings, backend, ["dlib"]).detector
    image = load(GROUPS / "multiface.jpg")
    faces = det.detect(image)
    assert len(faces) >= 4 and all(f.aligned_bgr is None for f in faces)
    bgr = image.bgr
    if backend in _NO_BORDER:
        ref = [detection.extract_face(facial_area=a, img=bgr, align=True, expand_percentage=0, width_border=0,
                                      height_border=0, detector_backend=backend) for a in det._model.detect_faces(bgr)]
    else:
        ref = detection.detect_faces(detector_backend=backend, img=bgr, align=True)
    ref = sorted(ref, key=lambda d: (max(0, d.facial_area.x), max(0, d.facial_area.y)))
    assert len(faces) == len(ref)
    if backend in _SHRINKS_TO:
        # YuNet sees the photo shrunk before it is bordered, not bordered then shrunk: nearly the
        # same pixels, so nearly the same boxes and eyes (DeepFace rounds them at the small scale,
        # ~4 px here), and the same alignment of them
        for f, d in zip(faces, ref):
            fa, tol = d.facial_area, 0.05 * d.facial_area.w + 2
            assert f.left_eye is not None and f.right_eye is not None
            got = [*f.dbox, *f.left_eye, *f.right_eye]
            want = [max(0, fa.x), max(0, fa.y), fa.w, fa.h, *fa.left_eye, *fa.right_eye]
            assert np.allclose(got, want, atol=tol), (got, want)
            a, b = f.aligned(), d.img.astype(np.uint8)
            assert abs(a.shape[0] - b.shape[0]) <= tol and abs(a.shape[1] - b.shape[1]) <= tol
            b = cv2.resize(b, (a.shape[1], a.shape[0]))
            assert np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1] > 0.9
        return
    assert [f.dbox[:2] for f in faces] == [(max(0, d.facial_area.x), max(0, d.facial_area.y)) for d in ref]
    for f, d in zip(faces, ref):
        assert f.left_eye == tuple(d.facial_area.left_eye) and f.right_eye == tuple(d.facial_area.right_eye)
        assert np.array_equal(f.aligned(), d.img.astype(np.uint8))


def test_detection_never_copies_a_big_photo_at_full_size(settings):
    """The detector's input is bordered after shrinking, so detecting in a 3.6-MP photo allocates
    well under the photo's own size (the full-size bordered copy was 4x it)."""
    import tracemalloc

    from lookalike.ingest.models import get_engine

    det = get_engine(settings, "yunet", ["dlib"]).detector.load()
    image = load(GROUPS / "couple.jpg")  # 2280 x 1588
    det.detect(image)  # first call: the model's own buffers
    tracemalloc.start()
    try:
        faces = det.detect(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(faces) == 2
    assert peak < image.bgr.nbytes / 4, (peak, image.bgr.nbytes)


def test_cli_query_a_folder(sample, tmp_path):
    """A folder is its images, sorted; each gets a sheet named after it; a non-image is ignored."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("couple.jpg", "obama_and_biden.jpg"):
        os.symlink(GROUPS / name, photos / name)
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "out"
    p = _cli(sample, photos, "-k", "1", "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [Path(ph["path"]).name for ph in doc["photos"]] == ["couple.jpg", "obama_and_biden.jpg"]
    assert {f.name for f in out.iterdir()} == {"results.json", "result_couple.png", "result_obama_and_biden.png"}
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _cli(sample, empty)
    assert p.returncode == 2 and "no image in it" in p.stderr
