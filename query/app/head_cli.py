"""`lookalike train-head`: a thin layer over `ingest.train_head` (ingest/head.py), which does the work."""
from __future__ import annotations

import json

import click

from lookalike.query.app.errors import EXIT_OK
from lookalike.query.app.options import existing_db, settings_for, storage_options

HEAD_EPILOG = """
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


exit codes: 0 ok, 2 usage (unknown model, no collection, too few labelled faces, bad option),
  5 no CUDA device for --device cuda, 6 Milvus error.
"""

# ingest.head's choices, repeated so that `lookalike --help` does not import torch (a test keeps them equal)
LOSSES = ("triplet", "infonce")
ARCHS = ("linear", "mlp")


@click.command("train-head", epilog=HEAD_EPILOG)
@click.option("--model", default="dlib", show_default=True,
              help="model whose stored vectors the head projects (any ingested model, e.g. clip, dinov2_l6)")
@click.option("--holdout", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True,
              help="share of identities, and of each other identity's photos, held out for the figures "
                   "(0 trains on everything and reports nothing)")
@click.option("--epochs", type=click.IntRange(1, 10_000), default=30, show_default=True, help="training epochs")
@click.option("--loss", type=click.Choice(LOSSES), default="triplet", show_default=True, help="metric loss")
@click.option("--arch", type=click.Choice(ARCHS), default="linear", show_default=True, help="head architecture")
@click.option("--device", default="cpu", show_default=True, help="torch device to train on: cpu, cuda, cuda:1, mps")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the split and the training")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
@storage_options
def train_head_command(model, holdout, epochs, loss, arch, device, seed, as_json, quiet, db, uri, token,
                       profile) -> int:
    """Train a projection head on the collection's labelled faces (faces_<model>_head)."""
    from lookalike.ingest.head import train_head

    # A HeadError carries its own exit code (a bad option 2, a missing device 5); main() prints its line.
    summary = train_head(model, settings=existing_db(settings_for(db=db, uri=uri, token=token, profile=profile)),
                         holdout=holdout, epochs=epochs, loss=loss, arch=arch, device=device, seed=seed,
                         progress=not quiet)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        for line in summary.lines():
            click.echo(line)
    return EXIT_OK
