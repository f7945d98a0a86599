"""dlib's ResNet face descriptor on the 5-point chip it was trained on."""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np

from lookalike.ingest.dlib_resnet import DlibResNet, FormatError
from lookalike.ingest.images import Decoded
from lookalike.ingest.models.base import ModelError, torch_threads
from lookalike.ingest.models.deepface import DeepFaceEmbedder
from lookalike.ingest.models.detector import Face
from lookalike.ingest.models.weights import DLIB_LANDMARKS_FILE, _missing, provision_weights
from lookalike.ingest.settings import pinned_threads


class DlibEmbedder(DeepFaceEmbedder):
    """dlib's ResNet fed the 150-px 5-point face chip it was trained on.

    DeepFace's generic eye-line crop loses accuracy against the chip the network was trained on
    (LFW fold 1, same detections: bench/README.md, Match quality; the product's figures in
    bench/results/eval_lfw.txt). The chip is built from the detector's box with dlib's 5-point
    landmark model.

    The network runs on ONNX Runtime by default (ingest/dlib_onnx.py: a graph written from the same
    weights file in DeepFace's weights dir, the same vectors, batched, without torch:
    bench/results/engines.txt); LOOKALIKE_DLIB_ENGINE=torch runs the torch port the graph mirrors
    (ingest/dlib_resnet.py; also what gradient explanations use), LOOKALIKE_DLIB_ENGINE=dlib loads
    it through DeepFace and computes with dlib itself, the reference both are tested against.
    """

    uses_tensorflow = False
    # dlib's own engine is C++ without gradients or intermediate outputs: occlusion only; the torch
    # port (the default) is the same network in torch, so Grad-CAM and the blocks can be read
    # port is the same network in torch, so Grad-CAM and the blocks can be read; the onnx engine
    # (the default) loads the torch port for those two only, when an explanation asks
    ENGINE_METHODS = {"torch": ("occlusion", "gradcam", "layers"), "dlib": ("occlusion",),
                      "onnx": ("occlusion", "gradcam", "layers"), "onnx-int8": ("occlusion", "gradcam", "layers")}
    CHIP_SIZE = 150
    CHIP_PADDING = 0.25
    # dlib's 5-point landmark model was trained on its HOG detector's square boxes; fed another
    # detector's box it places the landmarks less well and the chip, hence the descriptor, drifts.
    # Per detector: the HOG-like square its landmark model expects, as (centre shift x, centre
    # shift y) in units of the box's width/height and the side in box widths. YuNet's: medians over
    # the CelebA sample's photos where both detectors find the face (bench/bench_accuracy.py
    # --fit-box prints them); LFW fold 1 is held out and gains 0.5 pt with it (bench/results/).
    SHAPE_BOX = {"yunet": (0.0035, 0.0629, 1.077)}

    def _load(self) -> Any:
        import dlib  # type: ignore

        path = provision_weights(self.settings, DLIB_LANDMARKS_FILE)
        if path is None:
            raise _missing("dlib face chips", DLIB_LANDMARKS_FILE, self.settings)
        self._shape = dlib.shape_predictor(str(path))
        if self.settings.dlib_engine == "dlib":
            net = super()._load().model.model  # DeepFace's client -> dlib.face_recognition_model_v1
            return lambda chips: np.array([np.array(d) for d in net.compute_face_descriptor(list(chips))],
                                          dtype=np.float32)
        if self.settings.dlib_engine not in ("torch", "onnx", "onnx-int8"):
            raise ModelError(f"LOOKALIKE_DLIB_ENGINE={self.settings.dlib_engine!r}: expected onnx, onnx-int8, torch or dlib")
        weights = provision_weights(self.settings, self.spec.weights_file)
        if weights is None:
            raise _missing(f"model {self.name}", self.spec.weights_file, self.settings)
        if self.settings.dlib_engine in ("onnx", "onnx-int8"):
            from lookalike.ingest.dlib_onnx import DlibOnnx

            int8 = self.settings.dlib_engine == "onnx-int8"
            return self._guarded(lambda: DlibOnnx(weights, threads=pinned_threads(), int8=int8))
        return self._port(weights)

    def _port(self, weights) -> DlibResNet:
        torch_threads()
        return self._guarded(lambda: DlibResNet(weights))

    def _guarded(self, build):
        try:
            return build()
        except FormatError as e:
            raise ModelError(f"model {self.name}: {e}") from None

    def _chip(self, image: Decoded, face: Face) -> np.ndarray:
        import dlib  # type: ignore

        # On BGR, then swapped: the landmarks see the channel mean (the same either way) and the
        # chip is per-channel interpolation, so this is dlib's RGB chip without an RGB photo.
        shape = self._shape(image.bgr, self.landmark_box(face))
        chip = dlib.get_face_chip(image.bgr, shape, size=self.CHIP_SIZE, padding=self.CHIP_PADDING)
        return np.ascontiguousarray(chip[:, :, ::-1])

    @classmethod
    def landmark_box(cls, face: Face):
        """The rectangle dlib's landmark model is run on for `face` (decoded pixels)."""
        import dlib  # type: ignore

        x, y, w, h = face.dbox
        cal = cls.SHAPE_BOX.get(face.backend)
        if cal is None:
            return dlib.rectangle(x, y, x + w, y + h)
        cx, cy, half = x + w / 2 + cal[0] * w, y + h / 2 + cal[1] * h, cal[2] * w / 2
        return dlib.rectangle(int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half)))

    @property
    def explain_methods(self) -> Tuple[str, ...]:  # type: ignore[override]
        return self.ENGINE_METHODS.get(self.settings.dlib_engine, ("occlusion",))

    def model_input(self, image: Decoded, face: Face) -> np.ndarray:
        return self._chip(image, face)  # 150x150x3 uint8 RGB

    def _torch_net(self) -> DlibResNet:
        """The torch port, for gradients and blocks: the model itself on the torch engine; built
        beside the ONNX session on the onnx engine (the same weights file, the same vectors)."""
        self.load()
        if isinstance(self._model, DlibResNet):
            return self._model
        if self.settings.dlib_engine in ("onnx", "onnx-int8"):
            if getattr(self, "_torch_port", None) is None:
                weights = provision_weights(self.settings, self.spec.weights_file)
                if weights is None:
                    raise _missing(f"model {self.name}", self.spec.weights_file, self.settings)
                self._torch_port = self._port(weights)
            return self._torch_port
        raise ModelError(f"model {self.name}: gradcam and layers need the torch port "
                         f"(LOOKALIKE_DLIB_ENGINE=onnx or torch); dlib's own engine has no gradients")

    def gradcam(self, q: np.ndarray, m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Gradient-weighted activation map of the query-match cosine: ReLU(sum_c grad_c *
        activation_c) at the last block of at least a tenth of the chip's side (17x17 of 150),
        for both faces; not normalised. Why not plain Grad-CAM on the last block: that block is
        2x2, and its maps (or channel-mean weights at 4x4) fail the deletion test on the shared
        photos (greying their top pixels lowers the similarity less than random pixels), while
        this map lowers it about 4 times as much (tests/test_explain.py)."""
        import torch

        net = self._torch_net()
        with torch.enable_grad():
            blocks = net.blocks([q, m], grad=True)
            at = max(i for i, b in enumerate(blocks) if b.shape[-1] * 10 >= q.shape[1])
            act = blocks[at]
            act.retain_grad()
            emb = torch.nn.functional.normalize(blocks[-1].mean(dim=(2, 3)) @ net.fc, dim=-1)
            (emb[0] * emb[1]).sum().backward()
        cam = torch.relu((act.grad * act).sum(dim=1)).detach().numpy()
        return cam[0], cam[1]

    def layer_scores(self, q: np.ndarray, m: np.ndarray) -> List[float]:
        """Query-match cosine of the mean-pooled output of each stage (where the resolution
        halves, and the last block), then of the descriptor."""
        import torch

        net = self._torch_net()
        with torch.inference_mode():
            blocks = net.blocks([q, m])
            ends = [i for i in range(len(blocks) - 1) if blocks[i + 1].shape[-1] < blocks[i].shape[-1]]
            scores = []
            for i in ends + [len(blocks) - 1]:
                v = torch.nn.functional.normalize(blocks[i].mean(dim=(2, 3)), dim=-1)
                scores.append(float((v[0] * v[1]).sum()))
            e = torch.nn.functional.normalize(blocks[-1].mean(dim=(2, 3)) @ net.fc, dim=-1)
            scores.append(float((e[0] * e[1]).sum()))
        return scores

    def _predict_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._model([np.ascontiguousarray(c, dtype=np.uint8) for c in inputs])
