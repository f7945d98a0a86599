"""Explanations (query/explain.py): faithfulness of occlusion with dlib's real weights (deletion
test), gradient and attention methods on tiny random CLIP/DINOv2, and `lookalike query --explain`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from lookalike.ingest.images import load
from lookalike.ingest.models import Detector, make_embedder
from lookalike.query import explain as X

PEOPLE = DATA / "people"
GROUP = DATA / "groups" / "photos" / "multiface.jpg"


def same_identity_pairs(n: int = 20):
    """(query image, same-identity image) pairs from people/, round-robin over identities."""
    per = {d.name: sorted(d.iterdir()) for d in sorted(PEOPLE.iterdir()) if d.is_dir() and len(list(d.iterdir())) >= 4}
    pairs: list[tuple[Path, Path]] = []
    i = 0
    while len(pairs) < n:
        for files in per.values():
            if 2 * i + 1 < len(files) and len(pairs) < n:
                pairs.append((files[2 * i], files[2 * i + 1]))
        i += 1
    return pairs


@pytest.fixture(scope="module")
def detector(settings):
    return Detector("yunet", settings)


@pytest.fixture(scope="module")
def dlib(settings):
    return make_embedder("dlib", settings).load()


def test_occlusion_with_dlib_passes_the_deletion_test(detector, dlib, monkeypatch):
    """Greying the 20 % most important pixels of the match crop (by the occlusion map) lowers the
    similarity to the query more than greying 20 % random pixels, on average over 20 pairs."""
    # a coarser grid than the default (1/6 patch, stride 1/12: 144 masks) keeps this test near a
    # minute: 16 masks per crop; bench/bench_explain.py measures finer grids
    monkeypatch.setattr(X, "OCC_PATCH", 1 / 4)
    monkeypatch.setattr(X, "OCC_STRIDE", 1 / 4)
    drops_map, drops_rand = [], []
    for i, (qp, mp) in enumerate(same_identity_pairs(20)):
        qi, mi = load(qp), load(mp)
        qf, mf = detector.detect(qi), detector.detect(mi)
        assert qf and mf, (qp, mp)
        q = dlib.model_input(qi, max(qf, key=lambda f: f.size))
        m = dlib.model_input(mi, max(mf, key=lambda f: f.size))
        assert m.shape == (150, 150, 3) and m.dtype == np.uint8
        vq = dlib.embed_inputs([q])[0]
        heat = X.occlusion_map(dlib, m, vq)
        assert heat.shape == m.shape[:2] and np.isfinite(heat).all()
        r = X.deletion_test(dlib, m, vq, heat, seed=i)
        drops_map.append(r["drop_map"])
        drops_rand.append(r["drop_random"])
    assert len(drops_map) >= 20
    mean_map, mean_rand = float(np.mean(drops_map)), float(np.mean(drops_rand))
    assert mean_map > mean_rand + 0.01, (mean_map, mean_rand)
    assert np.mean(np.array(drops_map) > np.array(drops_rand)) >= 0.7


def test_dlib_gradcam_passes_the_deletion_test_and_its_layers_end_at_the_score(detector, dlib):
    """Grad-CAM on the torch port: greying the 20 % most important pixels of the match crop lowers
    the similarity more than 20 % random pixels, on average over 20 pairs and for most pairs; the
    layer scores end at the pair's cosine."""
    drops_map, drops_rand = [], []
    for i, (qp, mp) in enumerate(same_identity_pairs(20)):
        qi, mi = load(qp), load(mp)
        qf, mf = detector.detect(qi), detector.detect(mi)
        q = dlib.model_input(qi, max(qf, key=lambda f: f.size))
        m = dlib.model_input(mi, max(mf, key=lambda f: f.size))
        ex = X.explain_inputs(dlib, "gradcam", q, m)
        assert ex.match_map is not None and ex.match_map.shape == m.shape[:2] and np.isfinite(ex.match_map).all()
        vq = dlib.embed_inputs([q])[0]
        r = X.deletion_test(dlib, m, vq, ex.match_map, seed=i)
        drops_map.append(r["drop_map"])
        drops_rand.append(r["drop_random"])
        if i == 0:
            layers = X.explain_inputs(dlib, "layers", q, m)
            assert layers.layer_scores is not None and len(layers.layer_scores) >= 4
            assert layers.layer_scores[-1] == pytest.approx(layers.score, abs=1e-4)
    assert float(np.mean(drops_map)) > float(np.mean(drops_rand)) + 0.01, (np.mean(drops_map), np.mean(drops_rand))
    assert np.mean(np.array(drops_map) > np.array(drops_rand)) >= 0.7


def test_model_input_path_equals_embed(detector, dlib):
    image = load(GROUP)
    faces = detector.detect(image)[:3]
    a = dlib.embed(image, faces)
    b = dlib.embed_inputs([dlib.model_input(image, f) for f in faces])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_dlib_methods_follow_its_engine(dlib, settings):
    """The torch port has gradients and blocks to read (the default onnx engine uses it for them);
    dlib's own C++ engine has only occlusion, and says why in one line."""
    assert dlib.settings.dlib_engine == "onnx"
    for m in ("occlusion", "gradcam", "layers"):
        assert X.available(m, dlib) is None, m
    why_attention = X.available("attention", dlib)
    assert why_attention and "\n" not in why_attention and "no attention" in why_attention
    reference = make_embedder("dlib", settings.with_(dlib_engine="dlib"))  # not loaded: the check reads settings
    assert X.available("occlusion", reference) is None
    for m in ("gradcam", "layers"):
        why = X.available(m, reference)
        assert why and "\n" not in why and "not available for dlib" in why and "C++" in why
    assert X.available("attention", reference) == why_attention
    with pytest.raises(X.ExplainError):
        X.parse_methods("saliency")
    assert X.parse_methods("all") == list(X.METHODS)


# ---------------------------------------------------------------------------------------------
# Tiny random CLIP / DINOv2
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_settings(settings, tmp_path_factory):
    from test_transformers import build_tiny_models

    tiny = build_tiny_models(tmp_path_factory.mktemp("hf_explain"))
    return settings.with_(clip_model=str(tiny["clip"]), dinov2_model=str(tiny["dinov2"]))


@pytest.fixture(scope="module")
def group_faces(detector):
    image = load(GROUP)
    faces = detector.detect(image)
    assert len(faces) >= 2
    return image, faces


@pytest.mark.parametrize("key,grid,layers", [("clip", 4, 4), ("dinov2", 4, 4), ("dinov2_l2", 4, 4)])
def test_vit_gradcam_attention_layers(tiny_settings, group_faces, key, grid, layers):
    image, faces = group_faces
    emb = make_embedder(key, tiny_settings).load()
    q, m = emb.model_input(image, faces[0]), emb.model_input(image, faces[1])
    assert q.shape == (224, 224, 3)
    cq, cm = X.vit_gradcam(emb, q, m)
    assert cq.shape == cm.shape == (grid, grid)
    for c in (cq, cm):
        assert np.isfinite(c).all() and c.max() > c.min()  # not constant
    ex = X.explain_inputs(emb, "gradcam", q, m)
    assert ex.query_map is not None and ex.match_map is not None
    assert ex.query_map.shape == ex.match_map.shape == (224, 224)
    assert 0 <= ex.match_map.min() and ex.match_map.max() <= 1 and ex.match_map.std() > 0
    roll, heads = X.vit_attention(emb, [q, m])
    assert roll.shape == (2, grid, grid) and heads.shape == (2, 4, grid, grid)
    assert np.isfinite(roll).all() and np.isfinite(heads).all() and (roll > 0).all()
    scores = X.vit_layer_scores(emb, q, m)
    assert len(scores) == layers + 1 and all(-1.0001 <= s <= 1.0001 for s in scores)
    if emb.spec.layer is None:  # the last block's CLS through the final norm is the embedding for DINOv2
        vq, vm = emb.embed_inputs([q, m])
        if key == "dinov2":
            assert abs(scores[-1] - float(vq @ vm)) < 1e-4
    # the same embedder still embeds as before after the switch to eager attention
    np.testing.assert_allclose(emb.embed_inputs([q]), emb.embed(image, faces[:1]), atol=1e-5)
    panel = X.render_panel(X.explain_inputs(emb, "attention", q, m))
    assert panel.size[0] >= 4 * X.PANEL_SIDE
    plot = X.render_panel(X.explain_inputs(emb, "layers", q, m))
    assert plot.size[0] > 100


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_db(tmp_path_factory, settings):
    from lookalike import ingest
    base = tmp_path_factory.mktemp("explain_db")
    files = []
    for name in ("Tom_Hanks", "Keanu_Reeves"):
        files += sorted((PEOPLE / name).iterdir())[1:4]
    src = base / "list.txt"
    src.write_text("\n".join(f"{p}\t{p.parent.name}" for p in files))
    db = base / "x.db"
    s = ingest.run(str(src), models="dlib", workers=0, progress=False, settings=settings.with_(db=str(db)),
                   report=str(base / "r.txt"))
    assert s.faces_stored >= 5
    return db


def _cli(*args):
    from lookalike.query.app.cli import main

    return main(["query", *map(str, args)])


def test_cli_explain_writes_panels_referenced_from_results(small_db, tmp_path, monkeypatch, capsys):
    from lookalike.query.results import validate_document

    monkeypatch.setattr(X, "OCC_PATCH", 1 / 3)
    monkeypatch.setattr(X, "OCC_STRIDE", 1 / 3)
    photo = sorted((PEOPLE / "Tom_Hanks").iterdir())[0]
    out = tmp_path / "out"
    rc = _cli(photo, "--db", small_db, "-k", "3", "--explain", "--explain-top", "2", "--method", "all",
              "--out", out)
    assert rc == 0
    err = capsys.readouterr().err
    assert "attention is not available for dlib" in err  # one line per skipped method
    assert "gradcam is not available" not in err and "layers is not available" not in err
    doc = json.loads((out / "results.json").read_text())
    assert validate_document(doc) == []
    matches = doc["photos"][0]["faces"][0]["matches"]
    assert len(matches) == 3
    for mt in matches[:2]:
        assert [e["method"] for e in mt["explanations"]] == ["occlusion", "gradcam", "layers"]
        e = mt["explanations"][0]
        assert all((out / x["png"]).is_file() for x in mt["explanations"])
        from PIL import Image

        assert Image.open(out / e["png"]).size[0] >= 4 * X.PANEL_SIDE
    assert "explanations" not in matches[2]
    assert "explain" in doc["photos"][0]["timings"]


def test_cli_explain_needs_out(small_db, capsys):
    photo = sorted((PEOPLE / "Tom_Hanks").iterdir())[0]
    assert _cli(photo, "--db", small_db, "--explain") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--explain needs --out" in err[0]


def test_plain_query_does_not_import_explain(small_db, tmp_path):
    import shutil

    photo = sorted((PEOPLE / "Tom_Hanks").iterdir())[0]
    db = tmp_path / "copy.db"  # Milvus Lite: one process per database; this one holds the original
    shutil.copytree(small_db, db)
    small_db = db
    code = ("import sys, json; from lookalike.query.search import search_photo; "
            "from lookalike.query.results import validate_document, results_document\n"
            f"r = search_photo({str(photo)!r}, db={str(small_db)!r}, top_k=2)\n"
            "d = results_document([r]); assert validate_document(d) == []\n"
            "assert 'lookalike.query.explain' not in sys.modules\n"
            "assert all('explanations' not in m for f in d['photos'][0]['faces'] for m in f['matches'])\n"
            "assert 'explain' not in d['photos'][0]['timings']\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
