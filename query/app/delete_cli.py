"""`lookalike delete`: a thin layer over `ingest.delete` (ingest/erase.py), which does the work."""
from __future__ import annotations

import json

import click

from lookalike.query.app.errors import EXIT_OK
from lookalike.query.app.options import settings_for, storage_options

DELETE_EPILOG = """
what is removed:
  --image PATH     the picture's faces, found by content (sha256 from the ledger rows of PATH, and
                   from the file's bytes if it is still there), in every faces_* collection (every
                   model and layer variant), and the ledger rows of every path holding the same
                   bytes: a copy under another name was stored once and is erased with it. PATH is
                   resolved like ingest does (absolute path). Bystanders in the picture go too.
  --sha256 HASH    the same, by content hash (the image_sha256 of results.json / --json).
  --identity ID    every face labelled ID (CelebA identity number or folder name) in every
                   collection, and the ledger rows of those faces' images. Unlabelled faces of
                   those pictures (other people) stay, and the same person unlabelled elsewhere is
                   not found by name: query a photo of them and delete the images it finds.
  Each option may be repeated; at least one is needed. --dry-run lists what would go.


  Nothing records what was erased: ingesting the same files again stores them again, so remove
  them from the source as well. Running the same delete twice removes 0 the second time (exit 0).
  Milvus Lite masks deleted rows at once (search, query and counts no longer see them), but their
  bytes stay in the database folder's segment files until Lite compacts that segment on its own;
  a server is asked to compact (README, "Erasure").


output: one line per face collection (faces removed), the ledger rows, then
  "removed N faces, M ledger rows, I images from DB"; --json prints the same as JSON.


exit codes: 0 ok (also when nothing matched), 2 usage (no selector, bad hash, empty identity, a
  folder as --image, missing database), 6 Milvus error.
"""


@click.command("delete", epilog=DELETE_EPILOG)
@click.option("--image", multiple=True, metavar="PATH",
              help="an ingested image file: its faces and every path with the same content (repeatable)")
@click.option("--sha256", multiple=True, metavar="HASH", help="an image's content hash (repeatable)")
@click.option("--identity", multiple=True, metavar="ID", help="every face labelled with this identity (repeatable)")
@click.option("--dry-run", is_flag=True, help="show what would be removed; remove nothing")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@storage_options
def delete(image, sha256, identity, dry_run, as_json, db, uri, token, profile) -> int:
    """Erase the faces of an image or a person (every model collection, and the ledger)."""
    from lookalike.ingest.erase import delete as erase

    summary = erase(image=list(image), sha256=list(sha256), identity=list(identity),
                    settings=settings_for(db=db, uri=uri, token=token, profile=profile), dry_run=dry_run)
    for note in summary.notes:
        click.echo(f"lookalike: {note}", err=True)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        for line in summary.lines():
            click.echo(line)
    return EXIT_OK
