"""Options several `lookalike` commands share, and the one place a command's settings are built."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import click

from lookalike.query.app.errors import UsageError

PROFILE_NAMES = ("lite", "lite-hnsw", "cpu", "gpu")  # schemas.PROFILES, without importing it at startup


def storage_options(f: Callable) -> Callable:
    """--db / --uri / --token / --profile."""
    for opt in reversed([
        click.option("--db", default=None, metavar="PATH",
                     help="Milvus Lite database path, ending in .db (default lookalike.db, or $LOOKALIKE_DB)"),
        click.option("--uri", default=None, help="Milvus server URI, e.g. http://localhost:19530 (or $LOOKALIKE_URI)"),
        click.option("--token", default=None, help="Milvus server token (or $LOOKALIKE_TOKEN)"),
        click.option("--profile", type=click.Choice(PROFILE_NAMES), default=None,
                     help="index profile (default: lite = exact FLAT for --db, cpu = HNSW for --uri)"),
    ]):
        f = opt(f)
    return f


def model_source_options(f: Callable) -> Callable:
    """--clip-model / --dinov2-model / --layer."""
    for opt in reversed([
        click.option("--clip-model", default=None, metavar="ID_OR_DIR",
                     help="CLIP model id or local directory (default openai/clip-vit-base-patch32, 512-d)"),
        click.option("--dinov2-model", default=None, metavar="ID_OR_DIR",
                     help="DINOv2 model id or local directory (default facebook/dinov2-small, 384-d)"),
        click.option("--layer", type=click.IntRange(0), default=None, metavar="N",
                     help="features of block N of the transformer models, in faces_<model>_l<N>"),
    ]):
        f = opt(f)
    return f


def detector_option(help_extra: str = "") -> Callable:
    return click.option("--detector", default=None, metavar="NAME",
                        help="DeepFace detector backend (default yunet, or $LOOKALIKE_DETECTOR)" + help_extra)


def settings_for(**values: Any):
    """The command's settings: the environment, overridden by the flags given (None: not given).
    A bad value raises SettingsError naming the flag (exit 2)."""
    from lookalike.ingest.settings import Settings

    return Settings().with_(**values)


def existing_db(settings):
    """A command that reads a database (query, serve, delete) must not create an empty one: opening
    a missing Milvus Lite file would."""
    if not settings.uri and not Path(settings.db).exists():
        raise UsageError(f"database {settings.db} does not exist; ingest first: "
                         f"lookalike ingest SOURCE --db {settings.db}")
    return settings


def out_dir(out: Optional[str], flag: str = "--out") -> Optional[Path]:
    if not out:
        return None
    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {out}: cannot create folder ({e.strerror or e})") from None
    return d
