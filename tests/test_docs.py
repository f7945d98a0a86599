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
