"""``hf:MODEL_ID_OR_FOLDER[@random|@FOLDER]``: transformers CLIP and SigLIP models."""

from __future__ import annotations

from kadr.core.lazy import torch
from kadr.core.models.device import module_device, place
from kadr.core.models.factory import KnownModel, register_backend
from kadr.core.models.image_text import ImageTextModel
from kadr.core.models.preprocess import ImagePreprocess, from_hf_image_processor
from kadr.core.models.spec import ModelSpec, SpecError
from kadr.core.models.weights import (
    hf_cache_dir,
    hf_source,
    hub_known,
)

# Architectures kadr can build at random weights without the hub. The text
# tokenizer for @random is open_clip's copy of OpenAI's CLIP BPE (same
# vocabulary and special tokens as the hub's CLIP tokenizers).
RANDOM_CONFIGS: dict[str, dict] = {
    "openai/clip-vit-base-patch32": dict(
        projection_dim=512,
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=8),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, image_size=224, patch_size=32),
    ),
    "openai/clip-vit-large-patch14": dict(
        projection_dim=768,
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, image_size=224, patch_size=14),
    ),
    "kadr/tiny-clip": dict(
        projection_dim=64,
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2),
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, image_size=64, patch_size=16),
    ),
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class HFClipBackend:
    name = "hf"
    kind = "image-text"
    family: str | None = "transformer"
    help = "transformers CLIP/SigLIP: a hub id or local folder; @random for known configs"

    def known(self) -> list[KnownModel]:
        out = []
        for name in RANDOM_CONFIGS:
            if not name.startswith("kadr/"):
                out.append(hub_known("hf", self.kind, name, WEIGHT_FILES))
            out.append(KnownModel(f"hf:{name}@random", self.kind, "seeded random weights",
                                  "built from config", True))
        out.append(KnownModel("hf:ID_OR_FOLDER", self.kind, "any CLIP or SigLIP checkpoint",
                              str(hf_cache_dir()), False))
        return out

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> ImageTextModel:
        if spec.is_random:
            return self._random(spec)
        from transformers import AutoModel, AutoProcessor

        source, offline = hf_source("hf", spec, WEIGHT_FILES)
        # transformers loads .bin checkpoints with torch.load(weights_only=True) itself.
        kwargs = {"local_files_only": offline, "cache_dir": str(hf_cache_dir())}
        model = AutoModel.from_pretrained(source, **kwargs).eval()
        processor = AutoProcessor.from_pretrained(source, **kwargs)
        tok = processor.tokenizer
        # SigLIP was trained on text padded to its full length; CLIP masks its padding.
        is_siglip = "siglip" in type(model).__name__.lower()
        context = int(getattr(model.config.text_config, "max_position_embeddings", 0)
                      or tok.model_max_length)

        def encode_text(texts: list[str]) -> torch.Tensor:
            enc = tok(texts, padding="max_length" if is_siglip else True, truncation=True,
                      max_length=context, return_tensors="pt").to(module_device(model))
            return model.get_text_features(**enc)

        return self._wrap(spec, model, from_hf_image_processor(processor.image_processor),
                          encode_text, context, lambda text: len(tok(text)["input_ids"]))

    def _random(self, spec: ModelSpec) -> ImageTextModel:
        from transformers import CLIPConfig, CLIPModel

        cfg = RANDOM_CONFIGS.get(spec.name)
        if cfg is None:
            raise SpecError(
                f"no built-in config for hf:{spec.name}@random; known: {', '.join(RANDOM_CONFIGS)}"
            )
        torch.manual_seed(spec.seed())
        config = CLIPConfig(text_config=cfg["text"], vision_config=cfg["vision"],
                            projection_dim=cfg["projection_dim"])
        model = CLIPModel(config).eval()
        import open_clip

        tokenizer = open_clip.get_tokenizer("ViT-B-32")

        def encode_text(texts: list[str]) -> torch.Tensor:
            ids = tokenizer(texts).to(module_device(model))
            return model.get_text_features(input_ids=ids, attention_mask=(ids != 0).long())

        size = cfg["vision"]["image_size"]
        return self._wrap(spec, model, ImagePreprocess(size=(size, size)), encode_text, 77)

    @staticmethod
    def _wrap(spec, model, preprocess: ImagePreprocess, encode_text, context: int,
              count_tokens=None) -> ImageTextModel:
        place(model)  # in place; the encoders find it through module_device

        def encode_image(x: torch.Tensor) -> torch.Tensor:
            return model.get_image_features(pixel_values=x)

        def features(out):
            # transformers 5 returns a model output object from get_*_features.
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        dim = model.config.projection_dim if hasattr(model.config, "projection_dim") else None
        return ImageTextModel(
            spec=spec,
            preprocess=preprocess,
            encode_image_fn=lambda x: features(encode_image(x)),
            encode_text_fn=lambda t: features(encode_text(t)),
            embed_dim=int(dim or model.config.text_config.hidden_size),
            modules=[model],
            logit_scale=float(model.logit_scale.detach().exp()),
            context_length=context,
            token_count_fn=count_tokens,
        )


register_backend(HFClipBackend())
