"""transformers image-text models through kadr against transformers' own reference path.

A CLIP of the real architecture family at seeded random weights is saved with
its processor (image processor and tokenizer files) into a hub cache under the
real hub id; kadr loads ``hf:ID`` offline, transformers loads the same id with
AutoModel and AutoProcessor; embeddings of real photos and texts must agree.
"""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kadr.core.models import load_model
from kadr.core.store import read_shards
from kadr.embed import embed_photos
from tests.hubcache import parity_photos, save_pretrained_to_hub_cache

TEXTS = ["a photo of a bedroom", "a camera trap photo of an elephant at night",
         " ".join(["a very long description of a hotel room with many words"] * 12)]


def small_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, image_size=224, patch_size=32),
        projection_dim=64)
    return CLIPModel(config).eval()


def clip_processor():
    from transformers import CLIPImageProcessor, CLIPProcessor

    from kadr.core.models.tokenizers import offline_clip_tokenizer

    return CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
        tokenizer=offline_clip_tokenizer())


def small_siglip(tmp_path):
    """A SigLIP at random weights with a sentencepiece tokenizer trained here on a few words."""
    import sentencepiece as spm
    from transformers import (
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
        SiglipTokenizer,
    )

    words = " ".join(TEXTS).split() + "camera trap night day forest deer fox boar".split()
    prefix = tmp_path / "spm"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(words[i:i + 6]) for i in range(len(words))] * 20),
        model_prefix=str(prefix), vocab_size=40, model_type="unigram", pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        minloglevel=2)
    tokenizer = SiglipTokenizer(vocab_file=f"{prefix}.model", model_max_length=64)
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, vocab_size=40, max_position_embeddings=64),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, image_size=224, patch_size=16))
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(
        size={"height": 224, "width": 224}), tokenizer=tokenizer)
    return SiglipModel(config).eval(), processor


def reference_embeddings(repo_id: str, cache, photos, texts, padding=True):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(repo_id, cache_dir=str(cache), local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(repo_id, cache_dir=str(cache), local_files_only=True)
    images = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in photos]
    with torch.no_grad():
        img = model.get_image_features(**processor(images=images, return_tensors="pt"))
        txt = model.get_text_features(**processor(text=texts, padding=padding, truncation=True,
                                                  return_tensors="pt"))
    feats = [x if isinstance(x, torch.Tensor) else x.pooler_output for x in (img, txt)]
    return [torch.nn.functional.normalize(f, dim=-1).numpy() for f in feats]


def kadr_embeddings(spec: str, photos, texts, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, p in enumerate(photos):
        shutil.copyfile(p, folder / f"{i:02d}{p.suffix}")
    summary = embed_photos(str(folder), str(tmp_path / "emb"), spec, progress=False).summary
    assert summary.ok == len(photos)
    rows = read_shards(tmp_path / "emb").to_pandas().sort_values("key")
    return np.stack(rows["embedding"].to_list()), load_model(spec).encode_texts(texts)


@pytest.mark.slow
def test_hf_clip_by_hub_id_matches_transformers(offline_hub, tmp_path):
    repo = "openai/clip-vit-base-patch32"
    photos = parity_photos()
    save_pretrained_to_hub_cache(offline_hub, repo, small_clip(), clip_processor())
    want_img, want_txt = reference_embeddings(repo, offline_hub, photos, TEXTS)
    got_img, got_txt = kadr_embeddings(f"hf:{repo}", photos, TEXTS, tmp_path)
    cos = (got_img * want_img).sum(1)
    assert cos.min() >= 0.999, cos.round(4)
    assert ((got_txt * want_txt).sum(1) >= 0.9999).all()


@pytest.mark.slow
def test_hf_clip_from_a_local_folder_matches_the_hub_id(offline_hub, tmp_path):
    folder = tmp_path / "my-clip"
    small_clip().save_pretrained(folder)
    clip_processor().save_pretrained(folder)
    save_pretrained_to_hub_cache(offline_hub, "openai/clip-vit-base-patch32", small_clip(),
                                 clip_processor())
    texts = TEXTS[:2]
    a = load_model(f"hf:{folder}").encode_texts(texts)
    b = load_model("hf:openai/clip-vit-base-patch32").encode_texts(texts)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_hf_siglip_by_hub_id_matches_transformers(offline_hub, tmp_path):
    repo = "google/siglip-base-patch16-224"
    photos = parity_photos()
    save_pretrained_to_hub_cache(offline_hub, repo, *small_siglip(tmp_path))
    # SigLIP was trained on text padded to its full length: transformers' docs say to pad so.
    want_img, want_txt = reference_embeddings(repo, offline_hub, photos, TEXTS,
                                              padding="max_length")
    got_img, got_txt = kadr_embeddings(f"hf:{repo}", photos, TEXTS, tmp_path)
    cos = (got_img * want_img).sum(1)
    assert cos.min() >= 0.999, cos.round(4)
    assert ((got_txt * want_txt).sum(1) >= 0.9999).all()
    model = load_model(f"hf:{repo}")
    assert model.context_length == 64
    fp = model.fingerprint["preprocess"]
    assert (fp["resize_mode"], fp["mean"]) == ("squash", [0.5, 0.5, 0.5])
