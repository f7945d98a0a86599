"""The README's figures are the benchmarks': each is recomputed here from bench/results/*.json
(what bench/bench_scale.py wrote) and must appear in the README as written, so that a rerun of a
benchmark that moves a figure fails here until the README says the new one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MIB = 2 ** 20


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _cli(run: dict, what: str) -> dict:
    return next(c for c in run["post_load"]["cli"] if c["what"] == what)


def _searches(run: dict) -> list:
    return [_cli(run, w)["result"]["search"][0]["seconds"] for w in ("query k=10", "query k=10 filtered")]


def _readme_figures() -> dict:
    """Each README figure of the 200k runs, as the README words it, from the results."""
    lite, server = _load("scale.json"), _load("scale_server_200k.json")
    lk, sk = lite["kill"], server["kill"]
    steps = lk["killed"]["steps"] + lk["resume"]["steps"]
    rates = [s["images_per_s"] for s in steps]
    lite_min = (lk["killed"]["seconds"] + lk["resume"]["seconds"]) / 60
    server_min = (sk["killed"]["seconds"] + sk["resume"]["seconds"]) / 60
    driver_peak = max(lk["killed"]["peak_rss"]["driver"], lk["resume"]["peak_rss"]["driver"])
    worker_peak = max(lk["killed"]["peak_rss"]["worker"], lk["resume"]["peak_rss"]["worker"])
    lite_db, server_db = lk["resume"]["db_bytes"], sk["resume"]["db_bytes"]
    growth = (steps[-1]["driver_rss"] - steps[0]["driver_rss"]) / MIB / ((steps[-1]["photos"] - steps[0]["photos"]) / 1000)
    lite_search, server_search = _searches(lite), _searches(server)
    return {
        "Lite load time": f"in {lite_min:.0f} min",
        "rate range": f"{min(rates):.0f}–{max(rates):.0f} photos/s",
        "driver growth": f"about {growth:.0f} MiB per 1,000 photos" if growth >= 2.5 else f"{growth:.1f} MiB",
        "driver peak": f"peaks near {driver_peak / 1e9:.1f} GB",
        "worker peak": f"under {(worker_peak / MIB + 49) // 50 * 50:.0f} MiB each",
        "database size": f"takes {lite_db / MIB:.0f} MiB on disk",
        "resume": f"flowing again after {lk['resume']['first_photos_seconds']:.0f} s "
                  f"(a fresh start: {lk['killed']['first_photos_seconds']:.0f} s)",
        "warm query": f"a query takes {lite['post_load']['warm']['query k=10']['median']:.1f} s",
        "CLI query": f"and {_cli(lite, 'query k=10')['seconds']:.0f} s as a new CLI process",
        "stats": f"`stats` takes {_cli(lite, 'stats')['seconds']:.1f} s",
        "delete": f"photos {_cli(lite, 'delete --identity (copy)')['seconds']:.1f} s",
        "server load time": f"took {server_min:.0f} min instead of {lite_min:.0f}",
        "server disk": f"with {server_db / lite_db:.1f} times the disk",
        "server start and resume": f"after {sk['killed']['first_photos_seconds']:.0f} s instead of "
                                   f"{lk['killed']['first_photos_seconds']:.0f}, its resume after "
                                   f"{sk['resume']['first_photos_seconds']:.0f} s",
        "searches": f"({max(server_search) * 1000:.0f} ms instead of Lite's "
                    f"{min(lite_search):.2f}–{max(lite_search):.2f} s)",
    }


@pytest.mark.parametrize("what", list(_readme_figures()))
def test_readme_figure_is_the_benchmarks(what):
    readme = " ".join((ROOT / "README.md").read_text().split())  # the README's line breaks aside
    figure = _readme_figures()[what]
    assert figure in readme, f"README's {what}: expected {figure!r} (from bench/results)"


def _lfw_row() -> str:
    runs = {r["detector"]: r for r in _load("eval_lfw.json")["runs"] if r["model"] == "dlib"}
    y, d = runs["yunet"], runs["dlib"]
    return (f"| LFW fold 1 accuracy | {100 * y['accuracy']:.2f} % (AUC {y['roc_auc']:.4f}) | "
            f"{100 * d['accuracy']:.2f} % ({100 * d['accuracy_pairs_with_faces']:.2f} % over the pairs with both faces")


def _impostor_tail() -> str:
    """The dlib impostor-tail figures of bench/results/accuracy.txt (bench_accuracy.py's table)."""
    import re

    text = (RESULTS / "accuracy.txt").read_text()
    at = dict(re.findall(r"FAR (0\.01|0\.001) at (0\.\d+)", text))
    return (f"1 pair of different people in 100 scores above {float(at['0.01']):.3f}, "
            f"1 in 1,000 above {float(at['0.001']):.3f}")


@pytest.mark.parametrize("doc", ["README.md", "query/README.md"])
def test_stranger_scores_are_the_benchmarks(doc):
    text = " ".join((ROOT / doc).read_text().split())
    assert _impostor_tail() in text, f"{doc}: expected {_impostor_tail()!r} (bench/results/accuracy.txt)"


def test_query_readme_lfw_row_is_eval_lfw():
    text = (ROOT / "query" / "README.md").read_text()
    assert _lfw_row() in text, f"query/README.md: expected {_lfw_row()!r} (bench/results/eval_lfw.json)"


def test_query_readme_retrieval_row_is_eval_retrieval():
    runs = {r["detector"]: r for r in _load("eval_retrieval.json")["runs"] if r["model"] == "dlib"}
    cells = [" / ".join(f"{100 * runs[d][k]:.1f}" for k in ("recall_at_1", "recall_at_5", "map")) + " %"
             for d in ("yunet", "dlib")]
    row = f"| CelebA sample retrieval R@1 / R@5 / mAP | {cells[0]} | {cells[1]} |"
    assert row in (ROOT / "query" / "README.md").read_text(), f"expected {row!r} (bench/results/eval_retrieval.json)"


def test_readme_verdict_figures_are_the_benchmarks():
    """The verdict's false-accept rate on strangers (bench/bench_verdict.py) as README.md words it."""
    g = _load("verdict.json")["held_out"]["galleries"]
    sized = [v["far_good"] for k, v in g.items() if k != "whole half"]
    figure = (f"{100 * g['whole half']['far_good']:.1f} % of good-quality strangers against a gallery of "
              f"~{round(g['whole half']['gallery_faces_mean'], -2):.0f} faces, "
              f"{100 * min(sized):.1f}–{100 * max(sized):.1f} % from 10 to 300")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert figure in readme, f"README's verdict figures: expected {figure!r} (from bench/results/verdict.json)"
