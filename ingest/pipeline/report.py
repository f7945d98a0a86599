"""The run report, JSON Lines: the run's summary, then one record per file that gave no face --
failed, or read but without a face."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Dict, Optional

from lookalike.ingest.pipeline.results import IngestSummary
from lookalike.ingest.settings import Settings

# /3: records for the photos without a face too ({"status": "noface"}), beside the failed ones
REPORT_FORMAT = "lookalike-ingest-report/3"
_SURROGATE = re.compile("[\ud800-\udfff]")


def report_line(record: Dict[str, Any]) -> str:
    """One JSON object on one line. Whatever a file name holds (a newline, a TAB, quotes) is a
    JSON string escape, so no name can end a record or start another; a name that is not UTF-8
    keeps its undecodable bytes as \\udcNN escapes (json.loads, then os.fsencode, gives the exact
    bytes back)."""
    text = json.dumps(record, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def default_report(settings: Settings, source: str) -> Path:
    """Each run's own report, kept with the database's files (`<db stem>.reports/` beside a Lite
    database): a second run, of another source or a resume, does not replace the first's."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.rstrip("/\\")).name).strip("_.") or "source"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = settings.beside_db("reports")
    path = folder / f"ingest-{stamp}-{name}.jsonl"
    n = 1
    while path.exists():  # two runs in one second
        n += 1
        path = folder / f"ingest-{stamp}-{name}-{n}.jsonl"
    return path


def _write_report(summary: IngestSummary, path: Path) -> Optional[str]:
    """The run report, JSON Lines: a first record with the run's summary, then one record per
    failed file, {"path": ..., "status": "failed", "reason": ...}, and one per photo read without a
    face, {"path": ..., "status": "noface"}."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(report_line({
                "format": REPORT_FORMAT, "source": summary.source, "models": summary.models,
                "detector": summary.detector, "images_seen": summary.images_seen,
                "images_done": summary.images_done, "images_noface": summary.images_noface,
                "images_skipped": summary.images_skipped, "images_failed": summary.images_failed,
                "faces_stored": summary.faces_stored, "wall_seconds": round(summary.wall_seconds, 1),
                "interrupted": summary.interrupted}))
            for p, reason in summary.failures:
                f.write(report_line({"path": p, "status": "failed", "reason": reason}))
            for p in summary.nofaces:
                f.write(report_line({"path": p, "status": "noface"}))
    except OSError:
        return None
    return str(path)
