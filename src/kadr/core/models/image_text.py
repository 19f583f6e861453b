"""CLIP-family image-text models behind one small interface, whatever the backend.

Backends build an :class:`ImageTextModel` from two encoder callables; the
preprocessing (resize short side, centre crop, normalise) is the same code
for all of them, applied to photos already decoded at a reduced scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from kadr.core.decode import DecodedPhoto, resize_center_crop, to_normalised_array
from kadr.core.models.spec import ModelSpec

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageTextModel:
    spec: ModelSpec
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    encode_image_fn: Callable[[torch.Tensor], torch.Tensor]
    encode_text_fn: Callable[[list[str]], torch.Tensor]
    embed_dim: int
    modules: list[torch.nn.Module] = field(default_factory=list)
    logit_scale: float = 100.0

    @property
    def fingerprint(self) -> dict:
        """What determines the numbers: the spec and the preprocessing."""
        return {
            "model": str(self.spec),
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": "shortest-bicubic-centercrop",
        }

    def prepare(self, photo: DecodedPhoto) -> np.ndarray:
        """The model's input for one photo (runs in decode worker threads)."""
        return self.prepare_image(photo.image)

    def prepare_image(self, image) -> np.ndarray:
        return to_normalised_array(resize_center_crop(image, self.image_size), self.mean, self.std)

    @torch.inference_mode()
    def encode_images(self, batch: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """L2-normalised image embeddings, float32 [N, D]."""
        x = torch.from_numpy(np.stack(batch) if isinstance(batch, list) else batch)
        feats = self.encode_image_fn(x).float()
        return torch.nn.functional.normalize(feats, dim=-1).numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised text embeddings, float32 [N, D]."""
        out = []
        for i in range(0, len(texts), batch_size):
            feats = self.encode_text_fn(texts[i : i + batch_size]).float()
            out.append(torch.nn.functional.normalize(feats, dim=-1).numpy())
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.concatenate(out)
