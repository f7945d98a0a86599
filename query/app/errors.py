"""Exit codes and HTTP statuses: both doors read them off the exception.

Every product error derives from lookalike.schemas.errors.LookalikeError, which carries its exit
code, HTTP status and API code, so the CLI (query/app/cli.py) and the web app (query/app/web.py)
give an error the same meaning whichever door it came through. The one thing a door words
itself is where its users find the list of filterable fields (`door_message`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from lookalike.schemas.errors import (  # noqa: F401  (re-exported: the app's modules and tests import them here)
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_NOFACE,
    EXIT_OK,
    EXIT_STORE,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    EXIT_WEIGHTS,
    LookalikeError,
    UsageError,
)
from lookalike.schemas.filters import FilterError

Door = Literal["cli", "web"]
FIELDS_LIST = {"cli": "all of them: `lookalike fields`", "web": "all of them: GET /api/fields"}


@dataclass(frozen=True)
class ErrorKind:
    exit_code: int
    http_status: int
    api_code: str  # the web API's machine-readable error code


def classify(exc: BaseException) -> Optional[ErrorKind]:
    """The kind of a product exception, or None for anything else (a bug: let it show)."""
    if isinstance(exc, LookalikeError):
        return ErrorKind(exc.exit_code, exc.http_status, exc.api_code)
    return None


def door_message(exc: BaseException, door: Door) -> str:
    """The exception's one line, plus the door's own pointer where it has one."""
    text = str(exc)
    if isinstance(exc, FilterError) and exc.unknown:
        text += f"; {FIELDS_LIST[door]}"
    return text
