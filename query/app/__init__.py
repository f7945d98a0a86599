"""The application layer: the `lookalike` command line (click) and the web app (FastAPI), thin
doors over the library in `lookalike.ingest` and `lookalike.query`. Nothing below imports it."""
