"""Evaluation harness: metrics on synthetic scores with hand-computed answers, a real small LFW run
and a real retrieval run on the people/ gallery through the product's path, and CLI exit codes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import DATA

from lookalike.query.evaluation import (
    EvalError,
    accuracy_at,
    best_threshold,
    evaluate_lfw,
    evaluate_retrieval,
    format_lfw,
    format_retrieval,
    kfold_accuracy,
    present_folds,
    read_pairs,
    resolve_lfw_root,
    retrieval_metrics,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_metrics,
)

LFW = DATA / "lfw"
PAIRS1 = LFW / "pairs_fold1.txt"
PEOPLE = DATA / "people"


# ---------------------------------------------------------------------------------------------
# Verification metrics
# ---------------------------------------------------------------------------------------------
def test_best_threshold_is_the_midpoint_between_the_classes():
    thr, acc = best_threshold([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9], [0, 0, 0, 0, 1, 1, 1, 1])
    assert acc == 1.0 and thr == pytest.approx(0.5)
    # one positive below every negative: still the same threshold, 7/8
    thr, acc = best_threshold([0.1, 0.2, 0.3, 0.4, 0.05, 0.7, 0.8, 0.9], [0, 0, 0, 0, 1, 1, 1, 1])
    assert acc == pytest.approx(7 / 8) and thr == pytest.approx(0.55)


def _ten_folds():
    """10 folds of 3 same + 3 different pairs. Folds 2..10 separate at any threshold in
    (0.3, 0.7), except that fold 3 has one same pair at 0.25; fold 1 lives in (0.40, 0.47)."""
    scores, labels, folds = [], [], []
    for k in range(1, 11):
        pos, neg = [0.7, 0.8, 0.9], [0.1, 0.2, 0.3]
        if k == 1:
            pos, neg = [0.45, 0.46, 0.47], [0.40, 0.41, 0.42]
        if k == 3:
            pos = [0.25, 0.8, 0.9]
        scores += pos + neg
        labels += [True] * 3 + [False] * 3
        folds += [k] * 6
    return scores, labels, folds


def test_kfold_threshold_is_chosen_on_the_other_folds():
    scores, labels, folds = _ten_folds()
    kf = kfold_accuracy(scores, labels, folds)
    # Fold 1's threshold comes from folds 2..10: the midpoint of 0.3 and 0.7 -> fold 1 gets only
    # its 3 different pairs right (with its own best threshold it would be 100 %: no leak).
    # Every other fold's training set holds fold 1, so its best threshold is between 0.42 and
    # 0.45 (one error: fold 3's 0.25); fold 3 then loses that pair, the others are perfect.
    assert kf["fold_threshold"][0] == pytest.approx(0.5)
    assert kf["fold_threshold"][1:] == pytest.approx([0.435] * 9)
    expected = [0.5, 1.0, 5 / 6] + [1.0] * 7
    assert kf["fold_accuracy"] == pytest.approx(expected)
    assert kf["mean"] == pytest.approx(np.mean(expected))
    assert kf["std"] == pytest.approx(np.std(expected))
    assert kf["stderr"] == pytest.approx(np.std(expected) / math.sqrt(10))
    m = verification_metrics(scores, labels, folds)
    assert m["protocol"] == "kfold" and m["accuracy"] == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError):
        kfold_accuracy(scores[:6], labels[:6], folds[:6])
    # one fold: best-threshold accuracy on that fold
    one = verification_metrics(scores[:6], labels[:6], folds[:6])
    assert one["protocol"] == "best-threshold" and one["accuracy"] == 1.0 and one["accuracy_std"] is None


def test_missing_faces_count_as_wrong_at_every_threshold():
    scores = [0.9, np.nan, 0.1, np.nan]
    labels = [True, True, False, False]
    for t in (-10, 0.0, 0.5, 10):
        assert accuracy_at(scores, labels, t) <= 0.5
    assert accuracy_at(scores, labels, 0.5) == 0.5
    assert best_threshold(scores, labels)[1] == 0.5
    # worst case: the same pair without a face scores -inf, the different one +inf; of the four
    # (same, different) combinations only (0.9, 0.1) is ranked right
    assert roc_auc(scores, labels) == pytest.approx(0.25)


def test_roc_auc_and_curve_against_a_hand_computation():
    pos, neg = [0.9, 0.8, 0.4], [0.7, 0.4, 0.1]
    s, y = pos + neg, [True] * 3 + [False] * 3
    # pairs (pos, neg) ranked right: 0.9 > all 3, 0.8 > all 3, 0.4 > 0.1, 0.4 == 0.4 counts 1/2
    assert roc_auc(s, y) == pytest.approx(7.5 / 9)
    fpr, tpr, thr = roc_curve(s, y)
    # descending: 0.9 P, 0.8 P, 0.7 N, 0.4 P+N (tied: one step), 0.1 N
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(7.5 / 9)
    assert thr[0] == np.inf and thr[1:].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.4, 0.1])


def test_tar_at_far_against_a_hand_computation():
    neg = list(np.arange(2000) / 2000)  # highest: 0.9995, 0.999, 0.9985, ...
    pos = [0.9992, 0.999, 0.9985, 1.0, 0.5, np.nan]
    s, y = pos + neg, [True] * len(pos) + [False] * len(neg)
    t = tar_at_far(s, y, 1e-3)
    # floor(1e-3 * 2000) = 2 false accepts allowed: threshold = the 3rd highest negative, 0.9985;
    # accepted (> 0.9985): 0.9992, 0.999, 1.0 -> 3 of the 6 same pairs (NaN: no face, rejected)
    assert t is not None
    assert t["threshold"] == pytest.approx(0.9985)
    assert t["far"] == pytest.approx(2 / 2000)
    assert t["tar"] == pytest.approx(3 / 6)
    assert tar_at_far(pos + neg[:999], [True] * len(pos) + [False] * 999, 1e-3) is None
    assert tar_at_far(pos + neg[:1000], [True] * len(pos) + [False] * 1000, 1e-3) is not None


# ---------------------------------------------------------------------------------------------
# Retrieval metrics
# ---------------------------------------------------------------------------------------------
def _unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_retrieval_metrics_against_a_hand_computation():
    a1, a2, b1, b2, d = [1, 0], [0.8, 0.6], [0, 1], [0.6, 0.8], _unit(10)
    m = retrieval_metrics(np.array([a1, a2, b1, b2, d]), ["A", "A", "B", "B", ""], ["i1", "i2", "i3", "i4", "i5"])
    # a1: d .985, a2 .8 -> first hit at 2;  a2: b2 .96, d .892, a1 .8 -> 3
    # b1: b2 .8 -> 1;                      b2: a2 .96, b1 .8 -> 2.   The distractor never queries.
    assert m["queries"] == 4 and m["first_hit_ranks"] == [2, 3, 1, 2]
    assert m["recall_at_1"] == pytest.approx(0.25)
    assert m["recall_at_5"] == 1.0 and m["recall_at_10"] == 1.0
    assert m["map"] == pytest.approx((1 / 2 + 1 / 3 + 1 + 1 / 2) / 4)


def test_retrieval_excludes_the_query_image_and_averages_precision():
    # x and x2 are two faces of one image (same identity): x2 must never be x's answer.
    x, x2, y, z, w = [1, 0], [1, 0], _unit(30), _unit(20), _unit(60)
    m = retrieval_metrics(np.array([x, x2, y, z, w]), ["A", "A", "A", "B", "A"], ["im", "im", "i2", "i3", "i4"])
    # x: z (20°) .94, y (30°) .87, w (60°) .5 -> relevant at ranks 2 and 3: AP = (1/2 + 2/3) / 2
    assert m["first_hit_ranks"][0] == 2
    assert m["queries"] == 4  # x, x2, y, w; z (B) has no other B
    ap_x = (1 / 2 + 2 / 3) / 2
    # y: x .87, x2 .87, z .98, w .87 -> z first (wrong), then x, x2, w -> AP = (1/2 + 2/3 + 3/4)/3
    ap_y = (1 / 2 + 2 / 3 + 3 / 4) / 3
    # w: y (30°) .87, z (40°) .77, x .5, x2 .5 -> AP = (1 + 2/3 + 3/4) / 3
    ap_w = (1 + 2 / 3 + 3 / 4) / 3
    assert m["map"] == pytest.approx((ap_x * 2 + ap_y + ap_w) / 4)


# ---------------------------------------------------------------------------------------------
# Pairs file
# ---------------------------------------------------------------------------------------------
def test_read_pairs(tmp_path):
    pf = read_pairs(PAIRS1)
    assert (pf.folds, pf.per_fold, len(pf.pairs)) == (1, 300, 600)
    assert all(p.same for p in pf.pairs[:300]) and not any(p.same for p in pf.pairs[300:])
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\nA 1 2\nB 1 3\nC 1 D 2\n")
    with pytest.raises(EvalError, match="declares 1 x 4 pairs, found 3"):
        read_pairs(bad)
    bad.write_text("1 1\nA 1 B 2\nC 1 D 2\n")
    with pytest.raises(EvalError, match="line 2 should be a same-person pair"):
        read_pairs(bad)
    with pytest.raises(EvalError, match="no such file"):
        read_pairs(tmp_path / "absent.txt")
    # the official 10-fold file: only fold 1's images are in the sample
    full = read_pairs(LFW / "pairs.txt")
    assert (full.folds, full.per_fold, len(full.pairs)) == (10, 300, 6000)
    root = resolve_lfw_root(LFW, full.pairs)
    assert root == LFW / "lfw"
    ok, missing = present_folds(root, full.pairs)
    assert ok == [1] and sorted(missing) == list(range(2, 11)) and all(n > 0 for n in missing.values())


# ---------------------------------------------------------------------------------------------
# Real runs through the product's detect -> align -> embed path
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lfw_small_real_run(settings):
    r = evaluate_lfw(str(PAIRS1), str(LFW), models=["dlib"], detectors=["yunet"], settings=settings, limit=40)
    assert (r["pairs"], r["same_pairs"], r["different_pairs"]) == (40, 20, 20)
    assert r["folds_evaluated"] == [1] and "best threshold" in r["protocol"]
    run = r["runs"][0]
    assert run["images_without_face"] == 0
    assert run["accuracy"] >= 0.95  # measured 100 %
    assert run["roc_auc"] >= 0.97
    assert run["tar_at_far"] is None  # 20 different pairs: n/a
    text = format_lfw(r)
    assert "n/a" in text and "99.38" in text and "best threshold" in text


@pytest.mark.slow
def test_lfw_folds_cross_validated_and_absent_folds_skipped(tmp_path, settings):
    """A 3-fold file: folds 1 and 2 are the first 40 pairs of fold 1, fold 3 names images that do
    not exist -> 2-fold cross-validation over the folds present, fold 3 listed as skipped."""
    pairs = read_pairs(PAIRS1).pairs
    same, diff = pairs[:300], pairs[300:]

    def fmt(p):
        return f"{p.name_a}\t{p.idx_a}\t{p.idx_b}" if p.same else f"{p.name_a}\t{p.idx_a}\t{p.name_b}\t{p.idx_b}"

    lines = ["3\t10"]
    for k in range(2):
        lines += [fmt(p) for p in same[10 * k:10 * k + 10]] + [fmt(p) for p in diff[10 * k:10 * k + 10]]
    lines += ["Nobody_Here\t1\t2"] * 10 + ["Nobody_Here\t1\tNobody_Else\t1"] * 10
    f = tmp_path / "pairs3.txt"
    f.write_text("\n".join(lines) + "\n")
    r = evaluate_lfw(str(f), str(LFW), models=["dlib"], detectors=["yunet"], settings=settings)
    assert r["folds_evaluated"] == [1, 2] and r["folds_missing_images"] == {"3": 3}
    assert r["pairs"] == 40 and "2-fold cross-validation" in r["protocol"]
    run = r["runs"][0]
    assert run["protocol"] == "kfold" and len(run["kfold"]["fold_accuracy"]) == 2
    assert run["accuracy"] >= 0.9 and run["accuracy_std"] is not None
    text = format_lfw(r)
    assert "±" in text and "skipped folds (images missing): fold 3 (3)" in text


@pytest.mark.slow
def test_retrieval_real_run_on_people(tmp_path, settings):
    r = evaluate_retrieval(str(PEOPLE), str(tmp_path / "people.db"), models=["dlib"], detectors=["yunet"],
                           settings=settings, workers=0)
    run = r["runs"][0]
    assert run["images_failed"] == 0 and run["images_without_face"] == 0
    # 107 photos of 13 identities, 12 of them with >= 2 photos: every photo but one queries
    assert run["queries"] == run["expected_queries"] == 106
    assert run["recall_at_1"] >= 0.95  # measured 0.991 (yunet, dlib model)
    assert run["recall_at_10"] >= run["recall_at_5"] >= run["recall_at_1"]
    assert run["map"] >= 0.93  # measured 0.984
    assert "exact" in format_retrieval(r)
    # resumable: a second run reuses the database and ingests nothing; a filter evaluates a slice
    again = evaluate_retrieval(str(PEOPLE), str(tmp_path / "people.db"), models=["dlib"], detectors=["yunet"],
                               settings=settings, workers=0, filter='identity in ["Tom_Hanks", "Bill_Gates"]')
    run2 = again["runs"][0]
    assert run2["ingest_images_processed"] == 0 and run2["ingest_images_already_done"] == 107
    assert run2["queries"] == 10 + 17 and run2["identities_queried"] == 2
    assert run2["recall_at_1"] >= 0.9  # measured 1.0
    assert run2["recall_at_1_strict"] is None and "Tom_Hanks" in again["filter"]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _cli(capsys, *args):
    from lookalike.query.app.cli import main

    code = main(["eval", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_usage_errors_are_one_line_exit_2(capsys, tmp_path):
    code, out, err = _cli(capsys, "lfw", "--pairs", tmp_path / "nope.txt", "--images", LFW)
    assert code == 2 and err.strip().count("\n") == 0 and "nope.txt: no such file" in err
    code, out, err = _cli(capsys, "lfw", "--pairs", PAIRS1, "--images", tmp_path / "none")
    assert code == 2 and err.strip().count("\n") == 0 and "no such folder" in err
    code, out, err = _cli(capsys, "lfw", "--pairs", PAIRS1, "--images", LFW, "--detector", "nope")
    assert code == 2 and "unknown detector 'nope'" in err
    code, out, err = _cli(capsys, "lfw", "--pairs", PAIRS1, "--images", LFW, "--model", "vgg")
    assert code == 2 and "unknown model 'vgg'" in err
    code, out, err = _cli(capsys, "lfw", "--pairs", PAIRS1, "--images", tmp_path)
    assert code == 2 and "holds none of the pairs' person folders" in err
    code, out, err = _cli(capsys, "retrieval", PEOPLE, "--filter", "Smilng == true", "--db", tmp_path / "x.db")
    assert code == 2 and err.strip().count("\n") == 0 and "Smilng" in err
    code, out, err = _cli(capsys, "retrieval", tmp_path / "absent", "--db", tmp_path / "x.db")
    assert code == 2 and "no such file or folder" in err
    assert not (tmp_path / "x.db").exists()
    code, out, err = _cli(capsys, "lfw", "--images", LFW)  # --pairs is required
    assert code == 2 and err.strip().count("\n") == 0 and "--pairs" in err


@pytest.mark.slow
def test_cli_lfw_json_and_out(capsys, tmp_path):
    code, out, err = _cli(capsys, "lfw", "--pairs", PAIRS1, "--images", DATA / "lfw", "--limit", "10",
                          "--json", "--out", tmp_path, "-q")
    assert code == 0
    doc = json.loads(out)
    assert doc["kind"] == "lfw" and doc["pairs"] == 10 and doc["runs"][0]["model"] in ("dlib", "facenet")
    assert {p.name for p in tmp_path.iterdir()} >= {"eval_lfw.json", "eval_lfw.txt", "eval_lfw_roc.png"}
    assert (tmp_path / "eval_lfw_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "protocol:" in (tmp_path / "eval_lfw.txt").read_text()
