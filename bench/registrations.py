"""Every figure of the README's registrations score table, from the case's own table.

Reads ``../shared/data/priroda/registration.csv`` (21,013 photos, 2,172
published registrations), forms registrations from the per-photo
``class_predict`` and ``count`` with each method, and scores them against the
published registrations with the case's metric; then the default method on
degraded copies of the input. Caution: the ``sessions`` rule was designed
while looking at this table, so its figure is a fit, not a held-out estimate.

    python bench/registrations.py [--table PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from kadr.traps.registrations import form_registrations
from kadr.traps.score import score_registrations
from kadr.traps.tables import read_photo_table, read_registrations

CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "priroda" / "registration.csv"
METHODS = ("sessions", "window", "simple")


def degraded_variants(photos: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The per-photo table made worse the ways real inputs are: photos lost, class
    guesses noisier, counts off by one, photos listed twice."""
    rng = np.random.default_rng(seed)
    classes = photos["class"].unique()
    noisy = photos.copy()
    m = rng.random(len(photos)) < 0.1
    noisy.loc[m, "class"] = rng.choice(classes, m.sum())
    off = photos.copy()
    m = (rng.random(len(photos)) < 0.1) & photos["count"].notna()
    off.loc[m, "count"] = np.maximum(1, off.loc[m, "count"] + rng.choice([-1, 1], m.sum()))
    return {
        "20% of photos missing": photos.sample(frac=0.8, random_state=1),
        "10% of classes randomised": noisy,
        "10% of counts off by one": off,
        "10% of photos repeated": pd.concat([photos, photos.sample(frac=0.1, random_state=2)]),
    }


def score_table(path: str | Path) -> dict:
    photos, reference = read_photo_table(str(path)), read_registrations(str(path))
    methods = {}
    for method in METHODS:
        s = score_registrations(reference, form_registrations(photos, method))
        methods[method] = {"score": s.score, "mean_iou": s.mean_iou, "count_f1": s.count_f1,
                           "missed": s.missed, "false_proposals": s.false_proposals}
    degraded = {name: score_registrations(reference, form_registrations(variant)).score
                for name, variant in degraded_variants(photos).items()}
    return {"photos": len(photos), "reference_registrations": len(reference),
            "methods": methods, "degraded_default": degraded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(CASE))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = score_table(args.table)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['photos']} photos, {result['reference_registrations']} reference registrations")
    print("| method | score | mean IoU | count F1 | missed | false proposals |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method, m in result["methods"].items():
        print(f"| `{method}` | {m['score']:.3f} | {m['mean_iou']:.3f} | {m['count_f1']:.4f} | "
              f"{m['missed']} | {m['false_proposals']:,} |")
    print("Degraded inputs (default method): " + ", ".join(
        f"{name} {s:.3f}" for name, s in result["degraded_default"].items()))


if __name__ == "__main__":
    main()
