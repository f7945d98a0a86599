"""What a run produces: one result per image, one per batch (what a worker sends back), and the
run's summary, which the results are counted into."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


@dataclass
class ImageResult:
    path: str
    sha256: str
    status: str  # done | noface | failed
    reason: str = ""
    faces: List[Dict[str, Any]] = field(default_factory=list)  # metadata per face
    vectors: Dict[str, np.ndarray] = field(default_factory=dict)  # model -> (n, dim)


@dataclass
class BatchResult:
    images: List[ImageResult]
    seconds: float  # worker time spent
    pid: int
    rss: int  # worker RSS (bytes) after the batch
    written: bool = False  # server mode: the worker stored it already (process_and_write_batch)
    store_error: str = ""  # server mode: the worker could not store it (the run stops with this)


@dataclass
class IngestSummary:
    source: str
    models: List[str]
    detector: str
    images_seen: int = 0
    images_done: int = 0  # processed this run with >= 1 face
    images_noface: int = 0
    images_skipped: int = 0  # already in the ledger
    images_failed: int = 0
    faces_stored: int = 0
    wall_seconds: float = 0.0  # the whole run, from the call to the summary
    # the photos' own part (workers started, models loaded, every batch run): the rates' time
    work_seconds: float = 0.0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    nofaces: List[str] = field(default_factory=list)  # paths of the photos read without a face
    failure_kinds: Dict[str, int] = field(default_factory=dict)
    worker_peak_rss: Dict[int, int] = field(default_factory=dict)
    report_path: Optional[str] = None
    interrupted: bool = False

    @property
    def faces_per_second(self) -> float:
        return self.faces_stored / self.work_seconds if self.work_seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.work_seconds if self.work_seconds else 0.0

    @property
    def images_processed(self) -> int:
        """Photos this run read (skipped ones not counted)."""
        return self.images_done + self.images_noface + self.images_failed

    @property
    def all_failed(self) -> bool:
        """Every photo this run tried failed: nothing usable in the source (exit 4 at the CLI)."""
        return self.images_failed > 0 and self.images_failed == self.images_processed

    def lines(self) -> List[str]:
        out = [
            f"source      {self.source}",
            f"models      {', '.join(self.models)} (detector {self.detector})",
            f"images      {self.images_seen} seen: {self.images_done} with faces, {self.images_noface} without a face, "
            f"{self.images_skipped} already done, {self.images_failed} failed",
            f"faces       {self.faces_stored} stored ({self.faces_per_second:.1f} faces/s, "
            f"{self.images_per_second:.1f} images/s)",
            f"wall time   {self.wall_seconds:.1f} s",
        ]
        if self.failure_kinds:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.failure_kinds.items(), key=lambda kv: -kv[1]))
            out.append(f"failed      {kinds}")
        if self.report_path:
            out.append(f"report      {self.report_path}")
        if self.interrupted:
            out.append("interrupted: re-run the same command to resume")
        return out


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:300]


def _failure_kind(reason: str) -> str:
    return reason.split(":")[0].split("(")[0].strip()[:40] or "error"


def _account(summary: IngestSummary, results: List[ImageResult], count_faces: bool = True) -> None:
    """Count `results` into the summary; their faces only when already written (by the workers,
    on a server): the driver's Writer counts what it writes itself."""
    for r in results:
        if r.status == "failed":
            summary.images_failed += 1
            summary.failures.append((r.path, r.reason))
            k = _failure_kind(r.reason)
            summary.failure_kinds[k] = summary.failure_kinds.get(k, 0) + 1
        elif r.status == "noface":
            summary.images_noface += 1
            summary.nofaces.append(r.path)
        else:
            summary.images_done += 1
            if count_faces and not r.reason.startswith("duplicate of"):
                summary.faces_stored += len(r.faces)
