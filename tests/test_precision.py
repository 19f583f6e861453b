"""Half precision: what a GPU runs by default, checked on this CPU with bf16.

Full-size architectures at random weights: per-photo cosine similarity of
bf16 embeddings to fp32 ones must be >= 0.99; captioners and segmenters must
run in bf16 and give their usual outputs.
"""

import numpy as np
import pytest
from PIL import Image, ImageOps

from kadr.core.models import load_model
from tests.hubcache import parity_photos


def photos() -> list[Image.Image]:
    return [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in parity_photos()[:6]]


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["open_clip:ViT-B-32@random",
                                  "hf:openai/clip-vit-base-patch32@random"])
def test_bf16_embeddings_stay_close_to_fp32(spec, monkeypatch):
    images = photos()
    texts = ["a photo of a bedroom", "an elephant at night"]
    monkeypatch.setenv("KADR_PRECISION", "fp32")
    full = load_model(spec)
    want_img = full.encode_images([full.prepare_image(im) for im in images])
    want_txt = full.encode_texts(texts)
    monkeypatch.setenv("KADR_PRECISION", "bf16")
    half = load_model(spec)
    assert str(half.modules[0].dtype if hasattr(half.modules[0], "dtype") else
               next(half.modules[0].parameters()).dtype) == "torch.bfloat16"
    got_img = half.encode_images([half.prepare_image(im) for im in images])
    got_txt = half.encode_texts(texts)
    assert got_img.dtype == np.float32, "embeddings leave as float32 whatever the weights"
    assert (got_img * want_img).sum(1).min() >= 0.99
    assert (got_txt * want_txt).sum(1).min() >= 0.99


def test_bf16_captioners_and_segmenters_run(monkeypatch):
    monkeypatch.setenv("KADR_PRECISION", "bf16")
    images = photos()[:2]
    for spec in ("hf-caption:kadr/tiny-blip@random", "coca:kadr-tiny-coca@random"):
        captions = load_model(spec, kind="captioner").caption(images)
        assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    masks = load_model("clipseg:kadr/tiny-clipseg@random", kind="segmenter").segment(
        images[0], ["the bed", "the window"])
    assert masks[0].shape == images[0].size[::-1] and masks[0].dtype == np.float32


def test_precision_is_part_of_the_fingerprint(monkeypatch):
    from kadr.core.models.spec import spec_fingerprint

    monkeypatch.setenv("KADR_PRECISION", "fp32")
    full = spec_fingerprint("open_clip:ViT-B-32@openai")
    monkeypatch.setenv("KADR_PRECISION", "bf16")
    assert spec_fingerprint("open_clip:ViT-B-32@openai") != full
