"""`lookalike delete`: registered into the CLI by query/cli.py (register(sub, storage_args, settings_fn)).
A thin layer over `ingest.delete` (ingest/erase.py), which does the work."""
from __future__ import annotations

import argparse
import json
import sys

DELETE_HELP = "erase the faces of an image or a person (every model collection, and the ledger)"

DELETE_EPILOG = """\
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

  Nothing records what was erased: ingesting the same files again stores them again, so remove
  them from the source as well. Running the same delete twice removes 0 the second time (exit 0).
  Milvus Lite masks deleted rows at once (search, query and counts no longer see them), but their
  bytes stay in the database folder's segment files until Lite compacts that segment on its own;
  a server is asked to compact (README, "Erasure").

output: one line per face collection (faces removed), the ledger rows, then
  "removed N faces, M ledger rows, I images from DB"; --json prints the same as JSON.

exit codes: 0 ok (also when nothing matched), 2 usage (no selector, bad hash, empty identity, a
  folder as --image, missing database), 6 Milvus error.
"""


def register(sub, storage_args, settings_fn) -> None:
    p = sub.add_parser("delete", help=DELETE_HELP, description=DELETE_HELP.capitalize() + ".",
                       epilog=DELETE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an ingested image file: its faces and every path with the same content (repeatable)")
    p.add_argument("--sha256", action="append", default=[], metavar="HASH",
                   help="an image's content hash (repeatable)")
    p.add_argument("--identity", action="append", default=[], metavar="ID",
                   help="every face labelled with this identity (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed; remove nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    storage_args(p)
    p.set_defaults(func=lambda args: cmd_delete(args, settings_fn))


def cmd_delete(args, settings_fn) -> int:
    from ingest.erase import DeleteError, delete
    from query.cli import EXIT_OK, CliError

    try:
        summary = delete(image=args.image, sha256=args.sha256, identity=args.identity,
                         settings=settings_fn(args), dry_run=args.dry_run)
    except DeleteError as e:
        raise CliError(str(e)) from None
    for note in summary.notes:
        print(f"lookalike: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        for line in summary.lines():
            print(line)
    return EXIT_OK
