"""The int8 dlib graph's activation ranges (ingest/dlib_int8_ranges.json), measured on real chips.

    python bench/calibrate_dlib_int8.py [--chips 64]

The first --chips faces of the CelebA sample, through the product's analysis (YuNet, dlib's
5-point chip), run through the fp32 graph (ingest/dlib_onnx.py) with ONNX Runtime's MinMax
calibrator; the ranges are written in its calibration cache format, which load_int8_graph reads.
Run again after a change of build_graph (GRAPH_VERSION), whose tensor names the file keys on.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=64)
    ap.add_argument("--data", default=os.environ.get("LOOKALIKE_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from lookalike.ingest import dlib_onnx
    from lookalike.ingest.analysis import Analyzer
    from lookalike.ingest.images import load
    from lookalike.ingest.models.weights import provision_weights
    from lookalike.ingest.settings import Settings
    from lookalike.schemas import get_model

    settings = Settings()
    analyzer = Analyzer(settings, "yunet", ["dlib"]).load()
    chips: list = []
    for p in sorted((Path(args.data) / "celeba" / "img_celeba").iterdir()):
        image = load(str(p))
        chips += [analyzer.model_input("dlib", image, f.face) for f in analyzer.detect(image).faces]
        if len(chips) >= args.chips:
            break
    chips = chips[:args.chips]

    class Chips(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"chips": np.stack(chips[i:i + 8])} for i in range(0, len(chips), 8)])

        def get_next(self):
            return next(self.batches, None)

    weights = provision_weights(settings, get_model("dlib").weights_file)
    assert weights is not None, "dlib's weights are missing"
    out = dlib_onnx.INT8_RANGES
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        src.write_bytes(dlib_onnx.load_graph(Path(weights)))
        if out.exists():
            out.unlink()
        quantize_static(str(src), str(Path(tmp) / "int8.onnx"), Chips(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(out))
    print(f"{out.relative_to(ROOT)}: ranges of {len(chips)} chips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
