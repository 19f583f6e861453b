"""SpeciesNet in a camera-trap run: its classifier on the detections kadr found, then its
own ensemble (``SpeciesNetEnsemble.combine``: the detector and classifier thresholds, the
geofence by country and region, the taxonomic rollups) for each classified box.

A box's class is the ensemble's label for it (its common name; the full taxonomy
string is kept as ``taxon``, and how it was reached as ``class_source``, e.g.
``classifier+rollup_to_genus``). A photo's class is the vote of its boxes, each
weighted by its detection confidence, as a registration's class is the vote of its
photos. The package is imported where it is used: a run without SpeciesNet never
loads it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from kadr.core.models.detectors import Detection
from kadr.traps.tables import EMPTY
from kadr.traps.taxa import class_name

if TYPE_CHECKING:
    from kadr.core.models.speciesnet_backend import SpeciesNetModel
    from kadr.traps.settings import TrapSettings

# What SpeciesNet's own pipeline does (speciesnet.constants): detections at or above this
# confidence are classified, and the ensemble reads each crop's top five labels.
DETECTION_THRESHOLD_FOR_CLASSIFICATION = 0.1
TOP_K = 5
# kadr's detection categories as SpeciesNet's detector names them (MegaDetector's).
SPECIESNET_CATEGORY = {"animal": ("1", "animal"), "person": ("2", "human"),
                       "vehicle": ("3", "vehicle")}
DEFAULT_RELEASE = "v4.0.3a"


def speciesnet_detection(d: Detection) -> dict:
    """A detection as SpeciesNet's ensemble reads it, with the box and confidence as kadr
    stores them (four decimals, as MegaDetector writes them): a crop made again from the
    stored detections is the same crop."""
    stored = d.as_dict()
    category, label = SPECIESNET_CATEGORY[d.category]
    return {"category": category, "label": label, "conf": stored["conf"], "bbox": stored["bbox"]}


class SpeciesNetLabeller:
    """Names the animals of a batch of photos with SpeciesNet (see the module)."""

    def __init__(self, model: SpeciesNetModel, settings: TrapSettings):
        from speciesnet.ensemble import SpeciesNetEnsemble

        self.model = model
        self.ensemble = SpeciesNetEnsemble(str(model.folder), geofence=settings.geofence)
        self.geolocation = {"country": settings.country,
                            "admin1_region": settings.admin1_region}
        self.max_crops = settings.max_crops

    def label(self, results: list[dict]) -> None:
        """Sets each result's class, class_prob, count, taxon and class_source, and its
        boxes' own classes (``_box_classes``), from ``_detections`` and ``_image``."""
        from speciesnet.utils import build_classifier_result, select_detections_for_classification

        keys = [str(i) for i in range(len(results))]
        boxes, chosen, crops = [], [], []
        for r in results:
            dets = sorted((d for d in r["_detections"] if d.category in SPECIESNET_CATEGORY),
                          key=lambda d: -d.conf)
            sn = [speciesnet_detection(d) for d in dets]
            if self.model.whole_image:
                picked = []
                crops.append(self.model.preprocess(r["_image"], []))
            else:
                picked = select_detections_for_classification(
                    sn, DETECTION_THRESHOLD_FOR_CLASSIFICATION, self.max_crops)
                crops.append(self.model.preprocess(r["_image"], [sn[i]["bbox"] for i in picked])
                             if picked else [])
            boxes.append((dets, sn))
            chosen.append(picked)
        predictions = self.model.predict(crops, TOP_K)
        classifier_results = {
            key: build_classifier_result({"filepath": key, "classifications_list": p}, sn,
                                         picked, self.model.whole_image)
            for key, p, (_, sn), picked in zip(keys, predictions, boxes, chosen, strict=True)}
        combined = self.ensemble.combine(
            keys, classifier_results,
            {key: {"filepath": key, "detections": sn} for key, (_, sn) in zip(keys, boxes,
                                                                                strict=True)},
            {key: self.geolocation for key in keys},
            max_classifications_per_detection=TOP_K)
        for r, (dets, _), out in zip(results, boxes, combined, strict=True):
            self._name_photo(r, dets, out.get("detections") or [])

    def _name_photo(self, r: dict, dets: list[Detection], out: list[dict]) -> None:
        votes: dict[str, float] = {}
        best: dict[str, dict] = {}
        if self.model.whole_image:  # the photo's one classification, then the plain boxes
            pairs = [(None, out[0])] if out else []
        else:
            pairs = list(zip(dets, out, strict=True))
        for det, o in pairs:
            processed = o.get("processed_classification")
            if processed is None:
                continue
            own = {"class": class_name(processed["class"]),
                   "class_prob": round(float(processed["score"]), 4),
                   "taxon": processed["class"], "class_source": processed["source"],
                   "classifications": o["raw_classifications"]}
            weight = o["conf"] if det is not None else 1.0
            votes[own["class"]] = votes.get(own["class"], 0.0) + weight
            if own["class_prob"] >= best.get(own["class"], {}).get("class_prob", -1.0):
                best[own["class"]] = own
            if det is not None:
                r["_box_classes"][id(det)] = own
        n = r["n_animals"]
        if not votes:
            r.update({"class": EMPTY, "class_prob": None, "taxon": None, "class_source": None,
                      "count": n})
            return
        cls = max(votes, key=lambda c: votes[c])
        top = best[cls]
        count = n if n > 0 or cls in (EMPTY, "human", "vehicle") else None
        r.update({"class": cls, "class_prob": top["class_prob"], "taxon": top["taxon"],
                  "class_source": top["class_source"], "count": count})


def with_speciesnet_ensemble(settings: TrapSettings, model: str | None = None,
                             voters: list[str] = ()) -> TrapSettings:
    """The settings of SpeciesNet's whole pipeline (``--ensemble speciesnet[:MODEL]``): its
    classifier, and as the detector the MegaDetector file its model folder names.
    ``voters``: classifiers that vote with SpeciesNet's."""
    from kadr.core.models.speciesnet_backend import check_folder, detector_path, model_folder

    name = model or DEFAULT_RELEASE
    folder = model_folder(name)
    detector = detector_path(folder, check_folder(folder))
    return replace(settings, classifier=f"speciesnet:{name}", more_classifiers=list(voters),
                   detector=f"megadetector:{detector}")
