"""A planted review set: registrations whose embeddings carry the class, for measuring how
much each review order teaches ``traps learn`` (``bench/review_order.py`` and its test).

Three kinds of registration, as a season's cameras give them: typical ones near their
species' centre, ones between two species, and outliers (a blur, a half animal) whose
embedding says little. The zero-shot probabilities are right about half the time and
least sure on the outliers, which is where "least certain first" spends its reviews.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from kadr.core.store import output_folder
from kadr.traps.learn import LearnError, learn_run
from kadr.traps.review import load_state
from kadr.traps.review_app import Review

CLASSES = ("badger", "fox", "marten", "deer")


def planted_run(root: Path, n: int = 240, seed: int = 0, dim: int = 24) -> tuple[Path, dict]:
    """A ``traps run`` output folder (no photos on disk) and the true class per photo id."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), dim)) * 1.2
    t0 = datetime(2024, 7, 1)
    rows, truth = [], {}
    for i in range(n):
        k = int(rng.integers(len(CLASSES)))
        kind = rng.choice(["typical", "between", "outlier"], p=[0.55, 0.2, 0.25])
        if kind == "typical":
            v = centres[k] + 0.6 * rng.normal(size=dim)
            p = rng.dirichlet(np.ones(len(CLASSES)) * 2)
            p[k] += 0.25
        elif kind == "between":
            other = (k + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)
            v = 0.6 * centres[k] + 0.4 * centres[other] + 0.6 * rng.normal(size=dim)
            p = rng.dirichlet(np.ones(len(CLASSES)) * 2)
        else:
            v = 3.0 * rng.normal(size=dim)
            p = rng.dirichlet(np.ones(len(CLASSES)) * 30)  # nearly uniform: least sure
        p = p / p.sum()
        said = CLASSES[int(p.argmax())]
        pid = f"p{i:05d}"
        rows.append({
            "key": f"cam/{pid}.jpg", "path": str(root / "photos" / f"{pid}.jpg"), "group": "cam",
            "photo_id": pid, "time": t0 + timedelta(hours=2 * i), "time_source": "exif",
            "width": 64, "height": 48, "format": "JPEG", "mode": "RGB", "status": "ok",
            "reason": None, "detections": json.dumps([{"label": said, "category": "animal",
                                                      "conf": 0.9,
                                                      "bbox": [0.2, 0.2, 0.3, 0.3]}]),
            "n_animals": 1, "class": said, "class_prob": float(p.max()), "count": 1,
            "top_bbox": None, **{f"p_{c}": float(x) for c, x in zip(CLASSES, p, strict=True)},
            "embedding": (v / np.linalg.norm(v)).astype(np.float32)})
        truth[pid] = CLASSES[k]
    out = root / "out"
    output_folder(out)
    pd.DataFrame(rows).to_parquet(out / "photos.parquet")
    settings = {"detector": "yolox:none.onnx", "classifier": None, "method": "sessions",
                "gap": "30m", "threshold": 0.3}
    (out / "summary.json").write_text(json.dumps({"settings": settings}))
    return out, truth


def accuracy_after(order: str, reviews: int, root: Path, seed: int = 0, n: int = 240) -> float:
    """Accuracy over every registration after ``reviews`` decisions taken in ``order``
    (``useful``: kadr's default, ``uncertain``: least certain alone, ``random``), then
    ``traps learn``: reviewed ones count as right, the rest as learning names them."""
    out, truth = planted_run(root, n=n, seed=seed)
    review = Review(out, "bench")
    if order == "random":
        units = sorted(review.state.units.values(), key=lambda u: u.id)
        picked = [units[i] for i in np.random.default_rng(seed + 1).permutation(len(units))]
    else:
        picked = [review.state.units[u["id"]] for u in review.queue(
            {"sort": order, "reviewed": "no"})["units"]]
    for u in picked[:reviews]:
        review.decide({"action": "label", "units": [{"id": u.id, "etag": u.etag}],
                       "cls": truth[review.state.pid[u.rows[0]]]})
    try:
        learn_run(out)
    except LearnError:
        pass  # too few of some class: the zero-shot classes stand
    state = load_state(out)
    right = [u.cls == truth[state.pid[u.rows[0]]] for u in state.units.values()]
    return float(np.mean(right))
