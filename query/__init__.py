"""Lookalike query: search a photo's faces, render and explain results.

`search_photo(photo, db=..., top_k=5, filter=...)` is the Python twin of `lookalike query PHOTO`;
`Searcher` keeps one store and the loaded models for many photos. Exports load lazily, so the
command line starts without importing the search stack.
"""
from typing import Any

__all__ = ["search_photo", "search_photos", "Searcher", "PhotoResult", "QueryFace", "Match",
           "SearchInfo", "QueryError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from query import search

        return getattr(search, name)
    raise AttributeError(f"module 'query' has no attribute {name!r}")
