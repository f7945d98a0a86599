"""Evaluation harness: LFW face verification, identity retrieval and a learned head against its
base model, through the product's own code.

The evaluations see faces exactly as ingestion and queries do: `ingest.images.load` decodes and
the one photo analysis (`lookalike.ingest.analysis.Analyzer`: detect, quality, model inputs,
embeddings) gives the L2-normalised embedding of each face (`embedding.embed_images`).
Similarity is the cosine of two embeddings (their dot product).

One module per kind: `lfw` (verification over an LFW pairs file), `retrieval` (leave-one-out
identity retrieval over an ingested source), `head` (a trained head against its base model);
`embedding` embeds images through the product's path, `report` holds what the reports share.
The metrics themselves are pure numpy in `lookalike.ingest.metrics` (the trained head reports
its figures with them too); this package re-exports them under their old names.
"""
from __future__ import annotations

from lookalike.ingest.metrics import (
    FAR_TARGET,
    RECALL_KS,
    SEARCH_FARS,
    SEARCH_FPIR,
    VERDICT_FAR,
    accuracy_at,
    best_threshold,
    kfold_accuracy,
    retrieval_metrics,
    roc_auc,
    roc_curve,
    search_calibration,
    tar_at_far,
    verdict_calibration,
    verification_metrics,
    worst_case,
)
from lookalike.query.evaluation.embedding import Embedded, embed_images, nearest_centre
from lookalike.query.evaluation.errors import EvalError
from lookalike.query.evaluation.head import HEAD_SETS, evaluate_head, format_head
from lookalike.query.evaluation.lfw import (
    PUBLISHED_LFW,
    Pair,
    PairsFile,
    evaluate_lfw,
    format_lfw,
    lfw_image,
    plot_roc,
    present_folds,
    read_pairs,
    resolve_lfw_root,
)
from lookalike.query.evaluation.report import format_search_calibration, to_json
from lookalike.query.evaluation.retrieval import (
    REFERENCE_RETRIEVAL,
    RETRIEVAL_FIELDS,
    db_for_detector,
    evaluate_retrieval,
    format_retrieval,
)

__all__ = [
    "EvalError",
    # metrics (lookalike.ingest.metrics)
    "FAR_TARGET", "RECALL_KS", "SEARCH_FARS", "SEARCH_FPIR", "VERDICT_FAR", "accuracy_at", "best_threshold",
    "kfold_accuracy", "retrieval_metrics", "roc_auc", "roc_curve", "search_calibration", "tar_at_far",
    "verdict_calibration", "verification_metrics", "worst_case",
    # embedding
    "Embedded", "embed_images", "nearest_centre",
    # LFW verification
    "PUBLISHED_LFW", "Pair", "PairsFile", "evaluate_lfw", "format_lfw", "lfw_image", "plot_roc", "present_folds",
    "read_pairs", "resolve_lfw_root",
    # identity retrieval
    "REFERENCE_RETRIEVAL", "RETRIEVAL_FIELDS", "db_for_detector", "evaluate_retrieval", "format_retrieval",
    # a head against its base model
    "HEAD_SETS", "evaluate_head", "format_head",
    # reports
    "format_search_calibration", "to_json",
]
