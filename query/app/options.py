"""Options several `lookalike` commands share, and the one place a command's settings are built."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import click

from lookalike.query.app.errors import UsageError
from lookalike.schemas import MODELS, PROFILES

PROFILE_NAMES = tuple(PROFILES)
MODEL_NAMES = tuple(MODELS)  # the declared models, in declaration order: the choices every --model(s) lists
# settings naming a model's weights by hub id or folder (ModelSpec.source_setting): one --<setting> each
SOURCE_SETTINGS = {spec.source_setting: spec for spec in MODELS.values() if spec.source_setting}


def model_list(sep: str = ", ") -> str:
    return sep.join(MODEL_NAMES)


def sources_given(sources: dict) -> list:
    """The models whose weights a --<model>-model flag named (their collections must match it)."""
    return [SOURCE_SETTINGS[k].name for k, v in sources.items() if k in SOURCE_SETTINGS and v]


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
    """--<model>-model for each declared model with a source setting (--clip-model, --dinov2-model),
    passed to the command under the setting's name; and --layer."""
    opts = [click.option(f"--{setting.replace('_', '-')}", setting, default=None, metavar="ID_OR_DIR",
                         help=f"{spec.name} model id or local directory (default {spec.default_source}, "
                              f"{spec.dim}-d)")
            for setting, spec in SOURCE_SETTINGS.items()]
    opts.append(click.option("--layer", type=click.IntRange(0), default=None, metavar="N",
                             help="features of block N of the transformer models, in faces_<model>_l<N>"))
    for opt in reversed(opts):
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
    """A command that reads a database (query, serve, stats, eval head, train-head) must not create an empty one: opening
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
