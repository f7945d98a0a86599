"""Embedder speed per model and the pipeline with three models vs FaceNet alone.

    python bench/bench_models.py [--images 60] [--skip-pipeline]

Hub weights cannot be downloaded here, so CLIP and DINOv2 are built with their real
architectures (ViT-B/32 and ViT-S/14 configs, random weights) and FaceNet from DeepFace's own
architecture: speed does not depend on the weights' values. Written to bench/results/models.json.

(1) faces/s per model at batch sizes 1, 8 and 32 (the embedder's forward on real detected faces,
    one process, threads as the machine gives them, and pinned to 1 as in a Dask worker);
(2) the pipeline (2 Dask workers) with facenet,clip,dinov2 vs facenet alone on the same images.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "models"
RESULTS = ROOT / "bench" / "results"


def build_models(cache: Path) -> dict:
    """Real-architecture CLIP ViT-B/32 and DINOv2-small with random weights, and FaceNet weights
    written from DeepFace's architecture, cached between runs."""
    clip_dir, dino_dir, home = cache / "clip-vit-base-patch32-random", cache / "dinov2-small-random", cache / "deepface_home"
    if not (clip_dir / "config.json").exists():
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        CLIPModel(CLIPConfig(projection_dim=512)).save_pretrained(clip_dir)  # defaults = ViT-B/32
        CLIPImageProcessor().save_pretrained(clip_dir)
    if not (dino_dir / "config.json").exists():
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                 patch_size=14, image_size=518)).save_pretrained(dino_dir)
        BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                          do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                          image_std=[0.229, 0.224, 0.225]).save_pretrained(dino_dir)
    weights = home / ".deepface" / "weights" / "facenet_weights.h5"
    if not weights.exists():
        weights.parent.mkdir(parents=True, exist_ok=True)
        code = ("import sys, h5py\n"
                "from deepface.models.facial_recognition.tf.Facenet import InceptionResNetV1\n"
                "from keras.src.legacy.saving import legacy_h5_format\n"
                "with h5py.File(sys.argv[1], 'w') as f:\n"
                "    legacy_h5_format.save_weights_to_hdf5_group(f, InceptionResNetV1(dimension=128))\n")
        subprocess.run([sys.executable, "-c", code, str(weights)], check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return {"clip": str(clip_dir), "dinov2": str(dino_dir), "home": str(home)}


def embed_rates(models: list, paths: list, settings, threads: int) -> dict:
    """faces/s of each embedder's forward at batch sizes 1, 8, 32 (faces already detected)."""
    import torch

    from lookalike.ingest.images import load
    from lookalike.ingest.models import get_engine

    torch.set_num_threads(threads)
    engine = get_engine(settings, "yunet", models).load()
    faces: list[tuple[Any, Any]] = []
    for p in paths:
        image = load(p)
        faces.extend((image, f) for f in engine.detector.detect(image))
    out = {}
    for name, emb in engine.embedders.items():
        emb.embed(*_group(faces[:2]))  # warm-up
        rates = {}
        for bs in (1, 8, 32):
            n = min(len(faces), max(32, bs * 3))
            t0 = time.perf_counter()
            done = 0
            for i in range(0, n, bs):
                chunk = faces[i:i + bs]
                _embed_chunk(emb, chunk)
                done += len(chunk)
            rates[bs] = done / (time.perf_counter() - t0)
        out[name] = rates
    return out


def _group(chunk):
    return chunk[0][0], [f for _, f in chunk]


def _embed_chunk(emb, chunk):
    """One forward for a batch of faces that may come from several images: each face's model
    input is made from its own image, then the batch goes through `embed_inputs` at once."""
    return emb.embed_inputs([emb.model_input(image, f) for image, f in chunk])


def pipeline_rate(models: str, paths: list, settings, tmp: Path) -> dict:
    from lookalike import ingest
    src = tmp / f"list-{models.replace(',', '-')}.txt"
    src.write_text("\n".join(paths))
    db = tmp / f"{models.replace(',', '-')}.db"
    t0 = time.perf_counter()
    s = ingest.run(str(src), models=models, workers=2, progress=False, settings=settings.with_(db=str(db)),
                   report=str(tmp / "report.txt"))
    wall = time.perf_counter() - t0
    return {"models": models, "images": s.images_seen, "faces": s.faces_stored,
            "loop_seconds": round(s.wall_seconds, 2), "wall_seconds_with_startup": round(wall, 2),
            "faces_per_s": round(s.faces_stored / s.wall_seconds, 2),
            "images_per_s": round(s.images_seen / s.wall_seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--rates-only", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from lookalike.ingest.settings import Settings

    m = build_models(CACHE)
    settings = Settings(deepface_home=m["home"]).with_(clip_model=m["clip"], dinov2_model=m["dinov2"])
    data = Settings().data_dir
    paths = [str(p) for p in sorted((data / "celeba" / "img_celeba").iterdir())[: args.images]]
    result: dict[str, Any] = {"machine": f"{platform.node()} {os.cpu_count()} cores", "images": len(paths),
              "weights": "random, real architectures (speed only)"}
    models = ["facenet", "dlib", "clip", "dinov2"]
    if args.rates_only is not None:  # child process: threads fixed by its environment
        print(json.dumps(embed_rates(models, paths[:20], settings, args.rates_only)))
        return
    from lookalike.ingest.settings import thread_env

    for label, threads, env in (("all", os.cpu_count() or 1, {}), ("1", 1, thread_env(1))):
        # a fresh process each: TensorFlow fixes its thread pools on first use
        out = subprocess.run([sys.executable, __file__, "--rates-only", str(threads), "--images", str(args.images)],
                             capture_output=True, text=True, check=True, env=dict(os.environ, **env))
        rates = json.loads(out.stdout.strip().splitlines()[-1])
        result[f"faces_per_s_threads_{label}"] = {k: {int(b): r for b, r in v.items()} for k, v in rates.items()}
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory() as t:
            one = pipeline_rate("facenet", paths, settings, Path(t))
            three = pipeline_rate("facenet,clip,dinov2", paths, settings, Path(t))
        result["pipeline"] = {"facenet": one, "facenet,clip,dinov2": three,
                              "three_vs_one_images_per_s": round(three["images_per_s"] / one["images_per_s"], 3)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "models.json").write_text(json.dumps(result, indent=2))
    print(f"{'model':<10}" + "".join(f"{'bs ' + str(b):>12}" for b in (1, 8, 32)) + "   (faces/s, all threads | 1 thread)")
    for name in models:
        a, o = result["faces_per_s_threads_all"][name], result["faces_per_s_threads_1"][name]
        print(f"{name:<10}" + "".join(f"{a[b]:>6.1f}|{o[b]:<5.1f}" for b in (1, 8, 32)))
    if "pipeline" in result:
        p = result["pipeline"]
        for k in ("facenet", "facenet,clip,dinov2"):
            print(f"pipeline {k:<22} {p[k]['images_per_s']:.2f} images/s, {p[k]['faces_per_s']:.2f} faces/s")
        print(f"three models / facenet alone: {p['three_vs_one_images_per_s']:.2f}x images/s")
    print(f"written to {RESULTS / 'models.json'}")


if __name__ == "__main__":
    main()
