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
    with torch.no_grad():
        want_img = torch.cat([reference.encode_image(transform(
            ImageOps.exif_transpose(Image.open(p)).convert("RGB"))[None]) for p in photos])
        want_txt = reference.encode_text(tokenizer(TEXTS))
    want_img = torch.nn.functional.normalize(want_img, dim=-1).numpy()
    want_txt = torch.nn.functional.normalize(want_txt, dim=-1).numpy()

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
