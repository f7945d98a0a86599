"""Lookalike ingestion: sources, decoding, detection, embedders, the Milvus store, the pipeline.

`ingest.run(source, ...)` is the Python twin of `lookalike ingest SOURCE`;
`ingest.delete(image=..., sha256=..., identity=...)` the twin of `lookalike delete`;
`ingest.train_head(model, ...)` the twin of `lookalike train-head`.
"""
from lookalike.ingest.erase import DeleteError, DeleteSummary, delete
from lookalike.ingest.head import HeadError, HeadSummary, train_head
from lookalike.ingest.pipeline import IngestError, IngestSummary, run

__all__ = ["run", "IngestSummary", "IngestError", "delete", "DeleteSummary", "DeleteError",
           "train_head", "HeadSummary", "HeadError"]
