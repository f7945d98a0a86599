"""Exit codes and HTTP statuses: one table maps each product exception to both.

The CLI (query/cli.py) and the web app (query/web.py) both read it, so an error means the same
thing whichever door it came through. Exception classes are named by module and looked up only
when that module is already imported: an exception of a module never imported cannot be raised,
and classifying an error must not load TensorFlow.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

EXIT_OK = 0
EXIT_USAGE = 2  # bad option, bad source, invalid filter, unknown model, bad setting
EXIT_NOFACE = 3  # no face found in a query photo
EXIT_UNREADABLE = 4  # a query photo could not be read or decoded
EXIT_WEIGHTS = 5  # model weights missing / model cannot load
EXIT_STORE = 6  # Milvus error (database not writable, server unreachable, ...)
EXIT_INTERRUPTED = 130  # Ctrl-C; re-running an ingest resumes it

EXIT_CODES_HELP = """\b
exit codes: 0 ok, 2 usage / invalid filter / unknown model or setting, 3 a photo has no face,
4 a photo cannot be read, 5 model weights missing, 6 Milvus error, 130 interrupted."""


class UsageError(ValueError):
    """A command asked for something it cannot do; the message is one line naming what (exit 2)."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ErrorKind:
    exit_code: int
    http_status: int
    api_code: str  # the web API's machine-readable error code


# (module, class name) -> kind. The first match wins: subclasses before their bases. UsageError
# carries its own exit code and is classified before the table is read.
TABLE = (
    ("lookalike.ingest.settings", "SettingsError", ErrorKind(EXIT_USAGE, 400, "bad_setting")),
    ("lookalike.schemas.filters", "FilterError", ErrorKind(EXIT_USAGE, 422, "invalid_filter")),
    ("lookalike.schemas", "UnknownName", ErrorKind(EXIT_USAGE, 400, "unknown_model")),
    ("lookalike.query.results", "QueryError", ErrorKind(EXIT_USAGE, 400, "bad_option")),
    ("lookalike.query.explain", "ExplainError", ErrorKind(EXIT_USAGE, 400, "bad_option")),
    ("lookalike.query.evaluation", "EvalError", ErrorKind(EXIT_USAGE, 400, "bad_request")),
    ("lookalike.ingest.pipeline.driver", "IngestError", ErrorKind(EXIT_USAGE, 400, "bad_request")),
    ("lookalike.ingest.erase", "DeleteError", ErrorKind(EXIT_USAGE, 400, "bad_request")),
    ("lookalike.ingest.images", "ImageError", ErrorKind(EXIT_UNREADABLE, 422, "unreadable")),
    ("lookalike.ingest.models", "WeightsMissing", ErrorKind(EXIT_WEIGHTS, 503, "weights_missing")),
    ("lookalike.ingest.models", "ModelError", ErrorKind(EXIT_WEIGHTS, 503, "model_error")),
    ("lookalike.ingest.store", "StoreError", ErrorKind(EXIT_STORE, 503, "store_error")),
)


def classify(exc: BaseException) -> Optional[ErrorKind]:
    """The kind of a product exception, or None for anything else (a bug: let it show)."""
    if isinstance(exc, UsageError):
        return ErrorKind(exc.code, 400, "bad_request")
    for module, name, kind in TABLE:
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
        if cls is not None and isinstance(exc, cls):
            return kind
    return None
