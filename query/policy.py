"""The search policy: when a filtered search is exact, how wide an ANN search goes, and the
filters the product adds to the user's. Pure functions and tunables; the Searcher applies them.

Filtered search stays accurate
------------------------------
On the default Milvus Lite profile the collections are FLAT (schemas: Lite scans its rows in
Python on every call, so an index buys little there): Milvus applies the filter and compares the
query with every row it keeps, exact at any selectivity, in the one search call (mode "exact").

An ANN index (HNSW on a server or with the lite-hnsw profile) needs more care.
HNSW loses true neighbours under a restrictive filter (bench/results/query_lite-hnsw.txt).
So a filtered search first probes the filter with one query capped at `exact_max_rows + 1` rows,
fetching ids and vectors:

* the filter keeps <= `exact_max_rows` rows -> those rows are searched exactly with numpy
  (mode "exact"); the probe IS the fetch, so a restrictive filter costs one query;
* the filter keeps more -> its selectivity is at least (exact_max_rows + 1) / rows, and the ANN
  search runs with ef raised to `ef_for(k, selectivity)` (mode "ann").

The probe replaces a `count(*)`: on Milvus Lite a filtered count costs as much as fetching the
rows it counts, while a capped probe never costs more than `exact_max_rows` rows. A search whose
only filter is the system filter of `exclude_same_image` (it removes one image's faces,
selectivity ~1) skips the probe. A Searcher remembers a probe for PROBE_TTL seconds, so the
photos of one run sharing a filter probe once.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

from lookalike.schemas.filters import encode_literal

# ---------------------------------------------------------------------------------------------
# Tunables (chosen with bench/bench_query.py; its results are in bench/results/query*.txt)
# ---------------------------------------------------------------------------------------------
# Models tried, in order, when --model is not given.
DEFAULT_MODEL_ORDER = ("facenet", "dlib")
# A filter keeping at most this many rows is searched exactly (numpy over the fetched vectors).
# A probe costs a scan of the collection plus a little per row returned, so this also bounds
# what a broad filter pays before its ANN search.
EXACT_MAX_ROWS = 1000
# ANN breadth under a filter keeping a fraction s of the rows: ef = EF_FACTOR * k / s, bounded to
# [profile ef, EF_MAX]: the smallest cap that kept recall@10 near 1 at every selectivity on
# uniform random vectors, the hardest case for HNSW.
EF_FACTOR = 10.0
EF_MAX = 8192
# Seconds a filter probe is reused (the photos of one `lookalike query` run share a filter).
PROBE_TTL = 60.0
# Search parameter that sets the breadth of the ANN search, per index type.
_BREADTH_PARAM = {"HNSW": "ef", "HNSW_SQ": "ef", "GPU_CAGRA": "itopk_size"}


# ---------------------------------------------------------------------------------------------
# Search policy
# ---------------------------------------------------------------------------------------------
def ef_for(k: int, selectivity: float, base: int, ef_max: int = EF_MAX) -> int:
    """ANN breadth for top-k under a filter keeping `selectivity` of the rows."""
    s = min(1.0, max(selectivity, 1e-9))
    want = math.ceil(EF_FACTOR * k / s)
    return int(min(max(base, k, want), max(ef_max, k, base)))


def exact_topk(queries: np.ndarray, vectors: np.ndarray, ids: Sequence[str], k: int
               ) -> List[List[Tuple[str, float]]]:
    """Brute-force top-k by inner product; ties broken by id (deterministic)."""
    if len(ids) == 0:
        return [[] for _ in range(len(queries))]
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T
    ids_arr = np.asarray(ids)
    out = []
    kk = min(k, len(ids))
    for row in scores:
        if kk < len(ids):
            # take everything tied with the k-th score so the id tie-break is exact
            kth = np.partition(row, len(ids) - kk)[len(ids) - kk]
            cand = np.nonzero(row >= kth)[0]
        else:
            cand = np.arange(len(ids))
        order = sorted(cand, key=lambda j: (-row[j], ids_arr[j]))[:kk]
        out.append([(str(ids_arr[j]), float(row[j])) for j in order])
    return out


def quality_filter(min_quality: float) -> str:
    """System filter keeping stored faces of at least this quality (value encoded, never concatenated)."""
    return f"quality >= {encode_literal(float(min_quality))}"


def same_image_filter(sha256: str) -> str:
    """System filter excluding one image's faces (the value is encoded, never concatenated)."""
    return f"image_sha256 != {encode_literal(sha256)}"
