"""`lookalike query`: find the stored faces most like each face of one or more photos."""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import List

import click

from lookalike.query.app.errors import EXIT_NOFACE, EXIT_OK, EXIT_UNREADABLE, UsageError
from lookalike.query.app.options import (
    detector_option,
    existing_db,
    model_list,
    model_source_options,
    out_dir,
    settings_for,
    sources_given,
    storage_options,
)

QUERY_EPILOG = """
output:
  default   a table per face: rank, score (cosine similarity), the same-person verdict
            ("same" when the score reaches the model's calibrated threshold, with P(same)),
            identity and source image of each match; a face with no "same" match is a
            lookalike search: its rows are the nearest faces, not the person
  --json    the same as JSON on stdout: {"version": 1, "photos": [...]}, one entry per photo
            (the models of query/results.py)
  --out DIR writes DIR/results.json (every photo) and a contact sheet per photo: the photo
            with numbered face boxes, then per face its crop and its top matches (at most 10
            drawn) with "score id IDENTITY" captions: result.png for one photo; with several,
            each sheet is named after its photo, result_<photo name>.png; an unreadable photo
            gets no sheet.
  --explain (needs --out) adds, for the top --explain-top matches (default 3) of every face,
            heat-map panels DIR/explain/<sha>_face<F>_<model>_match<R>_<method>.png
            (query | match | query map | match map, with the score), referenced from each
            match's "explanations" in results.json. --method: occlusion (default, every model),
            gradcam (FaceNet, CLIP, DINOv2), attention (CLIP, DINOv2), layers (a plot of the
            similarity per block), or all. Several seconds per match and method on a CPU.


filters (validated against the schema; `lookalike fields` lists the fields):
  --filter 'Smiling == true and identity in ["2880", "4262"]'   --where Male --where-not Eyeglasses
  A filter keeping few rows is searched exactly; otherwise the ANN search is widened.


exit codes: 0 ok, 2 usage / invalid filter / unknown model or collection, 3 a photo has no face,
4 a photo cannot be read, 5 model weights missing, 6 Milvus error. With several photos every
photo is processed; the exit code is 4 if any photo was unreadable, else 3 if any had no face.
"""


def expand_photos(photos) -> List[str]:
    """Photos as given; a folder stands for the images directly inside it, sorted by name."""
    from lookalike.ingest.images import IMAGE_SUFFIXES

    out: List[str] = []
    for p in photos:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(c) for c in path.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{p}: a folder with no image in it")
            out += found
        else:
            out.append(str(p))
    return out


@click.command("query", epilog=QUERY_EPILOG)
@click.argument("photos", nargs=-1, required=True, metavar="PHOTO_OR_FOLDER...")
@click.option("-k", "--top-k", type=click.IntRange(1, 1000), default=5, show_default=True, help="matches per face")
@click.option("--model", default=None,
              help=f"collection to search: {model_list()}, <model>_l<N>, <model>_head, a comma list, or 'all' "
                   "(default: the first of facenet, dlib the database holds)")
@click.option("--filter", "filter_", default=None, metavar="EXPR", help="filter expression on stored faces")
@click.option("--where", multiple=True, metavar="FIELD", help="only faces where boolean FIELD is true (repeatable)")
@click.option("--where-not", multiple=True, metavar="FIELD", help="only faces where boolean FIELD is false (repeatable)")
@click.option("--exclude-same-image", is_flag=True, help="never return faces of the query photo itself (same bytes)")
@click.option("--min-face", type=click.IntRange(0, 100_000), default=0, metavar="PX",
              help="skip query faces smaller than PX pixels")
@click.option("--min-score", type=click.FloatRange(-1.0, 1.0), default=None, metavar="S",
              help="drop matches with score below S")
@click.option("--min-quality", type=click.FloatRange(0.0, 1.0), default=None, metavar="Q",
              help="leave out stored faces of quality below Q (default 0.4: tiny, blurred or turned-away "
                   "faces; 0 keeps every face, e.g. to find yourself in your own photos)")
@click.option("--all-faces", is_flag=True, help="the same as --min-quality 0")
@detector_option("; use the one the collection was ingested with")
@click.option("--json", "as_json", is_flag=True, help="print results as JSON")
@click.option("--out", default=None, metavar="DIR", help="write results.json and contact sheet PNGs to DIR")
@click.option("--explain", is_flag=True, help="explain the top matches with heat maps (panels in --out)")
@click.option("--method", default="occlusion", show_default=True, metavar="M",
              help="explanation method: occlusion, gradcam, attention, layers, a comma list or all")
@click.option("--explain-top", type=click.IntRange(1, 1000), default=3, show_default=True, metavar="N",
              help="matches explained per face")
@model_source_options
@storage_options
def query(photos, top_k, model, filter_, where, where_not, exclude_same_image, min_face, min_score, min_quality,
          all_faces, detector, as_json, out, explain, method, explain_top, layer, db, uri, token, profile,
          **sources) -> int:
    """Find the stored faces most like each face of one or more photos (a folder: its images)."""
    from lookalike.ingest.images import ImageError
    from lookalike.query.render import format_text, write_outputs
    from lookalike.query.results import PhotoResult, check_min_quality
    from lookalike.query.search import Searcher
    from lookalike.schemas.filters import compile_filter

    min_q = 0.0 if all_faces else check_min_quality(min_quality)
    flt = compile_filter(filter_, list(where), list(where_not))  # FilterError -> exit 2
    methods = None
    if explain:
        if not out:
            raise UsageError("--explain needs --out DIR (the explanation panels are written there)")
        from lookalike.query.explain import parse_methods

        methods = ",".join(parse_methods(method))
    settings = existing_db(settings_for(db=db, uri=uri, token=token, profile=profile, detector=detector,
                                        **sources))
    paths = expand_photos(photos)
    if out:
        out_dir(out)
    results: list = []
    notes: list = []
    worst = EXIT_OK
    explicit = sources_given(sources)
    show_bar = len(paths) > 1 and sys.stderr.isatty()
    with Searcher(settings, explicit_sources=explicit) as searcher:
        models = searcher.resolve_models(model, layer)
        with click.progressbar(paths, label="photos", file=sys.stderr, show_pos=True) if show_bar \
                else contextlib.nullcontext(paths) as bar:
            for path in bar:
                try:
                    r = searcher.search_photo(path, models=models, top_k=top_k, filter=flt,
                                              exclude_same_image=exclude_same_image, min_face=min_face,
                                              min_score=min_score, min_quality=min_q, keep_image=bool(out))
                    if methods:
                        from lookalike.query.explain import explain_result

                        explain_result(searcher, r, methods, explain_top, out)
                except ImageError as e:
                    if len(paths) == 1:
                        raise
                    click.echo(f"lookalike: {e}", err=True)
                    worst = EXIT_UNREADABLE
                    results.append(PhotoResult(path=path, sha256="", width=0, height=0, detector=settings.detector,
                                               models=models, top_k=top_k, filter=flt.render() if flt else None,
                                               error=str(e)))
                    continue
                for note in r.notes:
                    if note not in notes:
                        notes.append(note)
                        click.echo(f"lookalike: {note}", err=True)
                results.append(r)
                if not r.faces:
                    worst = worst if worst != EXIT_OK else EXIT_NOFACE
                    skipped = (f"; {r.faces_skipped_small} smaller than --min-face {min_face} px skipped"
                               if r.faces_skipped_small else "")
                    click.echo(f"lookalike: {path}: no face found (detector {r.detector}{skipped})", err=True)
    if as_json:
        from lookalike.query.results import results_document

        click.echo(json.dumps(results_document(results), indent=2, ensure_ascii=False))
    else:
        click.echo("\n\n".join(with_persons(r, format_text(r)) for r in results if r.ok))
    if out:
        t = time.perf_counter()
        written = write_outputs(results, out)
        click.echo(f"wrote {', '.join(written)} ({time.perf_counter() - t:.2f} s)", err=as_json)
    return worst


def person_text(answer) -> str:
    """A query face's answer by person (QueryFace.person), for the table."""
    if answer.answer == "named":
        return f"{answer.name}" + (f" (person {answer.id})" if answer.id is not None else " (not grouped yet)")
    if answer.answer == "unnamed":
        return f"person {answer.id} (no name: lookalike people name {answer.id} NAME)"
    return "unknown (not in the gallery)"


def with_persons(result, text: str) -> str:
    """The table of format_text with each face's person on a line under its verdict line ("likely
    the same person: X" or "nobody here ..."), in the first model's block, where `lookalike people`
    ran."""
    faces = {f.index: f for f in result.faces}
    lines = text.split("\n")
    face = None
    first = len(result.models) <= 1
    for i, line in enumerate(lines):
        if line.startswith("face "):
            face = faces.get(int(line.split()[1]) - 1)
            first = len(result.models) <= 1 or f"[{result.models[0]}]" in line
        elif face is not None and first and line.startswith("   ") and not line.startswith("    "):
            if face.person is not None:  # on a line of its own under the verdict, indented alike
                lines[i] = f"{line}\n{line[:len(line) - len(line.lstrip())]}person: {person_text(face.person)}"
            face = None  # only the face's first line after its header: the verdict line
    return "\n".join(lines)
