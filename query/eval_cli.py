"""`lookalike eval lfw|retrieval`: registered into the CLI by query/cli.py
(`register(sub, storage_args, settings_fn)`). The work is done by query/evaluation.py.

Before the wiring exists, `python -m query.eval_cli lfw ...` runs the same commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

EVAL_HELP = "measure accuracy: LFW verification or identity retrieval over a collection"

LFW_EPILOG = """\
protocol:
  10 folds present (pairs.txt + all its images): per fold, the threshold that maximises accuracy
  on the other 9 folds is applied to it; accuracy = mean ± std over the 10 held-out folds.
  One fold present (pairs_fold1.txt, header "1 300"): accuracy at the best threshold on that fold
  (optimistic; the output says so). Folds whose images are missing are skipped and listed.
  Similarity: cosine of the product's L2-normalised embeddings. Faces: detected, aligned and
  embedded by the ingestion code; with several faces, the one nearest the image centre.
  An image without a face: its pairs count as wrong decisions; the number of such images and the
  accuracy over pairs with both faces are reported. TAR@FAR=1e-3 is n/a with fewer than 1000
  different-person pairs.

output: a table; --json prints the report as JSON instead; --out DIR writes DIR/eval_lfw.json,
  DIR/eval_lfw.txt (the table) and DIR/eval_lfw_roc.png (ROC curves).

exit codes: 0 ok, 2 usage (missing pairs file or images folder, unknown model or detector),
  5 model weights missing.
"""

RETRIEVAL_EPILOG = """\
protocol:
  SOURCE is ingested into the database first (--db; an existing database is reused and only the
  images it lacks are processed). With several detectors each gets its own database:
  <db stem>-<detector>.db. The source's faces (and only those matching --filter) are fetched once
  with their vectors and searched exactly with numpy (not the HNSW index). One face per image
  (the largest; --faces all keeps every face). Leave-one-out: each face whose identity has a face
  in another image queries all faces except those of its own image.
  Recall@k: a same-identity face is among the k best; mAP: mean average precision of the full
  ranking; R@1 strict also counts the images where no face was found as misses.

output: a table; --json prints the report as JSON instead; --out DIR writes
  DIR/eval_retrieval.json and DIR/eval_retrieval.txt.

exit codes: 0 ok, 2 usage (bad source, invalid filter, unknown model or detector),
  5 model weights missing, 6 Milvus error, 130 interrupted (re-running resumes the ingest).
"""


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def register(sub, storage_args, settings_fn) -> None:
    """Add `eval lfw` and `eval retrieval` to the `lookalike` subcommands."""
    p = sub.add_parser("eval", help=EVAL_HELP,
                       description="Measure accuracy: LFW verification, or identity retrieval over a collection.")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="{lfw,retrieval}")

    pl = esub.add_parser("lfw", help="LFW face verification (pairs protocol)",
                         description="LFW face verification through the product's detect -> align -> embed path.",
                         epilog=LFW_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("--pairs", required=True, metavar="FILE", help="LFW pairs file (pairs.txt, pairs_fold1.txt)")
    pl.add_argument("--images", required=True, metavar="DIR",
                    help="folder of <name>/<name>_<NNNN>.jpg (or its parent holding lfw/)")
    _common(pl)
    pl.add_argument("--limit", type=int, default=None, metavar="N",
                    help="quick look: the first N/2 same-person and N/2 different-person pairs")
    pl.set_defaults(func=lambda args: cmd_lfw(args, settings_fn), db=None, uri=None, token=None, profile=None)

    pr = esub.add_parser("retrieval", help="identity retrieval over a collection (leave-one-out)",
                         description="Leave-one-out identity retrieval: Recall@1/5/10 and mAP per model and detector.",
                         epilog=RETRIEVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("source", help="CelebA dir, image folder (subfolder = identity) or text file of paths")
    _common(pr)
    pr.add_argument("--filter", default=None, metavar="EXPR",
                    help="evaluate within a slice: filter expression on stored faces (e.g. 'Eyeglasses == true')")
    pr.add_argument("--faces", choices=["largest", "all"], default="largest",
                    help="faces per image taking part (default: the largest)")
    pr.add_argument("--workers", type=int, default=2, help="ingest worker processes (0 = in-process)")
    pr.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images of SOURCE")
    storage_args(pr)
    pr.set_defaults(func=lambda args: cmd_retrieval(args, settings_fn))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="auto", metavar="MODELS",
                   help="comma-separated models (dlib, facenet, ...); default auto: facenet when its "
                        "weights are present, else dlib")
    p.add_argument("--detector", dest="detectors", default=None, metavar="DETECTORS",
                   help="comma-separated detector backends, one evaluation each (default yunet, or "
                        "$LOOKALIKE_DETECTOR)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", default=None, metavar="DIR", help="write the report (JSON, table, plot) to DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _resolve(args, settings):
    """(models, detectors) from --model / --detector, validated (CliError -> exit 2)."""
    from ingest.models import DETECTORS, default_face_model
    from query.cli import CliError
    from schemas import get_model

    models = []
    for m in (x.strip() for x in str(args.model).split(",")):
        if not m:
            continue
        m = default_face_model(settings) if m == "auto" else m
        try:
            models.append(get_model(m).name)
        except KeyError as e:
            raise CliError(str(e).strip("'\"")) from None
    if not models:
        raise CliError("--model: no model given")
    dets = [d.strip() for d in (args.detectors or settings.detector).split(",") if d.strip()]
    for d in dets:
        if d not in DETECTORS:
            raise CliError(f"unknown detector '{d}' (known: {', '.join(DETECTORS)})")
    if not dets:
        raise CliError("--detector: no detector given")
    return list(dict.fromkeys(models)), list(dict.fromkeys(dets))


def _out_dir(out: Optional[str]) -> Optional[Path]:
    from query.cli import CliError

    if not out:
        return None
    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"--out {out}: cannot create folder ({e.strerror or e})") from None
    return d


def _emit(args, report, text: str, out: Optional[Path], stem: str, extra: List[str]) -> None:
    from query.evaluation import plot_roc, to_json

    written = []
    if out is not None:
        (out / f"{stem}.json").write_text(to_json(report), encoding="utf-8")
        (out / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")
        written += [str(out / f"{stem}.json"), str(out / f"{stem}.txt")]
        if report["kind"] == "lfw":
            written.append(plot_roc(report, out / f"{stem}_roc.png"))
        written += extra
    if args.json:
        sys.stdout.write(to_json(report))
    else:
        print(text)
    if written:
        print(f"wrote {', '.join(written)}", file=sys.stderr if args.json else sys.stdout)


def cmd_lfw(args, settings_fn) -> int:
    from query.cli import EXIT_OK, CliError
    from query.evaluation import EvalError, evaluate_lfw, format_lfw

    if not Path(args.pairs).is_file():
        raise CliError(f"pairs file {args.pairs}: no such file" if not Path(args.pairs).exists()
                       else f"pairs file {args.pairs}: not a file")
    if not Path(args.images).is_dir():
        raise CliError(f"images folder {args.images}: no such folder")
    if args.limit is not None and args.limit < 2:
        raise CliError(f"--limit must be at least 2, got {args.limit}")
    settings = settings_fn(args)
    models, dets = _resolve(args, settings)
    out = _out_dir(args.out)
    try:
        report = evaluate_lfw(args.pairs, args.images, models=models, detectors=dets, settings=settings,
                              limit=args.limit, progress=not args.quiet)
    except EvalError as e:
        raise CliError(str(e)) from None
    _emit(args, report, format_lfw(report), out, "eval_lfw", [])
    return EXIT_OK


def cmd_retrieval(args, settings_fn) -> int:
    from query.cli import EXIT_OK, CliError
    from query.evaluation import EvalError, evaluate_retrieval, format_retrieval
    from schemas.filters import compile_filter

    compile_filter(args.filter)  # FilterError -> exit 2, before any work
    if not Path(args.source).exists():
        raise CliError(f"{args.source}: no such file or folder")
    if args.workers < 0:
        raise CliError(f"--workers must be >= 0, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    settings = settings_fn(args)
    models, dets = _resolve(args, settings)
    out = _out_dir(args.out)
    try:
        report = evaluate_retrieval(args.source, settings.db, models=models, detectors=dets,
                                    filter=args.filter, settings=settings, workers=args.workers,
                                    faces=args.faces, limit=args.limit, progress=not args.quiet,
                                    report_dir=str(out) if out else None, uri=settings.uri,
                                    token=settings.token, profile=settings.profile)
    except EvalError as e:
        raise CliError(str(e)) from None
    extra = [str(out / f"eval_retrieval_ingest_{d}.txt") for d in dets] if out else []
    _emit(args, report, format_retrieval(report), out, "eval_retrieval", extra)
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    """`lookalike eval ARGS` through the real CLI (its exit codes and error handling), whether or
    not query/cli.py registers `eval` yet."""
    from query import cli

    original = cli.build_parser

    def build_parser():
        p = original()
        sub = _subparsers(p)
        if "eval" not in sub.choices:
            register(sub, cli._storage_args, cli._settings)
        return p

    cli.build_parser = build_parser
    try:
        return cli.main(["eval", *(sys.argv[1:] if argv is None else argv)])
    finally:
        cli.build_parser = original


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
