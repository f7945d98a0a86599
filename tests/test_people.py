"""People (`lookalike people`, `query.people`): the people gallery ingested for real (YuNet + dlib
into Milvus Lite), then grouped into persons; names, merges, ids, new ingests and erasure."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from lookalike import ingest
from lookalike.ingest.quality import DEFAULT_MIN_QUALITY
from lookalike.query.app.cli import main
from lookalike.query.people import PeopleError, average_linkage, merge_persons, name_person, people

GALLERY = DATA / "people"
LATER = ("Tom_Hanks", 3)  # the last 3 photos of this folder are ingested later


def pairwise_f1(pred, true) -> float:
    both, a, b = Counter(zip(pred, true)), Counter(pred), Counter(true)

    def pairs(c):
        return sum(v * (v - 1) / 2 for v in c.values())

    p, r = pairs(both) / pairs(a), pairs(both) / pairs(b)
    return 2 * p * r / (p + r)


def bcubed_f1(pred, true) -> float:
    both, a, b = Counter(zip(pred, true)), Counter(pred), Counter(true)
    p = np.mean([both[(x, y)] / a[x] for x, y in zip(pred, true)])
    r = np.mean([both[(x, y)] / b[y] for x, y in zip(pred, true)])
    return float(2 * p * r / (p + r))


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, settings):
    """The gallery less LATER's last photos (in `later/`), ingested into a database of its own."""
    root = tmp_path_factory.mktemp("people")
    src, later = root / "gallery", root / "later"
    shutil.copytree(GALLERY, src)
    who, n = LATER
    (later / who).mkdir(parents=True)
    for p in sorted((src / who).iterdir())[-n:]:
        p.rename(later / who / p.name)
    db = root / "base.db"
    ingest.run(str(src), workers=0, progress=False, settings=settings.with_(db=str(db)), report=str(root / "r1.jsonl"))
    return root, db, later


@pytest.fixture
def db_copy(gallery, tmp_path, settings):
    """A fresh copy of the ingested database, and its settings."""
    root, db, later = gallery
    mine = tmp_path / "faces.db"
    shutil.copytree(db, mine)
    return settings.with_(db=str(mine)), later


def labelled(result):
    """(person id, identity) of every clustered face that carries an identity."""
    return [(p.id, f.identity) for p in result.people for f in p.faces if f.identity]


def test_persons_match_the_gallery_identities_and_take_their_names(db_copy):
    s, _ = db_copy
    r = people(settings=s)
    assert r.reclustered and r.model == "dlib"
    pairs = labelled(r)
    pred, true = [p for p, _ in pairs], [t for _, t in pairs]
    assert pairwise_f1(pred, true) >= 0.9
    assert bcubed_f1(pred, true) >= 0.9
    # each identity with 5+ faces: its largest person is named after it, by the identity
    for ident, n in Counter(true).items():
        if n < 5:
            continue
        best = max(r.people, key=lambda p: sum(f.identity == ident for f in p.faces))
        assert best.name == ident and best.named_by == "identity", (ident, best.name)
        assert sum(f.identity == ident for f in best.faces) >= 0.7 * n
    # the representative is one of the person's faces; photos counted by content
    for p in r.people:
        assert p.representative in p.faces
        assert 1 <= p.photos <= len(p.faces)


def test_low_quality_faces_are_listed_apart(db_copy):
    s, _ = db_copy
    r = people(settings=s)
    assert r.unclustered, "the gallery has bystanders below the gate"
    assert all(f.quality is not None and f.quality < DEFAULT_MIN_QUALITY for f in r.unclustered)
    clustered = {f.id for p in r.people for f in p.faces}
    assert not clustered & {f.id for f in r.unclustered}
    assert all(f.quality is None or f.quality >= DEFAULT_MIN_QUALITY for p in r.people for f in p.faces)
    doc = r.to_dict()
    assert len(doc["unclustered"]) == len(r.unclustered)
    # every stored face is either someone's or listed apart
    assert len(clustered) + len(r.unclustered) == sum(1 for _ in _stored_ids(s))


def _stored_ids(s):
    from lookalike.ingest.store import Store

    with Store.from_settings(s) as store:
        yield from (r["id"] for r in store.iterate("faces_dlib", ["id"]))


def _assignment(result):
    return {f.id: p.id for p in result.people for f in p.faces}


def test_ids_are_stable_across_runs_and_reclusters(db_copy):
    s, _ = db_copy
    first = _assignment(people(settings=s))
    again = people(settings=s)
    assert not again.reclustered and again.clustered == 0
    assert _assignment(again) == first
    re = people(settings=s, recluster=True)
    assert re.reclustered and re.new_people == 0
    assert _assignment(re) == first


def test_names_and_merges_survive_reruns_a_recluster_and_a_new_ingest(db_copy, settings):
    s, later = db_copy
    r = people(settings=s)
    hanks = max(r.people, key=lambda p: sum(f.identity == "Tom_Hanks" for f in p.faces))
    jolie = max(r.people, key=lambda p: sum(f.identity == "Angelina_Jolie" for f in p.faces))
    small = [p for p in r.people if p.id not in (hanks.id, jolie.id)][-1]  # a person of one face
    assert name_person(hanks.id, "Tom", settings=s) == hanks.id
    assert merge_persons(jolie.id, [small.id], settings=s) == jolie.id
    assert name_person(small.id, "Angie", settings=s) == jolie.id  # a merged id names its person
    with pytest.raises(PeopleError):
        name_person(10_000, "nobody", settings=s)
    with pytest.raises(PeopleError):
        merge_persons(jolie.id, [small.id], settings=s)  # already one person

    def check(res):
        h, j = res.person(hanks.id), res.person(jolie.id)
        assert (h.name, h.named_by) == ("Tom", "user")
        assert (j.name, j.named_by) == ("Angie", "user")
        assert {f.id for f in small.faces} <= {f.id for f in j.faces}
        assert small.id in j.merged and all(p.id != small.id for p in res.people)
        return h

    check(people(settings=s))
    check(people(settings=s, recluster=True))
    # a new ingest: the held-out photos of Tom Hanks join his person, nothing else moves
    before = _assignment(people(settings=s))
    ingest.run(str(later), workers=0, progress=False, settings=s, report=str(Path(s.db).parent / "r2.jsonl"))
    res = people(settings=s)
    assert not res.reclustered and res.clustered == LATER[1]
    h = check(res)
    new = [f for f in h.faces if f.source.startswith(str(later))]
    assert len(new) >= LATER[1] - 1 and res.joined >= LATER[1] - 1
    after = _assignment(res)
    assert all(after[fid] == pid or fid not in after for fid, pid in before.items() if pid not in (small.id,))
    check(people(settings=s, recluster=True))


def test_an_erased_photo_leaves_its_person(db_copy):
    s, _ = db_copy
    r = people(settings=s)
    big = r.people[0]
    name_person(big.id, "Big", settings=s)
    gone = big.faces[0]
    ingest.delete(image=gone.source, settings=s)
    # the erasure itself removed the face from the person tables (they hold its content hash)
    from lookalike.ingest.store import Store
    from lookalike.schemas import PERSON_FACES_COLLECTION

    with Store.from_settings(s) as store:
        left = [r["face_id"] for r in store.iterate(PERSON_FACES_COLLECTION, ["face_id"])]
    assert left and gone.id not in left
    after = people(settings=s)
    assert after.dropped == 0
    assert gone.id not in {f.id for p in after.people for f in p.faces}
    p = after.person(big.id)
    assert len(p.faces) == len(big.faces) - 1 and p.name == "Big"
    assert people(settings=s).dropped == 0


def test_cli_table_json_name_merge(db_copy, capsys, tmp_path):
    s, _ = db_copy
    assert main(["people", "--db", s.db, "--json", "--out", str(tmp_path / "sheet")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (tmp_path / "sheet" / "people.png").stat().st_size > 1000
    first = doc["people"][0]
    assert set(first) >= {"id", "name", "faces"}
    assert set(first["faces"][0]) == {"id", "source", "face"} and isinstance(first["faces"][0]["face"], int)
    assert main(["people", "name", str(first["id"]), "Someone", "--db", s.db]) == 0
    assert main(["people", "--db", s.db, "--min-faces", "2"]) == 0
    out = capsys.readouterr().out
    assert "Someone" in out and "faces below quality" in out
    assert main(["people", "merge", str(first["id"]), str(doc["people"][1]["id"]), "--db", s.db]) == 0
    assert main(["people", "name", "99999", "x", "--db", s.db]) == 2
    assert main(["people", "--db", str(tmp_path / "missing.db")]) == 2


def _dense_average_linkage(x, t):
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    size, label = np.ones(len(x)), np.arange(len(x))
    while True:
        i, j = np.unravel_index(int(np.argmax(s)), s.shape)
        if s[i, j] < t:
            return label
        new = (size[i] * s[i] + size[j] * s[j]) / (size[i] + size[j])
        s[i, :], s[:, i] = new, new
        s[i, i] = s[j, :] = s[:, j] = -np.inf
        size[i] += size[j]
        label[label == j] = i


def test_graph_average_linkage_equals_all_pairs_and_keeps_fixed_persons_apart():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((12, 16))
    x = centres[rng.integers(0, 12, 150)] + rng.standard_normal((150, 16)) * 0.35
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for t in (0.6, 0.75, 0.9):
        edges = np.argwhere(np.triu(x @ x.T >= t, 1))  # every pair that can matter
        got, want = average_linkage(x, edges, t), _dense_average_linkage(x, t)
        assert bcubed_f1(got.tolist(), want.tolist()) == pytest.approx(1.0)
    # two starting clusters never merge; a loose row joins the one it is closest to on average
    y = np.array([[1, 0], [0.99, 0.141], [0.96, 0.28], [0.9, 0.436]])
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    labels = average_linkage(y, [(0, 1), (1, 2), (2, 3), (0, 3), (1, 3)], 0.5, initial=[0, 0, 1, -1])
    assert labels[0] == labels[1] != labels[2] and labels[3] == labels[2]


# ---------------------------------------------------------------------------------------------
# Queries answered by person (QueryFace.person)
# ---------------------------------------------------------------------------------------------
GROUPS = DATA / "groups" / "photos"


def _answers(searcher, photo):
    r = searcher.search_photo(str(GROUPS / photo))
    return [(f.verdict, f.person, f.matches[0].identity if f.matches else "") for f in r.faces]


def test_query_faces_are_answered_by_person_after_people_ran(db_copy):
    from lookalike.query.search import Searcher

    s, _ = db_copy
    with Searcher(s) as searcher:
        # people never ran: no person tables, no answer (and no error)
        before = _answers(searcher, "obama_and_biden.jpg")
        assert before and all(p is None for _, p, _ in before)
        assert not searcher.store.has_collection("lookalike_persons")

        r = people(settings=s, store=searcher.store)
        ids = {p.name: p.id for p in r.people if p.named_by == "identity"}
        got = _answers(searcher, "obama_and_biden.jpg")
        assert sorted(v for v, _, _ in got) == ["same_person", "same_person"]
        for _, p, ident in got:  # each face: the gallery person of its best same-person match
            assert p.answer == "named" and p.name == ident and p.named_by == "identity" and p.id == ids[ident]
        # a user's name wins; a merge is followed
        name_person(ids["obama"], "Barack Obama", settings=s, store=searcher.store)
        got = {ident: p for _, p, ident in _answers(searcher, "obama_and_biden.jpg")}
        assert got["obama"].name == "Barack Obama" and got["obama"].named_by == "user"
        assert got["obama"].id == ids["obama"] and got["biden"].name == "biden"
        merge_persons(ids["biden"], [ids["obama"]], settings=s, store=searcher.store)
        got = {ident: p for _, p, ident in _answers(searcher, "obama_and_biden.jpg")}
        # (the kept person had no user name: it takes the merged one's)
        assert got["obama"].id == ids["biden"] == got["biden"].id
        assert got["obama"].name == got["biden"].name == "Barack Obama"
        # strangers: nobody in the gallery is them
        stranger = _answers(searcher, "multiface.jpg")
        assert any(v == "nobody" for v, _, _ in stranger)
        for v, p, _ in stranger:
            assert (p is None) if v == "too_poor" else (v == "nobody" and p.answer == "unknown" and p.id is None)
        # the user's name removed: named by the identity most of the merged person's faces carry
        name_person(ids["biden"], "", settings=s, store=searcher.store)
        doc = searcher.search_photo(str(GROUPS / "obama_and_biden.jpg")).to_json()
        assert len({f["person"]["name"] for f in doc["faces"]}) == 1
        assert {f["person"]["name"] for f in doc["faces"]} <= {"obama", "biden"}
        assert {(f["person"]["answer"], f["person"]["named_by"]) for f in doc["faces"]} == {("named", "identity")}
        assert doc["faces"][0]["person"]["name"] == people(settings=s, store=searcher.store, update=False).person(
            ids["biden"]).name


def test_query_answer_in_the_cli_table(db_copy, capsys):
    s, _ = db_copy
    photo = str(GROUPS / "obama_and_biden.jpg")
    assert main(["query", photo, "--db", s.db, "-k", "2"]) == 0
    assert "   person: " not in capsys.readouterr().out  # people never ran
    assert main(["people", "--db", s.db]) == 0
    capsys.readouterr()
    assert main(["query", photo, "--db", s.db, "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "likely the same person: biden\n   person: biden (person " in out
    assert main(["query", photo, "--db", s.db, "--json"]) == 0
    faces = json.loads(capsys.readouterr().out)["photos"][0]["faces"]
    assert {f["person"]["answer"] for f in faces} == {"named"} and all(f["person"]["id"] for f in faces)


def test_people_read_only_lists_without_clustering(db_copy):
    s, _ = db_copy
    empty = people(settings=s, update=False)
    assert empty.people == [] and empty.pending > 0 and not empty.reclustered
    from lookalike.ingest.store import Store

    with Store.from_settings(s) as st:
        assert not st.has_collection("lookalike_persons")  # nothing written
    r = people(settings=s)
    again = people(settings=s, update=False)
    assert [(p.id, p.name, len(p.faces)) for p in again.people] == [(p.id, p.name, len(p.faces)) for p in r.people]
    assert again.pending == 0 and again.clustered == 0


def test_a_celeba_identity_is_shown_as_an_id_not_a_count():
    from lookalike.query.people import Person

    assert Person(1, "7484", "identity", []).label == "id 7484"  # table and sheet, as the contact sheet
    assert Person(2, "Tom_Hanks", "identity", []).label == "Tom_Hanks"
    assert Person(3, "2024", "user", []).label == "2024" and Person(4, None, None, []).label is None
