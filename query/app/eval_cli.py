"""`lookalike eval lfw|retrieval`: accuracy through the product's own path (query/evaluation/)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import click

from lookalike.query.app.errors import EXIT_OK, UsageError
from lookalike.query.app.options import existing_db, model_list, out_dir, settings_for, storage_options

LFW_EPILOG = """
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


output: a table; --json prints the report as JSON instead; --out DIR writes DIR/eval_lfw.json,
  DIR/eval_lfw.txt (the table) and DIR/eval_lfw_roc.png (ROC curves).


exit codes: 0 ok, 2 usage (missing pairs file or images folder, unknown model or detector),
  5 model weights missing.
"""

RETRIEVAL_EPILOG = """
protocol:
  SOURCE is ingested into the database first (--db; an existing database is reused and only the
  images it lacks are processed). With several detectors each gets its own database:
  <db stem>-<detector>.db. The source's faces (and only those matching --filter) are fetched once
  with their vectors and searched exactly with numpy (not the HNSW index). One face per image
  (the largest; --faces all keeps every face). Leave-one-out: each face whose identity has a face
  in another image queries all faces except those of its own image.
  Recall@k: a same-identity face is among the k best; mAP: mean average precision of the full
  ranking; R@1 strict also counts the images where no face was found as misses.


output: a table; --json prints the report as JSON instead; --out DIR writes
  DIR/eval_retrieval.json and DIR/eval_retrieval.txt.


exit codes: 0 ok, 2 usage (bad source, invalid filter, unknown model or detector),
  5 model weights missing, 6 Milvus error, 130 interrupted (re-running resumes the ingest).
"""


def _common(f):
    for opt in reversed([
        click.option("--model", default="auto", show_default=True, metavar="MODELS",
                     help=f"comma-separated models ({model_list()}); auto: facenet when its weights are "
                          "present, else dlib"),
        click.option("--detector", "detectors", default=None, metavar="DETECTORS",
                     help="comma-separated detector backends, one evaluation each (default yunet, or "
                          "$LOOKALIKE_DETECTOR)"),
        click.option("--json", "as_json", is_flag=True, help="print the report as JSON"),
        click.option("--out", default=None, metavar="DIR", help="write the report (JSON, table, plot) to DIR"),
        click.option("-q", "--quiet", is_flag=True, help="no progress bar"),
    ]):
        f = opt(f)
    return f


def _resolve(model: str, detectors: Optional[str], settings):
    """(models, detectors) from --model / --detector, each validated (exit 2 with one line)."""
    from lookalike.ingest.models import default_face_model
    from lookalike.schemas import get_model

    models = []
    for m in (x.strip() for x in str(model).split(",")):
        if m:
            models.append(get_model(default_face_model(settings) if m == "auto" else m).name)
    if not models:
        raise UsageError("--model: no model given")
    dets = [d.strip() for d in (detectors or settings.detector).split(",") if d.strip()]
    if not dets:
        raise UsageError("--detector: no detector given")
    for d in dets:
        settings.with_(detector=d)  # SettingsError names an unknown one
    return list(dict.fromkeys(models)), list(dict.fromkeys(dets))


def _emit(as_json: bool, report, text: str, out: Optional[Path], stem: str, extra: List[str]) -> None:
    from lookalike.query.evaluation import plot_roc, to_json

    written = []
    if out is not None:
        (out / f"{stem}.json").write_text(to_json(report), encoding="utf-8")
        (out / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")
        written += [str(out / f"{stem}.json"), str(out / f"{stem}.txt")]
        if report["kind"] == "lfw":
            written.append(plot_roc(report, out / f"{stem}_roc.png"))
        written += extra
    if as_json:
        sys.stdout.write(to_json(report))
    else:
        click.echo(text)
    if written:
        click.echo(f"wrote {', '.join(written)}", err=as_json)


@click.group("eval")
def eval_group() -> None:
    """Measure accuracy: LFW verification, or identity retrieval over a collection."""


@eval_group.command("lfw", epilog=LFW_EPILOG)
@click.option("--pairs", required=True, metavar="FILE", help="LFW pairs file (pairs.txt, pairs_fold1.txt)")
@click.option("--images", required=True, metavar="DIR", help="folder of <name>/<name>_<NNNN>.jpg (or its parent holding lfw/)")
@_common
@click.option("--limit", type=click.IntRange(2), default=None, metavar="N",
              help="quick look: the first N/2 same-person and N/2 different-person pairs")
def lfw(pairs, images, model, detectors, as_json, out, quiet, limit) -> int:
    """LFW face verification through the product's detect -> align -> embed path."""
    from lookalike.query.evaluation import evaluate_lfw, format_lfw

    if not Path(pairs).is_file():
        raise UsageError(f"pairs file {pairs}: no such file" if not Path(pairs).exists() else f"pairs file {pairs}: not a file")
    if not Path(images).is_dir():
        raise UsageError(f"images folder {images}: no such folder")
    settings = settings_for()
    models, dets = _resolve(model, detectors, settings)
    folder = out_dir(out)
    report = evaluate_lfw(pairs, images, models=models, detectors=dets, settings=settings, limit=limit,
                          progress=not quiet)
    _emit(as_json, report, format_lfw(report), folder, "eval_lfw", [])
    return EXIT_OK


@eval_group.command("retrieval", epilog=RETRIEVAL_EPILOG)
@click.argument("source")
@_common
@click.option("--filter", "filter_", default=None, metavar="EXPR",
              help="evaluate within a slice: filter expression on stored faces (e.g. 'Eyeglasses == true')")
@click.option("--faces", type=click.Choice(["largest", "all"]), default="largest", show_default=True,
              help="faces per image taking part")
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
              help="ingest worker processes (0 = in-process)")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N", help="only the first N images of SOURCE")
@storage_options
def retrieval(source, model, detectors, as_json, out, quiet, filter_, faces, workers, limit,
              db, uri, token, profile) -> int:
    """Leave-one-out identity retrieval: Recall@1/5/10 and mAP per model and detector."""
    from lookalike.query.evaluation import evaluate_retrieval, format_retrieval
    from lookalike.schemas.filters import compile_filter

    compile_filter(filter_)  # FilterError -> exit 2, before any work
    if not Path(source).exists():
        raise UsageError(f"{source}: no such file or folder")
    settings = settings_for(db=db, uri=uri, token=token, profile=profile)
    models, dets = _resolve(model, detectors, settings)
    folder = out_dir(out)
    report = evaluate_retrieval(source, settings.db, models=models, detectors=dets, filter=filter_,
                                settings=settings, workers=workers, faces=faces, limit=limit,
                                progress=not quiet, report_dir=str(folder) if folder else None,
                                uri=settings.uri, token=settings.token, profile=settings.profile)
    extra = [str(folder / f"eval_retrieval_ingest_{d}.txt") for d in dets] if folder else []
    _emit(as_json, report, format_retrieval(report), folder, "eval_retrieval", extra)
    return EXIT_OK


@eval_group.command("head")
@click.option("--model", default="dlib", show_default=True, help="the base model whose head is compared")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--out", default=None, metavar="DIR", help="write the report (JSON, table) to DIR")
@storage_options
def head(model, as_json, out, db, uri, token, profile) -> int:
    """A trained projection head beside its base model (`lookalike train-head`): Recall@1/5/10 and
    mAP on the held-out photos and identities its file records."""
    from lookalike.query.evaluation import evaluate_head, format_head

    settings = existing_db(settings_for(db=db, uri=uri, token=token, profile=profile))
    report = evaluate_head(model, settings=settings)
    report.setdefault("kind", "head")
    _emit(as_json, report, format_head(report), out_dir(out), "eval_head", [])
    return EXIT_OK
