"""CLIP and DINOv2 embedders through the real transformers loading path, on tiny random models
the tests build and `save_pretrained` (no hub weights here), and through the real pipeline."""
from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from conftest import DATA, read_rows

from lookalike import ingest
from lookalike.ingest.images import load
from lookalike.ingest.models import Detector, ModelError, WeightsMissing, face_square, make_embedder

GROUP = DATA / "groups" / "photos" / "multiface.jpg"


def build_tiny_models(root: Path) -> dict:
    import torch
    from transformers import BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    clip_dir, dino_dir = root / "tiny-clip", root / "tiny-dinov2"
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  image_size=64, patch_size=16)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=24)).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(clip_dir)
    Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
                             image_size=56, patch_size=14)).save_pretrained(dino_dir)
    BitImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                      do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(dino_dir)
    return {"clip": clip_dir, "dinov2": dino_dir}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def tiny_settings(settings, tiny):
    return settings.with_(clip_model=str(tiny["clip"]), dinov2_model=str(tiny["dinov2"]))


@pytest.fixture(scope="module")
def group(settings):
    image = load(GROUP)
    faces = Detector("yunet", settings).detect(image)
    assert len(faces) >= 4
    return image, faces


@pytest.mark.parametrize("key,dim", [("clip", 24), ("dinov2", 48), ("clip_l2", 32), ("dinov2_l3", 48)])
def test_dimension_normalisation_batching_determinism(tiny_settings, group, key, dim):
    image, faces = group
    emb = make_embedder(key, tiny_settings)
    assert emb.dim == dim  # from the saved config, before any weights are loaded
    batch = emb.embed(image, faces)
    assert batch.shape == (len(faces), dim) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([emb.embed(image, [f]) for f in faces])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    np.testing.assert_array_equal(batch, emb.embed(image, faces))
    # different faces give different vectors (a random model still sees different pixels)
    assert np.abs(batch[0] - batch[1]).max() > 1e-4


def test_layers_differ_and_are_bounded(tiny_settings, group):
    image, faces = group
    early = make_embedder("dinov2_l1", tiny_settings).embed(image, faces[:2])
    late = make_embedder("dinov2_l4", tiny_settings).embed(image, faces[:2])
    assert np.abs(early - late).max() > 1e-3
    with pytest.raises(ModelError, match="1..4"):
        make_embedder("dinov2_l9", tiny_settings).embed(image, faces[:1])


def test_face_square_is_the_documented_crop(group):
    image, faces = group
    crop = face_square(image, faces[0])
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert crop.std() > 10


def test_wrong_kind_of_model_is_named(tiny, settings):
    s = settings.with_(clip_model=str(tiny["dinov2"]))
    with pytest.raises(ModelError, match="is a dinov2 model, not clip"):
        _ = make_embedder("clip", s).dim


def test_missing_hub_weights_one_line(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a hub that never answers
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # and an empty local cache
    s = settings.with_(clip_model="openai/clip-vit-base-patch32")
    with pytest.raises(WeightsMissing) as e:
        _ = make_embedder("clip", s).dim
    msg = str(e.value)
    assert "\n" not in msg and "openai/clip-vit-base-patch32" in msg and "--clip-model" in msg


def test_three_models_side_by_side_through_the_pipeline(tmp_path, tiny_settings):
    db = tmp_path / "three.db"
    photos = DATA / "groups" / "photos"
    src = tmp_path / "list.txt"
    src.write_text("\n".join(str(photos / n) for n in ("multiface.jpg", "couple.jpg", "no-faces.jpg")))
    s = ingest.run(str(src), models="dlib,clip,dinov2", workers=0, progress=False,
                   settings=tiny_settings.with_(db=str(db)), report=str(tmp_path / "r.txt"))
    assert s.models == ["dlib", "clip", "dinov2"] and s.images_noface == 1
    rows = {m: read_rows(db, m) for m in ("dlib", "clip", "dinov2")}
    # one detection per image: the same faces, with the same boxes, in every collection
    assert rows["dlib"].keys() == rows["clip"].keys() == rows["dinov2"].keys()
    assert len(rows["dlib"]) == s.faces_stored >= 8
    for k, r in rows["dlib"].items():
        for m in ("clip", "dinov2"):
            assert (rows[m][k]["box_x"], rows[m][k]["box_w"]) == (r["box_x"], r["box_w"])
    assert {len(r["vector"]) for r in rows["clip"].values()} == {24}
    assert {len(r["vector"]) for r in rows["dinov2"].values()} == {48}
    # --layer: its own collection, recorded with the weights it was built from
    s2 = ingest.run(str(src), models="dinov2", layer=2, workers=0, progress=False,
                    settings=tiny_settings.with_(db=str(db)), report=str(tmp_path / "r2.txt"))
    assert s2.models == ["dinov2_l2"] and s2.faces_stored == s.faces_stored
    from lookalike.ingest.store import Store, StoreError

    with Store(str(db)) as store:
        assert store.model_source("dinov2_l2") == tiny_settings.dinov2_model
        assert set(store.models()) == {"dlib", "clip", "dinov2", "dinov2_l2"}
        # another CLIP into the same collection is refused: vectors of two models never mix
        with pytest.raises(StoreError, match="was built with"):
            store.ensure_collection("clip", dim=24, source="some/other-clip")


def test_detection_runs_once_per_image_whatever_the_number_of_models(tiny_settings):
    from lookalike.ingest.analysis import Analyzer
    from lookalike.ingest.pipeline import process_image
    from lookalike.ingest.sources import ImageRecord

    analyzer = Analyzer(tiny_settings, "yunet", ["dlib", "clip", "dinov2"]).load()
    engine = analyzer.engine
    calls = []
    original = engine.detector.detect

    def detect(*a, **k):
        calls.append(1)
        return original(*a, **k)

    # cast: mypy forbids assigning to a method; the test wraps this one instance's for its duration
    cast(Any, engine.detector).detect = detect
    try:
        res = process_image(analyzer, ImageRecord(str(GROUP)))
    finally:
        cast(Any, engine.detector).detect = original
    assert len(calls) == 1 and set(res.vectors) == {"dlib", "clip", "dinov2"}
