"""The errors a model raises: it cannot be built or run here (exit 5, HTTP 503)."""
from __future__ import annotations

from lookalike.schemas.errors import ModelUnavailable


class ModelError(ModelUnavailable):
    """A model cannot be built or run with this configuration (exit 5, HTTP 503)."""


class WeightsMissing(ModelError):
    """Weights absent and not downloadable; str() names the file and where to put it."""

    api_code = "weights_missing"
