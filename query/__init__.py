"""Lookalike query: search a photo's faces, render and explain results.

`search_photo(photo, db=..., top_k=5, filter=...)` is the Python twin of `lookalike query PHOTO`;
`Searcher` keeps one store and the loaded models for many photos; the result types are in
query/results.py. Exports load lazily, so the command line starts without the search stack.
"""
from typing import Any

_WHERE = {"search_photo": "search", "search_photos": "search", "Searcher": "search",
          "PhotoResult": "results", "QueryFace": "results", "Match": "results", "SearchInfo": "results",
          "QueryError": "results", "Document": "results", "explain_result": "explain"}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"lookalike.query.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'query' has no attribute {name!r}")
