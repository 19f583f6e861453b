"""An image-text model naming the animals of a camera-trap run zero-shot from the class
prompts: each animal box cut from the full-resolution photo (with a margin) and, as
``classify_on`` says, the whole photo; a photo's class is the vote of its views, each
box weighted by its detection confidence. Each box keeps its own crop's class."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from kadr.traps.prompts import PromptSet, classify
from kadr.traps.settings import classify_on
from kadr.traps.tables import EMPTY

if TYPE_CHECKING:
    from kadr.core.models.image_text import ImageTextModel
    from kadr.traps.settings import TrapSettings


def crop_with_margin(image: Image.Image, bbox, margin: float) -> Image.Image:
    """The detection's box widened by ``margin`` of its size on each side (context helps CLIP)."""
    w, h = image.size
    x, y, bw, bh = bbox
    x1, y1 = max(0.0, x - margin * bw), max(0.0, y - margin * bh)
    x2, y2 = min(1.0, x + bw * (1 + margin)), min(1.0, y + bh * (1 + margin))
    box = (int(x1 * w), int(y1 * h), max(int(x1 * w) + 1, int(x2 * w)),
           max(int(y1 * h) + 1, int(y2 * h)))
    return image.crop(box)


class ZeroShotLabeller:
    """Names the animals of a batch of photos from the prompts (see the module)."""

    def __init__(self, model: ImageTextModel, prompts: PromptSet, settings: TrapSettings):
        self.model = model
        self.prompts = prompts
        self.class_emb = prompts.class_embeddings(model)
        self.mode = classify_on(settings)
        self.crop_margin = settings.crop_margin
        self.max_crops = settings.max_crops

    @property
    def class_names(self) -> list[str]:
        return self.prompts.names

    @property
    def crops(self) -> bool:
        """Whether it looks at boxes cut from the full-resolution photo."""
        return self.mode != "photo"

    def classifier_input(self, image: Image.Image, bbox) -> np.ndarray:
        """One animal as the classifier sees it: the box with its margin, cut from the
        full-resolution photo and padded (never cropped) to the model's shape."""
        crop = crop_with_margin(image, bbox, self.crop_margin)
        return self.model.prepare_image(self.model.preprocess.pad_to_shape(crop))

    def label(self, results: list[dict]) -> None:
        """Sets each result's class, class_prob, count, ``p_<class>`` and embedding, and
        its boxes' own classes (``_box_classes``), from ``_animals`` and ``_image``."""
        crops, owners, weights, boxes = [], [], [], []
        for i, r in enumerate(results):
            for d in r["_animals"][: self.max_crops] if self.crops else []:
                crops.append(self.classifier_input(r["_image"], d.bbox))
                owners.append(i)
                weights.append(d.conf)
                boxes.append(d)
            if self.mode in ("photo", "both"):
                crops.append(self.model.prepare_image(r["_image"]))
                owners.append(i)
                weights.append(0.5 if r["_animals"] else 1.0)
                boxes.append(None)
        names = self.class_names
        probs = np.zeros((len(results), len(names)), np.float32)
        vectors = np.zeros((len(results), self.class_emb.shape[1]), np.float32)
        if crops:
            emb = self.model.encode_images(crops)
            p = classify(emb, self.prompts, self.class_emb, self.model.logit_scale)
            w = np.array(weights, np.float32)[:, None]
            np.add.at(probs, np.array(owners), p * w)
            # Each animal box keeps its own crop's class: two species in one photo stay two.
            for owner, box, crop_p in zip(owners, boxes, p, strict=True):
                if box is not None:
                    k = int(crop_p.argmax())
                    results[owner]["_box_classes"][id(box)] = {
                        "class": names[k], "class_prob": round(float(crop_p[k]), 4)}
            # What `traps learn` fits on: the photo's animals (and the photo) as the
            # classifier saw them, weighted as their votes are.
            np.add.at(vectors, np.array(owners), emb * w)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), np.nan)
        background = self.prompts.background
        for i, r in enumerate(results):
            total = probs[i].sum()
            r["embedding"] = None if np.isnan(vectors[i]).any() else vectors[i]
            if total <= 0:  # crops-only mode and nothing detected
                r.update({"class": EMPTY, "class_prob": None, "count": 0})
                r.update({f"p_{n}": None for n in names})
                continue
            p = probs[i] / total
            k = int(p.argmax())
            cls = names[k]
            n = r["n_animals"]
            if cls in background:
                cls, count = EMPTY, (0 if n == 0 else n)
            else:
                # An animal the classifier sees but the detector did not count: count unknown.
                count = n if n > 0 else None
            r.update({"class": cls, "class_prob": round(float(p[k]), 4), "count": count})
            r.update({f"p_{n_}": round(float(v), 4) for n_, v in zip(names, p, strict=True)})
