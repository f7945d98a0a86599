"""dlib's face recognition ResNet as an ONNX graph, run by ONNX Runtime (the default dlib engine).

The graph is written from the weights file itself (ingest/dlib_resnet.py reads it), not exported
from torch: the same 29 convolutions with their affine layers folded in, the same wiring, so
this engine needs neither torch nor dlib to run, and gives the torch port's vectors
(tests/test_engines.py). It is built on first use and cached beside the weights file, keyed by
that file's size and modification time and by GRAPH_VERSION, so a changed file or a changed
builder makes a new graph instead of reusing a stale one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import numpy as np

from lookalike.ingest.dlib_resnet import _MEANS, INPUT_SIZE, Conv, FormatError, read_weights

GRAPH_VERSION = 1
OPSET = 17  # ReduceMean's axes are still an attribute here


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def build_graph(convs: List[Conv], fc: np.ndarray) -> bytes:
    """The ONNX model: (n, 150, 150, 3) uint8 RGB chips in, (n, 128) raw descriptors out, as
    DlibResNet computes them (dlib_resnet.py, `blocks`). Every spatial size is fixed by the input,
    so the zero padding of dlib's add_prev is known here and written as constant Pad nodes."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: List[Any] = []
    inits: List[Any] = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def const(array: np.ndarray, prefix: str = "c") -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), n))
        return n

    def node(op: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = name(op.lower())
        nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def conv(x: str, c: Conv) -> str:
        w, b, s, p = c
        k = int(w.shape[2])
        return node("Conv", [x, const(w.astype(np.float32), "w"), const(b.astype(np.float32), "b")],
                    kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])

    def pad_to(x: str, shape: Tuple[int, int, int], target: Tuple[int, int, int]) -> str:
        if shape == target:
            return x
        ends = [t - s for s, t in zip(shape, target)]
        return node("Pad", [x, const(np.array([0, 0, 0, 0, 0, *ends], dtype=np.int64), "pads")])

    x = node("Cast", ["chips"], to=TensorProto.FLOAT)
    x = node("Transpose", [x], perm=[0, 3, 1, 2])
    x = node("Sub", [x, const(np.array(_MEANS, dtype=np.float32).reshape(1, 3, 1, 1), "means")])
    x = node("Mul", [x, const(np.array(1 / 256.0, dtype=np.float32), "scale")])
    w0, _, s0, p0 = convs[0]
    x = node("Relu", [conv(x, convs[0])])
    x = node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
    side = _out(_out(INPUT_SIZE, int(w0.shape[2]), s0, p0), 3, 2, 0)
    shape = (int(w0.shape[0]), side, side)
    for c1, c2 in zip(convs[1::2], convs[2::2]):
        y = conv(node("Relu", [conv(x, c1)]), c2)
        ys = _out(_out(shape[1], int(c1[0].shape[2]), c1[2], c1[3]), int(c2[0].shape[2]), c2[2], c2[3])
        y_shape = (int(c2[0].shape[0]), ys, ys)
        if c1[2] == 2:  # residual_down: a 2x2 average pool shortcut
            x = node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        target = tuple(max(a, b) for a, b in zip(shape, y_shape))
        x = node("Relu", [node("Add", [pad_to(y, y_shape, target), pad_to(x, shape, target)])])  # type: ignore[arg-type]
        shape = target  # type: ignore[assignment]
    x = node("ReduceMean", [x], axes=[2, 3], keepdims=0)
    nodes.append(helper.make_node("MatMul", [x, const(fc.astype(np.float32), "fc")], ["descriptors"]))
    graph = helper.make_graph(
        nodes, "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["n", INPUT_SIZE, INPUT_SIZE, 3])],
        [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["n", int(fc.shape[1])])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lookalike", producer_version=str(GRAPH_VERSION))
    model.ir_version = 8  # what every ONNX Runtime of the last years reads
    return model.SerializeToString()


def _cached(path: Path, data: bytes) -> bytes:
    """`data`, written to `path` atomically (two workers building at once both write whole files);
    a folder that cannot be written to only loses the cache."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would keep other users of the weights folder out
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass
    return data


def graph_path(weights: Path) -> Path:
    st = weights.stat()
    return weights.with_name(f"{weights.stem}.v{GRAPH_VERSION}-{st.st_size}-{int(st.st_mtime)}.onnx")


def load_graph(weights: Path) -> bytes:
    """The graph for `weights`: the cached file, or built now and cached."""
    path = graph_path(weights)
    if path.is_file():
        return path.read_bytes()
    try:
        convs, fc = read_weights(weights)
    except (FormatError, IndexError, ValueError) as e:
        raise FormatError(f"{weights}: not a readable dlib face recognition model ({e})") from None
    data = build_graph(convs, fc)
    return _cached(path, data)


# Activation ranges for the int8 graph (ONNX Runtime's calibration cache format): measured once on
# 64 chips of the CelebA sample by bench/calibrate_dlib_int8.py and shipped, so that every machine
# quantises alike and no photos are needed to build it. Tensor names follow build_graph (GRAPH_VERSION).
INT8_RANGES = Path(__file__).with_name("dlib_int8_ranges.json")


def int8_graph_path(weights: Path) -> Path:
    return graph_path(weights).with_suffix(".int8.onnx")


def load_int8_graph(weights: Path) -> bytes:
    """The static int8 graph (QDQ, per-channel weights, uint8 activations in INT8_RANGES), built
    from the fp32 graph on first use and cached beside it as the fp32 one is."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    path = int8_graph_path(weights)
    if path.is_file():
        return path.read_bytes()
    fp32 = load_graph(weights)
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        root.setLevel(logging.ERROR)  # its advice to pre-process the graph is for its own users
        try:
            quantize_static(str(src), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(INT8_RANGES))
        finally:
            root.setLevel(level)
        data = out.read_bytes()
    return _cached(path, data)


class DlibOnnx:
    """`__call__(chips) -> (n, 128)` raw descriptors, as DlibResNet's, on ONNX Runtime's CPU
    provider with the process's pinned thread count (one per Dask worker)."""

    def __init__(self, weights: Path, threads: int = 0, int8: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # its warnings are about graph rewrites, not for users
        graph = load_int8_graph(weights) if int8 else load_graph(weights)
        self._session = ort.InferenceSession(graph, sess_options=opts,
                                             providers=["CPUExecutionProvider"])

    def __call__(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack([np.asarray(c, dtype=np.uint8) for c in chips])
        if batch.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"dlib ResNet takes {INPUT_SIZE}x{INPUT_SIZE} RGB chips, got {batch.shape[1:]}")
        return self._session.run(["descriptors"], {"chips": batch})[0]
