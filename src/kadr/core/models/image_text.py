"""CLIP-family image-text models behind one small interface, whatever the backend.

Backends build an :class:`ImageTextModel` from two encoder callables and the
model's own :class:`ImagePreprocess` (read from its configuration), applied
to photos already decoded at a reduced scale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kadr.core.decode import DecodedPhoto
from kadr.core.lazy import inference_mode, torch
from kadr.core.models.device import module_device, module_dtype
from kadr.core.models.preprocess import OPENAI_MEAN, OPENAI_STD, ImagePreprocess
from kadr.core.models.spec import ModelSpec

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "ImagePreprocess", "ImageTextModel", "images_to_tensor"]


def images_to_tensor(
    batch: np.ndarray | list,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device | None = None,
) -> torch.Tensor:
    """A model's input batch on ``device``: float32 [N, 3, H, W], normalised with ``mean`` and ``std``.

    ``batch`` holds uint8 RGB crops ([H, W, 3] arrays or PIL images, as
    :meth:`ImageTextModel.prepare_image` makes them). Normalising here, once
    per batch, keeps the photos in flight as uint8 (a quarter of the float
    size; per-photo float arrays made memory creep in long runs), and on a GPU
    the uint8 batch travels at a quarter of the size too.
    A float [N, 3, H, W] batch is taken as already normalised and passed through.
    """
    if isinstance(batch, list):
        batch = np.stack([np.asarray(x) for x in batch])
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device or "cpu")
    if x.dtype != torch.uint8:
        return x.float()
    scale = (torch.tensor(std, dtype=torch.float32, device=x.device) * 255.0).view(1, 3, 1, 1)
    shift = (torch.tensor(mean, dtype=torch.float32, device=x.device) * 255.0).view(1, 3, 1, 1)
    # Channels first while still uint8, then normalised in place: the same floats as
    # (x - shift) / scale on [N, H, W, 3], at a fifth of the time (it runs beside the model
    # on the main thread, ~60 ms a batch of 32 the other way: a quarter of a bf16 ViT-B).
    x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return x.sub_(shift).div_(scale)


@functools.lru_cache(maxsize=1)
def _clip_bpe():
    """OpenAI's CLIP BPE (open_clip's copy), built once: the token count for models without their own."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


@dataclass
class ImageTextModel:
    spec: ModelSpec
    preprocess: ImagePreprocess
    encode_image_fn: Callable[[torch.Tensor], torch.Tensor]
    encode_text_fn: Callable[[list[str]], torch.Tensor]
    embed_dim: int
    modules: list[torch.nn.Module] = field(default_factory=list)
    logit_scale: float = 100.0
    context_length: int = 77  # text tokens the model reads (its tokenizer truncates there)
    notes: tuple[str, ...] = ()  # how the weights were loaded, for `kadr models` and run.json
    token_count_fn: Callable[[str], int] | None = None  # the model's own tokenizer, specials included

    def count_tokens(self, text: str) -> int:
        """Tokens the model's tokenizer makes of ``text`` (what ``context_length`` limits)."""
        if self.token_count_fn is not None:
            return self.token_count_fn(text)
        return len(_clip_bpe().encode(text)) + 2

    @property
    def image_size(self) -> int:
        """The larger side of the model's input (what decoding must keep)."""
        return self.preprocess.side

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocess.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocess.std

    @property
    def device(self) -> torch.device:
        return module_device(self.modules[0]) if self.modules else torch.device("cpu")

    @property
    def fingerprint(self) -> dict:
        """What determines the numbers: the spec and the preprocessing."""
        return {"model": str(self.spec), "preprocess": self.preprocess.as_dict(),
                "context_length": self.context_length}

    def prepare(self, photo: DecodedPhoto) -> np.ndarray:
        """The model's input for one photo (runs in decode worker threads)."""
        return self.prepare_image(photo.image)

    def prepare_image(self, image) -> np.ndarray:
        """The model's input geometry, uint8 [H, W, 3]; normalised batch-wise later."""
        return self.preprocess.apply(image)

    @inference_mode
    def encode_images(self, batch: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """L2-normalised image embeddings, float32 [N, D], of a batch as :func:`images_to_tensor` takes."""
        x = images_to_tensor(batch, self.mean, self.std, self.device)
        if self.modules:
            x = x.to(module_dtype(self.modules[0]))  # half-precision weights take half inputs
        feats = self.encode_image_fn(x).float()
        return torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()

    @inference_mode
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised text embeddings, float32 [N, D]."""
        out = []
        for i in range(0, len(texts), batch_size):
            feats = self.encode_text_fn(texts[i : i + batch_size]).float()
            out.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.concatenate(out)
