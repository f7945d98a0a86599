"""dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) run by torch.

Same weights file, same network, same numbers as dlib's own `compute_face_descriptor` (max
difference ~1e-6 on real chips, tests/test_query.py), but batched and on oneDNN, where dlib's own
code takes each face alone at the same cost whatever the batch. The embedding is the bulk of an
image's work, so this is what puts ingest well ahead of the seed's DeepFace.represent loop
(bench/bench_ingest.py, runs c and d; bench/results/ingest.txt) and keeps a group photo's
embedding a small part of a query (bench/bench_query.py; bench/results/query.txt).

The file is dlib's own serialisation of its `anet_type` (dnn_face_recognition_ex.cpp): layers
from the input up, each a record that starts with its type name as a length-prefixed string.
Only three records carry weights, and their layout is fixed by dlib:
  con_4    params tensor (filters OIHW then biases), num_filters, nr, nc, stride y/x, padding y/x
  affine_  params tensor (gamma then beta, one per channel)
  fc_2     num_outputs, num_inputs, params tensor (weights [in][out]; fc_no_bias: no biases)
Integers are dlib's packed ints (one byte: byte count | 0x80 if negative, then little-endian
bytes); a tensor is version 2, four packed dims, then little-endian float32s. The wiring between
the layers (residual blocks, 2x2 average-pool shortcuts, zero-padded sums) is the published
architecture, checked against the weights' shapes as they are read.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

INPUT_SIZE = 150
# input_rgb_image_sized<150>: (pixel - channel mean) / 256, the means stored in the file
_MEANS = (122.782, 117.001, 104.298)

_RECORD = re.compile(rb"\x01(\x05con_4|\x07affine_|\x04fc_2)")


class FormatError(ValueError):
    pass


class _Reader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def read_int(self) -> int:
        head = self.data[self.pos]
        n = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def string(self) -> str:
        n = self.read_int()
        text = self.data[self.pos:self.pos + n].decode("latin-1")
        self.pos += n
        return text

    def tensor(self) -> np.ndarray:
        version = self.read_int()
        if version != 2:
            raise FormatError(f"tensor version {version}, expected 2")
        count = int(np.prod([self.read_int() for _ in range(4)]))
        if self.pos + 4 * count > len(self.data):
            raise FormatError("truncated tensor")
        out = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos += 4 * count
        return out

    def alias_shape(self) -> Tuple[int, int, int, int]:
        self.read_int()  # version
        return tuple(self.read_int() for _ in range(4))  # type: ignore[return-value]


Conv = Tuple[np.ndarray, np.ndarray, int, int]  # weight OIHW (affine folded in), bias, stride, padding


def read_weights(path: Path) -> Tuple[List[Conv], np.ndarray]:
    """The 29 convolutions (each with its following affine layer folded in) and the final
    256x128 projection, in forward order."""
    data = Path(path).read_bytes()
    reader = _Reader(data, 0)
    convs: List[Conv] = []
    pending: Optional[Conv] = None
    fc = None
    for match in _RECORD.finditer(data):
        reader.pos = match.start()
        kind = reader.string()
        if kind == "con_4":
            params = reader.tensor()
            filters, _nr, _nc, stride, _sx, padding, _px = (reader.read_int() for _ in range(7))
            shape = reader.alias_shape()
            size = int(np.prod(shape))
            if shape[0] != filters or params.size != size + filters:
                raise FormatError(f"convolution {len(convs) + 1}: {params.size} parameters for {shape}")
            pending = (params[:size].reshape(shape), params[size:], stride, padding)
        elif kind == "affine_":
            params = reader.tensor()
            if pending is None or params.size != 2 * pending[0].shape[0]:
                raise FormatError(f"affine layer {len(convs) + 1} does not follow a matching convolution")
            gamma, beta = np.split(params, 2)
            weight, bias, stride, padding = pending
            convs.append((weight * gamma[:, None, None, None], bias * gamma + beta, stride, padding))
            pending = None
        else:
            outputs, inputs = reader.read_int(), reader.read_int()
            fc = reader.tensor().reshape(inputs, outputs)
    if fc is None or len(convs) != 29 or convs[0][0].shape != (32, 3, 7, 7):
        raise FormatError(f"not dlib's face recognition ResNet ({len(convs)} convolutions)")
    return convs, fc


class DlibResNet:
    """`__call__(chips) -> (n, 128)` raw descriptors (what dlib returns, not normalised) for
    150x150 RGB uint8 face chips (dlib.get_face_chip)."""

    def __init__(self, path: Path):
        import torch

        try:
            convs, fc = read_weights(path)
        except (FormatError, IndexError, ValueError) as e:
            raise FormatError(f"{path}: not a readable dlib face recognition model ({e})") from None
        self._convs = [(torch.from_numpy(np.ascontiguousarray(w)), torch.from_numpy(b), s, p)
                       for w, b, s, p in convs]
        self._fc = torch.from_numpy(np.ascontiguousarray(fc))
        self._means = torch.tensor(_MEANS, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            blocks = self.blocks(chips)
            return (blocks[-1].mean(dim=(2, 3)) @ self._fc).numpy()

    def blocks(self, chips: Sequence[np.ndarray], grad: bool = False) -> List:
        """The output of each residual block, (n, C, H, W) torch tensors, first to last: the last
        one, mean-pooled and projected by `fc`, is the descriptor. With `grad` (under
        torch.enable_grad) the graph from the input is kept, for Grad-CAM (lookalike.query.explain)."""
        import torch
        import torch.nn.functional as F

        batch = np.stack([np.asarray(c, dtype=np.uint8) for c in chips])
        if batch.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"dlib ResNet takes {INPUT_SIZE}x{INPUT_SIZE} RGB chips, got {batch.shape[1:]}")
        x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - self._means) / 256.0
        if grad:
            x.requires_grad_(True)  # the weights are plain tensors: the graph starts at the input
        w, b, s, p = self._convs[0]
        x = F.max_pool2d(F.relu(F.conv2d(x, w, b, stride=s, padding=p)), 3, 2)
        out = []
        for (w1, b1, s1, p1), (w2, b2, s2, p2) in zip(self._convs[1::2], self._convs[2::2]):
            y = F.conv2d(F.relu(F.conv2d(x, w1, b1, stride=s1, padding=p1)), w2, b2, stride=s2, padding=p2)
            # dlib's residual_down: the shortcut is a 2x2 average pool; add_prev sums tensors
            # of different sizes by zero-padding both to the larger (channels, rows, columns)
            shortcut = F.avg_pool2d(x, 2, 2) if s1 == 2 else x
            x = F.relu(_padded_sum(y, shortcut))
            out.append(x)
        return out

    @property
    def fc(self):
        return self._fc


def _padded_sum(a, b):
    import torch.nn.functional as F

    shape = [max(i, j) for i, j in zip(a.shape, b.shape)]

    def pad(t):
        if list(t.shape) == shape:
            return t
        return F.pad(t, (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]))

    return pad(a) + pad(b)
