"""The web app's last search results, kept so that the contact sheet of a search is drawn from
the search already run (POST /api/sheet with the `result_id` POST /api/query answered).

What is kept of a search is its result without the decoded photo, and the upload's bytes (decoded
again to draw the sheet: a decoded photo is several times the size of its file). Memory is
bounded twice: at most `count` results, and at most `max_bytes` of uploads, the oldest going
first; the newest result is always kept, whatever its size. The key is a random token, so a
result (and its photo) is reachable only by whoever got the answer that named it.
"""
from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from typing import Optional, Tuple

from lookalike.query.results import PhotoResult

KEPT_RESULTS = 32
KEPT_BYTES = 128 * 1024 * 1024  # of uploads; MAX_UPLOAD_BYTES is 15 MB, so at least 8 are kept


def detached(result: PhotoResult) -> PhotoResult:
    """A copy of `result` to keep: its own faces and matches (the answer sent back is edited in
    place: source paths cut to file names), without the decoded photo and the analysis."""
    return result.model_copy(update={"faces": [f.model_copy(deep=True) for f in result.faces],
                                     "image": None, "analysis": None, "detected": []})


class KeptResults:
    """Results by token, least recently stored first; safe to use from several request threads."""

    def __init__(self, count: int = KEPT_RESULTS, max_bytes: int = KEPT_BYTES):
        self.count, self.max_bytes = count, max_bytes
        self._items: "OrderedDict[str, Tuple[PhotoResult, bytes]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, result: PhotoResult, data: bytes) -> str:
        """Keep `result` (detached) and the upload it came from; returns its token."""
        token = secrets.token_urlsafe(16)
        kept = (detached(result), data)
        with self._lock:
            self._items[token] = kept
            self._bytes += len(data)
            while len(self._items) > 1 and (len(self._items) > self.count or self._bytes > self.max_bytes):
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= len(old)
        return token

    def get(self, token: str) -> Optional[Tuple[PhotoResult, bytes]]:
        """(result, upload bytes) of a token still kept, else None."""
        with self._lock:
            return self._items.get(token)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes
