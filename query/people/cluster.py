"""Clustering, pure: L2-normalised vectors and a k-nearest-neighbour graph in, person labels out
(query/people/__init__.py says how faces become persons)."""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

NEIGHBOURS = 32  # k of the k-nearest-neighbour graph
SEARCH_BATCH = 512  # query vectors per search call


def average_linkage(vectors: np.ndarray, edges: Iterable[Tuple[int, int]], threshold: float,
                    initial: Optional[Sequence[int]] = None) -> np.ndarray:
    """Average-linkage clusters of L2-normalised `vectors` (n x d), merging while the average
    cosine between two clusters reaches `threshold`; only clusters joined by an edge of `edges`
    (pairs of row indices) are compared. Returns one label per row (0..m-1, by first row).

    `initial`: a starting label per row, -1 for a row on its own; rows sharing a label start as
    one cluster, and two such starting clusters are never merged together (the existing persons
    of an incremental run)."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    x = np.asarray(vectors, dtype=np.float64)
    root = np.arange(n)
    fixed = np.zeros(n, dtype=bool)
    if initial is not None:
        first: Dict[int, int] = {}
        for i, lab in enumerate(initial):
            if lab >= 0:
                root[i] = first.setdefault(int(lab), i)
                fixed[root[i]] = True
    sums = np.zeros_like(x)
    np.add.at(sums, root, x)
    size = np.bincount(root, minlength=n).astype(np.float64)
    alive = size > 0
    version = np.zeros(n, dtype=np.int64)
    adj: Dict[int, set] = defaultdict(set)
    for i, j in edges:
        a, b = int(root[i]), int(root[j])
        if a != b and not (fixed[a] and fixed[b]):
            adj[a].add(b)
            adj[b].add(a)
    parent = root.copy()  # merged clusters point at the cluster they went into
    heap: List[Tuple[float, int, int, int, int]] = []

    def push(a: int, others: Sequence[int]) -> None:
        if not len(others):
            return
        o = np.fromiter(others, dtype=np.int64, count=len(others))
        link = sums[o] @ sums[a] / (size[o] * size[a])  # the mean cosine over every pair of faces
        keep = link >= threshold
        for b, s in zip(o[keep].tolist(), link[keep].tolist()):
            heapq.heappush(heap, (-s, a, b, int(version[a]), int(version[b])))

    for a in list(adj):
        push(a, [b for b in adj[a] if b > a])
    while heap:
        _, a, b, va, vb = heapq.heappop(heap)
        if not (alive[a] and alive[b]) or version[a] != va or version[b] != vb:
            continue
        if size[b] > size[a]:
            a, b = b, a
        sums[a] += sums[b]
        size[a] += size[b]
        fixed[a] = fixed[a] or fixed[b]
        alive[b] = False
        parent[b] = a
        version[a] += 1
        nb = (adj.pop(a, set()) | adj.pop(b, set())) - {a, b}
        keep_nb = [c for c in nb if not (fixed[a] and fixed[c])]
        for c in nb:
            s = adj[c]
            s.discard(b)
            s.discard(a)
        for c in keep_nb:
            adj[c].add(a)
        adj[a] = set(keep_nb)
        push(a, keep_nb)
    return _relabel(_find_roots(parent))


def _find_roots(parent: np.ndarray) -> np.ndarray:
    """Each row's final cluster: follow `parent` to a fixed point (path halving, vectorised)."""
    p = parent.copy()
    while True:
        q = p[p]
        if np.array_equal(q, p):
            return p
        p = q


def _relabel(root: np.ndarray) -> np.ndarray:
    _, first, inv = np.unique(root, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # label clusters by their first row
    return order[inv].astype(np.int64)


def knn_edges(store, model: str, ids: Sequence[str], vectors: np.ndarray, index: Dict[str, int],
              threshold: float, k: int = NEIGHBOURS, extra_filter: str = "") -> List[Tuple[int, int]]:
    """The k-nearest-neighbour graph of `vectors` (rows `ids`) from the vector database: one
    batched search call per SEARCH_BATCH faces; edges (row, row) between faces of `index` (face
    id -> row) scoring at least `threshold`, self-matches left out."""
    edges: List[Tuple[int, int]] = []
    for i in range(0, len(ids), SEARCH_BATCH):
        hits = store.search(model, vectors[i:i + SEARCH_BATCH], limit=k + 1, extra_filter=extra_filter,
                            output_fields=["id"])
        for qid, row in zip(ids[i:i + SEARCH_BATCH], hits):
            a = index[qid]
            for h in row:
                if float(h["distance"]) < threshold:
                    break  # results come best first
                b = index.get(str(h["id"]))
                if b is not None and b != a:
                    edges.append((a, b))
    return edges
