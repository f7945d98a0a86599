"""A learned projection head over a model's stored vectors (`lookalike train-head`).

A collection whose faces carry identities (CelebA numbers, folder names) can teach the search what
"the same person" means for its own photos. `train_head` reads the stored, frozen vectors of the
labelled faces (no image is decoded again), holds out identities and, separately, photos of known
identities, and trains a small residual head with a metric-learning loss:

    f(x) = normalise(x + g(x)),  g linear (d x d) or two-layer (d -> hidden -> d, ReLU),

with g's last weights starting at zero, so the head starts as the identity (the base model's own
ranking) and weight decay pulls it back there: with 2-5 photos per identity a free head
overfits. Losses: `triplet` (batch-hard mining over P identities x K faces, cosine distance,
margin) and `infonce` (supervised contrastive: each face's same-identity faces against the batch,
temperature); both selectable, the default is the one measured better (bench/bench_head.py).

The head is one file (torch state dict + provenance: model, collection, data counts, loss,
held-out figures, date) at `head_path(settings, model)`: `<db stem>.heads/<model>_head.pt`
beside a Milvus Lite database, `$LOOKALIKE_HEADS/<model>_head.pt` where set (a server's heads
need a folder: default ~/.cache/lookalike/heads/<server>). Its projected vectors of every stored
face go to the collection `faces_<model>_head` (same ids and metadata, vector replaced), which
records the head's digest: ingest refuses to mix vectors of two heads there, and a query refuses a
head file that is not the one the collection was written with. The head is a model like the
others: `HeadEmbedder` wraps the base model's embedder, so `query --model dlib_head` embeds a
query face with the base model's code and then the head, and new ingests into a database whose
model has a head also write the projected vectors (ingest/pipeline.py, `attach_heads`).

Projection at ingest and query time is numpy (`Head.project`): a matrix product per face batch.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lookalike.ingest.metrics import retrieval_figures
from lookalike.ingest.models.head import (  # noqa: F401  (the head as a model; re-exported for callers of the trainer)
    FORMAT,
    HEADS_ENV,
    Head,
    HeadDeviceError,
    HeadEmbedder,
    HeadError,
    HeadFileError,
    file_key,
    head_path,
    heads_dir,
)
from lookalike.ingest.settings import Settings, resolve
from lookalike.schemas import OUTPUT_FIELDS, VECTOR_FIELD, collection_name, get_model, head_key

LOSSES = ("triplet", "infonce")
ARCHS = ("linear", "mlp")
# Chosen on the CelebA sample with dlib (bench/results/head.txt).
DEFAULT_LOSS = "triplet"
DEFAULT_ARCH = "linear"
DEFAULT_EPOCHS = 30
# Collection property of faces_<model>_head: the digest of the head its vectors come from.
HEAD_PROPERTY = "lookalike.head"
# Queries per evaluated set at most (a random sample beyond): each query ranks the whole gallery.
MAX_EVAL_QUERIES = 5000





def _module(arch: str, dim: int, hidden: int):
    import torch

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # layers made in this order so that a seed draws the same initial weights as ever
            if arch == "linear":
                last = torch.nn.Linear(dim, dim, bias=False)
                branch: torch.nn.Module = last
            else:
                first = torch.nn.Linear(dim, hidden)
                last = torch.nn.Linear(hidden, dim, bias=False)
                branch = torch.nn.Sequential(first, torch.nn.ReLU(), last)
            self.branch = branch
            torch.nn.init.zeros_(last.weight)  # the identity at the start

        def forward(self, x):
            return torch.nn.functional.normalize(x + self.branch(x), dim=1)

    return Residual()


# ---------------------------------------------------------------------------------------------
# Ingest: heads that new faces must also go through
# ---------------------------------------------------------------------------------------------
def recorded_digest(store, key: str) -> Optional[str]:
    name = collection_name(key)
    if not store.has_collection(name):
        return None
    return store.properties(name).get(HEAD_PROPERTY) or None


def check_head(store, head: Head, path: Path) -> None:
    """Refuse a head file that is not the one faces_<model>_head was written with."""
    have = recorded_digest(store, head.key)
    if have is not None and have != head.digest:
        raise HeadFileError(f"{collection_name(head.key)} holds the vectors of another head than {path}; run "
                        f"`lookalike train-head --model {head.model}` again (it rewrites the collection)")


def attach_heads(store, settings: Settings, models: Sequence[str], progress: bool = False) -> Dict[str, Head]:
    """model -> Head for each model of an ingest that has a head here, its collection ready: the
    pipeline writes each new face's projected vector there too. A head collection without its
    file is refused (it would silently miss the new faces); a head file without its collection
    (a new database) gets one, filled from the stored faces."""
    heads: Dict[str, Head] = {}
    for m in models:
        path = head_path(settings, m)
        name = collection_name(head_key(m))
        if not path.is_file():
            if store.has_collection(name):
                raise HeadFileError(f"{name} exists but its head file {path} is missing: new faces could not be "
                                f"projected into it; put the file back (or set {HEADS_ENV}), or train it again "
                                f"with `lookalike train-head --model {m}`")
            continue
        head = Head.load(path)
        if head.model != m:
            raise HeadFileError(f"head file {path} is a head of {head.model}, not {m}")
        if store.has_collection(name):
            check_head(store, head, path)
        else:
            write_collection(store, head, progress=progress)
        heads[m] = head
    return heads


_WORKER_HEADS: Dict[Tuple[str, int], Head] = {}


def worker_heads(settings: Settings, models: Sequence[str]) -> Dict[str, Head]:
    """The heads of `models` for a server-mode worker (which writes its own batches): loaded once
    per process and file version; the driver has checked them (attach_heads)."""
    out = {}
    for m in models:
        path = head_path(settings, m)
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError:
            continue
        if key not in _WORKER_HEADS:
            _WORKER_HEADS[key] = Head.load(path)
        out[m] = _WORKER_HEADS[key]
    return out


def head_rows(head: Head, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows of the base collection with their vectors through the head (same ids, metadata)."""
    if not rows:
        return []
    vecs = head.project(np.asarray([r[VECTOR_FIELD] for r in rows], dtype=np.float32))
    return [{**r, VECTOR_FIELD: v.tolist()} for r, v in zip(rows, vecs)]


def write_collection(store, head: Head, progress: bool = False, batch: int = 1000) -> int:
    """(Re)write faces_<model>_head: every face of faces_<model>, its vector through `head`.
    Returns the rows written."""
    base, name = collection_name(head.model), collection_name(head.key)
    if store.has_collection(name):
        store.drop_collection(name)
    store.ensure_collection(head.key, dim=head.dim, source=store.model_source(head.model))
    fields = [f for f in OUTPUT_FIELDS if f in set(store.field_names(base))] + [VECTOR_FIELD]
    total = store.count(base)
    bar = _bar(total, progress, name, "face")
    written = 0
    buf: List[Dict[str, Any]] = []
    try:
        for row in store.iterate(base, fields, batch_size=batch):
            buf.append(row)
            if len(buf) >= batch:
                store.upsert_faces(head.key, head_rows(head, buf))
                written += len(buf)
                bar.update(len(buf))
                buf = []
        store.upsert_faces(head.key, head_rows(head, buf))
        written += len(buf)
        bar.update(len(buf))
    finally:
        bar.close()
    store.flush([name])
    store.build_indexes([name])
    store.set_properties(name, {HEAD_PROPERTY: head.digest})
    return written


def _bar(total: int, enabled: bool, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True, file=sys.stderr, desc=desc)


# ---------------------------------------------------------------------------------------------
# Data: the stored vectors, the split, the figures
# ---------------------------------------------------------------------------------------------
@dataclass
class Gallery:
    """Every stored face of a collection: the search's gallery and, where labelled, training data."""
    ids: List[str]
    identity: np.ndarray  # int code per face, -1: unlabelled
    image: np.ndarray  # int code of the image (sha256)
    vectors: np.ndarray  # (n, dim) float32
    names: List[str]  # identity code -> name


def read_gallery(store, model: str) -> Gallery:
    ids, idents, images, chunks, buf = [], [], [], [], []
    for r in store.iterate(collection_name(model), ["id", "identity", "image_sha256", VECTOR_FIELD]):
        ids.append(str(r["id"]))
        idents.append(str(r["identity"]))
        images.append(str(r["image_sha256"]))
        buf.append(r[VECTOR_FIELD])
        if len(buf) >= 4096:
            chunks.append(np.asarray(buf, dtype=np.float32))
            buf = []
    if buf:
        chunks.append(np.asarray(buf, dtype=np.float32))
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable") if ids else np.zeros(0, int)
    X = np.concatenate(chunks)[order] if chunks else np.zeros((0, 0), np.float32)
    names = sorted({i for i in idents if i})
    code = {n: i for i, n in enumerate(names)}
    _, img_code = np.unique(np.asarray(images, dtype=object).astype(str), return_inverse=True)
    return Gallery([ids[i] for i in order], np.asarray([code.get(idents[i], -1) for i in order], dtype=np.int64),
                   np.asarray(img_code, dtype=np.int64)[order] if ids else np.zeros(0, np.int64), X, names)


@dataclass
class Split:
    train: np.ndarray  # face indices the head is trained on
    photos: np.ndarray  # held-out photos of identities the head was trained on
    identities: np.ndarray  # faces of held-out identities (never seen in training)
    held_identities: List[str]


def split(g: Gallery, holdout: float, seed: int) -> Split:
    """Hold out `holdout` of the identities with 2+ labelled images (all their faces), and, of
    each other identity with 3+, round(holdout x n) images (at least 1, keeping 2 for training).
    Identities with one labelled image stay in the gallery only (nothing to learn from them)."""
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(g.identity >= 0)
    by_id: Dict[int, List[int]] = {}
    for i in labelled:
        by_id.setdefault(int(g.identity[i]), []).append(int(i))
    # faces of one image count once (a label belongs to one face per image)
    multi = sorted(k for k, v in by_id.items() if len({int(g.image[i]) for i in v}) >= 2)
    n_held = int(round(holdout * len(multi))) if holdout > 0 else 0
    held = set(rng.permutation(multi)[:n_held].tolist()) if n_held else set()
    train, photos, idents = [], [], []
    for k in multi:
        faces = by_id[k]
        if k in held:
            idents += faces
            continue
        n_out = min(max(1, int(round(holdout * len(faces)))), len(faces) - 2) if holdout > 0 else 0
        perm = rng.permutation(faces).tolist()
        photos += perm[:max(0, n_out)]
        train += perm[max(0, n_out):]
    return Split(np.asarray(sorted(train), np.int64), np.asarray(sorted(photos), np.int64),
                 np.asarray(sorted(idents), np.int64), sorted(g.names[k] for k in held))


def _sample(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(idx) <= n:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _triplet_loss(z, y, margin: float):
    """Batch-hard triplet loss on cosine distance: each anchor's farthest positive and nearest
    negative in the batch (Hermans et al. 2017)."""
    import torch

    d = 1.0 - z @ z.T
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=z.device)
    pos, neg = same & ~eye, ~same
    d_ap = d.masked_fill(~pos, float("-inf")).max(dim=1).values
    d_an = d.masked_fill(~neg, float("inf")).min(dim=1).values
    valid = pos.any(dim=1) & neg.any(dim=1)
    return torch.relu(d_ap - d_an + margin)[valid].mean()


def _infonce_loss(z, y, temperature: float):
    """Supervised contrastive (InfoNCE with every same-identity face as a positive; Khosla et al.
    2020): -mean log softmax of the positives among all other faces of the batch."""
    import torch

    eye = torch.eye(len(y), dtype=torch.bool, device=z.device)
    logp = (z @ z.T / temperature).masked_fill(eye, float("-inf")).log_softmax(dim=1)
    pos = (y[:, None] == y[None, :]) & ~eye
    per = -logp.masked_fill(~pos, 0.0).sum(dim=1) / pos.sum(dim=1).clamp(min=1)
    return per[pos.any(dim=1)].mean()


@dataclass
class TrainConfig:
    arch: str = DEFAULT_ARCH
    loss: str = DEFAULT_LOSS
    epochs: int = DEFAULT_EPOCHS
    lr: float = 3e-4
    # AdamW's decoupled decay on the residual branch pulls the head back to the identity; strong,
    # because with 2-5 photos per identity a freer head learns the training faces, not faces
    # (bench/results/head.txt: the "freer" regime, decay 1e-2, gains on training faces only)
    weight_decay: float = 30.0
    margin: float = 0.1  # triplet, cosine distance
    temperature: float = 0.05  # infonce
    ids_per_batch: int = 32  # P
    faces_per_id: int = 4  # K (at most)
    hidden: int = 0  # mlp width; 0: the input dimension
    seed: int = 0


def fit(X: np.ndarray, y: np.ndarray, cfg: TrainConfig, device: str = "cpu", progress: bool = False,
        desc: str = "train-head") -> Tuple[Dict[str, np.ndarray], List[float]]:
    """Train the head on (n, dim) vectors with integer labels; returns its numpy state and the
    mean loss per epoch. Batches: P identities x up to K of their faces, each identity once an epoch."""
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dim = X.shape[1]
    hidden = cfg.hidden or dim
    net = _module(cfg.arch, dim, hidden).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    groups: Dict[int, List[int]] = {}
    for i, k in enumerate(np.asarray(y).tolist()):
        groups.setdefault(int(k), []).append(i)
    ids = np.asarray(sorted(k for k, v in groups.items() if len(v) >= 2))
    loss_fn = (lambda z, t: _triplet_loss(z, t, cfg.margin)) if cfg.loss == "triplet" else \
        (lambda z, t: _infonce_loss(z, t, cfg.temperature))
    history: List[float] = []
    bar = _bar(cfg.epochs, progress, desc, "epoch")
    try:
        for _ in range(cfg.epochs):
            net.train()
            losses = []
            perm = rng.permutation(ids)
            for a in range(0, len(perm), cfg.ids_per_batch):
                chunk = perm[a:a + cfg.ids_per_batch]
                if len(chunk) < 2:
                    continue
                idx = np.concatenate([rng.permutation(groups[int(k)])[:cfg.faces_per_id] for k in chunk])
                sel = torch.from_numpy(idx).to(device)
                loss = loss_fn(net(Xt[sel]), yt[sel])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            history.append(float(np.mean(losses)) if losses else float("nan"))
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.4f}", refresh=False)
    finally:
        bar.close()
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    return state, history


def _device(device: str) -> str:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise HeadDeviceError(f"--device {device!r}: {str(e).splitlines()[0]}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HeadDeviceError(f"--device {device}: torch sees no CUDA device here (use --device cpu)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise HeadDeviceError(f"--device {device}: torch sees no MPS device here (use --device cpu)")
    return str(dev)


SETS = (("photos", "held-out photos of known identities"), ("identities", "held-out identities"),
        ("train", "training faces"))


@dataclass
class HeadSummary:
    model: str
    head_model: str
    path: str
    collection: str
    arch: str
    loss: str
    epochs: int
    device: str
    counts: Dict[str, int]
    figures: Dict[str, Dict[str, Dict[str, Any]]]  # set -> {"base": ..., "head": ...}
    rows_written: int = 0
    seconds: float = 0.0
    loss_history: List[float] = field(default_factory=list, repr=False)

    def lines(self) -> List[str]:
        c = self.counts
        out = [
            f"head        {self.head_model} -> {self.path}",
            f"training    {self.arch}, {self.loss} loss, {self.epochs} epochs on {self.device} "
            f"(loss {self.loss_history[0]:.4f} -> {self.loss_history[-1]:.4f})" if self.loss_history else
            f"training    {self.arch}, {self.loss} loss, {self.epochs} epochs on {self.device}",
            f"data        {c['labelled_faces']} labelled faces of {c['identities']} identities; trained on "
            f"{c['train_faces']} faces of {c['train_identities']} identities; held out {c['heldout_photos']} photos "
            f"of known identities and {c['heldout_identities']} identities ({c['heldout_identity_faces']} faces)",
        ]
        if self.figures:
            out.append(f"{'':<38} {'queries':>7}  {'R@1':>13}  {'R@5':>13}  {'R@10':>13}  {'mAP':>13}")
            out.append(f"{'':<38} {'':>7}  {'base -> head':>13}  {'base -> head':>13}  {'base -> head':>13}  "
                       f"{'base -> head':>13}")
            for key, label in SETS:
                f = self.figures.get(key)
                if not f or not f["base"]["queries"]:
                    continue
                cells = [f"{_pct(f['base'][m])} -> {_pct(f['head'][m])}"
                         for m in ("recall_at_1", "recall_at_5", "recall_at_10", "map")]
                out.append(f"{label:<38} {f['base']['queries']:>7}  " + "  ".join(f"{x:>13}" for x in cells))
        else:
            out.append("held out    nothing (--holdout 0): no figures")
        out += [f"collection  {self.collection}: {self.rows_written} faces written",
                f"wall time   {self.seconds:.1f} s"]
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def train_head(model: str = "dlib", *, settings: Optional[Settings] = None, db: Optional[str] = None,
               uri: Optional[str] = None, token: Optional[str] = None, profile: Optional[str] = None,
               holdout: float = 0.2, epochs: Optional[int] = None, loss: Optional[str] = None,
               arch: Optional[str] = None, device: str = "cpu", seed: int = 0, progress: bool = True,
               config: Optional[TrainConfig] = None) -> HeadSummary:
    """Train `model`'s head on the collection's labelled faces, evaluate it on held-out photos and
    identities against the base model, write faces_<model>_head and the head file (Python twin of
    `lookalike train-head`). Retraining replaces both."""
    from lookalike.ingest.store import Store

    t0 = time.perf_counter()
    settings = resolve(settings, db=db, uri=uri, token=token, profile=profile)
    cfg = config or TrainConfig()
    cfg = TrainConfig(**{**cfg.__dict__, "seed": seed,
                         **{k: v for k, v in (("epochs", epochs), ("loss", loss), ("arch", arch)) if v is not None}})
    try:
        spec = get_model(model)
    except KeyError as e:
        raise HeadError(str(e).strip("'\"")) from None
    if spec.head_of:
        raise HeadError(f"{model} is a head already; train the head of {spec.head_of}")
    if cfg.loss not in LOSSES:
        raise HeadError(f"--loss {cfg.loss!r}: expected one of {', '.join(LOSSES)}")
    if cfg.arch not in ARCHS:
        raise HeadError(f"--arch {cfg.arch!r}: expected one of {', '.join(ARCHS)}")
    if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
        raise HeadError(f"--epochs must be a positive integer, got {cfg.epochs!r}")
    if not 0.0 <= float(holdout) < 1.0:
        raise HeadError(f"--holdout must be in [0, 1), got {holdout!r}")
    dev = _device(device)
    where = settings.uri or settings.db
    with Store.from_settings(settings) as store:
        if not store.has(spec.name):
            raise HeadError(f"no collection {collection_name(spec.name)} in {where}; ingest first: "
                            f"lookalike ingest SOURCE --models {spec.base}" + (f" --layer {spec.layer}" if spec.layer else ""))
        g = read_gallery(store, spec.name)
        sp = split(g, float(holdout), cfg.seed)
        y = g.identity[sp.train]
        trainable = sum(1 for n in np.unique(y, return_counts=True)[1] if n >= 2) if len(y) else 0
        if trainable < 2:
            raise HeadError(f"{collection_name(spec.name)} has too few labelled faces to train on: it needs "
                            f"identities with 2+ photos (folder names or CelebA identities); {trainable} left "
                            f"for training after the holdout")
        state, history = fit(g.vectors[sp.train], y, cfg, dev, progress)
        head = Head(spec.name, cfg.arch, g.vectors.shape[1], cfg.hidden or g.vectors.shape[1], state)
        P = head.project(g.vectors)
        figures: Dict[str, Dict[str, Dict[str, Any]]] = {}
        sets = {"photos": sp.photos, "identities": sp.identities,
                "train": _sample(sp.train, MAX_EVAL_QUERIES, cfg.seed)}
        for key, idx in sets.items():
            if key != "train" and not len(idx):
                continue
            idx = _sample(idx, MAX_EVAL_QUERIES, cfg.seed)
            figures[key] = {"base": retrieval_figures(g.vectors, g.identity, g.image, idx),
                            "head": retrieval_figures(P, g.identity, g.image, idx)}
        if not (len(sp.photos) or len(sp.identities)):
            figures = {}
        labelled = g.identity >= 0
        counts = {
            "faces": len(g.ids), "labelled_faces": int(labelled.sum()),
            "identities": int(len(np.unique(g.identity[labelled]))),
            "train_faces": int(len(sp.train)), "train_identities": int(len(np.unique(y))),
            "heldout_photos": int(len(sp.photos)), "heldout_identities": len(sp.held_identities),
            "heldout_identity_faces": int(len(sp.identities)),
        }
        path = head_path(settings, spec.name)
        head.provenance = {
            "format": FORMAT, "model": spec.name, "head_model": head.key, "arch": cfg.arch, "dim": head.dim,
            "hidden": head.hidden, "collection": collection_name(spec.name), "head_collection": collection_name(head.key),
            "database": str(Path(settings.db).resolve()) if not settings.uri else settings.uri,
            "model_source": store.model_source(spec.name), "loss": cfg.loss, "config": dict(cfg.__dict__),
            "holdout": float(holdout), "device": dev, "counts": counts, "figures": figures,
            "loss_history": [round(v, 6) for v in history],
            "split": {"seed": cfg.seed, "heldout_identities": sp.held_identities,
                      "heldout_photo_ids": [g.ids[i] for i in sp.photos],
                      "train_ids": [g.ids[i] for i in sp.train]},
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        rows = write_collection(store, head, progress=progress)
        head.save(path)
    return HeadSummary(spec.name, head.key, str(path), collection_name(head.key), cfg.arch, cfg.loss, cfg.epochs,
                       dev, counts, figures, rows, time.perf_counter() - t0, history)
