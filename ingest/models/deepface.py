"""DeepFace's recognition models (FaceNet, FaceNet-512): DeepFace's aligned crop and preprocessing,
batched."""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np

from lookalike.ingest.images import Decoded
from lookalike.ingest.models.base import Embedder, ModelError
from lookalike.ingest.models.detector import Face
from lookalike.ingest.models.weights import _deepface_env, _missing, _quiet, import_tensorflow, provision_weights


class DeepFaceEmbedder(Embedder):
    """A DeepFace recognition model fed DeepFace's own aligned crop and preprocessing (what
    DeepFace.represent does), batched over the faces of an image."""

    uses_tensorflow = True  # DeepFace's default engine for its Keras models
    # gradcam and layers read InceptionResNetV1's blocks (FaceNet, FaceNet-512); a convolutional
    # network has no attention
    explain_methods: Tuple[str, ...] = ("occlusion", "gradcam", "layers")

    def _load(self) -> Any:
        _deepface_env(self.settings)
        provision_weights(self.settings, self.spec.weights_file)
        if self.uses_tensorflow:
            from deepface.commons.backend_utils import TENSORFLOW, get_backend_engine

            if get_backend_engine() == TENSORFLOW:
                import_tensorflow()
        from deepface.modules import modeling

        cached = getattr(modeling, "cached_models", {}).get("facial_recognition", {}).get(self.spec.deepface_name)
        if cached is not None and not (self.settings.weights_dir / self.spec.weights_file).is_file():
            # DeepFace keeps one built model per process whatever folder its weights came from:
            # without the file in this settings' folder, the model asked for is not here.
            raise _missing(f"model {self.name}", self.spec.weights_file, self.settings)
        try:
            with _quiet():
                model = modeling.build_model(task="facial_recognition", model_name=self.spec.deepface_name)
        except (ValueError, OSError) as e:
            if not (self.settings.weights_dir / self.spec.weights_file).is_file():
                raise _missing(f"model {self.name}", self.spec.weights_file, self.settings) from None
            raise ModelError(f"model {self.name} failed to load: {str(e).splitlines()[0]}") from None
        return model

    def _crop(self, image: Decoded, face: Face) -> np.ndarray:
        from deepface.modules import preprocessing

        target = self._model.input_shape
        img = face.aligned().astype(np.float32) / 255.0
        img = preprocessing.resize_image(img=img, target_size=(target[1], target[0]))
        return preprocessing.normalize_input(img=img, normalization="base")

    def model_input(self, image: Decoded, face: Face) -> np.ndarray:
        return self._crop(image, face)[0]  # HxWx3 float32 in [0, 1]

    def _predict_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack(inputs).astype(np.float32)
        keras_model = getattr(self._model, "model", None)
        if hasattr(keras_model, "predict_on_batch"):
            # DeepFace's forward() runs a batch of one eagerly, far slower than the compiled
            # predict_on_batch it uses for larger batches (bench/README.md, Models): most photos
            # hold one face, so always take the compiled path.
            out = keras_model.predict_on_batch(batch)  # type: ignore[union-attr]  # loaded above
        else:
            out = self._model.forward(batch)
        return np.asarray(out, dtype=np.float32).reshape(len(inputs), -1)

    # -- explanation hooks (lookalike.query.explain): InceptionResNetV1's blocks, read here so
    # nothing outside reaches into the Keras model --------------------------------------------
    def _submodel(self, names: Tuple[str, ...]) -> Any:
        cache = self.__dict__.setdefault("_explain_submodels", {})
        if names not in cache:
            import tensorflow as tf

            self.load()
            km = self._model.model
            outs = []
            for n in names:
                # "last_conv": the last convolutional block, i.e. what InceptionResNetV1 average-pools
                outs.append(km.get_layer("AvgPool").input if n == "last_conv" else km.get_layer(n).output)
            cache[names] = tf.keras.Model(inputs=km.inputs, outputs=outs + [km.outputs[0]])
        return cache[names]

    def gradcam(self, q: np.ndarray, m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Grad-CAM of the query-match cosine on the last convolutional block; two maps, not normalised."""
        import tensorflow as tf

        sub = self._submodel(("last_conv",))
        x = tf.constant(np.stack([q, m]).astype(np.float32))
        with tf.GradientTape() as tape:
            conv, emb = sub(x, training=False)
            tape.watch(conv)
            emb = tf.math.l2_normalize(emb, axis=-1)
            sim = tf.reduce_sum(emb[0] * emb[1])
        grads = tape.gradient(sim, conv)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)).numpy()
        return cam[0], cam[1]

    def layer_scores(self, q: np.ndarray, m: np.ndarray) -> List[float]:
        """Query-match cosine of the mean-pooled output of each stage, then of the embedding."""
        import tensorflow as tf

        sub = self._submodel(FACENET_STAGES + ("last_conv",))
        outs = sub(tf.constant(np.stack([q, m]).astype(np.float32)), training=False)
        scores = []
        for o in outs[:-1]:
            v = tf.reduce_mean(o, axis=(1, 2)).numpy()
            scores.append(float(_unit(v[0]) @ _unit(v[1])))
        e = outs[-1].numpy()
        scores.append(float(_unit(e[0]) @ _unit(e[1])))
        return scores


FACENET_STAGES = ("Block35_5_Activation", "Mixed_6a", "Block17_10_Activation", "Mixed_7a", "Block8_5_Activation")


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / max(np.linalg.norm(v), 1e-12)
