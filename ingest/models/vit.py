"""General vision transformers (CLIP, DINOv2) through transformers and torch, on an eye-levelled face
square with a margin."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence, Tuple

import numpy as np

from lookalike.ingest.images import Decoded
from lookalike.ingest.models.base import Embedder, ModelError, torch_threads
from lookalike.ingest.models.detector import Face
from lookalike.ingest.models.weights import WeightsMissing
from lookalike.ingest.settings import Settings
from lookalike.schemas import ModelSpec
from lookalike.schemas.errors import require

# What the general vision models see, decided once for all of them: the face square centred on
# the detector's box, rotated so the eyes are level, with a margin of 20 % of the box side on
# every side (hair, chin and ears are part of "looking alike" for a general model), 224 px.
CROP_SIZE = 224
CROP_MARGIN = 0.2


def face_square(image: Decoded, face: Face, size: int = CROP_SIZE, margin: float = CROP_MARGIN) -> np.ndarray:
    """Eye-levelled square RGB crop of a face with `margin` of the box side around it."""
    import cv2

    x, y, w, h = face.dbox
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(w, h) * (1 + 2 * margin)
    angle = 0.0
    if face.left_eye is not None and face.right_eye is not None:
        # DeepFace's left eye is the person's left, i.e. on the image's right.
        (lx, ly), (rx, ry) = face.left_eye, face.right_eye
        if lx != rx or ly != ry:
            angle = float(np.degrees(np.arctan2(ly - ry, lx - rx)))
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    m[0, 2] += size / 2.0 - cx
    m[1, 2] += size / 2.0 - cy
    crop = cv2.warpAffine(image.bgr, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    import socket

    host = endpoint.split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class TransformerEmbedder(Embedder):
    """A vision transformer through transformers (ClipEmbedder, Dinov2Embedder): `from_pretrained`
    on a hub id or a local directory, the model's own image processor, batched forward under
    `torch.inference_mode`.

    Without a layer a subclass says what the embedding is (`_output`). With a layer
    (`<model>_l<N>`): the CLS token of block N's output through the model's final layer norm (no
    projection), so early blocks (texture) and late ones (identity) are comparable.
    """

    # attention and layers read the blocks' attentions and hidden states, gradcam the patch tokens
    explain_methods = ("occlusion", "gradcam", "attention", "layers")
    # config.model_type values this class loads
    model_types: Tuple[str, ...] = ()

    def __init__(self, spec: ModelSpec, settings: Settings):
        super().__init__(spec, settings)
        self.source = settings.model_source(spec.base)
        self._config: Any = None
        self._processor: Any = None
        self._final_norm: Any = None

    def _from_pretrained(self, loader, **kw):
        """Local files first; the hub only where it answers, so an offline machine gets one line
        at once instead of minutes of retries."""
        try:
            return loader(self.source, local_files_only=True, **kw)
        except (OSError, ValueError):
            if Path(self.source).expanduser().exists():
                raise ModelError(f"model {self.name}: {self.source} holds no loadable {self.spec.base} model "
                                 f"(expected config.json, weights and preprocessor_config.json)") from None
            if not _hub_reachable(self.settings.hf_endpoint):
                raise WeightsMissing(
                    f"model {self.name}: '{self.source}' is not in the local Hugging Face cache and the hub "
                    f"cannot be reached; download it on a connected machine (huggingface-cli download "
                    f"{self.source} --local-dir DIR) and pass --{self.spec.base}-model DIR "
                    f"(or set LOOKALIKE_{self.spec.base.upper()}_MODEL)") from None
            return loader(self.source, **kw)

    def config(self) -> Any:
        if self._config is None:
            transformers = require("transformers", "vit", f"model {self.name}")
            from transformers import AutoConfig

            transformers.logging.set_verbosity_error()
            cfg = self._from_pretrained(AutoConfig.from_pretrained)
            if getattr(cfg, "model_type", None) not in self.model_types:
                raise ModelError(f"model {self.name}: {self.source} is a {getattr(cfg, 'model_type', '?')} "
                                 f"model, not {self.spec.base}")
            self._config = cfg
        return self._config

    def vision_config(self) -> Any:
        cfg = self.config()
        return getattr(cfg, "vision_config", cfg)

    @property
    def dim(self) -> int:
        if self.spec.layer is not None:
            return int(self.vision_config().hidden_size)
        return self._output_dim(self.config())

    def _output_dim(self, cfg: Any) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def _output(self, out: Any) -> Any:  # pragma: no cover - interface
        """The embedding (a torch tensor, one row per crop) in the network's output."""
        raise NotImplementedError

    def _begin_load(self) -> Any:
        transformers = require("transformers", "vit", f"model {self.name}")
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # one per worker would cut into ours
        torch_threads()
        return self.config()

    def _end_load(self, model: Any, final_norm: Any) -> Any:
        from transformers import AutoImageProcessor

        n_blocks = self.vision_config().num_hidden_layers
        if self.spec.layer is not None and not 1 <= self.spec.layer <= n_blocks:
            raise ModelError(f"model {self.name}: --layer must be 1..{n_blocks} for {self.source}")
        self._final_norm = final_norm
        self._processor = self._from_pretrained(AutoImageProcessor.from_pretrained)
        model.eval()
        return model

    def model_input(self, image: Decoded, face: Face) -> np.ndarray:
        return face_square(image, face)  # 224x224x3 uint8 RGB

    def crops(self, image: Decoded, faces: Sequence[Face]) -> List[np.ndarray]:
        return [self.model_input(image, f) for f in faces]

    def _predict_inputs(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self.forward(inputs)

    def pooled(self, out: Any) -> Any:
        """The embedding this model's collection holds, from a forward pass's output (torch)."""
        if self.spec.layer is not None:
            return self._final_norm(out.hidden_states[self.spec.layer][:, 0])
        return self._output(out)

    def forward(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings (not yet normalised) of RGB face crops, one forward pass for the batch."""
        import torch

        pixels = self._processor(images=list(crops), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self._model(pixel_values=pixels, output_hidden_states=self.spec.layer is not None)
            vec = self.pooled(out)
        return vec.float().cpu().numpy()


    # -- explanation hooks (lookalike.query.explain): what only the network can say about a match,
    # its gradients, attentions and blocks, computed here so nothing outside reaches into it --------
    def _pixels(self, crops: Sequence[np.ndarray]) -> Any:
        return self._processor(images=list(crops), return_tensors="pt")["pixel_values"]

    def _grid(self, pixels: Any) -> Tuple[int, int]:
        cfg = self.config()
        patch = int(getattr(cfg, "vision_config", cfg).patch_size)
        return pixels.shape[-2] // patch, pixels.shape[-1] // patch

    def gradcam(self, q: np.ndarray, m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Grad-CAM of the query-match cosine similarity on the last (embedding) block's patch tokens;
        two (gh, gw) maps, not normalised."""
        import torch

        self.load()
        model = self._model
        pixels = self._pixels([q, m])
        gh, gw = self._grid(pixels)
        with torch.enable_grad():
            out = model(pixel_values=pixels, output_hidden_states=True)
            # The patch tokens entering the block the embedding is read from (the last one unless a
            # layer was chosen): at that block's output only the CLS token reaches the embedding.
            last = self.spec.layer or (len(out.hidden_states) - 1)
            hidden = out.hidden_states[last - 1]
            hidden.retain_grad()
            emb = torch.nn.functional.normalize(self.pooled(out).float(), dim=-1)
            sim = (emb[0] * emb[1]).sum()
            model.zero_grad(set_to_none=True)
            sim.backward()
        tokens = hidden[:, -gh * gw:].detach()  # patch tokens (CLS and any registers first)
        grads = hidden.grad[:, -gh * gw:]
        weights = grads.mean(dim=1, keepdim=True)  # per channel
        cam = torch.relu((weights * tokens).sum(-1)).reshape(2, gh, gw).numpy()
        return cam[0], cam[1]

    def _eager(self) -> Any:
        model = self._model
        if getattr(model.config, "_attn_implementation", "eager") != "eager":
            model.set_attn_implementation("eager")  # attentions are only returned by eager attention
        return model

    def attention(self, crops: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """(rollout (n, gh, gw), last layer CLS attention per head (n, heads, gh, gw))."""
        import torch

        self.load()
        model = self._eager()
        pixels = self._pixels(crops)
        gh, gw = self._grid(pixels)
        with torch.inference_mode():
            out = model(pixel_values=pixels, output_attentions=True)
        atts = [a.float() for a in out.attentions]  # per layer (n, heads, T, T)
        n, T = atts[0].shape[0], atts[0].shape[-1]
        eye = torch.eye(T).expand(n, T, T)
        roll = eye.clone()
        for a in atts:
            a = 0.5 * a.mean(1) + 0.5 * eye
            a = a / a.sum(-1, keepdim=True)
            roll = a @ roll
        rollout = roll[:, 0, -gh * gw:].reshape(n, gh, gw).numpy()
        heads = atts[-1][:, :, 0, -gh * gw:].reshape(n, atts[-1].shape[1], gh, gw).numpy()
        return rollout, heads

    def layer_scores(self, q: np.ndarray, m: np.ndarray) -> List[float]:
        """Query-match cosine at each hidden state (0 = patch embeddings), CLS through the final norm."""
        import torch

        self.load()
        pixels = self._pixels([q, m])
        with torch.inference_mode():
            out = self._model(pixel_values=pixels, output_hidden_states=True)
            scores = []
            for h in out.hidden_states:
                v = torch.nn.functional.normalize(self._final_norm(h[:, 0]).float(), dim=-1)
                scores.append(float((v[0] * v[1]).sum()))
        return scores


class ClipEmbedder(TransformerEmbedder):
    """CLIP's vision tower: the projected image embedding (`image_embeds`, 512-d for ViT-B/32)."""

    model_types = ("clip", "clip_vision_model")

    def _output_dim(self, cfg: Any) -> int:
        return int(cfg.projection_dim)

    def _load(self) -> Any:
        from transformers import CLIPVisionModelWithProjection

        cfg = self._begin_load()
        vision = self.vision_config()
        # a full CLIP config keeps the projection size outside its vision part
        vision.projection_dim = getattr(cfg, "projection_dim", vision.projection_dim)
        model = self._from_pretrained(CLIPVisionModelWithProjection.from_pretrained, config=vision)
        return self._end_load(model, model.vision_model.post_layernorm)

    def _output(self, out: Any) -> Any:
        return out.image_embeds


class Dinov2Embedder(TransformerEmbedder):
    """DINOv2: the CLS token after the final layer norm (`pooler_output`, 384-d for ViT-S/14)."""

    model_types = ("dinov2",)

    def _output_dim(self, cfg: Any) -> int:
        return int(cfg.hidden_size)

    def _load(self) -> Any:
        from transformers import AutoModel

        self._begin_load()
        model = self._from_pretrained(AutoModel.from_pretrained)
        return self._end_load(model, model.layernorm)

    def _output(self, out: Any) -> Any:
        return out.pooler_output

