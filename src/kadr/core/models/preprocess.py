"""Image preprocessing as each model's own configuration states it.

Models disagree on how a photo becomes their input: open_clip tags resize the
shortest side and crop the centre, squash the photo to a square, or fit the
longest side and pad; bicubic or bilinear; OpenAI's, Inception's or their own
mean and std. Getting any of these wrong costs accuracy silently, so kadr
reads them from the model's configuration (open_clip's ``preprocess_cfg``,
a transformers image processor) and reproduces the upstream geometry here:
sizes rounded as torchvision/transformers round them, crops placed as they
place them. Pixels are resampled once, with Pillow (as torchvision does on PIL
images), and only in the region that survives the crop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# transformers stores PIL's resample codes as integers.
RESAMPLE_BY_CODE = {int(v): k for k, v in RESAMPLE.items()}
RESIZE_MODES = ("shortest", "squash", "longest")


@dataclass(frozen=True)
class ImagePreprocess:
    """How one model turns an upright RGB photo into its input.

    ``resize_mode``: ``shortest`` (short side to the size, then a centre
    crop), ``squash`` (both sides to the size, aspect not kept) or
    ``longest`` (long side to the size, then padded with ``fill``).
    ``crop_rounding``: ``round`` places a centre crop as torchvision does,
    ``floor`` as transformers' image processors do.
    """

    size: tuple[int, int]  # (height, width) of the model's input
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill: int = 0
    crop_rounding: str = "round"
    short_side: int | None = None  # shortest mode: resize target when it differs from the crop

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if self.interpolation not in RESAMPLE:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {tuple(RESAMPLE)}")

    @property
    def side(self) -> int:
        """The larger input side: decoding at reduced scale must keep both photo sides above it."""
        return max(self.size)

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, rounded as the upstream transforms round it."""
        th, tw = self.size
        if self.resize_mode == "squash":
            return tw, th
        if self.resize_mode == "shortest" and (th == tw or self.short_side):
            # torchvision Resize(int) and transformers' shortest_edge: the long side truncates.
            side = self.short_side or tw
            if width <= height:
                return side, int(side * height / width)
            return int(side * width / height), side
        ratios = (height / th, width / tw)
        ratio = max(ratios) if self.resize_mode == "longest" else min(ratios)
        return round(width / ratio), round(height / ratio)

    def pad_to_shape(self, image: Image.Image) -> Image.Image:
        """``image`` centred on a canvas of the input's aspect ratio, filled with the mean
        colour (zero after normalisation), so that no resize mode cuts anything off."""
        th, tw = self.size
        w, h = image.size
        cw, ch = max(w, round(h * tw / th)), max(h, round(w * th / tw))
        if (cw, ch) == (w, h):
            return image
        colour = tuple(round(255 * m) for m in (self.mean * 3)[:3])
        canvas = Image.new("RGB", (cw, ch), colour)
        canvas.paste(image.convert("RGB"), ((cw - w) // 2, (ch - h) // 2))
        return canvas

    def _offset(self, have: int, want: int) -> int:
        if self.crop_rounding == "floor":
            return (have - want) // 2
        return int(round((have - want) / 2.0))

    def apply(self, image: Image.Image) -> np.ndarray:
        """The model input for one photo: uint8 [H, W, 3] (normalised later, batch-wise)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        th, tw = self.size
        w, h = image.size
        nw, nh = self.resized_size(w, h)
        resample = RESAMPLE[self.interpolation]
        if nw >= tw and nh >= th:
            # A crop (or nothing) follows: resample only the region the crop keeps.
            top, left = self._offset(nh, th), self._offset(nw, tw)
            if (nw, nh) == (w, h):
                return np.asarray(image.crop((left, top, left + tw, top + th)))
            sx, sy = w / nw, h / nh
            box = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy)
            return np.asarray(image.resize((tw, th), resample, box=box))
        # Padding (open_clip's center_crop_or_pad): resize, place on a fill canvas, crop.
        resized = image.resize((nw, nh), resample) if (nw, nh) != (w, h) else image
        cw, ch = max(tw, nw), max(th, nh)
        canvas = Image.new("RGB", (cw, ch), (self.fill,) * 3)
        canvas.paste(resized, ((tw - nw) // 2 if tw > nw else 0, (th - nh) // 2 if th > nh else 0))
        top, left = self._offset(ch, th), self._offset(cw, tw)
        return np.asarray(canvas.crop((left, top, left + tw, top + th)))


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int | float):
        return int(size), int(size)
    return int(size[0]), int(size[1])


def from_open_clip(cfg: dict) -> ImagePreprocess:
    """From open_clip's ``model.visual.preprocess_cfg`` (the tag's values merged in)."""
    mean, std = cfg.get("mean") or OPENAI_MEAN, cfg.get("std") or OPENAI_STD
    interpolation = cfg.get("interpolation") or "bicubic"
    return ImagePreprocess(
        size=_pair(cfg.get("size", 224)),
        mean=tuple(float(m) for m in (mean if isinstance(mean, list | tuple) else (mean,) * 3)),
        std=tuple(float(s) for s in (std if isinstance(std, list | tuple) else (std,) * 3)),
        # open_clip runs 'random' as bicubic at inference.
        interpolation="bilinear" if interpolation == "bilinear" else "bicubic",
        resize_mode=cfg.get("resize_mode") or "shortest",
        fill=int(cfg.get("fill_color", 0) or 0),
    )


def from_hf_image_processor(ip) -> ImagePreprocess:
    """From a transformers image processor (CLIP, SigLIP and their kin)."""
    size = dict(ip.size) if getattr(ip, "size", None) is not None else {}
    crop = dict(ip.crop_size) if getattr(ip, "do_center_crop", False) and ip.crop_size else None
    if "shortest_edge" in size:
        side = int(size["shortest_edge"])
        out = (int(crop["height"]), int(crop["width"])) if crop else (side, side)
        mode, short_side = "shortest", side
    else:
        out = (int(size["height"]), int(size["width"]))
        mode, short_side = "squash", None
    resample = getattr(ip, "resample", 3)
    interpolation = RESAMPLE_BY_CODE.get(int(resample), "bicubic") if resample is not None else "bicubic"
    return ImagePreprocess(
        size=out,
        mean=tuple(float(x) for x in (ip.image_mean if ip.do_normalize else (0.0, 0.0, 0.0))),
        std=tuple(float(x) for x in (ip.image_std if ip.do_normalize else (1.0, 1.0, 1.0))),
        interpolation=interpolation,
        resize_mode=mode,
        crop_rounding="floor",  # transformers places a centre crop at int((have - want) / 2)
        short_side=short_side,
    )
