"""The run report, JSON Lines: the run's summary, then one record per failed file."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional

from lookalike.ingest.pipeline.results import IngestSummary

DEFAULT_REPORT = "ingest-report.jsonl"

REPORT_FORMAT = "lookalike-ingest-report/2"
_SURROGATE = re.compile("[\ud800-\udfff]")


def report_line(record: Dict[str, Any]) -> str:
    """One JSON object on one line. Whatever a file name holds (a newline, a TAB, quotes) is a
    JSON string escape, so no name can end a record or start another; a name that is not UTF-8
    keeps its undecodable bytes as \\udcNN escapes (json.loads, then os.fsencode, gives the exact
    bytes back)."""
    text = json.dumps(record, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def _write_report(summary: IngestSummary, report: Optional[str]) -> Optional[str]:
    """The run report, JSON Lines: a first record with the run's summary, then one record per
    failed file: {"path": ..., "status": "failed", "reason": ...}."""
    path = Path(report) if report else Path(DEFAULT_REPORT)
    try:
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
    except OSError:
        return None
    return str(path)
