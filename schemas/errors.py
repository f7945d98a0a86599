"""The one error base: every error the product raises on purpose says what it means to a person,
to a shell (exit code) and to an HTTP client (status and a machine-readable code).

It sits in the lowest layer so that every module's errors can derive from it without importing
upwards; the CLI and the web app (lookalike.query.app) read the three values off the exception
instead of keeping a table of their own. A message is written once, in words that fit both doors
(name the field or file, say what is wrong and what to do, no CLI-only flag syntax unless the
flag is the field).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import ClassVar, Optional

EXIT_OK = 0
EXIT_USAGE = 2  # bad option, bad source, invalid filter, unknown model, bad setting
EXIT_NOFACE = 3  # no face found in a query photo
EXIT_UNREADABLE = 4  # a query photo could not be read or decoded
EXIT_WEIGHTS = 5  # model weights missing / model cannot load / an optional part not installed
EXIT_STORE = 6  # Milvus error (database not writable, server unreachable, ...)
EXIT_INTERRUPTED = 130  # Ctrl-C; re-running an ingest resumes it

EXIT_CODES_HELP = """\b
exit codes: 0 ok, 2 usage / invalid filter / unknown model or setting, 3 a photo has no face,
4 a photo cannot be read, 5 model weights (or an optional part) missing, 6 Milvus error,
130 interrupted."""


class LookalikeError(Exception):
    """Base of the product's errors. Subclasses set the three class values; one raise site may
    override the exit code (`exit_code=`), e.g. a usage error that is really missing hardware."""

    exit_code: ClassVar[int] = EXIT_USAGE
    http_status: ClassVar[int] = 400
    api_code: ClassVar[str] = "bad_request"

    def __init__(self, *args: object, exit_code: Optional[int] = None):
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code  # type: ignore[misc]  # per-instance override of the class value

    def __str__(self) -> str:  # one line, without KeyError's quotes for subclasses of KeyError
        return str(self.args[0]) if self.args else ""


class UsageError(LookalikeError, ValueError):
    """Asked for something that cannot be done: a bad option, value, source, filter or name (exit 2, HTTP 400)."""


class UnreadableError(LookalikeError, ValueError):
    """A photo cannot be read or decoded (exit 4, HTTP 422)."""

    exit_code = EXIT_UNREADABLE
    http_status = 422
    api_code = "unreadable"


class ModelUnavailable(LookalikeError, RuntimeError):
    """A model cannot be loaded or run here: weights missing, wrong files (exit 5, HTTP 503)."""

    exit_code = EXIT_WEIGHTS
    http_status = 503
    api_code = "model_error"


class StorageError(LookalikeError, RuntimeError):
    """The vector database failed: not writable, unreachable, in use, inconsistent (exit 6, HTTP 503)."""

    exit_code = EXIT_STORE
    http_status = 503
    api_code = "store_error"


class NotInstalled(ModelUnavailable, ImportError):
    """A part whose optional dependencies (an extra of the package) are not installed here: it
    cannot load, as a model without its weights (exit 5, HTTP 503)."""

    api_code = "not_installed"


def require(module: str, extra: str, what: str) -> ModuleType:
    """`module`, imported; or, where it (not something it imports) is missing, NotInstalled
    saying which extra to install. Optional parts import through this, not at module level."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != module.split(".")[0]:
            raise  # the module is there and broken: that is a bug to show, not an extra to install
        raise NotInstalled(f"{what} needs {module.split('.')[0]}, which is not installed here: "
                           f"pip install 'lookalike[{extra}]'") from None
