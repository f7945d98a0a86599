"""Why does this face match? Heat maps over the query crop and the match crop.

Imported lazily (only when `--explain` / `explain=` is asked), so the plain query path pays
nothing. Every map is computed on the crop the model actually embeds (`Embedder.model_input`:
dlib's 150-px 5-point chip, FaceNet's 160-px crop, the transformers' `face_square`) and is
returned at that crop's resolution, values in [0, 1] (1 = most important for the similarity).

Methods
-------
The match's crop: its source image is re-read and re-detected with the detector it was ingested
with, and the detection overlapping the stored box (IoU >= 0.5) is used (`match_face`).

* ``occlusion`` (every model, dlib included): a grey patch (OCC_PATCH of the crop side, stride
  OCC_STRIDE) slides over one crop; the map is the drop of the cosine similarity to the other
  face's embedding when a pixel is covered (averaged over the patches covering it). All masked
  crops go through `Embedder.embed_inputs` in batches of OCC_BATCH: a few forward passes.
* ``gradcam`` (FaceNet, dlib, CLIP, DINOv2): gradient of the cosine similarity (query vs match) with
  respect to the last convolutional block (FaceNet: the input of InceptionResNetV1's AvgPool,
  TensorFlow GradientTape; dlib: gradient x activation at its torch port's 17x17 block, as its
  last block is 2x2 (DlibEmbedder.gradcam), torch autograd) or the
  patch tokens entering the last transformer block (the block
  the embedding is read from; at its output only the CLS token reaches the embedding, so the
  patch tokens there get no gradient) (torch autograd); map = ReLU(sum_c mean_grad_c *
  activation_c). For both faces at once.
* ``attention`` (CLIP, DINOv2): attention rollout over all layers (heads averaged, identity
  added for the residual, rows renormalised) read from the CLS token, plus the last layer's CLS
  attention per head (drawn under the panel). Not a similarity explanation: it shows what each
  crop's own CLS token looks at.
* ``layers`` (FaceNet, dlib, CLIP, DINOv2): the query-match cosine similarity at each block (ViTs: the
  CLS of every hidden state through the final norm; FaceNet and dlib: global-average-pooled
  activations after each stage), drawn as a small plot.

Faithfulness (`deletion_test`): mask the DELETE_FRACTION most important pixels of the match crop
according to a map, and as many random pixels; a faithful map makes the similarity drop more.
bench/bench_explain.py reports it for every method and model; tests/test_explain.py asserts it
for occlusion with dlib's real weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from lookalike.query.results import ExplanationFile
from lookalike.schemas.errors import UsageError, require

METHODS = ("occlusion", "gradcam", "attention", "layers")
DEFAULT_METHOD = "occlusion"
DEFAULT_TOP = 3
OCC_PATCH = 1 / 6
OCC_STRIDE = 1 / 8  # 1/12 costs dlib over twice the time per match (bench/README.md, explanations)
OCC_BATCH = 64
DELETE_FRACTION = 0.2
PANEL_SIDE = 192


class ExplainError(UsageError):
    """A method that cannot explain this model (one line; exit 2, HTTP 400)."""

    api_code = "bad_option"


def parse_methods(method: Optional[str]) -> List[str]:
    """'occlusion' | 'gradcam' | 'attention' | 'layers' | 'all' | a comma list -> methods."""
    names = [m.strip() for m in (method or DEFAULT_METHOD).split(",") if m.strip()]
    if names == ["all"]:
        return list(METHODS)
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise ExplainError(f"unknown explanation method {', '.join(bad) or '(none)'!s} "
                           f"(known: {', '.join(METHODS)}, all)")
    return list(dict.fromkeys(names))


@dataclass
class Explanation:
    method: str
    model: str
    score: float  # the match's cosine similarity, as the model gives it for these crops
    query_input: np.ndarray = field(repr=False)  # the crops the model embeds
    match_input: np.ndarray = field(repr=False)
    query_map: Optional[np.ndarray] = field(default=None, repr=False)  # HxW in [0, 1]
    match_map: Optional[np.ndarray] = field(default=None, repr=False)
    heads: Optional[Tuple[np.ndarray, np.ndarray]] = field(default=None, repr=False)  # attention
    layer_scores: Optional[List[float]] = None  # layers
    seconds: float = 0.0
    png: Optional[str] = None  # path relative to the output directory, once written
    face: int = -1  # the query face's index and the match's rank it explains (explain_result)
    rank: int = 0

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"method": self.method, "png": self.png or "", "seconds": round(self.seconds, 4)}
        if self.layer_scores is not None:
            out["layer_scores"] = [round(float(s), 6) for s in self.layer_scores]
        return out


def kind_of(embedder) -> str:
    """'dlib' | 'facenet' (any DeepFace Keras model) | 'vit'."""
    from lookalike.ingest.models import DlibEmbedder, TransformerEmbedder

    if isinstance(embedder, DlibEmbedder):
        return "dlib"
    if isinstance(embedder, TransformerEmbedder):
        return "vit"
    return "facenet"


def available(method: str, embedder) -> Optional[str]:
    """None when `method` can explain this embedder (it lists the method in its
    `explain_methods`), else a one-line reason."""
    if method in embedder.explain_methods:
        return None
    if method == "attention":
        return f"attention is not available for {embedder.name}: a convolutional network has no attention; skipped"
    if kind_of(embedder) == "dlib":
        return (f"{method} is not available for {embedder.name} on dlib's own engine: it runs in C++ without "
                f"gradients or intermediate outputs (the default engine has them; or use occlusion); skipped")
    return f"{method} is not available for {embedder.name} (it has {', '.join(embedder.explain_methods)}); skipped"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _grey(x: np.ndarray):
    return 128 if x.dtype == np.uint8 else 0.5


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / max(np.linalg.norm(v), 1e-12)


def _normalise_map(m: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(np.asarray(m, dtype=np.float64))
    lo, hi = float(m.min()), float(m.max())
    return ((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)).astype(np.float32)


def _resize(m: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return cv2.resize(np.asarray(m, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------
# Occlusion
# ---------------------------------------------------------------------------------------------
def occlusion_map(embedder, x: np.ndarray, target: np.ndarray, patch: Optional[float] = None,
                  stride: Optional[float] = None, batch: Optional[int] = None) -> np.ndarray:
    """Similarity drop to `target` (a unit vector) when each pixel of `x` is covered by a grey
    patch, averaged over the patches covering it; raw drops (not normalised), HxW. Defaults:
    OCC_PATCH, OCC_STRIDE, OCC_BATCH (read at call time)."""
    patch, stride, batch = patch or OCC_PATCH, stride or OCC_STRIDE, batch or OCC_BATCH
    H, W = x.shape[:2]
    p = max(1, round(min(H, W) * patch))
    s = max(1, round(min(H, W) * stride))
    ys = list(range(0, max(H - p, 0) + 1, s))
    xs = list(range(0, max(W - p, 0) + 1, s))
    if ys[-1] != H - p:
        ys.append(H - p)
    if xs[-1] != W - p:
        xs.append(W - p)
    boxes = [(y, xx) for y in ys for xx in xs]
    base = float(embedder.embed_inputs([x])[0] @ target)
    fill = _grey(x)
    drops = []
    for i in range(0, len(boxes), batch):
        masked = []
        for y, xx in boxes[i:i + batch]:
            m = x.copy()
            m[y:y + p, xx:xx + p] = fill
            masked.append(m)
        drops.append(base - embedder.embed_inputs(masked) @ target)
    drop = np.concatenate(drops)
    heat = np.zeros((H, W), np.float64)
    count = np.zeros((H, W), np.float64)
    for (y, xx), d in zip(boxes, drop):
        heat[y:y + p, xx:xx + p] += d
        count[y:y + p, xx:xx + p] += 1
    return (heat / np.maximum(count, 1)).astype(np.float32)


def _occlusion(embedder, q: np.ndarray, m: np.ndarray, vq: np.ndarray, vm: np.ndarray):
    return (_normalise_map(occlusion_map(embedder, q, vm)), _normalise_map(occlusion_map(embedder, m, vq)))


# ---------------------------------------------------------------------------------------------
# Model-specific methods: each model computes them itself (its gradients, attentions, blocks);
# these names stay for callers that explain one model directly.
# ---------------------------------------------------------------------------------------------
def vit_gradcam(embedder, q: np.ndarray, m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return embedder.gradcam(q, m)


def vit_attention(embedder, crops: Sequence[np.ndarray]):
    return embedder.attention(crops)


def vit_layer_scores(embedder, q: np.ndarray, m: np.ndarray) -> List[float]:
    return embedder.layer_scores(q, m)


# ---------------------------------------------------------------------------------------------
# One pair
# ---------------------------------------------------------------------------------------------
def explain_inputs(embedder, method: str, q: np.ndarray, m: np.ndarray) -> Explanation:
    """Explain the similarity of two model inputs (crops from `Embedder.model_input`)."""
    why = available(method, embedder)
    if why:
        raise ExplainError(why)
    t0 = time.perf_counter()
    vq, vm = embedder.embed_inputs([q, m])
    ex = Explanation(method, embedder.name, float(vq @ vm), q, m)
    Hq, Wq = q.shape[:2]
    Hm, Wm = m.shape[:2]
    if method == "occlusion":
        ex.query_map, ex.match_map = _occlusion(embedder, q, m, vq, vm)
    elif method == "gradcam":
        cq, cm = embedder.gradcam(q, m)
        ex.query_map = _normalise_map(_resize(cq, Hq, Wq))
        ex.match_map = _normalise_map(_resize(cm, Hm, Wm))
    elif method == "attention":
        roll, heads = embedder.attention([q, m])
        ex.query_map = _normalise_map(_resize(roll[0], Hq, Wq))
        ex.match_map = _normalise_map(_resize(roll[1], Hm, Wm))
        ex.heads = (heads[0], heads[1])
    elif method == "layers":
        ex.layer_scores = embedder.layer_scores(q, m)
    else:
        raise ExplainError(f"unknown explanation method {method}")
    ex.seconds = time.perf_counter() - t0
    return ex


# ---------------------------------------------------------------------------------------------
# Faithfulness: the deletion test
# ---------------------------------------------------------------------------------------------
def deletion_test(embedder, x: np.ndarray, target: np.ndarray, heat: np.ndarray,
                  fraction: float = DELETE_FRACTION, seed: int = 0) -> Dict[str, float]:
    """Similarity of `x` to `target` (unit vector) before and after greying out the `fraction`
    most important pixels by `heat` (HxW at x's resolution), and as many random pixels."""
    H, W = x.shape[:2]
    n = max(1, int(round(fraction * H * W)))
    rng = np.random.default_rng(seed)
    h = np.asarray(heat, dtype=np.float64).reshape(-1) + rng.uniform(0, 1e-9, H * W)  # random tie-break
    top = np.zeros(H * W, bool)
    top[np.argsort(-h)[:n]] = True
    rand = np.zeros(H * W, bool)
    rand[rng.choice(H * W, n, replace=False)] = True
    fill = _grey(x)
    xs = [x]
    for mask in (top, rand):
        y = x.copy()
        y[mask.reshape(H, W)] = fill
        xs.append(y)
    s = embedder.embed_inputs(xs) @ np.asarray(target, dtype=np.float32)
    return {"base": float(s[0]), "map": float(s[1]), "random": float(s[2]),
            "drop_map": float(s[0] - s[1]), "drop_random": float(s[0] - s[2])}


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _rgb_uint8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        x = np.clip(x * 255.0 if x.max() <= 1.5 else x, 0, 255).astype(np.uint8)
    return x[..., :3]


def _overlay(x: np.ndarray, heat: np.ndarray, side: int = PANEL_SIDE):
    import cv2
    from PIL import Image

    img = _rgb_uint8(x)
    col = cv2.applyColorMap((255 * np.clip(heat, 0, 1)).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    mixed = (0.55 * img + 0.45 * col).astype(np.uint8)
    return Image.fromarray(mixed).resize((side, side), Image.Resampling.BILINEAR)


def _map_of(m: Optional[np.ndarray]) -> np.ndarray:
    """A method without a map (layers) draws an empty one."""
    return m if m is not None else np.zeros((8, 8), np.float32)


def render_panel(ex: Explanation, title: str = ""):
    """query | match | query overlay | match overlay (plus per-head rows for attention), or the
    layer plot for `layers`."""
    if ex.method == "layers":
        return _layer_plot(ex, title)
    from PIL import Image, ImageDraw

    from lookalike.query.render import _font

    S, G, top = PANEL_SIDE, 8, 28
    tiles = [Image.fromarray(_rgb_uint8(ex.query_input)).resize((S, S), Image.Resampling.BILINEAR),
             Image.fromarray(_rgb_uint8(ex.match_input)).resize((S, S), Image.Resampling.BILINEAR),
             _overlay(ex.query_input, _map_of(ex.query_map)), _overlay(ex.match_input, _map_of(ex.match_map))]
    head_rows = []
    if ex.heads is not None:
        for hm in ex.heads:
            row = [Image.fromarray(np.uint8(255 * _normalise_map(h))).resize((S // 2, S // 2), Image.Resampling.NEAREST)
                   .convert("RGB") for h in hm]
            head_rows.append(row)
    hs = S // 2
    width = max(4 * S + 5 * G, max((len(r) * (hs + G) + G for r in head_rows), default=0) + 90)
    height = top + S + 22 + sum(hs + G for _ in head_rows) + G
    panel = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(panel)
    d.text((G, 8), f"{ex.method} · {ex.model} · score {ex.score:.3f}  {title}", fill=(20, 20, 20), font=_font(14))
    for i, (t, cap) in enumerate(zip(tiles, ("query", "match", "query map", "match map"))):
        x = G + i * (S + G)
        panel.paste(t, (x, top))
        d.text((x, top + S + 4), cap, fill=(90, 90, 90), font=_font(12))
    y = top + S + 22
    for name, row in zip(("query heads", "match heads"), head_rows):
        d.text((G, y + hs // 2 - 6), name, fill=(90, 90, 90), font=_font(12))
        for j, t in enumerate(row):
            panel.paste(t, (90 + j * (hs + G), y))
        y += hs + G
    return panel


def _layer_plot(ex: Explanation, title: str = ""):
    import io

    matplotlib = require("matplotlib", "plots", "the layer plot (method layers)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    s = ex.layer_scores or []
    ax.plot(range(len(s)), s, marker="o")
    ax.axhline(ex.score, color="grey", linestyle="--", linewidth=1, label=f"final score {ex.score:.3f}")
    ax.set_xlabel("block")
    ax.set_ylabel("query-match cosine")
    ax.set_title(f"layers · {ex.model} {title}".strip(), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


# ---------------------------------------------------------------------------------------------
# Matches: the stored face's crop
# ---------------------------------------------------------------------------------------------
def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / max(aw * ah + bw * bh - inter, 1)


def match_face(searcher, models: Sequence[str], match, default_detector: str):
    """(Decoded image, Face) of a stored match: its source re-read and re-detected with the
    detector it was ingested with, the detection overlapping the stored box; a face built from
    the stored box when none does."""
    from lookalike.ingest.images import load
    from lookalike.ingest.models import DETECTORS, Face

    image = load(match.source_path)
    det = match.detector if match.detector in DETECTORS else default_detector
    faces = [fa.face for fa in searcher.analyzer(list(models), det).detect(image).faces]
    best = max(faces, key=lambda f: _iou(f.box, match.box), default=None)
    if best is not None and _iou(best.box, match.box) >= 0.5:
        return image, best
    s = image.scale
    x, y, w, h = (int(round(v / s)) for v in match.box)
    crop = image.bgr[y:y + h, x:x + w]
    return image, Face(index=match.face_index, box=tuple(match.box), confidence=match.confidence,
                       dbox=(x, y, w, h), aligned_bgr=np.ascontiguousarray(crop))


def explain_photo(searcher, analyzer, image, faces, result, methods: Sequence[str], top: int,
                  out_dir: Optional[str]) -> Tuple[List[str], List[Explanation]]:
    """Explain the top `top` matches of every face of `result` (a PhotoResult being built by
    `Searcher.search_photo`), attach them to the matches, write PNG panels under
    out_dir/explain/. Returns one-line notes (methods not available for a model) and the
    explanations with their maps."""
    from lookalike.ingest.images import ImageError

    notes: List[str] = []
    done: List[Explanation] = []
    out = Path(out_dir) if out_dir else None
    if out is not None:
        (out / "explain").mkdir(parents=True, exist_ok=True)
    tag = (result.sha256 or "photo")[:10]
    match_cache: Dict[Tuple[str, str], Optional[np.ndarray]] = {}
    for model in result.models:
        emb = analyzer.model(model)
        cached = {fa.index: fa.inputs.get(model) for fa in result.analysis.faces} if result.analysis is not None else {}
        usable = []
        for meth in methods:
            why = available(meth, emb)
            if why:
                notes.append(why)
            else:
                usable.append(meth)
        if not usable:
            continue
        for qf, face in zip(result.faces, faces):
            q = cached.get(face.index)
            if q is None:
                q = analyzer.model_input(model, image, face)
            for mt in qf.matches_by_model.get(model, [])[:top]:
                key = (model, mt.id)
                if key not in match_cache:
                    try:
                        mimg, mface = match_face(searcher, result.models, mt, result.detector)
                        match_cache[key] = analyzer.model_input(model, mimg, mface)
                    except ImageError as e:  # a moved or deleted source: that match only
                        notes.append(f"match {mt.source_path} cannot be read ({e}); not explained")
                        match_cache[key] = None
                m = match_cache[key]
                if m is None:
                    continue
                for meth in usable:
                    ex = explain_inputs(emb, meth, q, m)
                    ex.face, ex.rank = qf.index, mt.rank
                    if out is not None:
                        rel = f"explain/{tag}_face{qf.index + 1}_{model}_match{mt.rank}_{meth}.png"
                        title = f"face {qf.index + 1} -> match {mt.rank} ({mt.identity or '?'}, stored {mt.score:.3f})"
                        render_panel(ex, title).save(out / rel, compress_level=1)
                        ex.png = rel
                    mt.explanations.append(ExplanationFile(**ex.to_dict()))
                    done.append(ex)
    return list(dict.fromkeys(notes)), done


def explain_result(searcher, result, methods: Union[str, Sequence[str]], top: int = 3,
                   out_dir: Optional[Union[str, Path]] = None) -> List[Explanation]:
    """Explain the top `top` matches of every face of a search result, after the search: the
    result must come from `Searcher.search_photo(..., keep_image=True)`. Panels are written under
    out_dir/explain/ and listed on each match (`Match.explanations`); one-line notes (methods a
    model lacks) go to `result.notes`. Returns the explanations with their maps and inputs."""
    if not result.ok or not result.faces:
        return []
    if result.image is None or len(result.detected) != len(result.faces):
        raise ExplainError("explanations need the photo: search with keep_image=True")
    chosen = parse_methods(methods) if isinstance(methods, str) else list(methods)
    t = time.perf_counter()
    analyzer = searcher.analyzer(result.models, result.detector)
    notes, done = explain_photo(searcher, analyzer, result.image, result.detected, result, chosen,
                                max(0, int(top)), str(out_dir) if out_dir else None)
    result.timings["explain"] = time.perf_counter() - t
    result.notes += [n for n in notes if n not in result.notes]
    return done
