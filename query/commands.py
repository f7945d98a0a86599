"""`lookalike query`: registered into the CLI by query/cli.py (register(sub, storage_args, settings))."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

QUERY_HELP = "find the stored faces most like each face of one or more photos"

QUERY_EPILOG = """\
output:
  default   a table per face: rank, score (cosine similarity), the same-person verdict
            ("same" when the score reaches the model's calibrated threshold, with P(same)),
            identity and source image of each match; a face with no "same" match is a
            lookalike search: its rows are the nearest faces, not the person
  --json    the same as JSON on stdout: {"version": 1, "photos": [...]}, one entry per photo
            (shape documented in query/search.py)
  --out DIR writes DIR/results.json (every photo) and a contact sheet per photo: the photo
            with numbered face boxes, then per face its crop and its top matches (at most 10
            drawn) with "score id IDENTITY" captions. The first photo's sheet is result.png,
            the n-th photo's result_<n>.png (result_2.png, result_3.png, ...); an unreadable
            photo gets no sheet.
  --explain (needs --out) adds, for the top --explain-top matches (default 3) of every face,
            heat-map panels DIR/explain/<sha>_face<F>_<model>_match<R>_<method>.png
            (query | match | query map | match map, with the score), referenced from each
            match's "explanations" in results.json. --method: occlusion (default, every model),
            gradcam (FaceNet, CLIP, DINOv2), attention (CLIP, DINOv2), layers (a plot of the
            similarity per block), or all. Several seconds per match and method on a CPU.

filters (validated against the schema; `lookalike fields` lists the fields):
  --filter 'Smiling == true and identity in ["2880", "4262"]'   --where Male --where-not Eyeglasses
  A filter keeping few rows is searched exactly; otherwise the ANN search is widened.

exit codes: 0 ok, 2 usage / invalid filter / unknown model or collection, 3 a photo has no face,
4 a photo cannot be read, 5 model weights missing, 6 Milvus error. With several photos every
photo is processed; the exit code is 4 if any photo was unreadable, else 3 if any had no face.
"""



def existing_db_settings(args, settings_fn):
    """Settings for a command that reads an existing database (query, serve): the detector must
    be known and a Lite database must exist (opening a missing one would create it empty)."""
    from ingest.models import DETECTORS
    from query.cli import CliError

    settings = settings_fn(args)
    if settings.detector not in DETECTORS:
        raise CliError(f"unknown detector '{settings.detector}' (known: {', '.join(DETECTORS)})")
    if not settings.uri and not Path(settings.db).exists():
        raise CliError(f"database {settings.db} does not exist; ingest first: "
                       f"lookalike ingest SOURCE --db {settings.db}")
    return settings

def register(sub, storage_args, settings_fn) -> None:
    p = sub.add_parser("query", help=QUERY_HELP, description=QUERY_HELP.capitalize() + ".",
                       epilog=QUERY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photo(s) to search (any number of faces)")
    p.add_argument("-k", "--top-k", default="5", metavar="K", help="matches per face, 1..1000 (default 5)")
    p.add_argument("--model", default=None,
                   help="model collection to search: dlib, facenet, clip, dinov2, <model>_l<N>, a "
                        "comma list, or 'all' (one section per model); default: the first of "
                        "facenet, dlib present in the database")
    p.add_argument("--filter", default=None, metavar="EXPR", help="filter expression on stored faces")
    p.add_argument("--where", action="append", default=[], metavar="FIELD",
                   help="only faces where boolean FIELD is true (repeatable)")
    p.add_argument("--where-not", action="append", default=[], metavar="FIELD",
                   help="only faces where boolean FIELD is false (repeatable)")
    p.add_argument("--exclude-same-image", action="store_true",
                   help="never return faces of the query photo itself (same file bytes)")
    p.add_argument("--min-face", default="0", metavar="PX", help="skip query faces smaller than PX pixels")
    p.add_argument("--min-score", default=None, metavar="S", help="drop matches with score below S (-1..1)")
    p.add_argument("--min-quality", default=None, metavar="Q",
                   help="leave out stored faces of quality below Q, 0..1 (default 0.4: tiny, blurred "
                        "or turned-away faces; 0 keeps every face, e.g. to find yourself in your own photos)")
    p.add_argument("--all-faces", action="store_true", help="the same as --min-quality 0")
    p.add_argument("--detector", default=None,
                   help="DeepFace detector backend (default yunet, or $LOOKALIKE_DETECTOR); use the "
                        "one the collection was ingested with")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--out", default=None, metavar="DIR", help="write results.json and contact sheet PNGs to DIR")
    p.add_argument("--explain", action="store_true",
                   help="explain the top matches with heat maps (PNG panels in --out, see below)")
    p.add_argument("--method", default="occlusion", metavar="M",
                   help="explanation method: occlusion, gradcam, attention, layers, a comma list or all")
    p.add_argument("--explain-top", default="3", metavar="N", help="matches explained per face (default 3)")
    storage_args(p)
    p.set_defaults(func=lambda args: cmd_query(args, settings_fn))


def _int_arg(name: str, value: str, lo: int, hi: int):
    from query.cli import CliError

    try:
        v = int(str(value).strip())
    except ValueError:
        raise CliError(f"{name} must be an integer between {lo} and {hi}, got {value!r}") from None
    if not lo <= v <= hi:
        raise CliError(f"{name} must be between {lo} and {hi}, got {v}")
    return v


def cmd_query(args, settings_fn) -> int:
    from ingest.images import ImageError
    from query.cli import EXIT_NOFACE, EXIT_OK, EXIT_UNREADABLE, CliError
    from query.render import format_text, write_outputs
    from query.search import TOP_K_MAX, QueryError, Searcher
    from schemas.filters import compile_filter

    k = _int_arg("-k/--top-k", args.top_k, 1, TOP_K_MAX)
    min_face = _int_arg("--min-face", args.min_face, 0, 100_000)
    min_score = None
    if args.min_score is not None:
        try:
            min_score = float(args.min_score)
        except ValueError:
            raise CliError(f"--min-score must be a number between -1 and 1, got {args.min_score!r}") from None
        if not -1.0 <= min_score <= 1.0:
            raise CliError(f"--min-score must be between -1 and 1, got {min_score}")
    from query.search import check_min_quality

    try:
        min_quality = 0.0 if args.all_faces else check_min_quality(args.min_quality)
    except QueryError as e:
        raise CliError(str(e)) from None
    flt = compile_filter(args.filter, args.where, args.where_not)  # FilterError -> exit 2
    methods = None
    explain_top = 0
    if getattr(args, "explain", False):
        if not args.out:
            raise CliError("--explain needs --out DIR (the explanation panels are written there)")
        from query.explain import ExplainError, parse_methods

        try:
            methods = ",".join(parse_methods(args.method))
        except ExplainError as e:
            raise CliError(str(e)) from None
        explain_top = _int_arg("--explain-top", args.explain_top, 1, TOP_K_MAX)
    settings = existing_db_settings(args, settings_fn)

    results = []
    notes: list = []
    worst = EXIT_OK
    try:
        explicit = [b for b in ("clip", "dinov2") if getattr(args, f"{b}_model", None)]
        with Searcher(settings, explicit_sources=explicit) as searcher:
            models = searcher.resolve_models(args.model, getattr(args, "layer", None))
            from query.search import PhotoResult

            for path in args.photos:
                try:
                    r = searcher.search_photo(path, models=models, top_k=k, filter=flt,
                                              exclude_same_image=args.exclude_same_image,
                                              min_face=min_face, min_score=min_score,
                                              min_quality=min_quality, keep_image=bool(args.out), explain=methods,
                                              explain_top=explain_top, explain_dir=args.out)
                    for note in r.notes:
                        if note not in notes:
                            notes.append(note)
                            print(f"lookalike: {note}", file=sys.stderr)
                except ImageError as e:
                    if len(args.photos) == 1:
                        raise
                    print(f"lookalike: {e}", file=sys.stderr)
                    worst = EXIT_UNREADABLE
                    results.append(PhotoResult(path=path, sha256="", width=0, height=0,
                                               detector=settings.detector, models=models, top_k=k,
                                               filter=flt.render() if flt else None, error=str(e)))
                    continue
                results.append(r)
                if not r.faces:
                    if worst == EXIT_OK:
                        worst = EXIT_NOFACE
                    skipped = (f"; {r.faces_skipped_small} smaller than --min-face {min_face} px skipped"
                               if r.faces_skipped_small else "")
                    print(f"lookalike: {path}: no face found (detector {r.detector}{skipped})", file=sys.stderr)
    except QueryError as e:
        raise CliError(str(e)) from None

    if args.json:
        from query.search import results_document

        print(json.dumps(results_document(results), indent=2, ensure_ascii=False))
    else:
        blocks = [format_text(r) for r in results if r.ok]
        print("\n\n".join(blocks))
    if args.out:
        t = time.perf_counter()
        written = write_outputs(results, args.out)
        print(f"wrote {', '.join(written)} ({time.perf_counter() - t:.2f} s)",
              file=sys.stderr if args.json else sys.stdout)
    return worst
