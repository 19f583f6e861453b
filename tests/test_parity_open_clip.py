"""open_clip models through kadr against open_clip's own reference path, on the same weights.

Seeded random weights of the real architecture are saved into a hub cache
under the tag's real hub id; kadr loads ``open_clip:ARCH@TAG`` offline, open_clip
loads the same tag with ``create_model_and_transforms``; the embeddings of
real photos and texts must agree.
"""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kadr.core.models import load_model
from kadr.core.store import read_shards
from kadr.embed import embed_photos
from tests.hubcache import parity_photos, put_in_hub_cache

TEXTS = ["a photo of a bedroom", "a camera trap photo of an elephant at night",
         " ".join(["a very long description of a hotel room with many words"] * 12)]


def cached_random_tag(cache, oc, reference_arch: str, arch: str, tag: str, tmp_path) -> None:
    """Random weights of ``reference_arch`` saved where open_clip looks for ``arch@tag``."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = oc.create_model(reference_arch, pretrained=None)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    hub = oc.get_pretrained_cfg(arch, tag)["hf_hub"].rstrip("/")
    put_in_hub_cache(cache, hub, {"open_clip_model.safetensors": path})


def reference_embeddings(reference, transform, tokenizer, photos) -> tuple[np.ndarray, ...]:
    """open_clip's own image and text embeddings (normalised) of the photos and TEXTS."""
    with torch.no_grad():
        img = torch.cat([reference.encode_image(transform(
            ImageOps.exif_transpose(Image.open(p)).convert("RGB"))[None]) for p in photos])
        txt = reference.encode_text(tokenizer(TEXTS))
    return (torch.nn.functional.normalize(img, dim=-1).numpy(),
            torch.nn.functional.normalize(txt, dim=-1).numpy())


@pytest.mark.slow
@pytest.mark.parametrize("arch,tag,reference_arch", [
    ("ViT-B-32", "openai", "ViT-B-32-quickgelu"),  # OpenAI weights: QuickGELU, as open_clip advises
    ("PE-Core-T-16-384", "meta", "PE-Core-T-16-384"),  # squash, bilinear, its own mean/std, 32 tokens
])
def test_open_clip_tag_matches_open_clip(arch, tag, reference_arch, offline_hub, tmp_path):
    import open_clip as oc

    photos = parity_photos()
    cached_random_tag(offline_hub, oc, reference_arch, arch, tag, tmp_path)

    reference, _, transform = oc.create_model_and_transforms(
        reference_arch, pretrained=tag, cache_dir=str(offline_hub))
    reference.eval()
    tokenizer = oc.get_tokenizer(reference_arch)
    want_img, want_txt = reference_embeddings(reference, transform, tokenizer, photos)

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, p in enumerate(photos):
        shutil.copyfile(p, folder / f"{i:02d}{p.suffix}")
    spec = f"open_clip:{arch}@{tag}"
    summary = embed_photos(str(folder), str(tmp_path / "emb"), spec, progress=False).summary
    assert summary.ok == len(photos)
    rows = read_shards(tmp_path / "emb").to_pandas().sort_values("key")
    got_img = np.stack(rows["embedding"].to_list())
    cos = (got_img * want_img).sum(1)
    assert cos.min() >= 0.999, dict(zip(rows["key"], cos.round(4), strict=True))

    model = load_model(spec)
    got_txt = model.encode_texts(TEXTS)
    assert ((got_txt * want_txt).sum(1) >= 0.9999).all()
    assert model.context_length == reference.context_length
    pp = reference.visual.preprocess_cfg
    fp = model.fingerprint["preprocess"]
    assert (fp["resize_mode"], fp["interpolation"], fp["mean"]) == (
        pp["resize_mode"], pp["interpolation"], list(pp["mean"]))


def test_openai_tags_say_they_use_quick_gelu():
    from kadr.core.models import known_models

    notes = {m.spec: m.note for m in known_models() if m.spec.startswith("open_clip:")}
    assert "QuickGELU" in notes["open_clip:ViT-B-32@openai"]
    assert "QuickGELU" not in notes["open_clip:ViT-B-32@laion2b_s34b_b79k"]


def cached_hub_repo(cache, oc, repo: str, arch: str, tmp_path, preprocess: dict) -> None:
    """A repo laid out as BioCLIP's (open_clip_config.json beside the weights), at seeded
    random weights of the real architecture, in the hub cache."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = oc.create_model(arch, pretrained=None)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    config = {"model_cfg": oc.get_model_config(arch), "preprocess_cfg": preprocess}
    put_in_hub_cache(cache, repo, {"open_clip_config.json": json.dumps(config),
                                   "open_clip_model.safetensors": path})


@pytest.mark.slow
def test_an_hf_hub_repo_matches_open_clip(offline_hub, tmp_path):
    """``open_clip:hf-hub:imageomics/bioclip`` loads through open_clip's own hf-hub path,
    offline, with the repo's preprocessing and tokenizer."""
    import open_clip as oc

    repo = "imageomics/bioclip"
    cached_hub_repo(offline_hub, oc, repo, "ViT-B-16", tmp_path, {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bilinear", "resize_mode": "squash"})
    reference, _, transform = oc.create_model_and_transforms(f"hf-hub:{repo}",
                                                             cache_dir=str(offline_hub))
    reference.eval()
    tokenizer = oc.get_tokenizer(f"hf-hub:{repo}", cache_dir=str(offline_hub))
    photos = parity_photos()[:5]
    want_img, want_txt = reference_embeddings(reference, transform, tokenizer, photos)

    model = load_model(f"open_clip:hf-hub:{repo}")
    images = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in photos]
    got_img = model.encode_images([model.prepare_image(im) for im in images])
    assert (got_img * want_img).sum(1).min() >= 0.999
    assert ((model.encode_texts(TEXTS) * want_txt).sum(1) >= 0.999).all()
    assert model.fingerprint["preprocess"]["resize_mode"] == "squash"


def test_an_hf_hub_repo_not_in_the_cache_says_where_it_looked(offline_hub):
    from kadr.core.models import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError) as e:
        load_model("open_clip:hf-hub:imageomics/bioclip-2")
    said = str(e.value)
    assert "models--imageomics--bioclip-2" in said and "open_clip_config.json" in said
