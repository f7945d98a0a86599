"""The ingestion pipeline (`driver` for now; split into a module a job next)."""
from lookalike.ingest.pipeline.driver import (
    FLUSH_EVERY,
    MAX_PATH_BYTES,
    REPORT_FORMAT,
    BatchResult,
    ImageResult,
    IngestError,
    IngestSummary,
    ServerWriter,
    Writer,
    ledger_path,
    path_bytes,
    process_and_write_batch,
    process_batch,
    process_image,
    report_line,
    resolve_models,
    run,
    storable,
    warm_worker,
    worker_store,
)

__all__ = ["run", "resolve_models", "IngestError", "IngestSummary", "ImageResult", "BatchResult",
           "process_batch", "process_image", "process_and_write_batch", "warm_worker", "worker_store",
           "Writer", "ServerWriter", "FLUSH_EVERY", "path_bytes", "storable", "ledger_path", "MAX_PATH_BYTES",
           "report_line", "REPORT_FORMAT"]
