"""`lookalike train-head`: registered into the CLI by query/cli.py (register(sub, storage_args, settings_fn)).
A thin layer over `ingest.train_head` (ingest/head.py), which does the work."""
from __future__ import annotations

import argparse
import json

HEAD_HELP = "train a projection head on the collection's labelled faces (faces_<model>_head)"

HEAD_EPILOG = """\
what it does:
  Reads the stored vectors of MODEL's faces that carry an identity (CelebA number or folder name;
  no image is decoded), holds out --holdout of the identities and, of each other identity with 3+
  photos, that share of its photos, and trains a small head (linear or two-layer) with a metric
  loss (triplet, batch-hard; or infonce) on the rest. The summary compares the base model and the
  head on the held-out photos and identities (Recall@1/5/10, mAP): keep the head only where it
  helps. It then writes faces_<MODEL>_head (every stored face, its vector through the head) and
  the head file: <db stem>.heads/<MODEL>_head.pt beside a --db, or $LOOKALIKE_HEADS/ (a server's
  default: ~/.cache/lookalike/heads/<server>/). Query it with --model <MODEL>_head; later ingests
  of MODEL fill both collections. Training again replaces both.

exit codes: 0 ok, 2 usage (unknown model, no collection, too few labelled faces, bad option),
  5 no CUDA device for --device cuda, 6 Milvus error.
"""


def register(sub, storage_args, settings_fn) -> None:
    from ingest.head import ARCHS, DEFAULT_ARCH, DEFAULT_EPOCHS, DEFAULT_LOSS, LOSSES

    p = sub.add_parser("train-head", help=HEAD_HELP, description=HEAD_HELP.capitalize() + ".",
                       epilog=HEAD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dlib", help="model whose stored vectors the head projects (default dlib; "
                                                   "any ingested model, e.g. clip, dinov2_l6)")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="share of identities, and of each other identity's photos, held out for the "
                        "figures (default 0.2; 0 trains on everything and reports nothing)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"training epochs (default {DEFAULT_EPOCHS})")
    p.add_argument("--loss", choices=LOSSES, default=DEFAULT_LOSS, help=f"metric loss (default {DEFAULT_LOSS})")
    p.add_argument("--arch", choices=ARCHS, default=DEFAULT_ARCH, help=f"head architecture (default {DEFAULT_ARCH})")
    p.add_argument("--device", default="cpu", help="torch device to train on: cpu (default), cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    storage_args(p)
    p.set_defaults(func=lambda args: cmd_train_head(args, settings_fn))


def cmd_train_head(args, settings_fn) -> int:
    from ingest.head import HeadError, train_head
    from query.cli import EXIT_OK, EXIT_WEIGHTS, CliError

    try:
        summary = train_head(args.model, settings=settings_fn(args), holdout=args.holdout, epochs=args.epochs,
                             loss=args.loss, arch=args.arch, device=args.device, seed=args.seed,
                             progress=not args.quiet)
    except HeadError as e:
        raise CliError(str(e), EXIT_WEIGHTS if str(e).startswith("--device") else 2) from None
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        for line in summary.lines():
            print(line)
    return EXIT_OK
