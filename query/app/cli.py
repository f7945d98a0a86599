"""`lookalike`: a thin click layer over the Python API; every command has a Python twin
(`ingest.run`, `query.search_photo`, `ingest.delete`, `query.evaluation.evaluate_*`, ...).

Errors carry their exit codes (schemas/errors.py, read by query/app/errors.py), as they carry the
web app's HTTP statuses.
"""
from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

import click

from lookalike.query.app.errors import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    classify,
    door_message,
)
from lookalike.query.app.options import (
    detector_option,
    existing_db,
    model_list,
    model_source_options,
    settings_for,
    storage_options,
)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT, epilog=EXIT_CODES_HELP)
def cli() -> None:
    """Whose face is this like? Ingest face photos into Milvus, then query photos: every face of a
    photo gets its nearest stored faces, with a same-person verdict.

    \b
    lookalike ingest ../shared/data/celeba        # CelebA layout, a folder (subfolder = person) or a list
    lookalike query group.jpg --out out/          # table + out/result.png
    lookalike serve                               # the web page on http://127.0.0.1:8000/
    """


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("source")
@click.option("--models", default="auto", show_default=True,
              help=f"comma-separated: {model_list()} (auto: facenet when its weights are present, else dlib)")
@model_source_options
@detector_option()
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
              help="local Dask worker processes (0 = in-process)")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="address of an existing Dask scheduler")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N", help="ingest at most N images")
@click.option("--partition", type=click.Choice(["train", "val", "test"]), default=None, help="CelebA partition")
@click.option("--celeba-images", type=click.Choice(["wild", "aligned"]), default=None,
              help="CelebA image folder when both exist (default: in-the-wild img_celeba)")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="images per Dask task (larger tasks cost the driver less CPU)")
@click.option("--min-face", type=click.IntRange(0), default=24, show_default=True,
              help="skip faces smaller than N px (smaller background faces embed as noise)")
@click.option("--retry-failed", is_flag=True, help="retry images that failed before")
@click.option("--report", default=None, metavar="PATH",
              help="run report: a summary line, then one record per failed photo and per photo without a "
                   "face (default: a new file per run in <db stem>.reports/ beside the database)")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
@storage_options
def ingest(source, models, layer, detector, workers, scheduler, limit, partition, celeba_images, batch_size,
           min_face, retry_failed, report, quiet, db, uri, token, profile, **sources) -> int:
    """Ingest a CelebA folder, a folder of images (subfolder = identity) or a text file of paths.

    Re-running resumes: images already stored are skipped."""
    from lookalike.ingest import run

    settings = settings_for(db=db, uri=uri, token=token, profile=profile, detector=detector, **sources)
    summary = run(source, models=models, layer=layer, workers=workers, scheduler=scheduler, limit=limit,
                  partition=partition, celeba_images=celeba_images, batch_size=batch_size, min_face=min_face,
                  retry_failed=retry_failed, report=report, progress=not quiet, settings=settings)
    for line in summary.lines():
        click.echo(line)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.all_failed:  # a source of unreadable files is not a successful run
        click.echo(f"lookalike: every photo of {source} failed ({summary.images_failed}); the reasons are in "
                   f"{summary.report_path or 'the run report'}", err=True)
        return EXIT_UNREADABLE
    return EXIT_OK


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@storage_options
def stats(as_json, db, uri, token, profile) -> int:
    """Rows and index of each face collection, and the photos recorded."""
    from lookalike.ingest.store import Store

    s = existing_db(settings_for(db=db, uri=uri, token=token, profile=profile))  # a typo must not create one
    with Store.from_settings(s) as store:
        rows = store.stats()
        photos = store.ledger_counts() if rows and not as_json else {}
    if as_json:
        click.echo(json.dumps([st.__dict__ for st in rows], indent=2))
        return EXIT_OK
    if not rows:
        click.echo(f"no collections in {s.target}")
        return EXIT_OK
    click.echo(f"{'collection':<22} {'model':<12} {'rows':>9} {'dim':>5}  index")
    for st in rows:
        click.echo(f"{st.name:<22} {st.model or '-':<12} {st.rows:>9} {st.dim:>5}  {st.index_type} ({st.metric})")
    for model, n in photos.items():  # the images ledger
        click.echo(f"photos {model}: {n['done']} with faces, {n['noface']} without a face, {n['failed']} failed")
    return EXIT_OK


@cli.command()
def fields() -> int:
    """List the fields filters may use."""
    from lookalike.schemas import FACE_FIELDS

    for f in FACE_FIELDS:
        click.echo(f"{f.name:<22} {f.kind:<8} {f.doc}")
    return EXIT_OK


def _register() -> None:
    # Each command module imports only query.app.options and query.app.errors, never this module.
    from lookalike.query.app.commands import query
    from lookalike.query.app.delete_cli import delete
    from lookalike.query.app.eval_cli import eval_group
    from lookalike.query.app.head_cli import train_head_command
    from lookalike.query.app.people_cli import people_group
    from lookalike.query.app.web_cli import serve

    for command in (query, delete, serve, eval_group, train_head_command, people_group):
        cli.add_command(command)


_register()


def main(argv: Optional[List[str]] = None) -> int:
    """Run `lookalike ARGS`; returns the exit code (query/app/errors.py)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        rv = cli.main(args=argv, prog_name="lookalike", standalone_mode=False)
    except click.exceptions.Exit as e:  # --help
        return e.exit_code
    except click.exceptions.Abort:  # Ctrl-C inside a click prompt
        click.echo("lookalike: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as e:
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see {e.ctx.command_path} --help)"
        click.echo(f"lookalike: {e.format_message()}{hint}", err=True)
        return e.exit_code if e.exit_code else EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("lookalike: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a product error says so (LookalikeError); anything else is a bug
        kind = classify(e)
        if kind is None:
            raise
        click.echo(f"lookalike: {door_message(e, 'cli')}", err=True)
        return kind.exit_code
    return rv if isinstance(rv, int) else EXIT_OK


def entry() -> None:  # pragma: no cover - the console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
