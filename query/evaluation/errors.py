"""The evaluation harness's one error (its own module: every kind's module raises it, and the
package re-exports it)."""
from __future__ import annotations

from lookalike.schemas.errors import UsageError


class EvalError(UsageError):
    """An evaluation that cannot run as asked (bad pairs file, missing images, ...); one line."""
