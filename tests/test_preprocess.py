"""kadr's image preprocessing against the upstream transforms, per configuration."""

import numpy as np
import pytest
import torch
from PIL import Image

from kadr.core.models.image_text import images_to_tensor
from kadr.core.models.preprocess import ImagePreprocess, from_hf_image_processor, from_open_clip


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def assert_same_pixels(got: torch.Tensor, want: torch.Tensor, std, what) -> None:
    """Equal up to resampling noise: a shortest-side crop is resampled from its own region only,
    so a pixel may differ by a level or two, and on average by far less than one."""
    levels = (got - want).abs() * torch.tensor(std)[:, None, None] * 255
    assert levels.max().item() <= 2.01 and levels.mean().item() <= 0.06, (what, levels.max(), levels.mean())


SIZES = [(414, 309), (309, 414), (640, 480), (224, 224), (100, 75), (1000, 230)]


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_matches_open_clip_image_transform(mode, interpolation):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(size=224, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                        interpolation=interpolation, resize_mode=mode, fill_color=0)
    reference = image_transform_v2(cfg, is_train=False)
    ours = from_open_clip(dict(size=224, mean=cfg.mean, std=cfg.std, interpolation=interpolation,
                               resize_mode=mode, fill_color=0))
    for i, (w, h) in enumerate(SIZES):
        im = photo(w, h, i)
        want = reference(im)
        got = images_to_tensor([ours.apply(im)], ours.mean, ours.std)[0]
        assert got.shape == want.shape, (mode, w, h)
        assert_same_pixels(got, want, ours.std, (mode, interpolation, w, h))


def test_matches_transformers_clip_image_processor():
    from transformers import CLIPImageProcessor

    ip = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    ours = from_hf_image_processor(ip)
    assert (ours.resize_mode, ours.interpolation, ours.crop_rounding) == ("shortest", "bicubic", "floor")
    for i, (w, h) in enumerate(SIZES):
        im = photo(w, h, i)
        want = torch.from_numpy(np.asarray(ip(im, return_tensors="np")["pixel_values"][0]))
        got = images_to_tensor([ours.apply(im)], ours.mean, ours.std)[0]
        assert_same_pixels(got, want, ours.std, (w, h))


def test_squash_reads_siglip_style_processors():
    from transformers import SiglipImageProcessor

    ours = from_hf_image_processor(SiglipImageProcessor(size={"height": 256, "width": 256}))
    assert (ours.resize_mode, ours.size, ours.mean) == ("squash", (256, 256), (0.5, 0.5, 0.5))
    assert ours.apply(photo(640, 100)).shape == (256, 256, 3)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="resize_mode"):
        ImagePreprocess((224, 224), resize_mode="stretch")
