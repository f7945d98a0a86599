"""LFW face verification (`evaluate_lfw`): pairs of images embedded through the product's own
path (`embedding.embed_images`), scored by cosine similarity.

* pairs file: LFW's `pairs.txt` layout — a header `<folds> <n>` then, per fold, n same-person lines
  `name i j` and n different-person lines `name1 i name2 j` (a header of one number n means one
  set of n + n pairs). Image `i` of `name` is `<images>/<name>/<name>_<iiii>.jpg`.
* a fold is evaluated when every image it names is present; absent folds are skipped and listed.
* 2 or more folds present: the standard protocol — for each fold, the threshold that maximises
  accuracy on the other folds is applied to it; accuracy is the mean ± std (and standard error)
  over the held-out folds (10-fold when the 10 official folds are present).
  1 fold present (`pairs_fold1.txt`): there are no other folds to choose a threshold on, so the
  figure is the accuracy at the best threshold on that fold itself — an optimistic figure, and
  the report says so.
* several faces in an LFW image (250 x 250 crops centred on the person): the face whose box
  centre is nearest the image centre is used.
* an image where no face is found (or that cannot be read): every pair that uses it counts as a
  wrong decision (its score is set to the worst case: -inf for a same-person pair, +inf for a
  different-person pair, so it is wrong at every threshold and in the ROC too). The report gives the images without a face,
  the pairs affected, and the accuracy over the pairs where both images have a face.
* ROC AUC (Mann-Whitney, ties count 1/2) and TAR at FAR = 1e-3 over all evaluated pairs; TAR@FAR
  is "n/a" with fewer than 1 / FAR (1000) different-person pairs (one false accept is then more
  than 1e-3 of them).
"""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lookalike.ingest.metrics import roc_curve, verdict_calibration, verification_metrics
from lookalike.query.evaluation.embedding import embed_images
from lookalike.query.evaluation.errors import EvalError
from lookalike.query.evaluation.report import pct
from lookalike.schemas.errors import require

# Published / reference figures, printed beside ours
PUBLISHED_LFW: Dict[str, List[Tuple[float, str]]] = {
    "facenet512": [(98.4, "DeepFace README (LFW, full protocol)")],
    "facenet": [(97.4, "DeepFace README (LFW, full protocol)")],
    "dlib": [
        (96.8, "DeepFace README (LFW; DeepFace's generic eye-line crop)"),
        (99.38, "dlib's author (LFW 10-fold, dlib's own pipeline)"),
        (99.33, "measured here: fold 1, best threshold, dlib's own pipeline (HOG + 5-point chip, "
                "euclidean): 593 of the 597 pairs where both faces are found; 98.83 % with the 3 "
                "pairs of its one image without a face counted wrong"),
    ],
}


# ---------------------------------------------------------------------------------------------
# LFW pairs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    fold: int  # 1-based
    name_a: str
    idx_a: int
    name_b: str
    idx_b: int

    @property
    def same(self) -> bool:
        return self.name_a == self.name_b

    def images(self) -> Tuple[Tuple[str, int], Tuple[str, int]]:
        return (self.name_a, self.idx_a), (self.name_b, self.idx_b)


@dataclass
class PairsFile:
    path: str
    folds: int
    per_fold: int  # same-person pairs per fold (as many different-person pairs follow)
    pairs: List[Pair]


def read_pairs(path: str | os.PathLike) -> PairsFile:
    """Parse an LFW pairs file; raises EvalError (one line) on a missing or malformed file."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise EvalError(f"pairs file {path}: no such file") from None
    except IsADirectoryError:
        raise EvalError(f"pairs file {path}: is a directory") from None
    except OSError as e:
        raise EvalError(f"pairs file {path}: cannot read ({e.strerror or e})") from None
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise EvalError(f"pairs file {path}: empty")
    head = lines[0].split()
    try:
        nums = [int(x) for x in head]
    except ValueError:
        raise EvalError(f"pairs file {path}: line 1 should be '<folds> <pairs per fold>', got {lines[0]!r}") from None
    if len(nums) == 1:
        folds, per = 1, nums[0]
    elif len(nums) == 2:
        folds, per = nums
    else:
        raise EvalError(f"pairs file {path}: line 1 should be '<folds> <pairs per fold>', got {lines[0]!r}")
    if folds < 1 or per < 1:
        raise EvalError(f"pairs file {path}: header declares {folds} folds of {per} pairs")
    body = lines[1:]
    if len(body) != folds * 2 * per:
        raise EvalError(f"pairs file {path}: header declares {folds} x {2 * per} pairs, found {len(body)} lines")
    pairs = []
    for n, ln in enumerate(body):
        parts = ln.split()
        fold, within = divmod(n, 2 * per)
        want_same = within < per
        try:
            if len(parts) == 3:
                pair = Pair(fold + 1, parts[0], int(parts[1]), parts[0], int(parts[2]))
            elif len(parts) == 4:
                pair = Pair(fold + 1, parts[0], int(parts[1]), parts[2], int(parts[3]))
            else:
                raise ValueError
        except ValueError:
            raise EvalError(f"pairs file {path}: line {n + 2} is not 'name i j' or 'name1 i name2 j': {ln!r}") from None
        if len(parts) == 3 and not want_same or len(parts) == 4 and want_same:
            kind = "same-person" if want_same else "different-person"
            raise EvalError(f"pairs file {path}: line {n + 2} should be a {kind} pair: {ln!r}")
        pairs.append(pair)
    return PairsFile(str(p), folds, per, pairs)


def lfw_image(root: Path, name: str, idx: int) -> Path:
    return root / name / f"{name}_{idx:04d}.jpg"


def resolve_lfw_root(images: str | os.PathLike, pairs: Sequence[Pair]) -> Path:
    """The folder holding `<name>/` folders: `images` itself, or its `lfw/` subfolder (the layout
    of the LFW download and of the sample data)."""
    root = Path(images).expanduser()
    if not root.is_dir():
        raise EvalError(f"images folder {images}: no such folder")
    names = [p.name_a for p in pairs[:50]]
    for cand in (root, root / "lfw", root / "lfw_funneled"):
        if cand.is_dir() and any((cand / n).is_dir() for n in names):
            return cand
    raise EvalError(f"images folder {images}: holds none of the pairs' person folders "
                    f"(expected e.g. {root / names[0] / (names[0] + '_0001.jpg')})")


def present_folds(root: Path, pairs: Sequence[Pair]) -> Tuple[List[int], Dict[int, int]]:
    """(folds whose images all exist, {fold: distinct images missing} for the others)."""
    missing: Dict[int, set] = defaultdict(set)
    seen: Dict[Tuple[str, int], bool] = {}
    folds = sorted({p.fold for p in pairs})
    for p in pairs:
        for key in p.images():
            if key not in seen:
                seen[key] = lfw_image(root, *key).is_file()
            if not seen[key]:
                missing[p.fold].add(key)
    return [f for f in folds if f not in missing], {f: len(v) for f, v in missing.items()}



# ---------------------------------------------------------------------------------------------
# LFW evaluation
# ---------------------------------------------------------------------------------------------
def evaluate_lfw(pairs_path: str, images: str, models: Sequence[str] = ("dlib",),
                 detectors: Sequence[str] = ("yunet",), settings=None, limit: Optional[int] = None,
                 progress: bool = False) -> Dict[str, Any]:
    """Run the LFW verification protocol for every (detector, model); returns the report dict
    (JSON-serialisable; `format_lfw` prints it, `plot_roc` draws it).

    `limit`: a quick look at N pairs: the file's first N/2 same-person and first N/2
    different-person pairs."""
    from lookalike.ingest.settings import resolve

    settings = resolve(settings)
    pf = read_pairs(pairs_path)
    pairs = pf.pairs
    if limit:
        # a balanced quick look: the first limit/2 same-person and different-person pairs
        same = [p for p in pairs if p.same][: (limit + 1) // 2]
        diff = [p for p in pairs if not p.same][: limit // 2]
        keep = set(map(id, same + diff))
        pairs = [p for p in pairs if id(p) in keep]
    if not pairs:
        raise EvalError("no pairs to evaluate")
    root = resolve_lfw_root(images, pairs)
    folds_ok, missing = present_folds(root, pairs)
    if not folds_ok:
        first = next(lfw_image(root, *k) for p in pairs for k in p.images() if not lfw_image(root, *k).is_file())
        raise EvalError(f"no fold of {pairs_path} has all its images under {root} (missing e.g. {first})")
    pairs = [p for p in pairs if p.fold in folds_ok]
    labels = np.array([p.same for p in pairs], dtype=bool)
    folds = np.array([p.fold for p in pairs])
    paths = list(dict.fromkeys(str(lfw_image(root, *k)) for p in pairs for k in p.images()))

    if len(folds_ok) >= 2:
        protocol = (f"{len(folds_ok)}-fold cross-validation: each fold's threshold is chosen on the "
                    f"other {len(folds_ok) - 1} folds; accuracy = mean ± std over held-out folds")
        if len(folds_ok) != pf.folds:
            protocol += f" (only {len(folds_ok)} of the file's {pf.folds} folds have their images)"
    else:
        protocol = (f"one fold present (fold {folds_ok[0]}): accuracy at the best threshold on that "
                    f"fold itself (no other fold to choose it on, so optimistic; the standard protocol "
                    f"needs the 10 folds)")
        if pf.folds > 1:
            protocol += f"; the file's other {pf.folds - 1} folds lack images"
    if limit:
        protocol += (f"; only the first {int(labels.sum())} same-person and {int((~labels).sum())} "
                     f"different-person pairs (--limit)")

    runs = []
    from lookalike.ingest.models import get_engine

    for det in detectors:
        t = time.perf_counter()
        get_engine(settings.with_(detector=det), det, list(models)).load()
        load_seconds = time.perf_counter() - t
        t0 = time.perf_counter()
        emb = embed_images(paths, settings, det, models, progress=progress, desc=f"lfw {det}")
        seconds = time.perf_counter() - t0
        noface = sorted(p for p, e in emb.items() if not e.vectors and not e.error)
        failed = sorted(p for p, e in emb.items() if e.error)
        multi = sum(1 for e in emb.values() if e.faces > 1)
        for model in models:
            scores = np.full(len(pairs), np.nan)
            for i, p in enumerate(pairs):
                a, b = (emb[str(lfw_image(root, *k))] for k in p.images())
                if a.vectors and b.vectors:
                    scores[i] = float(np.dot(a.vectors[model], b.vectors[model]))
            both = ~np.isnan(scores)
            m = verification_metrics(scores, labels, folds)
            m_both = verification_metrics(scores[both], labels[both], folds[both]) if both.any() else None
            fpr, tpr, _ = roc_curve(scores, labels)
            runs.append({
                "model": model, "detector": det, **m,
                "images": len(paths), "images_without_face": len(noface),
                "images_without_face_list": [os.path.relpath(p, root) for p in noface],
                "images_failed": {os.path.relpath(p, root): emb[p].error for p in failed},
                "images_with_several_faces": multi,
                "pairs_without_face": int((~both).sum()),
                "accuracy_pairs_with_faces": m_both["accuracy"] if m_both else None,
                "pairs_with_faces": int(both.sum()),
                "load_seconds": round(load_seconds, 2), "seconds": round(seconds, 2),
                "ms_per_image": round(1000 * seconds / max(1, len(paths)), 1),
                "verdict": verdict_calibration(scores, labels),
                "roc": {"fpr": [round(float(x), 6) for x in fpr], "tpr": [round(float(x), 6) for x in tpr]},
                "scores": [None if math.isnan(x) else round(float(x), 6) for x in scores],
            })
    return {
        "kind": "lfw", "version": 1, "pairs_file": str(Path(pairs_path).resolve()),
        "images_root": str(root.resolve()), "folds_in_file": pf.folds, "folds_evaluated": folds_ok,
        "folds_missing_images": {str(k): v for k, v in missing.items()},
        "pairs": len(pairs), "same_pairs": int(labels.sum()), "different_pairs": int((~labels).sum()),
        "labels": [bool(x) for x in labels], "folds": [int(x) for x in folds],
        "protocol": protocol,
        "similarity": "cosine of the L2-normalised embeddings (dot product)",
        "face_choice": "the face nearest the image centre when several are found",
        "no_face": "a pair with an image without a face counts as a wrong decision (worst-case score)",
        "runs": runs,
        "published": {m: [{"accuracy": a, "source": s} for a, s in PUBLISHED_LFW.get(m, [])] for m in models},
        "settings": {"yunet_threshold": settings.yunet_threshold},
    }



def format_lfw(report: Dict[str, Any]) -> str:
    lines = [f"LFW verification: {report['pairs']} pairs ({report['same_pairs']} same, "
             f"{report['different_pairs']} different) from {report['pairs_file']}",
             f"protocol: {report['protocol']}",
             f"similarity: {report['similarity']}; {report['face_choice']}",
             f"no face: {report['no_face']}"]
    if report["folds_missing_images"]:
        lines.append("skipped folds (images missing): " + ", ".join(
            f"fold {k} ({v})" for k, v in sorted(report["folds_missing_images"].items(), key=lambda kv: int(kv[0]))))
    kfold = any(r["protocol"] == "kfold" for r in report["runs"])
    acc_head = "accuracy (mean ± std)" if kfold else "accuracy (best thr)"
    head = (f"{'model':<11} {'detector':<10} {acc_head:>22} {'thr':>6} {'AUC':>7} {'TAR@FAR=1e-3':>13} "
            f"{'no face':>8} {'acc. both faces':>16} {'ms/img':>7}")
    lines += ["", head, "-" * len(head)]
    for r in report["runs"]:
        acc = pct(r["accuracy"])
        if r["accuracy_std"] is not None:
            acc = f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f} %"
        lines.append(
            f"{r['model']:<11} {r['detector']:<10} {acc:>22} {r['best_threshold']:>6.3f} {r['roc_auc']:>7.4f} "
            f"{pct(r['tar_at_far']):>13} {r['images_without_face']:>4} img {pct(r['accuracy_pairs_with_faces']):>16} "
            f"{r['ms_per_image']:>7.0f}")
    for r in report["runs"]:
        v = r.get("verdict")
        if v:
            lines.append(f"same-person verdict ({r['model']}, {r['detector']}): score >= {v['threshold']:.4f} "
                         f"at FAR {100 * v['far']:.2f} % (target {100 * v['far_target']:g} %): TAR "
                         f"{100 * v['tar']:.2f} %, accuracy {100 * v['accuracy']:.2f} %, over the "
                         f"{v['pairs']} pairs with both faces; P(same) = 1 / (1 + exp(-({v['logistic'][0]} "
                         f"x score + {v['logistic'][1]})))")
    if any(r["tar_at_far"] is None for r in report["runs"]):
        lines.append(f"TAR@FAR=1e-3: n/a with fewer than 1000 different-person pairs "
                     f"({report['different_pairs']} here)")
    for r in report["runs"]:
        for name, why in r.get("images_failed", {}).items():
            lines.append(f"unreadable ({r['detector']}): {name}: {why} -> its pairs counted wrong")
        names = r["images_without_face_list"]
        if names:
            more = f" and {len(names) - 8} more (all in the JSON)" if len(names) > 8 else ""
            lines.append(f"no face ({r['detector']}): {', '.join(names[:8])}{more} "
                         f"-> {r['pairs_without_face']} pairs counted wrong")
    pub = [(m, a, s) for m, items in report["published"].items() for a, s in
           ((i["accuracy"], i["source"]) for i in items)]
    if pub:
        lines += ["", "published / reference figures:"]
        lines += [f"  {m:<11} {a:>6.2f} %  {s}" for m, a, s in pub]
    return "\n".join(lines)


def plot_roc(report: Dict[str, Any], path: str | os.PathLike, title: Optional[str] = None) -> str:
    """ROC curves of every run: linear axes, and log-scale FAR. Returns the path written."""
    require("matplotlib", "plots", "the ROC plot")
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) is left alone

    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, 2)
    n_neg = max(1, report["different_pairs"])
    for r in report["runs"]:
        fpr, tpr = np.array(r["roc"]["fpr"]), np.array(r["roc"]["tpr"])
        label = f"{r['model']} / {r['detector']}: acc {100 * r['accuracy']:.2f} %, AUC {r['roc_auc']:.4f}"
        axes[0].plot(fpr, tpr, label=label, lw=1.5, drawstyle="steps-post")
        # (0, 0) left out: a log axis has no 0; the curve starts at its first operating point
        axes[1].plot(np.maximum(fpr[1:], 0.5 / n_neg), tpr[1:], lw=1.5, drawstyle="steps-post")
    axes[0].plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    axes[0].set_xlabel("false accept rate")
    axes[0].set_ylabel("true accept rate")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[0].set_title("ROC")
    axes[1].set_xscale("log")
    axes[1].set_xlim(0.5 / n_neg, 1)
    axes[1].set_xlabel(f"false accept rate (log; {n_neg} different-person pairs)")
    axes[1].set_title("ROC, log FAR")
    # zoom on where the curves are: down to the lowest TAR at FAR = 0.1
    def tar_at(r, far):
        f, t = np.array(r["roc"]["fpr"]), np.array(r["roc"]["tpr"])
        return float(t[f <= far].max()) if (f <= far).any() else 0.0

    lo = min((tar_at(r, 0.1) for r in report["runs"]), default=0.0)
    axes[1].set_ylim(max(0.0, min(0.9, lo) - 0.05), 1.005)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title or (f"LFW verification: {report['pairs']} pairs, {report['protocol'].split(':')[0]}\n"
                           f"a pair with an image without a face is wrong at every threshold "
                           f"(same: never accepted, different: always accepted)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)

