"""Evaluation harness: LFW face verification and identity retrieval, through the product's own code.

Both evaluations see faces exactly as ingestion and queries do: `ingest.images.load` decodes,
`get_engine(settings, detector, models).load()` builds the detector and embedders, and
`engine.detector.detect(image)` then `engine.embedders[model].embed(image, [face])` give the
L2-normalised embedding. Similarity is the cosine of two embeddings (their dot product).

LFW verification (`evaluate_lfw`)
---------------------------------
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

Identity retrieval (`evaluate_retrieval`)
-----------------------------------------
* SOURCE (CelebA directory, folder gallery or list file) is ingested with `ingest.run` into the
  database (resumable: an existing database is reused, images already there are skipped). With
  several detectors, each gets its own database (`<db stem>-<detector><suffix>`): the ledger is
  per model, not per detector.
* the collection's vectors and identities (restricted to SOURCE's images, and to `--filter`) are
  fetched once (`Store.iterate`) and the search is computed exactly with numpy (every query
  against every other face) — the collections here are small, and this measures the embeddings,
  not the HNSW index.
* one face per image by default: the largest (an in-the-wild CelebA photo can hold bystanders,
  who would carry the photo's identity); `faces="all"` keeps every face.
* leave-one-out: each face whose identity has a face in another image queries all faces except
  those of its own image. Recall@k: a face of the same identity is among the k best; AP: average
  precision of the full ranking; mAP: its mean over queries. `recall_at_1_strict` (one face per
  image, no filter) also counts as misses the images of such identities where no face was found.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

# ---------------------------------------------------------------------------------------------
# Published / reference figures, printed beside ours
# ---------------------------------------------------------------------------------------------
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
REFERENCE_RETRIEVAL: Dict[str, List[Tuple[float, str]]] = {
    "celeba/dlib": [
        (55.0, "Recall@1, DeepFace.represent (YuNet + Dlib, eye-line crop), held-out photos"),
        (91.0, "Recall@1, dlib's own pipeline (HOG + 5-point chip), held-out photos"),
    ],
}

FAR_TARGET = 1e-3
RECALL_KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------
# Verification metrics (pure numpy)
# ---------------------------------------------------------------------------------------------
def worst_case(scores: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Scores with every missing one (NaN: no face) set to the worst case for its pair: -inf for a
    same-person pair (never accepted), +inf for a different-person pair (always accepted)."""
    s = np.asarray(scores, dtype=np.float64).copy()
    y = np.asarray(labels, dtype=bool)
    bad = np.isnan(s)
    s[bad & y] = -np.inf
    s[bad & ~y] = np.inf
    return s


def accuracy_at(scores: ArrayLike, labels: ArrayLike, threshold: float) -> float:
    """Fraction of pairs decided right when "same person" means score >= threshold (NaN: wrong)."""
    s = worst_case(scores, labels)
    y = np.asarray(labels, dtype=bool)
    if len(y) == 0:
        return float("nan")
    return float(np.mean((s >= threshold) == y))


def _candidate_thresholds(s: np.ndarray) -> np.ndarray:
    finite = np.unique(s[np.isfinite(s)])
    if finite.size == 0:
        return np.array([0.0])
    mids = (finite[1:] + finite[:-1]) / 2.0
    return np.concatenate([[finite[0] - 1e-6], mids, [finite[-1] + 1e-6]])


def best_threshold(scores: ArrayLike, labels: ArrayLike) -> Tuple[float, float]:
    """(threshold, accuracy) maximising accuracy over the pairs given.

    Candidates are the midpoints between consecutive distinct scores (and just below the lowest /
    above the highest). When several candidates reach the best accuracy, the middle one of them
    (in score order) is taken: a threshold in the middle of the plateau, not at its edge.
    """
    s = worst_case(scores, labels)
    y = np.asarray(labels, dtype=bool)
    cand = _candidate_thresholds(s)
    # correct(t) = #{pos: s >= t} + #{neg: s < t}, for every candidate at once via sorted scores
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    tp = pos.size - np.searchsorted(pos, cand, side="left")
    tn = np.searchsorted(neg, cand, side="left")
    correct = tp + tn
    best = np.flatnonzero(correct == correct.max())
    i = best[len(best) // 2]
    return float(cand[i]), float(correct[i] / max(1, y.size))


def kfold_accuracy(scores: ArrayLike, labels: ArrayLike, folds: ArrayLike) -> Dict[str, Any]:
    """LFW protocol: per fold, the best threshold of the OTHER folds applied to it.

    Returns per-fold accuracies and thresholds, mean, std (population, as LFW results are usually
    given) and the standard error std / sqrt(k). Needs >= 2 folds.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    f = np.asarray(folds)
    ids = sorted(set(f.tolist()))
    if len(ids) < 2:
        raise ValueError("k-fold accuracy needs at least 2 folds")
    accs, thrs = [], []
    for k in ids:
        test = f == k
        thr, _ = best_threshold(s[~test], y[~test])
        thrs.append(thr)
        accs.append(accuracy_at(s[test], y[test], thr))
    a = np.array(accs)
    return {"folds": [int(k) for k in ids], "fold_accuracy": [float(x) for x in a],
            "fold_threshold": [float(t) for t in thrs], "mean": float(a.mean()), "std": float(a.std()),
            "stderr": float(a.std() / math.sqrt(len(a)))}


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing; "accept" means score >= threshold.
    Missing scores take the worst case (see `worst_case`). Starts at (0, 0) (threshold +inf,
    nothing accepted but +inf scores) and ends at (1, 1)."""
    s = worst_case(scores, labels)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # one point per distinct score (ties move together)
    distinct = np.flatnonzero(s[1:] != s[:-1]) if s.size else np.array([], dtype=int)
    idx = np.concatenate([distinct, [s.size - 1]]) if s.size else np.array([], dtype=int)
    tps = np.cumsum(y)[idx]
    fps = np.cumsum(~y)[idx]
    tpr = np.concatenate([[0.0], tps / max(1, n_pos)])
    fpr = np.concatenate([[0.0], fps / max(1, n_neg)])
    thr = np.concatenate([[np.inf], s[idx]])
    return fpr, tpr, thr


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve = P(score of a same pair > score of a different pair), ties 1/2."""
    s = worst_case(scores, labels)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    ties = np.searchsorted(neg_sorted, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.size * neg.size))


def tar_at_far(scores: ArrayLike, labels: ArrayLike, far: float = FAR_TARGET
               ) -> Optional[Dict[str, float]]:
    """True accept rate at the threshold that accepts at most floor(far * negatives) different-
    person pairs ("accept" = score > threshold, the threshold being the (m+1)-th highest
    different-person score, m = floor(far * negatives)). None when there are fewer than 1 / far
    negatives: one false accept would already exceed `far`."""
    s = worst_case(scores, labels)
    y = np.asarray(labels, dtype=bool)
    neg = np.sort(s[~y])[::-1]
    if neg.size < math.ceil(1.0 / far - 1e-9):
        return None
    m = int(math.floor(far * neg.size + 1e-9))
    thr = float(neg[m])
    return {"tar": float(np.mean(s[y] > thr)), "far": float(np.mean(neg > thr)), "threshold": thr,
            "negatives": int(neg.size)}


VERDICT_FAR = 0.01  # false-accept rate the same-person threshold is set at


def verdict_calibration(scores: ArrayLike, labels: ArrayLike, far: float = VERDICT_FAR
                        ) -> Optional[Dict[str, Any]]:
    """The same-person threshold at a false-accept rate (pairs where both faces were found):
    the lowest threshold at which at most floor(far x negatives) different-person pairs score at
    or above it, with its TAR, FAR and accuracy; plus a logistic fit P(same | score) (Platt
    scaling, fitted by Newton's method: two parameters, no library needed). None without both
    kinds of pairs."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    neg = np.sort(s[~y])[::-1]
    if neg.size == 0 or y.sum() == 0:
        return None
    m = int(math.floor(far * neg.size + 1e-9))
    # accept = score >= threshold: the threshold sits just above the (m+1)-th highest negative
    thr = float(np.nextafter(neg[m], np.inf)) if m < neg.size else float(neg[-1])
    a, b = _platt(s, y.astype(np.float64), thr)
    return {"threshold": round(thr, 4), "far": float(np.mean(s[~y] >= thr)), "tar": float(np.mean(s[y] >= thr)),
            "accuracy": float(np.mean((s >= thr) == y)), "far_target": far,
            "logistic": [round(float(a), 4), round(float(b), 4)],
            "pairs": int(y.size), "negatives": int(neg.size)}


SEARCH_FARS = (1e-2, 1e-3, 1e-4, 1e-5)  # per-pair false-accept rates the search verdict's curve is measured at
SEARCH_FPIR = 0.05  # share of strangers a search may call "the same person" as someone


def _platt(s: np.ndarray, y: np.ndarray, start: float) -> Tuple[float, float]:
    """Logistic fit P(y | s) = 1 / (1 + exp(-(a s + b))) by Newton's method (two parameters)."""
    a, b = 10.0, -10.0 * start
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * s + b, -50, 50)))
        g = np.array([np.sum((p - y) * s), np.sum(p - y)])
        w = p * (1 - p) + 1e-9
        h = np.array([[np.sum(w * s * s), np.sum(w * s)], [np.sum(w * s), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    return float(a), float(b)


def search_calibration(vectors: np.ndarray, identities: Sequence[str], fpir: float = SEARCH_FPIR,
                       fars: Sequence[float] = SEARCH_FARS) -> Dict[str, Any]:
    """The same-person verdict for search (1:N), from labelled unit vectors (one face per photo).

    A 1:1 threshold (FAR 1 % on LFW pairs) lets almost every stranger match someone in a gallery of
    a thousand faces: each search makes N comparisons. So the verdict keeps the impostor tail, the
    threshold at each per-pair FAR of `fars` over every different-identity pair, and a search over
    N faces uses the threshold at FAR = fpir / N (schemas.Verdict.threshold_for). Measured here
    open-set, every face searched against all the others: a mated search (its identity has other
    photos) is right when its best match is that identity; a non-mated search (its identity left
    out) is a stranger, falsely accepted when its best score reaches the threshold. The logistic
    is fitted on those two outcomes: P(the best match is the same person | score) at this gallery
    size, half the searches strangers."""
    v = np.asarray(vectors, dtype=np.float64)
    ids = np.asarray([str(i) for i in identities])
    n = len(ids)
    sims = v @ v.T
    iu = np.triu_indices(n, 1)
    same = (ids[:, None] == ids[None, :])
    neg = np.sort(sims[iu][~same[iu]])[::-1]
    pos = sims[iu][same[iu]]
    curve = []
    for far in fars:
        m = int(math.floor(far * neg.size + 1e-9))
        if m >= neg.size or m < 1:
            continue
        thr = float(np.nextafter(neg[m], np.inf))
        curve.append({"far": far, "threshold": round(thr, 4), "tar": float(np.mean(pos >= thr)),
                      "impostors_above": m})
    np.fill_diagonal(sims, -np.inf)
    counts = Counter(ids.tolist())
    mated, right, stranger = [], [], []
    for i in range(n):
        others = sims[i]
        if counts[ids[i]] >= 2:
            j = int(np.argmax(others))
            mated.append(others[j])
            right.append(ids[j] == ids[i])
        stranger.append(float(np.max(np.where(same[i], -np.inf, others))))
    mated_a, right_a, stranger_a = np.array(mated), np.array(right, bool), np.array(stranger)
    curve_pts = tuple((c["threshold"], c["far"]) for c in curve)
    from lookalike.schemas import Verdict

    s = np.concatenate([mated_a[right_a], stranger_a])
    y = np.concatenate([np.ones(int(right_a.sum())), np.zeros(stranger_a.size)])
    a, b = _platt(s, y, curve_pts[-1][0] if curve_pts else 0.9)
    levels = []
    for target in sorted({0.01, 0.02, fpir, 0.1}):
        thr = Verdict(curve_pts[0][0] if curve_pts else 1.0, None, "", curve_pts, target).threshold_for(n - 1)
        levels.append({"fpir_target": target, "threshold": round(thr, 4), "fpir": float(np.mean(stranger_a >= thr)),
                       "tpir": float(np.mean(right_a & (mated_a >= thr))) if mated else None,
                       "wrong_called_same": float(np.mean(~right_a & (mated_a >= thr))) if mated else None})
    return {"faces": n, "identities": len(counts), "impostor_pairs": int(neg.size), "mated_pairs": int(pos.size),
            "curve": curve, "gallery": n - 1, "mated_searches": len(mated), "fpir_target": fpir,
            "levels": levels, "logistic": [round(a, 4), round(b, 4)], "logistic_midpoint": round(-b / a, 4)}


def format_search_calibration(c: Dict[str, Any]) -> List[str]:
    """The search verdict's calibration as report lines."""
    out = [f"search verdict over {c['faces']} faces ({c['identities']} identities; {c['impostor_pairs']} impostor "
           f"and {c['mated_pairs']} mated pairs)",
           "  impostor tail: " + ", ".join(f"FAR {p['far']:g} at {p['threshold']:.4f} (TAR {100 * p['tar']:.1f} %)"
                                          for p in c["curve"]),
           f"  open set, each face searched against the other {c['gallery']} "
           f"({c['mated_searches']} with their identity present):"]
    for lv in c["levels"]:
        out.append(f"    FPIR target {100 * lv['fpir_target']:4.1f} %: threshold {lv['threshold']:.4f}  strangers "
                   f"called same {100 * lv['fpir']:5.2f} %  people found and called same {100 * (lv['tpir'] or 0):5.2f} %  "
                   f"wrong person called same {100 * (lv['wrong_called_same'] or 0):5.2f} %")
    out.append(f"  logistic slope {c['logistic'][0]:.2f}, midpoint {c['logistic_midpoint']:.4f}")
    return out


def verification_metrics(scores: ArrayLike, labels: ArrayLike, folds: ArrayLike) -> Dict[str, Any]:
    """Accuracy by the protocol the folds allow, best-threshold accuracy, ROC AUC, TAR@FAR."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    f = np.asarray(folds)
    thr, acc = best_threshold(s, y)
    out: Dict[str, Any] = {"pairs": int(y.size), "best_threshold": thr, "best_threshold_accuracy": acc}
    if len(set(f.tolist())) >= 2:
        kf = kfold_accuracy(s, y, f)
        out.update(protocol="kfold", accuracy=kf["mean"], accuracy_std=kf["std"],
                   accuracy_stderr=kf["stderr"], kfold=kf)
    else:
        out.update(protocol="best-threshold", accuracy=acc, accuracy_std=None, accuracy_stderr=None)
    out["roc_auc"] = roc_auc(s, y)
    t = tar_at_far(s, y, FAR_TARGET)
    out["tar_at_far"] = t["tar"] if t else None
    out["tar_at_far_detail"] = t
    out["far_target"] = FAR_TARGET
    return out


# ---------------------------------------------------------------------------------------------
# LFW pairs
# ---------------------------------------------------------------------------------------------
class EvalError(ValueError):
    """An evaluation that cannot run as asked (bad pairs file, missing images, ...); one line."""


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
# Embedding images through the product's path
# ---------------------------------------------------------------------------------------------
def _box(b) -> Tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in b)
    return x, y, w, h


def nearest_centre(faces: Sequence[Any], width: int, height: int) -> Any:
    """The face whose box centre is nearest the image centre (LFW crops are centred on the person)."""
    cx, cy = width / 2.0, height / 2.0
    return min(faces, key=lambda f: (f.box[0] + f.box[2] / 2.0 - cx) ** 2 + (f.box[1] + f.box[3] / 2.0 - cy) ** 2)


@dataclass
class Embedded:
    path: str
    faces: int  # faces the detector found
    vectors: Dict[str, np.ndarray]  # model -> (dim,) embedding of the chosen face; empty if none
    box: Optional[Tuple[int, int, int, int]] = None
    error: str = ""


def embed_images(paths: Sequence[str], settings, detector: str, models: Sequence[str],
                 progress: bool = False, desc: str = "embed") -> Dict[str, Embedded]:
    """Detect -> choose the face nearest the centre -> embed, for each distinct image, with the
    product's engine (`get_engine(settings, detector, models).load()`)."""
    from lookalike.ingest.images import ImageError, load
    from lookalike.ingest.models import ModelError, WeightsMissing, get_engine

    engine = get_engine(settings.with_(detector=detector), detector, list(models)).load()
    out: Dict[str, Embedded] = {}
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True)
    try:
        for path in paths:
            if path in out:
                continue
            try:
                image = load(path)
            except ImageError as e:
                out[path] = Embedded(path, 0, {}, error=str(e))
            else:
                try:
                    faces = engine.detector.detect(image)
                    face = nearest_centre(faces, image.width, image.height) if faces else None
                    vecs = {m: engine.embedders[m].embed(image, [face])[0] for m in models} if face is not None else {}
                except (WeightsMissing, ModelError):
                    raise  # configuration problems stop the evaluation
                except Exception as e:  # noqa: BLE001 - a model crash on one image: that image fails
                    out[path] = Embedded(path, 0, {}, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                else:
                    out[path] = Embedded(path, len(faces), vecs,
                                         box=_box(face.box) if face is not None else None)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


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
    from lookalike.ingest.settings import Settings

    settings = settings or Settings()
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


def to_json(report: Dict[str, Any]) -> str:
    """The report as JSON: objects indented, lists of numbers on one line, NaN as null."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    def enc(o, ind: int) -> str:
        pad, inner = " " * ind, " " * (ind + 1)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{inner}{json.dumps(k)}: {enc(v, ind + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list) and any(isinstance(v, (dict, list)) for v in o):
            return "[\n" + ",\n".join(inner + enc(v, ind + 1) for v in o) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False)

    return enc(clean(report), 0) + "\n"


def _pct(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f} %"


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
        acc = _pct(r["accuracy"])
        if r["accuracy_std"] is not None:
            acc = f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f} %"
        lines.append(
            f"{r['model']:<11} {r['detector']:<10} {acc:>22} {r['best_threshold']:>6.3f} {r['roc_auc']:>7.4f} "
            f"{_pct(r['tar_at_far']):>13} {r['images_without_face']:>4} img {_pct(r['accuracy_pairs_with_faces']):>16} "
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


# ---------------------------------------------------------------------------------------------
# Identity retrieval
# ---------------------------------------------------------------------------------------------
def retrieval_metrics(vectors: np.ndarray, identities: Sequence[str], images: Sequence[str],
                      ks: Sequence[int] = RECALL_KS, queries: Optional[ArrayLike] = None) -> Dict[str, Any]:
    """Leave-one-out retrieval, computed exactly: every face with a same-identity face in another
    image queries all faces outside its own image. Faces with identity '' are distractors only.
    `queries` (a mask) restricts which faces query; every face stays in the gallery.

    Returns recall@k for each k, mAP, the number of queries and the per-query ranks of the first
    correct match (1-based)."""
    X = np.asarray(vectors, dtype=np.float32)
    ids = np.asarray(list(identities), dtype=object)
    img = np.asarray(list(images), dtype=object)
    n = len(ids)
    if n == 0:
        return {"queries": 0, **{f"recall_at_{k}": None for k in ks}, "map": None, "identities_queried": 0,
                "first_hit_ranks": []}
    S = X @ X.T
    _, img_code = np.unique(img.astype(str), return_inverse=True)
    _, id_code = np.unique(ids.astype(str), return_inverse=True)
    labelled = ids != ""
    same_img = img_code[:, None] == img_code[None, :]
    same_id = (id_code[:, None] == id_code[None, :]) & labelled[:, None] & labelled[None, :]
    relevant = same_id & ~same_img
    asking = labelled & relevant.any(axis=1)
    if queries is not None:
        asking &= np.asarray(queries, dtype=bool)
    asked = np.flatnonzero(asking)
    first_ranks, aps = [], []
    for q in asked:
        s = S[q].astype(np.float64)
        s[same_img[q]] = -np.inf
        order = np.argsort(-s, kind="stable")
        order = order[~same_img[q][order]]
        rel = relevant[q][order]
        hits = np.flatnonzero(rel)
        first_ranks.append(int(hits[0]) + 1)
        precision_at_hits = np.arange(1, hits.size + 1) / (hits + 1)
        aps.append(float(precision_at_hits.mean()))
    fr = np.array(first_ranks)
    out: Dict[str, Any] = {"queries": int(asked.size)}
    for k in ks:
        out[f"recall_at_{k}"] = float(np.mean(fr <= k)) if fr.size else None
    out["map"] = float(np.mean(aps)) if aps else None
    out["identities_queried"] = int(len(set(ids[asked].tolist())))
    out["first_hit_ranks"] = [int(x) for x in fr]
    return out


RETRIEVAL_FIELDS = ["id", "image_sha256", "source_path", "face_index", "box_w", "box_h", "identity",
                    "detector", "vector"]


def db_for_detector(db: str, detector: str, several: bool) -> str:
    """The database a detector's faces go to: `db` itself for one detector, else
    `<stem>-<detector><suffix>` beside it."""
    if not several:
        return db
    p = Path(db)
    return str(p.with_name(f"{p.stem}-{detector}{p.suffix or '.db'}"))


def _largest_per_image(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    best: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        key = r["image_sha256"]
        area = int(r["box_w"]) * int(r["box_h"])
        if key not in best or area > int(best[key]["box_w"]) * int(best[key]["box_h"]):
            best[key] = r
    return list(best.values())


def evaluate_retrieval(source: str, db: str, models: Sequence[str] = ("dlib",),
                       detectors: Sequence[str] = ("yunet",), filter: Optional[str] = None,
                       settings=None, workers: int = 2, faces: str = "largest", limit: Optional[int] = None,
                       progress: bool = False, report_dir: Optional[str] = None,
                       uri: Optional[str] = None, token: Optional[str] = None,
                       profile: Optional[str] = None) -> Dict[str, Any]:
    """Ingest `source` (resumable) for every detector, then leave-one-out identity retrieval per
    (model, detector) over the source's faces, exactly with numpy. Returns the report dict."""
    from lookalike.ingest import run as ingest_run
    from lookalike.ingest.settings import Settings
    from lookalike.ingest.sources import SourceError, open_source
    from lookalike.ingest.store import Store
    from lookalike.schemas import collection_name
    from lookalike.schemas.filters import combine, compile_filter

    settings = settings or Settings()
    if faces not in ("largest", "all"):
        raise EvalError(f"faces must be 'largest' or 'all', got {faces!r}")
    flt = compile_filter(filter) if filter else None  # FilterError: one line, exit 2
    try:
        src = open_source(source, limit=limit)
        records = [r for r in src]
    except (SourceError, OSError) as e:
        raise EvalError(str(e)) from None
    src_paths = {os.path.abspath(r.path): r.identity for r in records}
    by_identity = Counter(i for i in src_paths.values() if i)
    expected_queries = sum(1 for i in src_paths.values() if i and by_identity[i] >= 2)
    several = len(detectors) > 1 and not uri
    runs = []
    for det in detectors:
        target_db = db_for_detector(db, det, several)
        t0 = time.perf_counter()
        rep = os.path.join(report_dir, f"eval_retrieval_ingest_{det}.txt") if report_dir else os.devnull
        summary = ingest_run(source, models=list(models), workers=workers, limit=limit, progress=progress,
                             report=rep, settings=settings.with_(db=target_db, uri=uri, token=token,
                                                                 profile=profile, detector=det))
        ingest_seconds = time.perf_counter() - t0
        if summary.interrupted:
            raise KeyboardInterrupt
        with Store.from_settings(settings.with_(db=target_db, uri=uri, token=token, profile=profile)) as store:
            for model in summary.models:
                t1 = time.perf_counter()
                rows = [r for r in store.iterate(collection_name(model), RETRIEVAL_FIELDS,
                                                 filter=combine([flt.render() if flt else None]))
                        if r["source_path"] in src_paths]
                other = Counter(r["detector"] for r in rows if r["detector"] != det)
                if other:
                    raise EvalError(
                        f"database {target_db} holds faces of these images detected by "
                        f"{', '.join(other)}, not {det}; evaluate {det} with another --db")
                ledger = store.ledger(model)
                status = Counter(ledger.get(p, {}).get("status", "absent") for p in src_paths)
                kept = _largest_per_image(rows) if faces == "largest" else rows
                kept.sort(key=lambda r: r["id"])
                vec = np.array([r["vector"] for r in kept], dtype=np.float32).reshape(len(kept), -1)
                ids = [str(r["identity"]) for r in kept]
                imgs = [str(r["image_sha256"]) for r in kept]
                m = retrieval_metrics(vec, ids, imgs)
                strict = None  # per image: only with one face per image and no filter
                if expected_queries and m["queries"] and faces == "largest" and flt is None:
                    strict = float(np.sum(np.array(m["first_hit_ranks"]) <= 1) / expected_queries)
                runs.append({
                    "model": model, "detector": det, "db": target_db, **{k: v for k, v in m.items()},
                    "faces_in_collection": len(rows), "faces_evaluated": len(kept),
                    "images": len(src_paths), "images_with_face": status.get("done", 0),
                    "images_without_face": status.get("noface", 0), "images_failed": status.get("failed", 0),
                    "expected_queries": expected_queries, "recall_at_1_strict": strict,
                    "ingest_seconds": round(ingest_seconds, 1),
                    "ingest_images_processed": summary.images_done + summary.images_noface + summary.images_failed,
                    "ingest_images_already_done": summary.images_skipped,
                    "eval_seconds": round(time.perf_counter() - t1, 2),
                })
    layout = "celeba" if src.kind == "celeba" else "folder"
    ref: Dict[str, Any] = {}
    for model_name in models:
        if f"{layout}/{model_name}" in REFERENCE_RETRIEVAL:
            ref[model_name] = [{"recall_at_1": a, "source": where}
                               for a, where in REFERENCE_RETRIEVAL[f"{layout}/{model_name}"]]
    return {
        "kind": "retrieval", "version": 1, "source": str(Path(source).resolve()), "source_kind": src.kind,
        "filter": flt.render() if flt else None, "faces": faces,
        "images": len(src_paths), "identities": len(by_identity),
        "identities_with_2_images": sum(1 for n in by_identity.values() if n >= 2),
        "expected_queries": expected_queries,
        "protocol": ("leave-one-out: each face whose identity has a face in another image queries every "
                     "other face of the collection except those of its own image; "
                     + ("one face per image (the largest)" if faces == "largest" else "every face")),
        "search": "exact: all vectors and identities fetched once (Store.iterate), cosine similarity "
                  "computed with numpy against every face (not the HNSW index)",
        "runs": runs, "reference": ref,
    }


def format_retrieval(report: Dict[str, Any]) -> str:
    lines = [f"identity retrieval: {report['source']} ({report['images']} images, {report['identities']} identities, "
             f"{report['identities_with_2_images']} with >= 2 images)",
             f"protocol: {report['protocol']}",
             f"search: {report['search']}"]
    if report["filter"]:
        lines.append(f"filter: {report['filter']}")
    head = (f"{'model':<11} {'detector':<10} {'queries':>8} {'R@1':>8} {'R@5':>8} {'R@10':>8} {'mAP':>8} "
            f"{'R@1 strict':>11} {'no face':>8}")
    lines += ["", head, "-" * len(head)]
    for r in report["runs"]:
        lines.append(
            f"{r['model']:<11} {r['detector']:<10} {r['queries']:>8} {_pct(r['recall_at_1'], 1):>8} "
            f"{_pct(r['recall_at_5'], 1):>8} {_pct(r['recall_at_10'], 1):>8} {_pct(r['map'], 1):>8} "
            f"{_pct(r['recall_at_1_strict'], 1):>11} {r['images_without_face']:>4} img")
    if any(r["recall_at_1_strict"] is not None for r in report["runs"]):
        lines.append(f"R@1 strict: hits / {report['expected_queries']} images of identities with >= 2 images "
                     f"(images without a face count as misses)")
    else:
        lines.append("R@1 strict: n/a (only with one face per image and no filter)")
    if report["filter"]:
        lines.append("no face: images of the whole source without a face (the filter applies to stored faces)")
    ref = [(m, i["recall_at_1"], i["source"]) for m, items in report["reference"].items() for i in items]
    if ref:
        lines += ["", "reference figures (this sample):"]
        lines += [f"  {m:<11} {a:>5.1f} %  {s}" for m, a, s in ref]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# A learned head against its base model (ingest/head.py)
# ---------------------------------------------------------------------------------------------
HEAD_SETS = (("photos", "held-out photos of known identities"), ("identities", "held-out identities"),
             ("train", "training faces"))


def evaluate_head(model: str = "dlib", settings=None, store=None) -> Dict[str, Any]:
    """The base model and its head side by side, on the split the head file records: each held-out
    photo of a known identity, each face of a held-out identity, and each training face (how well
    the head fits what it saw) queries every stored face outside its own image (leave-one-out,
    exact, `retrieval_metrics`), once with the base collection's vectors and once with the head
    collection's. Returns the report dict (`format_head` prints it)."""
    from lookalike.ingest.head import Head, head_path
    from lookalike.ingest.settings import Settings
    from lookalike.ingest.store import Store
    from lookalike.schemas import collection_name, head_key

    settings = settings or Settings()
    path = head_path(settings, model)
    if not path.is_file():
        raise EvalError(f"no head file {path}: train it with lookalike train-head --model {model}")
    head = Head.load(path)
    own = store is None
    store = store or Store(settings.db, settings.uri, settings.token, settings.profile)
    try:
        fields = ["id", "identity", "image_sha256", "vector"]
        base = {r["id"]: r for r in store.iterate(collection_name(model), fields)}
        projected = {r["id"]: r["vector"] for r in store.iterate(collection_name(head_key(model)), ["id", "vector"])}
    finally:
        if own:
            store.close()
    ids = sorted(base)
    missing = [i for i in ids if i not in projected]
    if missing:
        raise EvalError(f"{collection_name(head_key(model))} lacks {len(missing)} faces of {collection_name(model)} "
                        f"(e.g. {missing[0]}); train the head again")
    split = head.provenance.get("split", {})
    held = set(split.get("heldout_identities", []))
    photos, train = set(split.get("heldout_photo_ids", [])), set(split.get("train_ids", []))
    identities = [str(base[i]["identity"]) for i in ids]
    images = [str(base[i]["image_sha256"]) for i in ids]
    masks = {"photos": [i in photos for i in ids], "identities": [n in held for n in identities],
             "train": [i in train for i in ids]}
    X = np.asarray([base[i]["vector"] for i in ids], dtype=np.float32)
    P = np.asarray([projected[i] for i in ids], dtype=np.float32)
    sets: Dict[str, Any] = {}
    for key, _ in HEAD_SETS:
        if not any(masks[key]):
            continue
        sets[key] = {}
        for which, V in (("base", X), ("head", P)):
            m = retrieval_metrics(V, identities, images, queries=masks[key])
            m.pop("first_hit_ranks")
            sets[key][which] = m
    prov = head.provenance
    return {"kind": "head", "version": 1, "model": model, "head_model": head_key(model), "head_file": str(path),
            "faces": len(ids), "arch": prov.get("arch"), "loss": prov.get("loss"),
            "epochs": (prov.get("config") or {}).get("epochs"), "holdout": prov.get("holdout"),
            "counts": prov.get("counts", {}), "trained_at": prov.get("trained_at"), "sets": sets,
            "protocol": "each query face ranks every stored face outside its own image (exact cosine); relevant: "
                        "faces of its identity; base and head vectors over the same faces and queries"}


def format_head(report: Dict[str, Any]) -> str:
    lines = [f"{report['model']} vs {report['head_model']} ({report['arch']}, {report['loss']} loss, "
             f"{report['epochs']} epochs, holdout {report['holdout']}): {report['faces']} stored faces",
             f"protocol: {report['protocol']}", ""]
    head = f"{'set':<38} {'queries':>7} {'':<5} {'R@1':>7} {'R@5':>7} {'R@10':>7} {'mAP':>7}"
    lines += [head, "-" * len(head)]
    for key, label in HEAD_SETS:
        if key not in report["sets"]:
            continue
        for which in ("base", "head"):
            m = report["sets"][key][which]
            lines.append(f"{label if which == 'base' else '':<38} {m['queries'] if which == 'base' else '':>7} "
                         f"{which:<5} {_pct(m['recall_at_1'], 1):>7} {_pct(m['recall_at_5'], 1):>7} "
                         f"{_pct(m['recall_at_10'], 1):>7} {_pct(m['map'], 1):>7}")
    return "\n".join(lines)
