"""The ingestion pipeline: reader -> mapper -> writer -> runner, one module each.

- `reader`: the source's records in batches, minus those the images ledger already holds (resume);
- `mapper` (`process_batch`, on Dask workers): read, hash, decode, detect, embed a batch of images
  with the worker's engine, built once per process;
- `writer` (the driver): buffers finished batches; every few seconds upserts their faces, then
  records their images in the ledger. Milvus Lite allows one writer process, so the driver is it;
  server mode (`--uri`): each worker writes its own batches (`process_and_write_batch`,
  `ServerWriter`) and the driver only accounts for them;
- `runner`: the batches in this process or on Dask, a bounded number in flight (memory stays flat
  whatever the dataset size), and what a dead worker means;
- `driver`: `run()` itself, with a tqdm bar; `results`: what a batch and a run produce; `report`:
  the report of failed files; `paths`: how a file's name is stored and keyed.

A batch is the unit of work and of resume: its images are recorded as done only after their faces
are durable, so a kill -9 at any point redoes at most the batches in flight and the last few seconds
of results, and upserts keyed on content make redoing them harmless.

(`run()` lives in `driver`, not in a `run` module: the function, exported here, would hide it.)
"""
from lookalike.ingest.pipeline.driver import IngestError, resolve_models, run
from lookalike.ingest.pipeline.mapper import (
    process_and_write_batch,
    process_batch,
    process_image,
    warm_worker,
    worker_store,
)
from lookalike.ingest.pipeline.paths import MAX_PATH_BYTES, ledger_path, path_bytes, storable
from lookalike.ingest.pipeline.reader import SKIP_CHUNK
from lookalike.ingest.pipeline.report import REPORT_FORMAT, default_report, report_line
from lookalike.ingest.pipeline.results import BatchResult, ImageResult, IngestSummary
from lookalike.ingest.pipeline.writer import FLUSH_EVERY, ServerWriter, Writer

__all__ = ["run", "resolve_models", "IngestError", "IngestSummary", "ImageResult", "BatchResult",
           "process_batch", "process_image", "process_and_write_batch", "warm_worker", "worker_store",
           "Writer", "ServerWriter", "FLUSH_EVERY", "path_bytes", "storable", "ledger_path", "MAX_PATH_BYTES",
           "SKIP_CHUNK", "report_line", "REPORT_FORMAT", "default_report"]
