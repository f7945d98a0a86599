"""Matches a user can trust: quality stored and filtered, the same-person verdict, unknown
attributes null and never matched by attribute filters. Real Milvus Lite files, real photos,
the real detector and dlib model."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA  # noqa: E402

from lookalike.ingest.quality import DEFAULT_MIN_QUALITY, frontal, sharpness
from lookalike.schemas import ATTRIBUTES, FACE_FIELDS, VERDICTS, Verdict
from lookalike.schemas.filters import compile_filter

PEOPLE = DATA / "people"
GROUP = DATA / "groups" / "photos" / "obama_and_biden.jpg"


# -- pure units ---------------------------------------------------------------------------------
def test_frontal_from_eyes_and_nose():
    assert frontal((60, 50), (40, 50), (50, 62)) == pytest.approx(1.0)
    assert frontal((60, 50), (40, 50), (60, 62)) == pytest.approx(0.0)  # nose level with an eye
    assert 0.3 < frontal((60, 50), (40, 50), (55, 62)) < 0.7
    assert frontal((60, 50), (40, 50), None) == -1.0


def test_blur_lowers_sharpness():
    import cv2

    rng = np.random.default_rng(0)
    img: np.ndarray = (rng.random((120, 120, 3)) * 255).astype(np.uint8)
    img = cv2.resize(cv2.resize(img, (30, 30)), (120, 120), interpolation=cv2.INTER_NEAREST)
    blurred = cv2.GaussianBlur(img, (0, 0), 4)
    box = (10, 10, 100, 100)
    assert sharpness(img, box) > 3 * sharpness(blurred, box)
    assert sharpness(np.full((50, 50, 3), 128, np.uint8), (0, 0, 50, 50)) == 0.0


@pytest.mark.parametrize("expr", ["Smiling == false", "not Smiling", "Smiling != true",
                                  "not (Smiling and Male)", "Smiling in [true, false]"])
def test_attribute_filters_never_match_unannotated_faces(expr):
    flt = compile_filter(expr)
    assert flt is not None
    unknown = {a: None for a in ATTRIBUTES} | {"has_attributes": False}
    known = {a: False for a in ATTRIBUTES} | {"has_attributes": True}
    assert not flt.evaluate(unknown)
    assert "has_attributes == true" in flt.render()
    if expr != "Smiling in [true, false]":
        assert flt.evaluate(known)  # an annotated face that is not smiling does match


def test_unannotated_faces_can_still_be_asked_for():
    flt = compile_filter("has_attributes == false")
    assert flt is not None
    assert flt.evaluate({"has_attributes": False})
    assert flt.render() == "has_attributes == false"


def test_verdict_is_recorded_with_its_source():
    v = VERDICTS["dlib"]
    assert isinstance(v, Verdict) and 0.5 < v.threshold < 1.0 and "LFW" in v.source
    assert v.slope and v.far_curve and 0 < v.fpir < 0.5


def test_search_threshold_rises_with_the_gallery_and_agrees_with_the_probability():
    v = VERDICTS["dlib"]
    sizes = [1, 10, 100, 753, 1421, 10_000, 200_000, 10**9]
    thresholds = [v.threshold_for(n) for n in sizes]
    assert thresholds[0] == v.threshold_for(2) == v.threshold  # a pair or two: the pair threshold
    assert thresholds == sorted(thresholds) and len(set(thresholds)) == len(thresholds)
    assert thresholds[-1] <= 0.999
    for n, t in zip(sizes, thresholds):
        assert v.probability(t, n) == pytest.approx(0.5)
        below, above = v.probability(t - 0.01, n), v.probability(t + 0.01, n)
        assert below is not None and above is not None and below < 0.5 < above
    # between two measured points of the impostor tail the threshold lies between theirs
    (t3, f3), (t4, f4) = v.far_curve[-2:]
    assert t3 < v.threshold_for(round(v.fpir / (f3 * f4) ** 0.5)) < t4


def test_search_calibration_on_made_up_identities():
    """Two well-separated clusters per identity: the open-set figures are what they must be."""
    from lookalike.query.evaluation import search_calibration

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 32))
    vecs, ids = [], []
    for i, c in enumerate(centres):
        for _ in range(3):
            x = c + 0.05 * rng.normal(size=32)
            vecs.append(x / np.linalg.norm(x))
            ids.append(f"p{i}")
    cal = search_calibration(np.array(vecs), ids)
    assert cal["faces"] == 180 and cal["identities"] == 60 and cal["mated_searches"] == 180
    assert [p["far"] for p in cal["curve"]] == sorted((p["far"] for p in cal["curve"]), reverse=True)
    for lv in cal["levels"]:
        assert lv["tpir"] == 1.0 and lv["fpir"] <= 2 * lv["fpir_target"] + 0.02


# -- a real gallery -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gallery(tmp_path_factory, settings):
    """obama, biden and two LFW people ingested from folders (no CelebA attributes), plus one
    stored copy of an obama face marked low quality (as a blurred bystander would be)."""
    from lookalike import ingest
    from lookalike.ingest.store import Store

    root = tmp_path_factory.mktemp("gallery")
    src = root / "people"
    for name in ("obama", "biden", "Tom_Hanks", "Hu_Jintao"):
        shutil.copytree(PEOPLE / name, src / name)
    db = str(root / "g.db")
    ingest.run(str(src), models="dlib", workers=0, progress=False, settings=settings.with_(db=db),
               report=str(root / "report.txt"))
    with Store(db) as store:
        rows = [r for r in store.iterate("faces_dlib", [f.name for f in FACE_FIELDS] + ["vector"])
                if r["identity"] == "obama"]
        junk = dict(rows[0], id="f" * 64 + "_9", face_index=9, quality=0.05, source_path="/junk/obama_blur.jpg")
        store.upsert_faces("dlib", [junk])
        store.flush(["faces_dlib"])
    return db


def test_quality_fields_stored_and_attributes_null(gallery):
    from lookalike.ingest.store import Store

    with Store(gallery) as store:
        rows = list(store.iterate("faces_dlib", ["id", "box_w", "box_h", "face_size", "sharpness", "frontal",
                                                 "quality", "has_attributes", "Smiling"]))
        assert rows
        for r in rows:
            if r["id"].startswith("f" * 64):
                continue
            assert r["face_size"] == min(r["box_w"], r["box_h"])
            assert 0.0 <= r["quality"] <= 1.0 and r["sharpness"] >= 0 and -1.0 <= r["frontal"] <= 1.0
            assert r["has_attributes"] is False and r["Smiling"] is None
        assert store.count("faces_dlib", compile_filter("Smiling == false")) == 0
        assert store.count("faces_dlib", compile_filter("not Smiling")) == 0
        assert store.count("faces_dlib", compile_filter("has_attributes == false")) == len(rows)


def test_low_quality_faces_skipped_by_default_and_kept_on_request(gallery, settings):
    from lookalike.query.search import Searcher

    with Searcher(settings.with_(db=gallery)) as s:
        default = s.search_photo(str(GROUP), top_k=10)
        every = s.search_photo(str(GROUP), top_k=10, min_quality=0)
    junk = "f" * 64 + "_9"
    assert default.min_quality == DEFAULT_MIN_QUALITY and every.min_quality == 0
    assert all(m.id != junk for f in default.faces for m in f.matches)
    assert any(m.id == junk for f in every.faces for m in f.matches)
    for f in default.faces:
        assert f.quality is not None and f.low_quality == (f.quality < DEFAULT_MIN_QUALITY)
        assert all(m.quality is None or m.quality >= DEFAULT_MIN_QUALITY for m in f.matches)


def test_verdict_on_a_group_photo(gallery, settings):
    from lookalike.query.results import results_document, validate_document
    from lookalike.query.search import Searcher

    with Searcher(settings.with_(db=gallery)) as s:
        r = s.search_photo(str(GROUP), top_k=5)
    thr = VERDICTS["dlib"].threshold_for(r.search[0].rows)
    assert r.search[0].same_person_threshold == round(thr, 4) and thr > VERDICTS["dlib"].threshold
    assert not validate_document(results_document([r]))
    assert len(r.faces) == 2
    for f in r.faces:
        top = f.matches[0]
        assert top.identity in ("obama", "biden") and top.same_person is True
        for m in f.matches:
            assert m.same_person_probability is not None  # dlib has a verdict
            assert m.same_person == (m.score >= thr) == (m.same_person_probability >= 0.5)
            assert 0.0 <= m.same_person_probability <= 1.0
            assert all(v is None for v in m.attributes.values())
        probs = [m.same_person_probability for m in f.matches if m.same_person_probability is not None]
        assert probs == sorted(probs, reverse=True)  # monotone in the score
    assert {f.matches[0].identity for f in r.faces} == {"obama", "biden"}


def test_strangers_get_no_same_person_verdict(gallery, settings):
    """Faces of people who are not in the gallery: lookalikes, never 'the same person'."""
    from lookalike.query.search import Searcher

    with Searcher(settings.with_(db=gallery)) as s:
        r = s.search_photo(str(DATA / "groups" / "photos" / "kit_with_rose.jpg"), top_k=5)
    assert r.faces
    for f in r.faces:
        assert f.matches and not f.same_person


def test_cli_shows_verdict_and_min_quality(gallery, tmp_path):
    env_py = [sys.executable, "-m", "lookalike.query.app.cli"]
    out = subprocess.run(env_py + ["query", str(GROUP), "--db", gallery, "-k", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "likely the same person: biden" in out.stdout and "likely the same person: obama" in out.stdout
    assert "same " in out.stdout
    js = subprocess.run(env_py + ["query", str(GROUP), "--db", gallery, "--all-faces", "--json", "-k", "10"],
                        capture_output=True, text=True, timeout=300)
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert doc["photos"][0]["min_quality"] == 0
    assert any(m["id"] == "f" * 64 + "_9" for f in doc["photos"][0]["faces"] for m in f["matches"])
    bad = subprocess.run(env_py + ["query", str(GROUP), "--db", gallery, "--min-quality", "2"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--min-quality" in bad.stderr and "Traceback" not in bad.stderr


def test_strangers_against_a_celebrity_gallery(tmp_path, settings):
    """Group photos of people who are not in the CelebA sample: each face still gets its nearest
    lookalikes, and (almost) none is called the same person as a celebrity. A pair threshold would
    call nearly all of them someone: their best scores lie above it."""
    from lookalike import ingest
    from lookalike.query.search import Searcher

    db = str(tmp_path / "celeba.db")
    ingest.run(str(DATA / "celeba"), models="dlib", workers=2, progress=False, settings=settings.with_(db=db),
               report=str(tmp_path / "report.jsonl"))
    faces = []
    with Searcher(settings.with_(db=db)) as s:
        for photo in ("t1.jpg", "multiface.jpg"):
            faces += s.search_photo(str(DATA / "groups" / "photos" / photo), top_k=5).faces
    assert len(faces) >= 10 and all(len(f.matches) == 5 for f in faces)
    assert sum(f.matches[0].score >= VERDICTS["dlib"].threshold for f in faces) >= len(faces) // 2
    assert sum(bool(f.same_person) for f in faces) <= 1


# -- a face too poor to judge (issue 31) --------------------------------------------------------
def _downscaled_group(tmp_path, factor: int = 5):
    """obama_and_biden.jpg at a fifth of its size: Obama's and Biden's faces ~37x48 px, of quality
    below the gate, whose best matches still score above the verdict's threshold."""
    from PIL import Image

    out = tmp_path / "obama_and_biden_small.jpg"
    with Image.open(GROUP) as im:
        im.convert("RGB").resize((im.width // factor, im.height // factor), Image.Resampling.BILINEAR).save(
            out, quality=90)
    return out


def test_a_face_too_poor_to_judge_is_called_nobody(gallery, settings, tmp_path):
    """A query face below the quality gate gets no "same person" match even where its score
    reaches the threshold; its verdict is "too_poor" (JSON, text). Good faces keep theirs."""
    from lookalike.query.render import format_text
    from lookalike.query.results import results_document, validate_document
    from lookalike.query.search import Searcher

    small = _downscaled_group(tmp_path)
    with Searcher(settings.with_(db=gallery)) as s:
        r = s.search_photo(str(small), top_k=5)
        big = s.search_photo(str(GROUP), top_k=5)
    thr = r.search[0].same_person_threshold
    assert thr is not None
    poor = [f for f in r.faces if f.low_quality]
    assert poor and all(f.quality is not None and f.quality < DEFAULT_MIN_QUALITY for f in poor)
    # the score alone would call them Obama and Biden: the old verdict did
    assert any(f.matches[0].identity in ("obama", "biden") and f.matches[0].score >= thr for f in poor)
    for f in poor:
        assert f.verdict == "too_poor" and f.same_person == []
        assert all(m.same_person is None and m.same_person_probability is None for m in f.matches)
    doc = results_document([r])
    assert not validate_document(doc)
    for f in doc["photos"][0]["faces"]:
        if f["low_quality"]:
            assert f["verdict"] == "too_poor" and "verdict_by_model" not in f
            assert all(m["same_person"] is None for m in f["matches"])
    text = format_text(r)
    assert "face too poor to judge (quality 0." in text and "likely the same person" not in text
    assert "same " not in text  # no match says "same NN%"
    # good faces unchanged: Obama and Biden at full size are the same person
    good = [f for f in big.faces if not f.low_quality]
    assert {f.matches[0].identity for f in good} == {"obama", "biden"}
    assert all(f.verdict == "same_person" and f.matches[0].same_person is True for f in good)
    assert all(f.verdict == "too_poor" for f in big.faces if f.low_quality)


def test_cli_says_a_face_is_too_poor_to_judge(gallery, tmp_path):
    small = _downscaled_group(tmp_path)
    env_py = [sys.executable, "-m", "lookalike.query.app.cli"]
    out = subprocess.run(env_py + ["query", str(small), "--db", gallery, "-k", "3", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "face too poor to judge (quality 0." in out.stdout
    assert "likely the same person" not in out.stdout and "same " not in out.stdout
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    faces = doc["photos"][0]["faces"]
    assert faces and any(f["verdict"] == "too_poor" for f in faces)
    for f in faces:
        assert f["verdict"] in ("too_poor", "nobody")
        if f["verdict"] == "too_poor":
            assert f["low_quality"] and all(m["same_person"] is None for m in f["matches"])
    assert (tmp_path / "o" / "result.png").exists()


def _poor_and_good_faces():
    from lookalike.query.results import Match, PhotoResult, QueryFace

    def match(rank, score, identity, same):
        m = Match.from_row(rank, score, {"id": f"x_{rank}", "identity": identity, "source_path": str(GROUP),
                                         "box_x": 762, "box_y": 397, "box_w": 175, "box_h": 242})
        return m.model_copy(update={"same_person": same, "same_person_probability": 0.9 if same else 0.1})

    # a face too poor to judge whose match still says "same" (a document of an earlier version)
    poor = QueryFace(index=0, box=(762, 397, 175, 242), confidence=0.9, quality=0.3, low_quality=True,
                     matches_by_model={"dlib": [match(1, 0.95, "biden", True), match(2, 0.90, "obama", False)]})
    good = QueryFace(index=1, box=(1143, 367, 185, 237), confidence=0.9, quality=1.0,
                     matches_by_model={"dlib": [match(1, 0.96, "obama", True)]})
    return PhotoResult(path=str(GROUP), sha256="", width=2000, height=1428, detector="yunet", models=["dlib"],
                       top_k=2, faces=[poor, good])


def test_face_verdicts_per_model():
    from lookalike.query.results import QueryFace

    r = _poor_and_good_faces()
    poor, good = r.faces
    assert poor.verdict == "too_poor" and good.verdict == "same_person"
    nobody = good.model_copy(update={"matches_by_model": {"dlib": [
        good.matches[0].model_copy(update={"same_person": False})]}})
    assert nobody.verdict == "nobody"
    clip = [good.matches[0].model_copy(update={"same_person": None, "same_person_probability": None})]
    two = QueryFace(index=0, box=(0, 0, 9, 9), confidence=0.9, quality=0.1, low_quality=True,
                    matches_by_model={"dlib": list(poor.matches), "clip": clip})
    assert two.verdict == "too_poor" and two.verdict_by_model == {"dlib": "too_poor", "clip": None}
    js = two.model_dump(mode="json")
    assert js["verdict"] == "too_poor" and js["verdict_by_model"] == {"dlib": "too_poor", "clip": None}
    assert "verdict_by_model" not in poor.model_dump(mode="json")
    assert QueryFace(index=0, box=(0, 0, 9, 9), confidence=0.9).verdict is None  # nothing searched


def test_contact_sheet_says_too_poor_to_judge(monkeypatch):
    """The sheet's row of a face too poor to judge says so with its quality, and none of its
    matches is framed or captioned as the same person; a good face's still is."""
    from PIL import ImageDraw

    from lookalike.query import render

    drawn, frames = [], []
    text, rect = ImageDraw.ImageDraw.text, ImageDraw.ImageDraw.rectangle

    def spy_text(self, xy, t, *a, **kw):
        drawn.append((xy, t))
        return text(self, xy, t, *a, **kw)

    def spy_rect(self, xy, *a, **kw):
        if kw.get("outline") == render.SAME_COLOUR:
            frames.append(tuple(xy))
        return rect(self, xy, *a, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy_text)
    monkeypatch.setattr(ImageDraw.ImageDraw, "rectangle", spy_rect)
    r = _poor_and_good_faces()
    sheet = render.render_sheet(r)
    assert sheet.size == render.sheet_size(r.width, r.height, 2, 2)
    band = [t for _, t in drawn if t.startswith("face too poor to judge (quality 0.30)")]
    assert band, sorted(t for _, t in drawn)
    same = [t for _, t in drawn if "same person" in t and not t.startswith("face too poor")]
    assert same == ["0.96 · same person"]  # the good face's match only
    y_rows = render.MARGIN + render.HEADER_H + render.photo_height(r.width, r.height) + render.GAP
    assert len(frames) == 1 and frames[0][1] >= y_rows + render.ROW_H  # in the second (good) row
