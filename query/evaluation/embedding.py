"""Embedding images through the product's path: the one photo analysis ingestion and queries use
(lookalike.ingest.analysis), keeping the face nearest the centre."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from lookalike.ingest.analysis import centre_face as nearest_centre  # noqa: F401  (re-exported)


def _box(b) -> Tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in b)
    return x, y, w, h


@dataclass
class Embedded:
    path: str
    faces: int  # faces the detector found
    vectors: Dict[str, np.ndarray]  # model -> (dim,) embedding of the chosen face; empty if none
    box: Optional[Tuple[int, int, int, int]] = None
    error: str = ""


def embed_images(paths: Sequence[str], settings, detector: str, models: Sequence[str],
                 progress: bool = False, desc: str = "embed") -> Dict[str, Embedded]:
    """Detect -> choose the face nearest the centre -> embed, for each distinct image, with the
    product's analysis (`Analyzer(settings, detector, models).analyse`)."""
    from lookalike.ingest.analysis import AnalysisError, Analyzer
    from lookalike.ingest.analysis import nearest_centre as centred
    from lookalike.ingest.images import ImageError, load

    analyzer = Analyzer(settings.with_(detector=detector), detector, list(models)).load()
    out: Dict[str, Embedded] = {}
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True)
    try:
        for path in paths:
            if path in out:
                continue
            try:
                photo = analyzer.analyse(load(path), select=centred)
            except (ImageError, AnalysisError) as e:  # that image fails; configuration problems stop the evaluation
                out[path] = Embedded(path, 0, {}, error=str(e))
            else:
                face = photo.faces[0] if photo.faces else None
                out[path] = Embedded(path, photo.detected, dict(face.vectors) if face is not None else {},
                                     box=_box(face.box) if face is not None else None)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out

