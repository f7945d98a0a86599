"""`lookalike` command line: a thin layer over the Python API (ingest.run, query.search_photo, ...).

Exit codes (also in README):
  0 success
  2 usage error: bad option, bad source, invalid filter, unknown model, --db not ending in .db
  3 no face found in a query photo
  4 a query photo could not be read or decoded
  5 model weights missing / model cannot load
  6 Milvus error (database not writable, server unreachable, ...)
  130 interrupted (Ctrl-C); re-running an ingest resumes it
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

EXIT_OK, EXIT_USAGE, EXIT_NOFACE, EXIT_UNREADABLE, EXIT_WEIGHTS, EXIT_STORE, EXIT_INTERRUPTED = 0, 2, 3, 4, 5, 6, 130


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _storage_args(p: argparse.ArgumentParser) -> None:
    from schemas import PROFILES

    g = p.add_argument_group("storage")
    g.add_argument("--db", default=None, help="Milvus Lite database path (default lookalike.db, or $LOOKALIKE_DB)")
    g.add_argument("--uri", default=None, help="Milvus server URI, e.g. http://localhost:19530 (or $LOOKALIKE_URI)")
    g.add_argument("--token", default=None, help="Milvus server token (or $LOOKALIKE_TOKEN)")
    g.add_argument("--profile", choices=list(PROFILES), default=None,
                   help="index profile (default: lite = exact FLAT for --db, cpu = HNSW for --uri)")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transformer models")
    g.add_argument("--clip-model", default=None,
                   help="CLIP model id or local directory (default openai/clip-vit-base-patch32, 512-d)")
    g.add_argument("--dinov2-model", default=None,
                   help="DINOv2 model id or local directory (default facebook/dinov2-small, 384-d)")
    g.add_argument("--layer", type=int, default=None,
                   help="embed features of block N of the transformer models, into faces_<model>_l<N>")


def _settings(args):
    from ingest.settings import Settings

    s = Settings().with_(db=args.db, uri=args.uri, token=args.token, profile=args.profile,
                         detector=getattr(args, "detector", None),
                         clip_model=getattr(args, "clip_model", None),
                         dinov2_model=getattr(args, "dinov2_model", None))
    if not s.uri and not str(s.db).endswith(".db"):
        # Milvus Lite takes only a path ending in .db (pymilvus calls anything else an illegal uri)
        flag = f"--db {args.db}" if getattr(args, "db", None) else f"$LOOKALIKE_DB ({s.db})"
        raise CliError(f"{flag}: a Milvus Lite database path must end in .db (e.g. {s.db}.db); "
                       f"a server is --uri http://host:19530")
    return s


def cmd_ingest(args) -> int:
    from ingest import run

    summary = run(
        args.source, models=args.models, layer=args.layer, clip_model=args.clip_model,
        dinov2_model=args.dinov2_model, workers=args.workers, scheduler=args.scheduler,
        limit=args.limit, partition=args.partition, celeba_images=args.celeba_images,
        batch_size=args.batch_size, min_face=args.min_face, retry_failed=args.retry_failed,
        report=args.report, progress=not args.quiet, settings=_settings(args),
    )
    for line in summary.lines():
        print(line)
    return EXIT_INTERRUPTED if summary.interrupted else EXIT_OK


def cmd_stats(args) -> int:
    from ingest.store import Store

    s = _settings(args)
    with Store(s.db, s.uri, s.token, s.profile) as store:
        stats = store.stats()
    if args.json:
        print(json.dumps([st.__dict__ for st in stats], indent=2))
        return EXIT_OK
    if not stats:
        print(f"no collections in {s.uri or s.db}")
        return EXIT_OK
    print(f"{'collection':<22} {'model':<12} {'rows':>9} {'dim':>5}  index")
    for st in stats:
        print(f"{st.name:<22} {st.model or '-':<12} {st.rows:>9} {st.dim:>5}  {st.index_type} ({st.metric})")
    return EXIT_OK


def cmd_fields(args) -> int:
    from schemas import FACE_FIELDS

    for f in FACE_FIELDS:
        print(f"{f.name:<22} {f.kind:<8} {f.doc}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike", description="Whose face is this like? Ingest faces into Milvus, query photos.")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("ingest", help="ingest a CelebA directory, a folder of images or a list file")
    pi.add_argument("source", help="CelebA dir, image folder (subfolder = identity) or text file of paths")
    pi.add_argument("--models", default="auto",
                    help="comma-separated models: facenet, facenet512, dlib, clip, dinov2 (default auto: "
                         "facenet when its weights are present, else dlib)")
    _model_args(pi)
    pi.add_argument("--detector", default=None, help="DeepFace detector backend (default yunet, or $LOOKALIKE_DETECTOR)")
    pi.add_argument("--workers", type=int, default=2, help="local Dask worker processes (0 = in-process)")
    pi.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    pi.add_argument("--limit", type=int, default=None, help="ingest at most N images")
    pi.add_argument("--partition", choices=["train", "val", "test"], default=None, help="CelebA partition")
    pi.add_argument("--celeba-images", choices=["wild", "aligned"], default=None,
                    help="CelebA image folder when both exist (default: in-the-wild img_celeba)")
    pi.add_argument("--batch-size", type=int, default=16,
                    help="images per Dask task (default 16: fewer, larger tasks cost the driver less "
                         "CPU, which on one machine the workers need; the last ones are smaller)")
    pi.add_argument("--min-face", type=int, default=24,
                    help="skip faces smaller than N px (default 24: smaller background faces embed as noise)")
    pi.add_argument("--retry-failed", action="store_true", help="retry images that failed before")
    pi.add_argument("--report", default=None, help="run report path (default ingest-report.jsonl: JSON Lines, a summary then one record per failed file)")
    pi.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _storage_args(pi)
    pi.set_defaults(func=cmd_ingest)

    ps = sub.add_parser("stats", help="rows and index per collection")
    ps.add_argument("--json", action="store_true")
    _storage_args(ps)
    ps.set_defaults(func=cmd_stats)

    pf = sub.add_parser("fields", help="list the fields filters may use")
    pf.set_defaults(func=cmd_fields)

    try:
        from query import commands  # query subcommands register themselves
    except ImportError:  # pragma: no cover
        commands = None
    if commands is not None:
        commands.register(sub, _storage_args, _settings)
        if "query" in sub.choices and not any(a.dest == "layer" for a in sub.choices["query"]._actions):
            _model_args(sub.choices["query"])
    from query import web_cli

    web_cli.register(sub, _storage_args, _settings)
    from query import eval_cli

    eval_cli.register(sub, _storage_args, _settings)
    from query import delete_cli

    delete_cli.register(sub, _storage_args, _settings)
    __import__("query.head_cli", fromlist=["register"]).register(sub, _storage_args, _settings)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    from ingest.images import ImageError
    from ingest.models import ModelError, WeightsMissing
    from ingest.pipeline import IngestError
    from ingest.store import StoreError
    from schemas.filters import FilterError
    from schemas import UnknownName

    try:
        return args.func(args)
    except CliError as e:
        print(f"lookalike: {e}", file=sys.stderr)
        return e.code
    except FilterError as e:
        print(f"lookalike: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (WeightsMissing, ModelError) as e:
        print(f"lookalike: {e}", file=sys.stderr)
        return EXIT_WEIGHTS
    except StoreError as e:
        print(f"lookalike: {e}", file=sys.stderr)
        return EXIT_STORE
    except ImageError as e:
        print(f"lookalike: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    except (IngestError, UnknownName) as e:
        print(f"lookalike: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lookalike: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    # `python -m query.cli`: run the package's module, not this __main__ copy, so the CliError that
    # subcommands import from query.cli is the one main() catches (else: a traceback, exit 1).
    from query.cli import main as _main

    sys.exit(_main())
