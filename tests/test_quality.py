"""The quality gate sees defocus and truncation (issue 32, item 2), on real photos through the
library's analysis (YuNet, as ingest and query run it): a blurred bystander and a face cut by the
photo's edge fall below DEFAULT_MIN_QUALITY; sharp CelebA subjects and the gallery's people in the
group photos stay at or above it."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pytest
from conftest import DATA  # noqa: E402  (the sample data folder, $LOOKALIKE_DATA)

from lookalike.ingest.analysis import Analyzer, FaceAnalysis
from lookalike.ingest.images import Decoded, load
from lookalike.ingest.models import Face
from lookalike.ingest.quality import DEFAULT_MIN_QUALITY, assess, in_frame, sharpness

CELEBA = DATA / "celeba" / "img_celeba"
GROUPS = DATA / "groups" / "photos"

# Each gallery person's face in the group photos, by a point inside it (photo pixels): the face
# whose top 5 on the demo database holds the person (bench/bench_quality.py), checked by eye.
# couple.jpg and two_people.jpg: faces.csv lists nobody; bench_accuracy.py adds them by eye.
GALLERY_FACES: Dict[str, List[Tuple[str, Tuple[int, int]]]] = {
    "1024px-Bill_Gates_meets_Prime_Minister_Modi.jpg": [("Bill_Gates", (246, 114))],
    "1024px-Bill_gates_with_CBN_and_district_Collector_Praveen_kumar_at_Visakhapatnam.jpg": [("Bill_Gates", (289, 108))],
    "Jackie-2008-vj.jpg": [("Jackie_Chan", (360, 170))],
    "Steve_Jobs_and_Bill_Gates_(522695099).jpg": [("Bill_Gates", (756, 233))],
    "keanu-and-jackie01.jpg": [("Keanu_Reeves", (160, 169)), ("Jackie_Chan", (465, 234))],
    "kit_with_rose.jpg": [("rose_leslie", (114, 158)), ("kit_harington", (304, 139))],
    "obama_and_biden.jpg": [("biden", (843, 506)), ("obama", (1224, 472))],
    "selfie-many-people.jpg": [("Angelina_Jolie", (146, 367))],
    "couple.jpg": [("Angelina_Jolie", (655, 886))],
    "two_people.jpg": [("obama", (310, 125)), ("biden", (863, 144))],
}


@pytest.fixture(scope="module")
def analyzer(settings) -> Analyzer:
    # detection and quality only: the quality is computed in detect(), before any embedding
    return Analyzer(settings, settings.detector, []).load()


def _faces(analyzer: Analyzer, path: Path) -> List[FaceAnalysis]:
    return analyzer.detect(load(path)).faces


def _face_at(faces: List[FaceAnalysis], point: Tuple[int, int]) -> FaceAnalysis:
    px, py = point
    inside = [fa for fa in faces if fa.box[0] <= px < fa.box[0] + fa.box[2] and fa.box[1] <= py < fa.box[1] + fa.box[3]]
    assert len(inside) == 1, f"{len(inside)} faces hold {point}: {[fa.box for fa in faces]}"
    return inside[0]


def _largest(faces: List[FaceAnalysis]) -> FaceAnalysis:
    return max(faces, key=lambda fa: fa.box[2] * fa.box[3])


# The two faces of the issue as YuNet found them when it was reported (box = dbox: both photos
# decode at full size; eyes and nose tip), so that the measure is checked on them even if a later
# detector finds them differently or not at all.
BLURRED_007103 = Face(index=1, box=(253, 84, 62, 79), confidence=0.7506, dbox=(253, 84, 62, 79),
                      left_eye=(292, 117), right_eye=(270, 115), nose=(276, 131))
CUT_007413 = Face(index=1, box=(873, 727, 126, 191), confidence=0.8083, dbox=(873, 727, 126, 191),
                  left_eye=(962, 806), right_eye=(915, 806), nose=(943, 843))


def _others_at(faces: List[FaceAnalysis], point: Tuple[int, int]) -> List[FaceAnalysis]:
    """The faces holding `point` that are not the photo's subject (largest face)."""
    px, py = point
    main = _largest(faces)
    return [fa for fa in faces if fa is not main and fa.box[0] <= px < fa.box[0] + fa.box[2]
            and fa.box[1] <= py < fa.box[1] + fa.box[3]]


@pytest.mark.needs_data
def test_blurred_bystander_is_below_the_gate(analyzer):
    """007103.jpg: the out-of-focus bystander (62x79 px) beside a sharp subject; its box holds
    the subject's hair and ear, which made it look sharp (quality 0.79 before)."""
    image = load(CELEBA / "007103.jpg")
    q = assess(image, BLURRED_007103)
    assert q.score < DEFAULT_MIN_QUALITY and q.sharpness < 0.04, q
    faces = analyzer.detect(image).faces
    assert _largest(faces).quality.score >= DEFAULT_MIN_QUALITY
    for fa in _others_at(faces, (284, 123)):  # as the detector finds it today, if it does
        assert fa.quality.score < DEFAULT_MIN_QUALITY, fa.quality


@pytest.mark.needs_data
def test_half_face_at_the_edge_is_below_the_gate(analyzer):
    """007413.jpg: a bystander cut by the photo's right edge (and half hidden by a sleeve); 1.0
    before, the top-1 lookalike of a selfie face."""
    image = load(CELEBA / "007413.jpg")
    q = assess(image, CUT_007413)
    assert q.in_frame < 0.8 and q.score < DEFAULT_MIN_QUALITY, q
    faces = analyzer.detect(image).faces
    assert _largest(faces).quality.score >= DEFAULT_MIN_QUALITY
    assert _largest(faces).quality.in_frame == 1.0
    for fa in _others_at(faces, (950, 820)):
        assert fa.quality.score < DEFAULT_MIN_QUALITY, fa.quality


@pytest.mark.needs_data
def test_sharp_celeba_subjects_pass(analyzer):
    """The subject (largest face) of nearly every CelebA sample photo is usable; those of the two
    photos above, and of a photo whose subject's box touches the top edge (hair cut off, the face
    whole: 017761.jpg), pass."""
    scores = []
    for p in sorted(CELEBA.glob("*.jpg")):
        faces = _faces(analyzer, p)
        if faces:
            scores.append(_largest(faces).quality.score)
    share = float(np.mean(np.array(scores) >= DEFAULT_MIN_QUALITY))
    # 95.6 % when written (4.6 % below before the change: turned-away and tiny subjects)
    assert len(scores) >= 600 and share >= 0.95, share
    top = _largest(_faces(analyzer, CELEBA / "017761.jpg"))
    assert top.box[1] == 0 and top.quality.score >= DEFAULT_MIN_QUALITY, top.quality


def _listed_people() -> Dict[str, set]:
    with open(DATA / "groups" / "faces.csv") as f:
        return {row["file"]: set(filter(None, row["people_in_gallery"].split(";"))) for row in csv.DictReader(f)}


@pytest.mark.needs_data
def test_gallery_people_in_group_photos_pass(analyzer):
    listed = _listed_people()
    for photo, people in listed.items():  # every listed person has a face in the table above
        assert people <= {who for who, _ in GALLERY_FACES.get(photo, [])}, photo
    low = []
    for photo, table in GALLERY_FACES.items():
        faces = _faces(analyzer, GROUPS / photo)
        for who, point in table:
            q = _face_at(faces, point).quality
            if q.score < DEFAULT_MIN_QUALITY:
                low.append((photo, who, q))
    assert not low, low


@pytest.mark.needs_data
def test_defocus_and_cropping_lower_a_sharp_face(analyzer):
    """The same sharp face blurred (sigma = 0.1 eye distances: bench/README.md) falls below the
    gate; the photo cropped through the face's eyes leaves less of it in the frame."""
    image = load(CELEBA / "007413.jpg")
    subject = _largest(analyzer.detect(image).faces)
    le, re = subject.face.left_eye, subject.face.right_eye
    assert le is not None and re is not None
    d = float(np.hypot(le[0] - re[0], le[1] - re[1]))
    blurred = cv2.GaussianBlur(image.bgr, (0, 0), 0.1 * d)
    b = _largest(analyzer.detect(Decoded(blurred, 1.0, image.width, image.height)).faces)
    assert b.quality.sharpness < 0.3 * subject.quality.sharpness
    assert b.quality.score < DEFAULT_MIN_QUALITY <= subject.quality.score
    right = (le[0] + re[0]) // 2  # the edge between the eyes
    crop = np.ascontiguousarray(image.bgr[:, :right])
    c = _largest(analyzer.detect(Decoded(crop, 1.0, crop.shape[1], crop.shape[0])).faces)
    assert c.quality.in_frame < 0.75 and c.quality.score < DEFAULT_MIN_QUALITY, c.quality


def test_in_frame_and_inner_sharpness_units():
    # a box inside the photo is whole; one cut by the right edge with its eyes at the edge is half there
    assert in_frame(200, 200, (50, 50, 76, 100), (70, 90), (100, 90)) == 1.0
    half = in_frame(120, 200, (80, 50, 40, 100), (95, 90), (119, 90))
    assert 0.3 < half < 0.75
    # without eyes: the box's extent over the width a box of its height would have
    assert in_frame(118, 200, (80, 50, 38, 100)) == pytest.approx(38 / (100 * 0.757), abs=1e-3)
    # the inner region, not the box: a sharp edge in the box's corner does not make a flat face sharp
    img = np.full((100, 100, 3), 120, np.uint8)
    img[:, :12] = 0
    assert sharpness(img, (5, 5, 90, 90), (62, 40), (38, 40), (50, 55)) == 0.0
    assert sharpness(img, (5, 5, 90, 90)) == 0.0  # no landmarks: the box's middle
