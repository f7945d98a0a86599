"""The learned projection head (ingest/head.py): trained on the stored dlib vectors of a real Milvus
Lite database of the people/ gallery, written as a file and a collection, queried with
`--model dlib_head`, filled by later ingests, evaluated against its base; the same code over a
(tiny, random) transformer model and one of its layers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, read_rows

from lookalike import ingest
from lookalike.ingest.head import Head, HeadError, head_path
from lookalike.ingest.store import Store

PEOPLE = DATA / "people"
# Six identities, five photos each, for the first ingest; Tom_Hanks comes later (a new ingest).
FIRST = ("Angelina_Jolie", "Bill_Gates", "Hu_Jintao", "Jackie_Chan", "Keanu_Reeves", "Sylvester_Stallone")
LATER = "Tom_Hanks"


def _photos(name: str, n: int):
    return sorted((PEOPLE / name).glob("*.jpg"))[:n]


def _list(tmp: Path, names, n: int, file: str) -> str:
    src = tmp / file
    src.write_text("".join(f"{p}\t{name}\n" for name in names for p in _photos(name, n)))
    return str(src)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, settings):
    """A Lite database of 30 labelled photos (dlib), and a head trained on it."""
    tmp = tmp_path_factory.mktemp("head")
    db = tmp / "people.db"
    s = settings.with_(db=str(db))
    ingest.run(_list(tmp, FIRST, 5, "first.txt"), models="dlib", workers=0, progress=False, settings=s,
               report=str(tmp / "r1.jsonl"))
    summary = ingest.train_head("dlib", settings=s, holdout=0.34, epochs=5, progress=False)
    return tmp, s, summary


def test_head_file_and_collection(gallery):
    tmp, s, summary = gallery
    path = head_path(s, "dlib")
    assert path == tmp / "people.heads" / "dlib_head.pt" and Path(summary.path) == path and path.is_file()
    base, head = read_rows(s.db, "dlib"), read_rows(s.db, "dlib_head")
    assert len(base) >= 30 and head.keys() == base.keys() and summary.rows_written == len(base)
    h = Head.load(path)
    for k, r in base.items():
        # same metadata, the vector through the head (unit length, moved by training)
        assert {f: v for f, v in head[k].items() if f != "vector"} == {f: v for f, v in r.items() if f != "vector"}
        np.testing.assert_allclose(head[k]["vector"], h.project(np.asarray(r["vector"]))[0], atol=1e-6)
    moved = [np.abs(np.subtract(head[k]["vector"], base[k]["vector"])).max() for k in base]
    assert max(moved) > 1e-3
    with Store(s.db) as store:
        assert store.models() == ["dlib", "dlib_head"]
        # the head's collection has the base's photos: stats does not report "dlib_head: 0 with faces"
        counts = store.ledger_counts()
        assert list(counts) == ["dlib"] and counts["dlib"]["done"] >= 30


def test_provenance_holds_the_held_out_figures(gallery, settings):
    from lookalike.query.evaluation import evaluate_head

    _, s, summary = gallery
    prov = Head.load(head_path(s, "dlib")).provenance
    assert prov["model"] == "dlib" and prov["loss"] == summary.loss and prov["collection"] == "faces_dlib"
    assert prov["counts"]["heldout_identities"] == 2 and prov["counts"]["heldout_photos"] > 0
    held = set(prov["split"]["heldout_identities"])
    assert held < set(FIRST) and not held & {r["identity"] for r in read_rows(s.db, "dlib").values()
                                            if r["id"] in set(prov["split"]["train_ids"])}
    for key in ("photos", "identities", "train"):
        for which in ("base", "head"):
            fig = prov["figures"][key][which]
            assert fig["queries"] > 0 and 0.0 <= fig["map"] <= 1.0 and fig["recall_at_1"] <= fig["recall_at_10"]
    # query/evaluation/head.py computes the same figures from the two collections
    report = evaluate_head("dlib", s)
    for key in ("photos", "identities", "train"):
        for which in ("base", "head"):
            got, want = report["sets"][key][which], prov["figures"][key][which]
            assert got["queries"] == want["queries"]
            for m in ("recall_at_1", "recall_at_5", "recall_at_10", "map"):
                assert got[m] == pytest.approx(want[m], abs=1e-9)
    # the summary prints both sets, base -> head
    f = prov["figures"]["identities"]
    row = next(line for line in summary.lines() if line.startswith("held-out identities"))
    assert f"{100 * f['base']['map']:.1f} -> {100 * f['head']['map']:.1f}" in row


def test_query_with_the_head(gallery):
    from lookalike.query.search import search_photo

    _, s, _ = gallery
    photo = _photos("Keanu_Reeves", 1)[0]
    r = search_photo(photo, model="dlib_head", settings=s, min_quality=0, top_k=5)
    assert r.models == ["dlib_head"] and r.faces
    face = max(r.faces, key=lambda f: f.box[2] * f.box[3])
    # the query face goes through the same embedder and head as the stored face: itself, first
    assert face.matches[0].source_path == str(photo) and face.matches[0].score == pytest.approx(1.0, abs=1e-4)
    assert face.matches[0].same_person is None  # a head has no calibrated verdict
    r2 = search_photo(photo, model="dlib_head", settings=s, min_quality=0, top_k=3, exclude_same_image=True)
    top = max(r2.faces, key=lambda f: f.box[2] * f.box[3]).matches
    assert top and top[0].identity == "Keanu_Reeves"


def test_new_ingest_fills_both_collections(gallery):
    tmp, s, _ = gallery
    before = read_rows(s.db, "dlib_head", with_vectors=False)
    ingest.run(_list(tmp, [LATER], 3, "later.txt"), models="dlib", workers=0, progress=False, settings=s,
               report=str(tmp / "r2.jsonl"))
    base, head = read_rows(s.db, "dlib"), read_rows(s.db, "dlib_head")
    assert head.keys() == base.keys() and len(head) > len(before)
    h = Head.load(head_path(s, "dlib"))
    new = [k for k in head if k not in before]
    assert {head[k]["identity"] for k in new} >= {LATER}
    for k in new:
        np.testing.assert_allclose(head[k]["vector"], h.project(np.asarray(base[k]["vector"]))[0], atol=1e-6)


def test_another_head_file_is_refused(gallery, tmp_path):
    from lookalike.query.search import search_photo

    _, s, _ = gallery
    path = head_path(s, "dlib")
    saved = path.read_bytes()
    h = Head.load(path)
    h.state = {k: v + 0.01 for k, v in h.state.items()}
    h.save(path)
    try:
        with pytest.raises(HeadError, match="another head"):
            search_photo(_photos("Bill_Gates", 1)[0], model="dlib_head", settings=s)
        with pytest.raises(HeadError, match="another head"):
            ingest.run(_list(tmp_path, ["Dwayne_Johnson"], 1, "x.txt"), models="dlib", workers=0, progress=False,
                       settings=s, report=str(tmp_path / "r.jsonl"))
    finally:
        path.write_bytes(saved)


def test_cli_train_head_and_its_errors(gallery, capsys, tmp_path):
    from lookalike.query.app.cli import main

    _, s, _ = gallery
    assert main(["train-head", "--model", "dlib", "--db", s.db, "--epochs", "2", "--loss", "infonce", "-q"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "held-out identities" in out.out and "infonce loss, 2 epochs" in out.out
    assert Head.load(head_path(s, "dlib")).provenance["loss"] == "infonce"
    assert main(["eval", "head", "--model", "dlib", "--db", s.db, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "dlib" and {"base", "head"} <= set(next(iter(report["sets"].values())))
    assert main(["train-head", "--model", "clip", "--db", s.db, "-q"]) == 2
    err = capsys.readouterr().err
    assert "no collection faces_clip" in err and err.count("\n") == 1
    assert main(["train-head", "--model", "dlib_head", "--db", s.db, "-q"]) == 2
    assert "a head already" in capsys.readouterr().err
    assert main(["query", str(_photos("Bill_Gates", 1)[0]), "--db", str(tmp_path / "none.db"),
                 "--model", "dlib_head"]) != 0


def test_device_is_a_parameter(gallery):
    import torch

    _, s, _ = gallery
    if torch.cuda.is_available():
        summary = ingest.train_head("dlib", settings=s, epochs=1, device="cuda", progress=False)
        assert summary.device.startswith("cuda")
    else:
        with pytest.raises(HeadError, match="no CUDA device"):
            ingest.train_head("dlib", settings=s, epochs=1, device="cuda", progress=False)


def test_too_few_labelled_faces(tmp_path, settings):
    s = settings.with_(db=str(tmp_path / "unlabelled.db"))
    src = tmp_path / "one.txt"
    src.write_text("".join(f"{p}\n" for p in _photos("Hu_Jintao", 3)))  # no identities
    ingest.run(str(src), models="dlib", workers=0, progress=False, settings=s, report=str(tmp_path / "r.jsonl"))
    with pytest.raises(HeadError, match="too few labelled faces"):
        ingest.train_head("dlib", settings=s, epochs=1, progress=False)
    assert not head_path(s, "dlib").exists()


@pytest.mark.parametrize("model", ["dinov2", "clip_l2"])
def test_transformer_models_run_the_same_code(tmp_path, settings, model):
    from test_transformers import build_tiny_models

    from lookalike.query.search import search_photo

    tiny = build_tiny_models(tmp_path / "hf")
    s = settings.with_(db=str(tmp_path / "vit.db"), clip_model=str(tiny["clip"]), dinov2_model=str(tiny["dinov2"]))
    base, _, layer = model.partition("_l")
    ingest.run(_list(tmp_path, FIRST[:4], 3, "vit.txt"), models=base, layer=int(layer) if layer else None,
               workers=0, progress=False, settings=s, report=str(tmp_path / "r.jsonl"))
    summary = ingest.train_head(model, settings=s, holdout=0.25, epochs=3, progress=False)
    assert summary.head_model == f"{model}_head" and summary.figures["identities"]["head"]["queries"] > 0
    rows, head = read_rows(s.db, model), read_rows(s.db, f"{model}_head")
    assert head.keys() == rows.keys()
    with Store(s.db) as store:  # the head collection records the weights of its base
        assert store.model_source(f"{model}_head") == store.model_source(model) == s.model_source(base)
    photo = _photos(FIRST[0], 1)[0]
    r = search_photo(photo, model=f"{model}_head", settings=s, min_quality=0, top_k=1)
    assert max(r.faces, key=lambda f: f.box[2] * f.box[3]).matches[0].score == pytest.approx(1.0, abs=1e-4)


def test_cli_choices_match_the_library():
    from lookalike.ingest import head
    from lookalike.query.app import head_cli

    assert head_cli.LOSSES == head.LOSSES and head_cli.ARCHS == head.ARCHS
