"""Lookalike ingestion: sources, decoding, detection, embedders, the Milvus store, the pipeline.

`ingest.run(source, ...)` is the Python twin of `lookalike ingest SOURCE`.
"""
from ingest.pipeline import IngestError, IngestSummary, run

__all__ = ["run", "IngestSummary", "IngestError"]
