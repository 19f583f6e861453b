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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from kadr.core.collection import PhotoCollection, PhotoRoot
from kadr.core.decode import DecodedPhoto
from kadr.core.models import WeightsNotFoundError, load_model
from kadr.core.models.detectors import Detection, nms
from kadr.core.models.device import computes_on_cpu
from kadr.core.models.spec import ModelSpec
from kadr.core.remote import staged
from kadr.core.runner import Job, RunSummary, WorkflowResult, run_workflow
from kadr.traps.ensemble import RunClasses, decide, disputed, votes_json
from kadr.traps.exports import outputs_key, write_outputs
from kadr.traps.prompts import PromptSet
from kadr.traps.registrations import check_rule
from kadr.traps.settings import (
    TrapSettings,
    classifiers,
    run_prompts,
    speaks_prompts,
    trap_fingerprint,
)
from kadr.traps.tables import EMPTY
from kadr.traps.zero_shot import ZeroShotLabeller

if TYPE_CHECKING:
    from kadr.traps.speciesnet import SpeciesNetLabeller

    Labeller = ZeroShotLabeller | SpeciesNetLabeller


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


class TrapJob:
    """The per-photo work of ``traps run``, as a core :class:`Job`: the detector's boxes
    and counts, then each classifier's names for the photo and its boxes
    (:mod:`kadr.traps.zero_shot`, :mod:`kadr.traps.speciesnet`); with several, the
    class they decide together (:mod:`kadr.traps.ensemble`)."""

    def __init__(self, settings: TrapSettings):
        self.s = settings
        self.detector = load_model(settings.detector, kind="detector",
                                   trust_checkpoint=settings.trust_checkpoint) \
            if settings.detector else None
        self.labellers: dict[str, Labeller] = {}  # by the model's public name, first first
        self.note = None
        prompts = run_prompts(settings)
        self.run_classes = RunClasses(prompts)
        try:
            for spec in classifiers(settings):
                self.labellers[ModelSpec.parse(spec).public_name()] = _labeller(
                    spec, prompts, settings)
        except WeightsNotFoundError as e:
            if not settings.allow_detector_labels:
                raise
            self.labellers = {}
            self.note = ("classifier weights unavailable; classes are the detector's labels: "
                         + str(e).splitlines()[0])

    @property
    def primary(self) -> Labeller | None:
        """The first classifier: its per-class probabilities, taxa and embeddings are the
        run's columns."""
        return next(iter(self.labellers.values()), None)

    def prepare(self, photo: DecodedPhoto):
        # The photo stays at full resolution: a small, distant animal keeps every pixel it has.
        return (self.detector.prepare(photo) if self.detector else None), photo.image

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
        if self.primary is None:
            for r in results:
                top = r["_animals"][0] if r["_animals"] else None
                r.update({"class": top.label if top else EMPTY,
                          "class_prob": round(top.conf, 4) if top else None,
                          "count": len(r["_animals"]), "embedding": None})
        elif len(self.labellers) == 1:
            self.primary.label(results)
        else:
            self._ensemble(results)
        for r in results:
            r.setdefault("embedding", None)
            r["top_bbox"] = json.dumps(r["_animals"][0].as_dict()["bbox"]) if r["_animals"] else None
            r["detections"] = json.dumps([_box_dict(d, r["_box_classes"].get(id(d)))
                                          for d in r["_detections"]])
            for k in ("_animals", "_detections", "_box_classes", "_image"):
                del r[k]
        return results

    def _ensemble(self, results: list[dict]) -> None:
        """Every classifier names the photos (the first into ``results``, its columns
        kept; the others into copies), then the votes decide each photo and box."""
        named = {}
        for i, (model, labeller) in enumerate(self.labellers.items()):
            rows = results if i == 0 else [
                {k: r[k] for k in ("n_animals", "_detections", "_animals", "_image")}
                | {"_box_classes": {}} for r in results]
            labeller.label(rows)
            named[model] = rows
        vote = self.run_classes.of
        for i, r in enumerate(results):
            mine = {m: rows[i] for m, rows in named.items()}
            votes = {m: (vote(x["class"], x.get("taxon")), _prob(x["class_prob"]))
                     for m, x in mine.items()}
            cls, prob, winner = decide(votes)
            won = mine[winner]
            r.update({"class": cls, "class_prob": prob, "count": won["count"],
                      "taxon": won.get("taxon"), "class_source": won.get("class_source"),
                      "votes": votes_json(votes), "winning_model": winner})
            boxes = {b for x in mine.values() for b in x["_box_classes"]}
            for box in boxes:
                own = {m: x["_box_classes"][box] for m, x in mine.items()
                       if box in x["_box_classes"]}
                box_votes = {m: (vote(o["class"], o.get("taxon")), _prob(o["class_prob"]))
                             for m, o in own.items()}
                box_cls, box_prob, box_winner = decide(box_votes)
                r["_box_classes"][box] = {**own[box_winner], "class": box_cls,
                                          "class_prob": box_prob, "model": box_winner,
                                          "votes": {m: list(v) for m, v in box_votes.items()}}


def _prob(p: float | None) -> float:
    """A class probability as a vote: none (a rule decided: nothing detected) is certain."""
    return 1.0 if p is None else float(p)


def _labeller(spec: str, prompts: PromptSet | None, settings: TrapSettings) -> Labeller:
    """A classifier loaded by its spec: an image-text model names prompt classes, a
    classifier with labels of its own (SpeciesNet) names its labels."""
    trust = settings.trust_checkpoint
    if speaks_prompts(spec):
        return ZeroShotLabeller(load_model(spec, kind="image-text", trust_checkpoint=trust),
                                prompts, settings)
    from kadr.traps.speciesnet import SpeciesNetLabeller

    return SpeciesNetLabeller(load_model(spec, kind="classifier", trust_checkpoint=trust),
                              settings)


def _box_dict(d: Detection, own_class: dict | None) -> dict:
    """One stored detection; a box that was classified on its own carries its class and
    that class's probability (``class``, ``class_prob``; SpeciesNet's also ``taxon``, how
    it was reached and the crop's top labels; with several classifiers the ``model``
    whose vote won and every model's ``votes``)."""
    return {**d.as_dict(), **(own_class or {})}


def trap_job(trap: TrapJob, settings: TrapSettings) -> Job:
    labellers = list(trap.labellers.values())
    # Crops come from the full-resolution photo; without them the models' sizes will do
    # (a detector whose decode_side is None wants the full photo).
    full_photo = any(getattr(lab, "crops", True) for lab in labellers) or (
        trap.detector is not None and trap.detector.decode_side is None)
    empty = {"detections": None, "n_animals": None, "class": None, "class_prob": None,
             "count": None, "top_bbox": None, "embedding": None}
    if not isinstance(trap.primary, ZeroShotLabeller | None) or len(labellers) > 1:
        empty |= {"taxon": None, "class_source": None}
    if len(labellers) > 1:
        empty |= {"votes": None, "winning_model": None}
    return Job(
        name="traps",
        prepare=trap.prepare,
        process=trap.process,
        min_side=None if full_photo else max(
            [trap.detector.decode_side if trap.detector else 0,
             *(lab.model.image_size for lab in labellers)]),
        batch_size=settings.batch_size,
        empty_result=empty,
        # The classifier fell back to the detector's labels: the results say so.
        fingerprint=trap_fingerprint(settings, None) if trap.note else None,
        notes=[trap.note] if trap.note else [],
        decode_between_batches=computes_on_cpu(trap.detector,
                                               *(lab.model for lab in labellers)),
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
                          {"registrations": len(regs), "disputed": disputed(regs)})


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
