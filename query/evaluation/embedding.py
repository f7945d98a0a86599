"""Embedding images through the product's path: detect, choose the face nearest the centre, embed
with the engine ingestion and queries use (`get_engine(settings, detector, models).load()`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np


def _box(b) -> Tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in b)
    return x, y, w, h


def nearest_centre(faces: Sequence[Any], width: int, height: int) -> Any:
    """The face whose box centre is nearest the image centre (LFW crops are centred on the person)."""
    cx, cy = width / 2.0, height / 2.0
    return min(faces, key=lambda f: (f.box[0] + f.box[2] / 2.0 - cx) ** 2 + (f.box[1] + f.box[3] / 2.0 - cy) ** 2)


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
    product's engine (`get_engine(settings, detector, models).load()`)."""
    from lookalike.ingest.images import ImageError, load
    from lookalike.ingest.models import ModelError, WeightsMissing, get_engine

    engine = get_engine(settings.with_(detector=detector), detector, list(models)).load()
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
                image = load(path)
            except ImageError as e:
                out[path] = Embedded(path, 0, {}, error=str(e))
            else:
                try:
                    faces = engine.detector.detect(image)
                    face = nearest_centre(faces, image.width, image.height) if faces else None
                    vecs = {m: engine.embedders[m].embed(image, [face])[0] for m in models} if face is not None else {}
                except (WeightsMissing, ModelError):
                    raise  # configuration problems stop the evaluation
                except Exception as e:  # noqa: BLE001 - a model crash on one image: that image fails
                    out[path] = Embedded(path, 0, {}, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                else:
                    out[path] = Embedded(path, len(faces), vecs,
                                         box=_box(face.box) if face is not None else None)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out

