"""MegaDetector batch output (format 1.4) for Timelapse and the MegaDetector tools, written
a camera at a time."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from kadr.core.status import PhotoStatus
from kadr.core.store import atomic_open
from kadr.core.video import is_video
from kadr.traps.tables import BACKGROUND_CLASSES

MD_CATEGORY_IDS = {"animal": "1", "person": "2", "vehicle": "3"}


def _one_box_per_animal(dets: list[dict], iou: float = 0.5) -> list[dict]:
    """MegaDetector has one animal class: overlapping boxes of different COCO animal labels
    (a "horse" and an "elephant" on one elephant) become one, as kadr counts them."""
    from kadr.core.models.detectors import nms

    animals = [d for d in dets if d["category"] == "animal"]
    if len(animals) < 2:
        return dets
    xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in animals)],
                    np.float32)
    keep = set(nms(xyxy, np.array([d["conf"] for d in animals], np.float32),
                   np.zeros(len(animals), np.int64), iou).tolist())
    kept = [d for i, d in enumerate(animals) if i in keep]
    return kept + [d for d in dets if d["category"] != "animal"]


def common_folder(key_chunks: Iterable[pd.Series]) -> str:
    """The folder that absolute keys (a manifest of absolute paths) share; "" otherwise.
    The keys come a chunk at a time."""
    folders: set[str] = set()
    for keys in key_chunks:
        if not keys.str.startswith(os.sep).all():
            return ""
        folders.update(keys.str.split("#", n=1).str[0].str.rsplit(os.sep, n=1).str[0].unique())
    return os.path.commonpath([f or os.sep for f in folders]) if folders else ""


@contextlib.contextmanager
def megadetector_json(path: str | Path, fingerprint: dict, labels: Iterable, root: str = ""
                      ) -> Iterator[Callable[[pd.DataFrame], None]]:
    """MegaDetector batch output (format 1.4) with per-box classifications, written a chunk
    of photos at a time: yields the function that writes one chunk (its photos' ``key``,
    ``status``, ``reason``, ``time``, ``detections``, ``class``, ``class_prob`` and, once
    reviewed, ``human_class``).

    ``labels``: every class a photo has (the classification categories are those that
    are not background); ``root``: the image folder that files are relative to
    (:func:`common_folder`). Timelapse and the MegaDetector postprocessing tools open the
    file. Boxes of COCO labels that are not animal/person/vehicle are left out (the
    per-photo table keeps them).
    """
    class_names = sorted(c for c in {str(c) for c in labels}
                         if c.lower() not in BACKGROUND_CLASSES)
    class_ids = {c: str(i + 1) for i, c in enumerate(class_names)}
    head = {
        "detection_categories": {v: k for k, v in MD_CATEGORY_IDS.items()},
        "classification_categories": {v: k for k, v in class_ids.items()},
        "info": {
            "format_version": "1.4",
            "detector": fingerprint.get("detector"),
            "classifier": (fingerprint.get("classifier") or {}).get("model"),
            "detection_completion_time": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "detector_metadata": {"typical_detection_threshold": fingerprint.get("threshold")},
        },
    }
    with atomic_open(path) as f:
        f.write(json.dumps(head, indent=1)[:-2] + ',\n "images": [')
        separator = "\n  "

        def write(chunk: pd.DataFrame) -> None:
            nonlocal separator
            for r in chunk.to_dict("records"):
                f.write(separator + json.dumps(_md_image(r, root, class_ids)))
                separator = ",\n  "

        yield write
        f.write("\n ]\n}\n")


def _md_image(r: dict, root: str, class_ids: dict[str, str]) -> dict:
    """One photo's entry of a MegaDetector batch output."""
    # Timelapse and MegaDetector's tools read ``file`` relative to the image folder.
    entry: dict = {"file": os.path.relpath(r["key"], root) if root else r["key"]}
    if r["status"] != PhotoStatus.OK:
        # The format's failed image: a failure string and detections null (MegaDetector's
        # validator warns without it; Timelapse tells "not processed" from "nothing found").
        entry["failure"] = f"{r['status']}: {r['reason']}"
        entry["detections"] = None
        if is_video(r["key"]):  # a clip that could not be read: the format's video entry
            entry["frame_rate"] = -1  # unknown, as MegaDetector's video tools write it
        return entry
    dets = []
    for d in _one_box_per_animal(json.loads(r["detections"] or "[]")):
        cat = MD_CATEGORY_IDS.get(d["category"])
        if cat is None:
            continue
        det = {"category": cat, "conf": d["conf"], "bbox": d["bbox"]}
        decided = r.get("human_class")
        if cat == "1" and isinstance(decided, str):  # a reviewer's class is certain
            if decided in class_ids:
                det["classifications"] = [[class_ids[decided], 1.0]]
        elif cat == "1" and d.get("class") in class_ids:  # the box's own crop's class
            det["classifications"] = [[class_ids[d["class"]], float(d["class_prob"])]]
        elif cat == "1" and r.get("class") in class_ids:  # no crop of its own: the photo's
            prob = r.get("class_prob")
            det["classifications"] = [[class_ids[r["class"]],
                                       float(prob) if pd.notna(prob) else d["conf"]]]
        dets.append(det)
    entry["detections"] = dets
    entry["max_detection_conf"] = max((d["conf"] for d in dets), default=0.0)
    if pd.notna(r["time"]):
        entry["datetime"] = pd.Timestamp(r["time"]).strftime("%Y:%m:%d %H:%M:%S")
    return entry
