"""Face detection (yunet, the default) on the group photos: the counts faces.csv gives, no face
where there is none, the gallery's people found, small faces of a large photo found once each.

The real detector through the library (ingest.models.detector), the real photos of the sample
data. Before issue 32 (DeepFace's half-size black border, the photo seen at <= 320 px) the selfie
gave 5 faces of 6-7 and the Visakhapatnam photo 6 of 7-9 (bench/results/detect.txt)."""
from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest
from conftest import DATA  # noqa: E402  (the sample data folder, $LOOKALIKE_DATA)

from lookalike.ingest.images import Decoded, load
from lookalike.ingest.models.detector import Detector

GROUPS = DATA / "groups" / "photos"
SELFIE = "selfie-many-people.jpg"
VISAKHAPATNAM = "1024px-Bill_gates_with_CBN_and_district_Collector_Praveen_kumar_at_Visakhapatnam.jpg"


def _faces_csv():
    with open(DATA / "groups" / "faces.csv") as f:
        return {r["file"]: (int(r["faces_min"]), int(r["faces_max"]), [p for p in r["people_in_gallery"].split(";") if p])
                for r in csv.DictReader(f)}


FACES = _faces_csv()


@pytest.fixture(scope="module")
def detector(settings):
    return Detector("yunet", settings).load()


@pytest.mark.parametrize("photo", [SELFIE, VISAKHAPATNAM])
def test_the_missed_faces_are_found(detector, photo):
    """The selfie's close-up cut by the right edge, the Visakhapatnam photo's pilot (40 px)."""
    lo, hi, _ = FACES[photo]
    faces = detector.detect(load(GROUPS / photo))
    assert lo <= len(faces) <= hi, [(f.box, round(f.confidence, 2)) for f in faces]


@pytest.mark.parametrize("photo", sorted(FACES))
def test_every_group_photo_within_its_range(detector, photo):
    lo, hi, _ = FACES[photo]
    image = load(GROUPS / photo)
    faces = detector.detect(image)
    assert lo <= len(faces) <= hi, [(f.box, round(f.confidence, 2)) for f in faces]
    # the Face contract: numbered left to right, boxes in the photo, landmarks in the box, the
    # threshold held, an aligned crop on demand
    assert [f.index for f in faces] == list(range(len(faces)))
    assert [(f.box[0], f.box[1]) for f in faces] == sorted((f.box[0], f.box[1]) for f in faces)
    H, W = image.bgr.shape[:2]
    for f in faces:
        x, y, w, h = f.dbox
        assert 0 <= x and 0 <= y and w > 1 and h > 1 and x + w <= W and y + h <= H
        assert f.backend == "yunet" and f.confidence >= detector.settings.yunet_threshold
        for p in (f.left_eye, f.right_eye, f.nose):
            assert p is not None and x - 0.25 * w <= p[0] <= x + 1.25 * w and y - 0.25 * h <= p[1] <= y + 1.25 * h
        assert f.left_eye[0] > f.right_eye[0]  # the person's left eye: the image's right
    if faces:
        crop = faces[0].aligned()
        assert crop.dtype == np.uint8 and crop.ndim == 3 and min(crop.shape[:2]) > 10


@pytest.mark.parametrize("photo", ["no-faces.jpg", "no-faces-landscape.jpg"])
def test_no_face_where_there_is_none(detector, photo):
    assert detector.detect(load(GROUPS / photo)) == []


def test_small_faces_of_a_large_photo_found_once_each(detector):
    """Twelve faces of 36 px pasted into a 2400 x 1600 landscape, some across the detail pass's
    tile seams: each found, once (the tiles' faces are not doubled), where they are; DeepFace's
    framing shows them at < 6 px and finds none."""
    rng = np.random.default_rng(7)
    people = sorted((DATA / "lfw" / "lfw").glob("*/*_0001.jpg"))
    picks = [people[i] for i in rng.choice(len(people), 12, replace=False)]
    canvas = cv2.resize(load(GROUPS / "no-faces-landscape.jpg").bgr, (2400, 1600))
    side = round(250 * 36 / 105)  # an LFW face is ~105 px wide in its 250-px photo
    # the detail pass's tiles here: 4 x 3, seams near x = 627, 1200, 1772 and y = 550, 1047
    spots = [(x, 510) for x in (530, 640, 1130, 1230, 1700, 1800)] + [(x, 1000) for x in (100, 900, 1500, 2250)] \
        + [(300, 1450), (2000, 1450)]
    for p, (x, y) in zip(picks, spots):
        canvas[y:y + side, x:x + side] = cv2.resize(load(p).bgr, (side, side), interpolation=cv2.INTER_AREA)
    image = Decoded(bgr=canvas, scale=1.0, width=2400, height=1600)
    faces = detector.detect(image)
    centres = [(x + side / 2, y + side / 2) for x, y in spots]
    hits = [sum(abs(f.box[0] + f.box[2] / 2 - cx) < side / 2 and abs(f.box[1] + f.box[3] / 2 - cy) < side / 2
                for f in faces) for cx, cy in centres]
    assert all(h <= 1 for h in hits), hits  # no face twice
    assert sum(hits) >= 11, hits
    assert len(faces) <= sum(hits) + 1  # nothing (or next to nothing) in the landscape itself


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, settings):
    """The people/ gallery ingested (dlib, yunet)."""
    from lookalike import ingest

    root = tmp_path_factory.mktemp("detection_gallery")
    shutil.copytree(DATA / "people", root / "people")
    db = str(root / "g.db")
    summary = ingest.run(str(root / "people"), models="dlib", workers=0, progress=False,
                         settings=settings.with_(db=db, detector="yunet"), report=str(root / "report.txt"))
    assert summary.images_failed == 0
    return db


@pytest.mark.parametrize("photo", sorted(p for p, (_, _, people) in FACES.items() if people))
def test_known_people_found_in_the_group_photos(gallery, settings, photo):
    """Each gallery person faces.csv lists for a group photo is some face's best match."""
    from lookalike.query.search import Searcher

    with Searcher(settings.with_(db=gallery, detector="yunet")) as s:
        r = s.search_photo(str(GROUPS / photo), top_k=1, min_quality=0)
    best = {f.matches[0].identity for f in r.faces if f.matches}
    assert set(FACES[photo][2]) <= best, (FACES[photo][2], best)
