"""The case's registration score ("animal registrations", Ministry of Natural Resources, 2024).

Per camera and class, reference and predicted registrations are sorted by
start and walked together:

- the two current intervals intersect (touching counts): a match; its IoU is
  added and its pair of counts (clipped to 1..5) kept for the count F1;
- the prediction lies wholly before the reference: a false proposal;
- the reference lies wholly before the prediction: missed.

Predictions left over when the references run out (including every
prediction for a camera/class with no reference) are false proposals too.

score = sum(IoU) / n_reference * weighted-F1(counts, labels 1..5)
        - 0.5 * false_proposals / n_reference

Zero-length registrations (one photo, start == end): intervals are compared
as closed sets of whole seconds, i.e. [start, end + 1 s). A single-photo
registration therefore has length 1 s and a defined IoU with anything it
overlaps. The case's worked example instead counts every matched pair as
fully found; ``iou="hit"`` reproduces that (and its 0.25).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

ONE_SECOND = np.timedelta64(1, "s")


@dataclass
class Score:
    score: float
    mean_iou: float  # sum of IoU / number of reference registrations
    count_f1: float
    n_reference: int
    n_predicted: int
    matched: int
    missed: int
    false_proposals: int
    per_class: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _walk(ref: pd.DataFrame, pred: pd.DataFrame, iou_mode: str):
    rs = ref["date_registration_start"].to_numpy()
    re_ = ref["date_registration_end"].to_numpy() + ONE_SECOND
    ps = pred["date_registration_start"].to_numpy()
    pe = pred["date_registration_end"].to_numpy() + ONE_SECOND
    rc, pc = ref["count"].to_numpy(), pred["count"].to_numpy()
    i = j = 0
    ious, pairs, false_p, missed = [], [], 0, 0
    while i < len(rs) and j < len(ps):
        if ps[j] < re_[i] and rs[i] < pe[j]:
            inter = min(re_[i], pe[j]) - max(rs[i], ps[j])
            union = max(re_[i], pe[j]) - min(rs[i], ps[j])
            ious.append(1.0 if iou_mode == "hit" else inter / union)
            pairs.append((rc[i], pc[j]))
            i += 1
            j += 1
        elif pe[j] <= rs[i]:
            false_p += 1
            j += 1
        else:
            missed += 1
            i += 1
    missed += len(rs) - i
    false_p += len(ps) - j
    return ious, pairs, false_p, missed


def score_registrations(
    reference: pd.DataFrame, predicted: pd.DataFrame, iou: str = "interval"
) -> Score:
    """Score predicted registrations against the reference (both in the case's columns)."""
    key = ["name_folder", "class"]
    ref = reference.sort_values([*key, "date_registration_start"], kind="stable")
    pred = predicted.sort_values([*key, "date_registration_start"], kind="stable")
    ref_groups = dict(list(ref.groupby(key, sort=False)))
    pred_groups = dict(list(pred.groupby(key, sort=False)))
    total_iou, all_pairs, false_p, missed = 0.0, [], 0, 0
    per_class: dict[str, dict] = {}
    for k in set(ref_groups) | set(pred_groups):
        r = ref_groups.get(k, ref.iloc[:0])
        p = pred_groups.get(k, pred.iloc[:0])
        ious, pairs, fp, ms = _walk(r, p, iou)
        total_iou += sum(ious)
        all_pairs += pairs
        false_p += fp
        missed += ms
        c = per_class.setdefault(k[1], {"reference": 0, "predicted": 0, "matched": 0,
                                        "iou_sum": 0.0, "missed": 0, "false_proposals": 0})
        c["reference"] += len(r)
        c["predicted"] += len(p)
        c["matched"] += len(pairs)
        c["iou_sum"] += float(sum(ious))
        c["missed"] += ms
        c["false_proposals"] += fp
    n_ref = len(ref)
    if all_pairs:
        y_true = np.clip([a for a, _ in all_pairs], 1, 5)
        y_pred = np.clip([b for _, b in all_pairs], 1, 5)
        f1 = float(f1_score(y_true, y_pred, labels=[1, 2, 3, 4, 5], average="weighted",
                            zero_division=0))
    else:
        f1 = 0.0
    mean_iou = total_iou / n_ref if n_ref else 0.0
    for c in per_class.values():
        c["mean_iou"] = c.pop("iou_sum") / c["reference"] if c["reference"] else 0.0
    score = mean_iou * f1 - 0.5 * (false_p / n_ref if n_ref else 0.0)
    return Score(
        score=float(score), mean_iou=float(mean_iou), count_f1=f1, n_reference=n_ref,
        n_predicted=len(pred), matched=len(all_pairs), missed=missed, false_proposals=false_p,
        per_class=dict(sorted(per_class.items())),
    )
