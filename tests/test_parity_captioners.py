"""Captioners through kadr against each library's own ``generate`` on the same weights.

Small models of the real architecture families (BLIP, BLIP-2 with OPT, GIT)
at seeded random weights are saved with their processors (image processor
and tokenizer files) into a hub cache under the real hub ids; kadr loads
``hf-caption:ID`` offline and must give the same greedy captions as the
model class's own ``generate`` through ``AutoProcessor``. CoCa: kadr's
captions against open_clip's own ``generate`` (greedy: top_k with k=1).
"""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from kadr.core.models import load_model
from tests.hubcache import (
    parity_photos,
    put_in_hub_cache,
    save_pretrained_to_hub_cache,
)

WORDS = ("a photo of the an hotel room bed with white wall window lamp chair table "
         "bathroom kitchen view sofa desk and in on large small bright dark wooden").split()
# Large initial weights make a tiny random model's words depend on the photo.
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            initializer_range=0.5)
MAX_TOKENS = 30


def bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                 *WORDS]))
    return BertTokenizerFast(str(folder / "vocab.txt"))


def bpe_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (OPT's kind) whose merges spell out ``WORDS``."""
    from transformers import GPT2TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "<image>": 3}
    merges = []
    for ch in sorted(set("".join(WORDS)) | {"Ġ"}):
        vocab.setdefault(ch, len(vocab))
    for word in WORDS:
        piece = "Ġ"
        for ch in word:
            merges.append(f"{piece} {ch}")
            piece += ch
            vocab.setdefault(piece, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)))
    tokenizer = GPT2TokenizerFast(vocab=str(folder / "vocab.json"),
                                  merges=str(folder / "merges.txt"), bos_token="</s>",
                                  eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def blip(tmp: Path):
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    tokenizer = bert_tokenizer(tmp / "blip-tok")
    torch.manual_seed(0)
    config = BlipConfig(text_config=dict(**TINY, vocab_size=len(tokenizer), bos_token_id=2,
                                         sep_token_id=3, pad_token_id=0),
                        vision_config=dict(**TINY, image_size=64, patch_size=16),
                        projection_dim=32)
    processor = BlipProcessor(image_processor=BlipImageProcessor(
        size={"height": 64, "width": 64}), tokenizer=tokenizer)
    return BlipForConditionalGeneration(config).eval(), processor


def git(tmp: Path):
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tokenizer = bert_tokenizer(tmp / "git-tok")
    torch.manual_seed(0)
    config = GitConfig(vision_config=dict(**TINY, image_size=64, patch_size=16), **TINY,
                       vocab_size=len(tokenizer), bos_token_id=2, eos_token_id=3, pad_token_id=0)
    processor = GitProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}), tokenizer=tokenizer)
    return GitForCausalLM(config).eval(), processor


def blip2(tmp: Path):
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
    )

    tokenizer = bpe_tokenizer(tmp / "blip2-tok")
    torch.manual_seed(0)
    queries = 4
    text = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                     vocab_size=len(tokenizer), word_embed_proj_dim=32, bos_token_id=1,
                     eos_token_id=1, pad_token_id=0, max_position_embeddings=64, init_std=0.2)
    config = Blip2Config(vision_config=dict(**TINY, image_size=64, patch_size=16),
                         qformer_config=dict(**TINY, encoder_hidden_size=32,
                                             vocab_size=len(tokenizer)),
                         text_config=text.to_dict(), num_query_tokens=queries,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # no special token wins outright: the captions have words
        model.get_input_embeddings().weight[:4] = 0
    processor = Blip2Processor(image_processor=BlipImageProcessor(
        size={"height": 64, "width": 64}), tokenizer=tokenizer, num_query_tokens=queries)
    return model, processor


def reference_captions(model_class: str, source: str, cache: Path, images) -> list[str]:
    import transformers

    kwargs = {"cache_dir": str(cache), "local_files_only": True}
    model = getattr(transformers, model_class).from_pretrained(source, **kwargs).eval()
    processor = transformers.AutoProcessor.from_pretrained(source, **kwargs)
    with torch.no_grad():
        out = model.generate(**processor(images=images, return_tensors="pt"),
                             max_new_tokens=MAX_TOKENS, num_beams=1, do_sample=False)
    return [" ".join(t.split()) for t in processor.batch_decode(out, skip_special_tokens=True)]


def photos() -> list[Image.Image]:
    return [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in parity_photos()]


@pytest.mark.slow
@pytest.mark.parametrize("build,repo,model_class", [
    (blip, "Salesforce/blip-image-captioning-large", "BlipForConditionalGeneration"),
    (git, "microsoft/git-large-coco", "GitForCausalLM"),
    (blip2, "Salesforce/blip2-opt-2.7b", "Blip2ForConditionalGeneration"),
])
def test_hf_captioner_by_hub_id_matches_generate(build, repo, model_class, offline_hub,
                                                 tmp_path):
    save_pretrained_to_hub_cache(offline_hub, repo, *build(tmp_path))
    images = photos()
    want = reference_captions(model_class, repo, offline_hub, images)
    assert len(set(want)) > 1, "the test model's captions depend on the photo"
    assert any(want), "the test model says something"
    got = load_model(f"hf-caption:{repo}", kind="captioner").caption(images)
    assert got == want


@pytest.mark.slow
def test_hf_captioner_from_a_local_folder(offline_hub, tmp_path):
    folder = tmp_path / "my-blip"
    for obj in blip(tmp_path):
        obj.save_pretrained(folder)
    images = photos()
    want = reference_captions("BlipForConditionalGeneration", str(folder), offline_hub, images)
    got = load_model(f"hf-caption:{folder}", kind="captioner").caption(images)
    assert got == want and len(set(want)) > 1


def _open_clip_generate_enabled(monkeypatch):
    """open_clip's CoCa generate() refuses to run when one transformers import for beam
    search fails (gone in transformers 5); greedy decoding needs only what is there."""
    import transformers
    from open_clip import coca_model

    for name in ("LogitsProcessorList", "TopPLogitsWarper", "TopKLogitsWarper",
                 "RepetitionPenaltyLogitsProcessor", "MinLengthLogitsProcessor",
                 "MaxLengthCriteria", "StoppingCriteriaList"):
        monkeypatch.setattr(coca_model, name, getattr(transformers, name), raising=False)
    monkeypatch.setattr(coca_model, "GENERATION_TYPES",
                        {"top_k": transformers.TopKLogitsWarper,
                         "top_p": transformers.TopPLogitsWarper, "beam_search": "beam_search"})
    monkeypatch.setattr(coca_model, "_has_transformers", True)


@pytest.mark.slow
def test_coca_tag_matches_open_clip_generate(offline_hub, tmp_path, monkeypatch):
    import open_clip as oc
    from safetensors.torch import save_file

    arch, tag = "coca_ViT-B-32", "mscoco_finetuned_laion2b_s13b_b90k"
    torch.manual_seed(0)
    model = oc.create_model(arch, pretrained=None)
    with torch.no_grad():  # open_clip starts the decoder's projection at zero: all ties
        projection = model.text_decoder.text_projection
        projection.normal_(std=projection.shape[0] ** -0.5)
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    hub = oc.get_pretrained_cfg(arch, tag)["hf_hub"].rstrip("/")
    put_in_hub_cache(offline_hub, hub, {"open_clip_model.safetensors": weights})
    del model

    _open_clip_generate_enabled(monkeypatch)
    reference, _, transform = oc.create_model_and_transforms(arch, pretrained=tag,
                                                             cache_dir=str(offline_hub))
    reference.eval()
    images = photos()[::2]  # four shapes; a full-size CoCa decodes slowly on a CPU
    with torch.no_grad():
        tokens = reference.generate(torch.stack([transform(im) for im in images]),
                                    generation_type="top_k", top_k=1, seq_len=MAX_TOKENS)
    want = [oc.decode(t).replace("<start_of_text>", "").split("<end_of_text>")[0].strip(" .")
            for t in tokens]
    want = [" ".join(t.split()) for t in want]
    got = load_model(f"coca:{arch}@{tag}", kind="captioner").caption(images)
    assert got == want
    assert len(set(want)) > 1, "the test model's captions depend on the photo"


def florence2(tmp: Path):
    """A tiny Florence-2 (DaViT vision tower + BART) with its processor: a byte-level BPE
    tokenizer with Florence's ``<image>`` token, and the ``pure_text`` post-processing."""
    from transformers import (
        BartConfig,
        BartTokenizerFast,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
    )

    folder = tmp / "florence-tok"
    folder.mkdir(parents=True, exist_ok=True)
    words = [*WORDS, "what", "does", "image", "describe"]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<image>": 4}
    merges = []
    for ch in sorted(set("".join(words)) | {"Ġ", "?"}):
        vocab.setdefault(ch, len(vocab))
    for word in words:
        for piece in ("Ġ", ""):
            for ch in word:
                if piece:
                    merges.append(f"{piece} {ch}")
                piece += ch
                vocab.setdefault(piece, len(vocab))
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)))
    tokenizer = BartTokenizerFast(vocab=str(folder / "vocab.json"),
                                  merges=str(folder / "merges.txt"),
                                  extra_special_tokens={"image_token": "<image>"})
    vision = Florence2VisionConfig(depths=(1, 1, 1, 1), embed_dim=(16, 32, 32, 32),
                                   num_heads=(2, 2, 2, 2), num_groups=(2, 2, 2, 2), window_size=2,
                                   projection_dim=32, max_position_embeddings=8,
                                   initializer_range=0.5)
    text = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                      decoder_ffn_dim=64, max_position_embeddings=128, init_std=0.5,
                      bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(Florence2Config(
        vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)).eval()
    image_processor = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False)
    with torch.no_grad():  # the tokens one photo becomes: what the processor must insert
        tokens = model.get_image_features(torch.zeros(1, 3, 64, 64)).pooler_output.shape[1]
    image_processor.image_seq_length = tokens
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   post_processor_config={"pure_text": {}})
    return model, processor


@pytest.mark.slow
def test_florence2_caption_task_matches_its_processor(offline_hub, tmp_path):
    """`hf-caption:florence-community/Florence-2-base` (transformers' own Florence-2) gives
    what the model card's recipe gives: the <CAPTION> task prompt, greedy generate, and
    the processor's post_process_generation."""
    import transformers

    repo = "florence-community/Florence-2-base"
    save_pretrained_to_hub_cache(offline_hub, repo, *florence2(tmp_path))
    images = photos()
    kwargs = {"cache_dir": str(offline_hub), "local_files_only": True}
    model = transformers.Florence2ForConditionalGeneration.from_pretrained(repo, **kwargs).eval()
    processor = transformers.AutoProcessor.from_pretrained(repo, **kwargs)
    want = []
    for image in images:
        inputs = processor(text="<CAPTION>", images=image, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, num_beams=1,
                                 do_sample=False)
        text = processor.batch_decode(out, skip_special_tokens=False)[0]
        want.append(processor.post_process_generation(text, task="<CAPTION>",
                                                      image_size=image.size)["<CAPTION>"])
    assert len(set(want)) > 1 and all(want), want
    got = load_model(f"hf-caption:{repo}", kind="captioner").caption(images)
    assert got == want
