"""Index profiles against the documented parameter ranges. The GPU profile cannot run here (no GPU
server), so its declaration is checked against Milvus' documented constraints instead."""
from __future__ import annotations

from typing import Any, Mapping

import pytest

from lookalike import schemas
from lookalike.schemas import PROFILES, breadth_max, check_index, get_profile


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_declared_profiles_are_valid(name):
    p = PROFILES[name]
    assert check_index(p.index_type, p.metric, p.build_params, p.search_params) == []
    # the query path raises the breadth (ef / itopk_size) to k, capped per index: the largest -k
    # still gives a valid search
    from lookalike.query.results import TOP_K_MAX

    search: dict[str, Any] = dict(p.search_params)
    for key in ("ef", "itopk_size"):
        if key in search:
            cap = breadth_max(p.index_type)
            assert cap is not None, p.index_type  # an index with a breadth parameter caps it
            search[key] = min(max(int(search[key]), TOP_K_MAX), cap)
    assert check_index(p.index_type, p.metric, p.build_params, search, top_k=TOP_K_MAX) == []
    assert p.index_type in p.buildable


def test_gpu_profile_follows_cagra_rules():
    p = get_profile("gpu")
    assert p.index_type == "GPU_CAGRA"
    assert p.metric == "IP"  # GPU indexes take L2/IP, not COSINE: vectors are normalised
    b: Mapping[str, Any] = p.build_params
    s: Mapping[str, Any] = p.search_params
    assert 1 <= b["graph_degree"] <= b["intermediate_graph_degree"] <= 1024
    assert 1 <= s["itopk_size"] <= 1024 and s["search_width"] >= 1
    # the largest -k the CLI accepts still fits CAGRA's result limit
    from lookalike.query.results import TOP_K_MAX

    assert TOP_K_MAX <= schemas.LIMIT_MAX["GPU_CAGRA"]


@pytest.mark.parametrize("index_type,metric,build,search,top_k,needle", [
    ("GPU_CAGRA", "COSINE", {}, {}, None, "metric COSINE not supported"),
    ("GPU_CAGRA", "IP", {"intermediate_graph_degree": 32, "graph_degree": 64}, {}, None,
     "graph_degree=64 out of range"),
    ("GPU_CAGRA", "IP", {}, {"itopk_size": 4096}, None, "itopk_size=4096 out of range"),
    ("GPU_CAGRA", "IP", {}, {"itopk_size": 16}, 32, "itopk_size 16 below top-k 32"),
    ("GPU_CAGRA", "IP", {}, {"team_size": 3}, None, "team_size=3 not one of"),
    ("GPU_CAGRA", "IP", {"build_algo": "BRUTE"}, {}, None, "build_algo='BRUTE' not one of"),
    ("GPU_CAGRA", "IP", {}, {"itopk_size": 128}, 2000, "top-k 2000 above its limit 1024"),
    ("GPU_CAGRA", "IP", {"graph_degre": 32}, {}, None, "unknown parameter graph_degre"),
    ("HNSW", "IP", {"M": 1}, {}, None, "M=1 out of range"),
    ("HNSW", "IP", {"M": "16"}, {}, None, "must be an integer"),
    ("IVF_FLAT", "IP", {"nlist": 128}, {"nprobe": 256}, None, "nprobe=256 out of range"),
    ("NO_SUCH_INDEX", "IP", {}, {}, None, "no parameter rules"),
])
def test_bad_index_declarations_are_named(index_type, metric, build, search, top_k, needle):
    problems = check_index(index_type, metric, build, search, top_k=top_k)
    assert any(needle in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_search_breadth_is_capped_per_index():
    assert breadth_max("GPU_CAGRA") == 1024
    hnsw = breadth_max("HNSW")
    assert hnsw is not None and hnsw >= 8192
    assert breadth_max("FLAT") is None
