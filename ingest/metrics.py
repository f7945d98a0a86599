"""Accuracy metrics, pure numpy: face verification (pairs), the same-person verdict's calibration
and identity retrieval (leave-one-out recall@k, mAP).

One module for the evaluation harness (lookalike.query.evaluation) and the trained head
(ingest/head.py, which reports its held-out figures with the same ranking code): it sits in
ingest because ingest may not import query.

Conventions: similarity scores are cosines, "same person" means score >= threshold unless a
function says otherwise, and a missing score (NaN: an image without a face) takes the worst case
for its pair (`worst_case`).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

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
# Identity retrieval
# ---------------------------------------------------------------------------------------------
def _rank(row: np.ndarray, same_image: np.ndarray, relevant: np.ndarray) -> Tuple[int, float]:
    """(rank of the first relevant face, 1-based; average precision) of one query whose
    similarities to the gallery are `row`, its own image's faces left out of the ranking."""
    s = row.astype(np.float64)
    s[same_image] = -np.inf
    order = np.argsort(-s, kind="stable")
    order = order[~same_image[order]]
    hits = np.flatnonzero(relevant[order])
    return int(hits[0]) + 1, float((np.arange(1, hits.size + 1) / (hits + 1)).mean())


def _summary(first_ranks: Sequence[int], aps: Sequence[float], ks: Sequence[int]) -> Dict[str, Any]:
    fr = np.asarray(first_ranks)
    out: Dict[str, Any] = {"queries": int(fr.size)}
    for k in ks:
        out[f"recall_at_{k}"] = float(np.mean(fr <= k)) if fr.size else None
    out["map"] = float(np.mean(aps)) if len(aps) else None
    return out


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
        return {**_summary([], [], ks), "identities_queried": 0, "first_hit_ranks": []}
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
    ranked = [_rank(S[q], same_img[q], relevant[q]) for q in asked]
    first_ranks = [r for r, _ in ranked]
    out = _summary(first_ranks, [ap for _, ap in ranked], ks)
    out["identities_queried"] = int(len(set(ids[asked].tolist())))
    out["first_hit_ranks"] = first_ranks
    return out


def retrieval_figures(X: np.ndarray, identity: np.ndarray, image: np.ndarray, queries: np.ndarray,
                      ks: Sequence[int] = RECALL_KS, chunk: int = 256) -> Dict[str, Any]:
    """`retrieval_metrics` over integer codes (identity -1: unlabelled) for the query faces at the
    indices `queries`, a chunk of queries' similarities at a time (a large gallery's n x n
    matrix would not fit): recall@k and mAP over the queries that have a relevant face."""
    X = np.asarray(X, dtype=np.float32)
    first, aps = [], []
    for a in range(0, len(queries), chunk):
        qs = np.asarray(queries[a:a + chunk])
        S = X[qs] @ X.T
        for row, q in zip(S, qs):
            same_img = image == image[q]
            rel_all = (identity == identity[q]) & (identity >= 0) & ~same_img
            if identity[q] < 0 or not rel_all.any():
                continue
            rank, ap = _rank(row, same_img, rel_all)
            first.append(rank)
            aps.append(ap)
    return _summary(first, aps, ks)
