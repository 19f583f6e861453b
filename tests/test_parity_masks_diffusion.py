"""Segmenters and diffusion pipelines through kadr against the libraries called directly.

Small models of the real architectures (CLIPSeg, SAM, a Stable Diffusion
inpainting pipeline) at seeded random weights are saved into a hub cache
under the real hub ids with every file their loaders read; kadr loads them by
id with the network off, and its masks and edits must equal what
transformers' and diffusers' own classes give on the same inputs.
"""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kadr.core.models import load_model
from kadr.core.models.spec import ModelSpec
from tests.hubcache import parity_photos, save_pretrained_to_hub_cache

QUERIES = ["the bed", "a lamp on the table", "the window"]


def photo(i: int = 0) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(parity_photos()[i])).convert("RGB")


def reference_from_hub_id(cache, tiny_spec: str, repo: str, model_class: str,
                          processor_class: str):
    """kadr's tiny model saved under ``repo``, and transformers' own classes loading it."""
    import transformers

    tiny = load_model(tiny_spec)
    save_pretrained_to_hub_cache(cache, repo, tiny.model, tiny.processor)
    model = getattr(transformers, model_class).from_pretrained(repo, cache_dir=str(cache))
    processor = getattr(transformers, processor_class).from_pretrained(repo, cache_dir=str(cache))
    return model.eval(), processor


@pytest.mark.slow
def test_clipseg_by_hub_id_gives_the_masks_of_transformers(offline_hub):
    repo = "CIDAS/clipseg-rd64-refined"
    model, processor = reference_from_hub_id(offline_hub, "clipseg:kadr/tiny-clipseg@random",
                                             repo, "CLIPSegForImageSegmentation",
                                             "CLIPSegProcessor")
    image = photo()
    # transformers' documented use: one copy of the photo per prompt, sigmoid of the logits.
    with torch.no_grad():
        inputs = processor(text=QUERIES, images=[image] * len(QUERIES), padding="max_length",
                           return_tensors="pt")
        want = torch.sigmoid(model(**inputs).logits)[:, None]
    want = torch.nn.functional.interpolate(want, size=image.size[::-1], mode="bilinear")
    got = load_model(f"clipseg:{repo}", kind="segmenter").segment(image, QUERIES)
    assert len(got) == len(QUERIES)
    for g, w in zip(got, want, strict=True):
        assert g.shape == image.size[::-1]
        np.testing.assert_allclose(g, w[0].numpy(), atol=1e-5)
    assert np.abs(got[0] - got[1]).max() > 1e-3, "different prompts give different masks"


@pytest.mark.slow
def test_sam_by_hub_id_gives_the_outline_of_transformers(offline_hub):
    repo = "facebook/sam-vit-base"
    model, processor = reference_from_hub_id(offline_hub, "sam:kadr/tiny-sam@random", repo,
                                             "SamModel", "SamProcessor")
    image = photo()
    w, h = image.size
    box = (w // 5, h // 4, 3 * w // 4, 4 * h // 5)
    coarse = np.zeros((h, w), np.float32)
    coarse[box[1]:box[3] + 1, box[0]:box[2] + 1] = 1
    with torch.no_grad():
        inputs = processor(images=image, input_boxes=[[[float(v) for v in box]]],
                           return_tensors="pt")
        out = model(**inputs, multimask_output=False)
    want = processor.image_processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0][0, 0].numpy()
    got = load_model(f"sam:{repo}", kind="mask-refiner").refine(image, coarse)
    inside = np.s_[box[1]:box[3] + 1, box[0]:box[2] + 1]
    assert want[inside].any() and not want[inside].all(), "the test model draws an outline"
    np.testing.assert_array_equal(got[inside] > 0.5, want[inside])
    assert not got[coarse == 0].any(), "kadr keeps the outline inside the box"


def tiny_inpainting_pipeline():
    from diffusers import StableDiffusionInpaintPipeline

    from kadr.core.models.diffusion import _random_components

    components, _ = _random_components(ModelSpec("diffusers", "kadr/tiny-sd", "random"))
    return StableDiffusionInpaintPipeline(**components, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [None, "euler_a", "dpm"])
def test_diffusers_inpainting_by_hub_id_matches_the_pipeline(scheduler, offline_hub):
    import diffusers

    from kadr.core.models.diffusion import SCHEDULERS

    repo = "stable-diffusion-v1-5/stable-diffusion-inpainting"
    save_pretrained_to_hub_cache(offline_hub, repo, tiny_inpainting_pipeline())
    image = photo().resize((64, 64), Image.Resampling.LANCZOS)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    reference = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        repo, cache_dir=str(offline_hub), safety_checker=None)
    reference.set_progress_bar_config(disable=True)
    if scheduler:
        cls = getattr(diffusers, SCHEDULERS[scheduler])
        reference.scheduler = cls.from_config(reference.scheduler.config)
    kwargs = dict(prompt="a red velvet sofa", negative_prompt="blurry", num_inference_steps=4,
                  strength=1.0, guidance_scale=7.5, width=64, height=64)
    want = reference(image=image, mask_image=mask, generator=torch.Generator().manual_seed(3),
                     **kwargs).images[0]

    painter = load_model(f"diffusers:{repo}", kind="diffusion")
    assert painter.resolution == 64, "the checkpoint's own sample size"
    if scheduler:
        painter.set_scheduler(scheduler)
    got = painter.inpaint(image, mask, "a red velvet sofa", "blurry", steps=4, seed=3)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    other = painter.inpaint(image, mask, "a red velvet sofa", "blurry", steps=4, seed=4)
    assert not np.array_equal(np.asarray(other), np.asarray(want)), "the seed matters"
