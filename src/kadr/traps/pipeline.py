"""``kadr traps run``: detect, count, classify, form registrations, export, report.

Per-photo work is one batch job on the core runner (resumable, streamed).
The exports (:mod:`kadr.traps.exports`) are written from the per-photo store a
camera at a time, each file atomically, at the end of a run that changed
something (new photos, decisions, settings); a resume with nothing to do
leaves them as they are.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from kadr.core.collection import PhotoCollection, PhotoRoot
from kadr.core.decode import DecodedPhoto
from kadr.core.models import WeightsNotFoundError, load_model
from kadr.core.models.detectors import Detection, nms
from kadr.core.models.device import computes_on_cpu
from kadr.core.remote import staged
from kadr.core.runner import Job, RunSummary, WorkflowResult, run_workflow
from kadr.traps.exports import outputs_key, write_outputs
from kadr.traps.prompts import PromptSet, classify
from kadr.traps.registrations import check_rule
from kadr.traps.settings import (
    TrapSettings,
    classify_on,
    run_prompts,
    settings_prompts,
    trap_fingerprint,
    uses_prompts,
)
from kadr.traps.tables import EMPTY


def count_animals(dets: list[Detection], threshold: float, iou: float = 0.5) -> list[Detection]:
    """Animal boxes above ``threshold`` after class-agnostic NMS: one box per animal.

    Per-class NMS inside the detector keeps a "horse" and an "elephant" box on
    the same elephant; for counting, an animal is an animal.
    """
    animals = [d for d in dets if d.category == "animal" and d.conf >= threshold]
    if len(animals) < 2:
        return animals
    xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (d.bbox for d in animals)], np.float32)
    keep = nms(xyxy, np.array([d.conf for d in animals], np.float32),
               np.zeros(len(animals), np.int64), iou)
    return [animals[i] for i in keep]


def crop_with_margin(image: Image.Image, bbox, margin: float) -> Image.Image:
    """The detection's box widened by ``margin`` of its size on each side (context helps CLIP)."""
    w, h = image.size
    x, y, bw, bh = bbox
    x1, y1 = max(0.0, x - margin * bw), max(0.0, y - margin * bh)
    x2, y2 = min(1.0, x + bw * (1 + margin)), min(1.0, y + bh * (1 + margin))
    box = (int(x1 * w), int(y1 * h), max(int(x1 * w) + 1, int(x2 * w)),
           max(int(y1 * h) + 1, int(y2 * h)))
    return image.crop(box)


class TrapJob:
    """The per-photo work of ``traps run``, as a core :class:`Job`."""

    def __init__(self, settings: TrapSettings):
        self.s = settings
        self.detector = load_model(settings.detector, kind="detector",
                                   trust_checkpoint=settings.trust_checkpoint) \
            if settings.detector else None
        self.model = None
        self.labeller = None  # a classifier with labels of its own (SpeciesNet)
        self.prompts: PromptSet | None = None
        self.note = None
        if settings.classifier:
            try:
                if uses_prompts(settings):
                    self.model = load_model(settings.classifier, kind="image-text",
                                            trust_checkpoint=settings.trust_checkpoint)
                else:
                    from kadr.traps.speciesnet import SpeciesNetLabeller

                    self.labeller = SpeciesNetLabeller(
                        load_model(settings.classifier, kind="classifier",
                                   trust_checkpoint=settings.trust_checkpoint), settings)
            except WeightsNotFoundError as e:
                if not settings.allow_detector_labels:
                    raise
                self.note = ("classifier weights unavailable; classes are the detector's labels: "
                             + str(e).splitlines()[0])
        if self.model is not None:
            self.prompts = settings_prompts(settings)
            self.class_emb = self.prompts.class_embeddings(self.model)

    @property
    def class_names(self) -> list[str]:
        return self.prompts.names if self.prompts else []

    def prepare(self, photo: DecodedPhoto):
        # The photo stays at full resolution: a small, distant animal keeps every pixel it has.
        return (self.detector.prepare(photo) if self.detector else None), photo.image

    def classifier_input(self, image: Image.Image, bbox) -> np.ndarray:
        """One animal as the classifier sees it: the box with its margin, cut from the
        full-resolution photo and padded (never cropped) to the model's shape."""
        crop = crop_with_margin(image, bbox, self.s.crop_margin)
        return self.model.prepare_image(self.model.preprocess.pad_to_shape(crop))

    def process(self, inputs: list, rows: list[dict]) -> list[dict]:
        if not inputs:
            return []
        all_dets = (self.detector.detect([x for x, _ in inputs]) if self.detector
                    else [[] for _ in inputs])
        results = []
        for (_, image), dets in zip(inputs, all_dets, strict=True):
            animals = count_animals(dets, self.s.threshold)
            results.append({
                "n_animals": len(animals),
                "_detections": [d for d in dets if d.conf >= 0.05],
                "_animals": animals,
                "_box_classes": {},  # id(animal box) -> its own class, class_prob (and taxon)
                "_image": image,
            })
        if self.labeller is not None:
            self.labeller.label(results)
            for r in results:
                r["embedding"] = None
        elif self.model is None:
            for r in results:
                top = r["_animals"][0] if r["_animals"] else None
                r.update({"class": top.label if top else EMPTY,
                          "class_prob": round(top.conf, 4) if top else None,
                          "count": len(r["_animals"]), "embedding": None})
        else:
            self._classify(results)
        for r in results:
            r["top_bbox"] = json.dumps(r["_animals"][0].as_dict()["bbox"]) if r["_animals"] else None
            r["detections"] = json.dumps([_box_dict(d, r["_box_classes"].get(id(d)))
                                          for d in r["_detections"]])
            for k in ("_animals", "_detections", "_box_classes", "_image"):
                del r[k]
        return results

    def _classify(self, results: list[dict]) -> None:
        mode = classify_on(self.s)
        crops, owners, weights, boxes = [], [], [], []
        for i, r in enumerate(results):
            for d in r["_animals"][: self.s.max_crops] if mode in ("crops", "both") else []:
                crops.append(self.classifier_input(r["_image"], d.bbox))
                owners.append(i)
                weights.append(d.conf)
                boxes.append(d)
            if mode in ("photo", "both"):
                crops.append(self.model.prepare_image(r["_image"]))
                owners.append(i)
                weights.append(0.5 if r["_animals"] else 1.0)
                boxes.append(None)
        probs = np.zeros((len(results), len(self.class_names)), np.float32)
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
                        "class": self.class_names[k], "class_prob": round(float(crop_p[k]), 4)}
            # What `traps learn` fits on: the photo's animals (and the photo) as the
            # classifier saw them, weighted as their votes are.
            np.add.at(vectors, np.array(owners), emb * w)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), np.nan)
        background = self.prompts.background
        names = self.class_names
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


def _box_dict(d: Detection, own_class: dict | None) -> dict:
    """One stored detection; a box that was classified on its own carries its class and
    that class's probability (``class``, ``class_prob``; SpeciesNet's also ``taxon``, how
    it was reached and the crop's top labels)."""
    return {**d.as_dict(), **(own_class or {})}


def trap_job(trap: TrapJob, settings: TrapSettings) -> Job:
    return Job(
        name="traps",
        prepare=trap.prepare,
        process=trap.process,
        # Crops come from the full-resolution photo; without them the models' sizes will do
        # (a detector whose decode_side is None wants the full photo).
        min_side=None if (trap.model and classify_on(settings) != "photo") or trap.labeller
        or (trap.detector and trap.detector.decode_side is None)
        else max(trap.detector.decode_side if trap.detector else 0,
                 trap.model.image_size if trap.model else 0),
        batch_size=settings.batch_size,
        empty_result={"detections": None, "n_animals": None, "class": None,
                      "class_prob": None, "count": None, "top_bbox": None, "embedding": None,
                      **({"taxon": None, "class_source": None} if trap.labeller else {})},
        # The classifier fell back to the detector's labels: the results say so.
        fingerprint=trap_fingerprint(settings, None) if trap.note else None,
        notes=[trap.note] if trap.note else [],
        decode_between_batches=computes_on_cpu(
            trap.detector, trap.labeller.model if trap.labeller else trap.model),
    )


def make_trap_job(settings: TrapSettings) -> Job:
    """Builds the models and the job: what each Ray actor runs once."""
    return trap_job(TrapJob(settings), settings)


@staged
def run_traps(photos: str, out: str, settings: TrapSettings) -> WorkflowResult:
    """The whole camera-trap job; the result's table is ``registrations.parquet``."""
    check_rule(settings.method, settings.gap, settings.count_rule)
    out_dir = Path(out)
    collection = PhotoCollection(photos, group_level=settings.group_level,
                                 group_column=settings.group_column,
                                 path_column=settings.path_column,
                                 video_fps=settings.video_fps or None,
                                 max_pixels=settings.max_pixels)
    prompts = run_prompts(settings)
    summary = run_workflow(collection, out_dir / "photos.store",
                           functools.partial(make_trap_job, settings), settings, name="traps",
                           fingerprint=trap_fingerprint(settings, prompts),
                           column_types={"embedding": pa.float32()},
                           time_pattern=settings.time_pattern)
    if "classifier" not in summary.fingerprint:  # the detector's labels are the classes
        prompts = None
    # A resume with nothing to do neither reads the store nor rewrites an output.
    key = outputs_key(out_dir, settings)
    unchanged = _unchanged_outputs(out_dir, key, summary)
    if unchanged is not None:
        regs = unchanged
    else:
        regs = write_outputs(out_dir, settings, prompts, summary.fingerprint, summary, key,
                             PhotoRoot.of(collection))
    return WorkflowResult(summary, out_dir, out_dir / "registrations.parquet",
                          {"registrations": len(regs)})


def _unchanged_outputs(out_dir: Path, key: str, summary: RunSummary) -> pd.DataFrame | None:
    """The registrations of the last run when it made the outputs from the same shards and
    settings (a resume with nothing to do rewrites nothing); None otherwise."""
    try:
        before = json.loads((out_dir / "summary.json").read_text())
        if before.get("outputs_key") != key or summary.processed:
            return None
        regs = pd.read_parquet(out_dir / "registrations.parquet")
    except (OSError, ValueError):
        return None
    summary.warnings = before.get("warnings", [])
    return regs
