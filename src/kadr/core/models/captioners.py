"""Caption models: ``coca:ARCH[@TAG|@PATH|@random]`` (open_clip) and ``hf-caption:ID[@random]``.

Both give a :class:`Captioner`: a batch of PIL images in, one sentence each
out, in a single generate call per batch. transformers covers BLIP, BLIP-2,
GIT and Florence-2-style models (Florence-2 ships its own code: it loads only
with ``--trust-checkpoint``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from kadr.core.lazy import inference_mode, torch
from kadr.core.models.device import inputs_for, module_device, module_dtype, place
from kadr.core.models.factory import KnownModel, register_backend
from kadr.core.models.spec import ModelSpec, SpecError
from kadr.core.models.weights import (
    hf_cache_dir,
    hf_source,
    hub_known,
)


@dataclass
class Captioner:
    spec: ModelSpec
    image_size: int
    caption_fn: Callable[[list[Image.Image]], list[str]]
    modules: list = field(default_factory=list)
    max_tokens: int = 30

    @inference_mode
    def caption(self, images: list[Image.Image]) -> list[str]:
        if not images:
            return []
        return [" ".join(c.split()) for c in self.caption_fn(images)]


class CocaBackend:
    name = "coca"
    kind = "captioner"
    family: str | None = "transformer"
    help = "open_clip CoCa captioners (coca_ViT-B-32, coca_ViT-L-14, kadr-tiny-coca)"

    def known(self) -> list[KnownModel]:
        return [
            KnownModel("coca:coca_ViT-L-14@mscoco_finetuned_laion2b_s13b_b90k", self.kind,
                       "CoCa ViT-L/14 fine-tuned for captions", str(hf_cache_dir()), False),
            KnownModel("coca:kadr-tiny-coca@random", self.kind, "tiny CoCa for tests",
                       "built from config", True),
        ]

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> Captioner:
        import open_clip

        from kadr.core.models.image_text import images_to_tensor
        from kadr.core.models.openclip_backend import OpenClipBackend

        model, _, preprocess, _ = OpenClipBackend().build(
            ModelSpec("open_clip", spec.name, spec.weights), trust_checkpoint)
        if not hasattr(model, "text_decoder"):
            raise SpecError(f"{spec.name} is not a CoCa model (no text decoder)")
        tokenizer = open_clip.get_tokenizer(spec.name)
        size = preprocess.side
        sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
        context = model.context_length

        def prepare(images: list[Image.Image]) -> torch.Tensor:
            crops = [preprocess.apply(im) for im in images]
            x = images_to_tensor(crops, preprocess.mean, preprocess.std, module_device(model))
            return x.to(module_dtype(model))

        def caption(images: list[Image.Image], max_tokens: int = 30) -> list[str]:
            # open_clip's generate(generation_type="top_k", top_k=1) step by step: its
            # own generate() cannot run with transformers >= 5 (an import it needs for
            # beam search is gone), so its greedy rules are kept here: ``max_tokens`` is
            # its seq_len (the start token included), no end before MIN_CAPTION_TOKENS,
            # an end forced at the last position, finished rows padded.
            x = prepare(images)
            latent, embs = model._encode_image(x)
            seq = torch.full((len(images), 1), sot, dtype=torch.long, device=x.device)
            done = torch.zeros(len(images), dtype=torch.bool, device=x.device)
            while not done.all():
                logits = model(x, seq[:, -context:], image_latent=latent, image_embs=embs,
                               output_labels=False)["logits"][:, -1]
                if seq.shape[1] < MIN_CAPTION_TOKENS:
                    logits[:, eot] = -torch.inf
                nxt = logits.argmax(-1)
                if seq.shape[1] + 1 >= max_tokens:
                    nxt[:] = eot
                nxt[done] = model.pad_id
                seq = torch.cat([seq, nxt[:, None]], 1)
                done |= nxt == eot
            texts = [open_clip.decode(s) for s in seq.cpu()]
            return [t.replace("<start_of_text>", "").split("<end_of_text>")[0].strip(" .")
                    for t in texts]

        return Captioner(spec, size, caption, [model])


MIN_CAPTION_TOKENS = 5  # open_clip generate's min_seq_len: no end token before this length
RANDOM_CAPTIONERS = ("kadr/tiny-blip", "Salesforce/blip-image-captioning-base")
TINY_WORDS = ("a photo of the an hotel room bed with white wall window lamp chair table "
              "bathroom kitchen view sofa desk and in on large small bright dark wooden").split()


def _random_blip(spec: ModelSpec) -> tuple:
    """BLIP at seeded random weights: ``kadr/tiny-blip`` for tests, or BLIP-base's full
    architecture (for benchmarks: the real compute cost). The WordPiece vocabulary is
    written here, since hub tokenizers cannot be fetched offline."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    tiny = spec.name == "kadr/tiny-blip"
    words = TINY_WORDS if tiny else TINY_WORDS + [f"w{i}" for i in range(30524 - 5 - len(TINY_WORDS))]
    # The tokenizer reads its vocabulary file once, when it is built: the folder can go.
    with tempfile.TemporaryDirectory(prefix="kadr-blip-vocab-") as folder:
        vocab = os.path.join(folder, "vocab.txt")
        with open(vocab, "w") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
        tokenizer = BertTokenizerFast(vocab)
    tokenizer.bos_token = "[CLS]"
    torch.manual_seed(spec.seed())
    ids = dict(vocab_size=5 + len(words), bos_token_id=2, sep_token_id=3, pad_token_id=0)
    if tiny:
        config = BlipConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, **ids),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, image_size=64, patch_size=16),
            projection_dim=32)
    else:  # BLIP-base: ViT-B/16 at 384 px, a 12-layer BERT decoder
        config = BlipConfig(text_config=ids, vision_config=dict(image_size=384))
    size = config.vision_config.image_size
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": size, "width": size}),
        tokenizer=tokenizer)
    return model, processor, size


class HFCaptionBackend:
    name = "hf-caption"
    kind = "captioner"
    family: str | None = "transformer"
    help = "transformers captioners: BLIP, BLIP-2, GIT, Florence-2 (hub id or folder); @random"

    def known(self) -> list[KnownModel]:
        out = []
        for name in ("Salesforce/blip-image-captioning-large", "Salesforce/blip2-opt-2.7b",
                     "microsoft/git-large-coco", "florence-community/Florence-2-base",
                     "microsoft/Florence-2-base"):
            out.append(hub_known("hf-caption", self.kind, name, ("model.safetensors",
                                                                  "pytorch_model.bin")))
        out.append(KnownModel("hf-caption:kadr/tiny-blip@random", self.kind, "tiny BLIP for tests",
                              "built from config", True))
        out.append(KnownModel("hf-caption:Salesforce/blip-image-captioning-base@random", self.kind,
                              "BLIP-base architecture at random weights (benchmarks)",
                              "built from config", True))
        return out

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> Captioner:
        prompt = None
        if spec.is_random:
            if spec.name not in RANDOM_CAPTIONERS:
                raise SpecError("hf-caption: @random is available for "
                                + ", ".join(RANDOM_CAPTIONERS))
            model, processor, size = _random_blip(spec)
        else:
            model, processor, size = self._pretrained(spec, trust_checkpoint)
            if "florence" in spec.name.lower():
                prompt = "<CAPTION>"
        place(model)

        def caption(images: list[Image.Image], max_tokens: int = 30) -> list[str]:
            kwargs = {"text": [prompt] * len(images)} if prompt else {}
            inputs = inputs_for(model, processor(images=images, return_tensors="pt", **kwargs))
            out = model.generate(**inputs, max_new_tokens=max_tokens, num_beams=1,
                                 do_sample=False)
            texts = processor.batch_decode(out, skip_special_tokens=True)
            return [t.replace(prompt, "") if prompt else t for t in texts]

        return Captioner(spec, size, caption, [model])

    def _pretrained(self, spec: ModelSpec, trust: bool):
        import transformers

        source, offline = hf_source("hf-caption", spec, ("model.safetensors", "pytorch_model.bin",
                                                         "config.json"))
        kwargs = {"local_files_only": offline, "trust_remote_code": trust,
                  "cache_dir": str(hf_cache_dir())}
        processor = transformers.AutoProcessor.from_pretrained(source, **kwargs)
        model = None
        for loader in ("AutoModelForImageTextToText", "AutoModelForVision2Seq",
                       "AutoModelForCausalLM"):
            cls = getattr(transformers, loader, None)
            if cls is None:
                continue
            try:
                model = cls.from_pretrained(source, **kwargs).eval()
                break
            except (ValueError, KeyError):
                continue
        if model is None:
            raise SpecError(f"{source} is not a captioning model transformers can load"
                            + ("" if trust else " (if it ships its own code, pass "
                               "--trust-checkpoint)"))
        ip = processor.image_processor
        size = ip.size.get("height") or ip.size.get("shortest_edge") or 384
        return model, processor, int(size)


register_backend(CocaBackend())
register_backend(HFCaptionBackend())
