"""Masks from text: ``boxes:DETECTOR_SPEC``, ``clipseg:ID[@random]``, ``sam:ID[@random]``.

A :class:`Segmenter` turns (photo, text query) into a probability map the
size of the photo, or ``None`` when it finds nothing. ``boxes:`` uses a COCO
detector's boxes for queries naming a COCO object (bed, couch, chair, potted
plant, tv, ...); ``clipseg:`` segments any text; ``sam:`` is a refiner: given
a box (from either of the others), it returns the object's exact outline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kadr.core.decode import DecodedPhoto
from kadr.core.lazy import inference_mode, torch
from kadr.core.models.device import inputs_for, place
from kadr.core.models.factory import KnownModel, load_model, register_backend
from kadr.core.models.spec import ModelSpec, SpecError
from kadr.core.models.weights import hf_cache_dir, hf_source, hub_known

# Words users write for COCO labels.
SYNONYMS = {
    "sofa": "couch", "settee": "couch", "television": "tv", "tv set": "tv", "plant": "potted plant",
    "flowers": "vase", "table": "dining table", "desk": "dining table", "armchair": "chair",
    "stool": "chair", "washbasin": "sink", "basin": "sink", "fridge": "refrigerator",
    "painting": None, "lamp": None,
}


def coco_labels_for(query: str, labels: tuple[str, ...]) -> set[str]:
    """COCO labels a query names: 'the bed by the window' -> {'bed'}."""
    q = query.lower()
    found = {lbl for lbl in labels if re.search(rf"\b{re.escape(lbl)}s?\b", q)}
    for word, label in SYNONYMS.items():
        if label and re.search(rf"\b{re.escape(word)}s?\b", q):
            found.add(label)
    return found


@dataclass
class BoxSegmenter:
    """Detector boxes as masks: the union of confident boxes of the labels a query names."""

    spec: ModelSpec
    detector: object
    min_conf: float = 0.3

    def segment(self, image: Image.Image, queries: list[str]) -> list[np.ndarray | None]:
        from kadr.core.models.detectors import COCO80

        photo = DecodedPhoto(image, image.size[0], image.size[1], "RGB", "RGB", None)
        dets = self.detector.detect([self.detector.prepare(photo)])[0]
        w, h = image.size
        out = []
        for q in queries:
            wanted = coco_labels_for(q, COCO80)
            boxes = [d.bbox for d in dets if d.label in wanted and d.conf >= self.min_conf]
            if not boxes:
                out.append(None)
                continue
            m = np.zeros((h, w), np.float32)
            for x, y, bw, bh in boxes:
                m[int(y * h):int(np.ceil((y + bh) * h)), int(x * w):int(np.ceil((x + bw) * w))] = 1
            out.append(m)
        return out


@dataclass
class ClipSegSegmenter:
    spec: ModelSpec
    model: object
    processor: object

    def __post_init__(self):
        place(self.model)

    @inference_mode
    def segment(self, image: Image.Image, queries: list[str]) -> list[np.ndarray | None]:
        inputs = inputs_for(self.model, self.processor(
            text=queries, images=[image] * len(queries), padding=True, return_tensors="pt"))
        logits = self.model(**inputs).logits.float().cpu()
        if logits.ndim == 2:
            logits = logits[None]
        probs = torch.sigmoid(logits)[:, None]
        up = torch.nn.functional.interpolate(probs, size=image.size[::-1], mode="bilinear")
        return [p[0].numpy() for p in up]


@dataclass
class SamRefiner:
    """Segment Anything from a box prompt: the object's outline inside a coarse box."""

    spec: ModelSpec
    model: object
    processor: object

    def __post_init__(self):
        place(self.model)

    @inference_mode
    def refine(self, image: Image.Image, mask: np.ndarray) -> np.ndarray:
        """The outline SAM finds inside the coarse mask's bounding box.

        The outline is kept within that box (SAM can spill onto a neighbouring
        object of the same texture); an empty outline keeps the coarse mask.
        """
        ys, xs = np.nonzero(mask > 0.5)
        if len(xs) == 0:
            return mask
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        box = [[[float(x0), float(y0), float(x1), float(y1)]]]
        inputs = self.processor(images=image, input_boxes=box, return_tensors="pt")
        out = self.model(**inputs_for(self.model, inputs), multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu())
        outline = np.zeros(mask.shape, np.float32)
        outline[y0:y1 + 1, x0:x1 + 1] = masks[0][0, 0].numpy()[y0:y1 + 1, x0:x1 + 1]
        return outline if outline.any() else mask


MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "config.json")


class BoxesBackend:
    name = "boxes"
    kind = "segmenter"
    family: str | None = None  # precision: not converted by kadr (runs as it ships, fp32 on the CPU)
    help = "masks from a COCO detector's boxes: boxes:yolox:/path/yolox_nano.onnx"

    def known(self) -> list[KnownModel]:
        return [KnownModel("boxes:yolox:PATH.onnx", self.kind, "detector boxes as masks",
                           "the detector's path", True)]

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> BoxSegmenter:
        inner = spec.name + (f"@{spec.weights}" if spec.weights else "")
        return BoxSegmenter(spec, load_model(inner, kind="detector"))


class ClipSegBackend:
    name = "clipseg"
    kind = "segmenter"
    family: str | None = "transformer"
    help = "CLIPSeg text-prompted segmentation (CIDAS/clipseg-rd64-refined); @random for tests"

    def known(self) -> list[KnownModel]:
        return [hub_known("clipseg", self.kind, "CIDAS/clipseg-rd64-refined", MODEL_FILES),
                KnownModel("clipseg:kadr/tiny-clipseg@random", self.kind, "tiny, for tests",
                           "built from config", True)]

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> ClipSegSegmenter:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        if spec.is_random:
            from transformers import CLIPSegConfig, ViTImageProcessor

            from kadr.core.models.tokenizers import offline_clip_tokenizer

            torch.manual_seed(spec.seed())
            cfg = CLIPSegConfig(
                text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2),
                vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, image_size=64, patch_size=16),
                projection_dim=32, reduce_dim=16, extract_layers=[0, 1], decoder_num_attention_heads=2)
            model = CLIPSegForImageSegmentation(cfg).eval()
            processor = CLIPSegProcessor(
                image_processor=ViTImageProcessor(size={"height": 64, "width": 64}),
                tokenizer=offline_clip_tokenizer())
            return ClipSegSegmenter(spec, model, processor)
        source, offline = hf_source("clipseg", spec, MODEL_FILES)
        kwargs = {"local_files_only": offline, "cache_dir": str(hf_cache_dir())}
        model = CLIPSegForImageSegmentation.from_pretrained(source, **kwargs).eval()
        processor = CLIPSegProcessor.from_pretrained(source, **kwargs)
        return ClipSegSegmenter(spec, model, processor)


class SamBackend:
    name = "sam"
    kind = "mask-refiner"
    family: str | None = "transformer"
    help = "Segment Anything (transformers SamModel), refining a box into an outline; @random for tests"

    def known(self) -> list[KnownModel]:
        return [hub_known("sam", self.kind, "facebook/sam-vit-base", MODEL_FILES),
                KnownModel("sam:kadr/tiny-sam@random", self.kind, "tiny, for tests",
                           "built from config", True)]

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> SamRefiner:
        from transformers import SamModel, SamProcessor

        if spec.is_random:
            return self._tiny(spec)
        source, offline = hf_source("sam", spec, MODEL_FILES)
        kwargs = {"local_files_only": offline, "cache_dir": str(hf_cache_dir())}
        model = SamModel.from_pretrained(source, **kwargs).eval()
        processor = SamProcessor.from_pretrained(source, **kwargs)
        return SamRefiner(spec, model, processor)

    @staticmethod
    def _tiny(spec: ModelSpec) -> SamRefiner:
        """SAM's three parts (image encoder, prompt encoder, mask decoder) at 128 px, 32 wide."""
        from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

        if spec.name != "kadr/tiny-sam":
            raise SpecError("sam: @random is available for kadr/tiny-sam")
        torch.manual_seed(spec.seed())
        size, width = 128, 32
        config = SamConfig(
            vision_config=dict(hidden_size=width, output_channels=width, num_hidden_layers=2,
                               num_attention_heads=2, image_size=size, patch_size=16, window_size=4,
                               global_attn_indexes=[1], num_pos_feats=16, mlp_dim=2 * width),
            prompt_encoder_config=dict(hidden_size=width, image_size=size, patch_size=16,
                                       mask_input_channels=4),
            mask_decoder_config=dict(hidden_size=width, mlp_dim=2 * width, num_hidden_layers=2,
                                     num_attention_heads=2, iou_head_hidden_dim=width))
        processor = SamProcessor(image_processor=SamImageProcessor(
            size={"longest_edge": size}, pad_size={"height": size, "width": size},
            mask_size={"longest_edge": size // 4}, mask_pad_size={"height": size // 4, "width": size // 4}))
        return SamRefiner(spec, SamModel(config).eval(), processor)


register_backend(BoxesBackend())
register_backend(ClipSegBackend())
register_backend(SamBackend())
