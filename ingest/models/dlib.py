"""dlib's ResNet face descriptor on the 5-point chip it was trained on."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lookalike.ingest.images import Decoded
from lookalike.ingest.models.base import ModelError, torch_threads
from lookalike.ingest.models.deepface import DeepFaceEmbedder
from lookalike.ingest.models.detector import Face
from lookalike.ingest.models.weights import DLIB_LANDMARKS_FILE, _missing, provision_weights


class DlibEmbedder(DeepFaceEmbedder):
    """dlib's ResNet fed the 150-px 5-point face chip it was trained on.

    DeepFace's generic eye-line crop loses accuracy against the chip the network was trained on
    (LFW fold 1, same detections: bench/README.md, Match quality; the product's figures in
    bench/results/eval_lfw.txt). The chip is built from the detector's box with dlib's 5-point
    landmark model.

    The network runs on torch by default (ingest/dlib_resnet.py: the same weights file from
    DeepFace's weights dir, the same vectors, faster and batched; bench/README.md, "Measured
    here"); LOOKALIKE_DLIB_ENGINE=dlib loads it through DeepFace and computes with dlib itself, the
    reference the torch engine is tested against.
    """

    uses_tensorflow = False
    # on either engine only the output is used: no gradients into dlib's C++, and the torch port
    # mirrors it for speed, not for introspection
    explain_methods = ("occlusion",)
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
        if self.settings.dlib_engine != "torch":
            raise ModelError(f"LOOKALIKE_DLIB_ENGINE={self.settings.dlib_engine!r}: expected torch or dlib")
        from lookalike.ingest.dlib_resnet import DlibResNet, FormatError

        weights = provision_weights(self.settings, self.spec.weights_file)
        if weights is None:
            raise _missing(f"model {self.name}", self.spec.weights_file, self.settings)
        torch_threads()
        try:
            return DlibResNet(weights)
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

    def model_input(self, image: Decoded, face: Face) -> np.ndarray:
        return self._chip(image, face)  # 150x150x3 uint8 RGB

    def _predict_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._model([np.ascontiguousarray(c, dtype=np.uint8) for c in inputs])
