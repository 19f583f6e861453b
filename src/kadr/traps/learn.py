"""``kadr traps learn``: a per-project classifier from the reviewers' decisions.

``traps run`` keeps, per photo, the classifier's image embedding of its
animals (float32). A registration's feature is the mean of its photos'.
On the reviewed registrations this fits a logistic regression and mixes it
with the zero-shot text prior in log space,

    log p = a * log p_learned + (1 - a) * log p_zero_shot,

choosing ``a`` by cross-validation on the reviewed set only (``a = 0`` is
zero-shot alone, so learning never chooses to be worse on that set). Classes
a reviewer typed that the prompts do not have get a small prior and are
learned from the examples alone. Every unreviewed registration is then
re-scored (``learned.parquet``), which re-orders the review queue and
reaches the exports; ``learn.json`` holds the cross-validated figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from kadr.core.store import atomic_write_table, atomic_write_text, read_shards, shard_files
from kadr.traps.decisions import read_decisions
from kadr.traps.review import ReviewState, read_run
from kadr.traps.settings import saved_prompts
from kadr.traps.tables import EMPTY

MIN_PER_CLASS = 3
MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)
NEW_CLASS_PRIOR = 1e-3  # zero-shot probability of a class the prompts do not name


class LearnError(ValueError):
    """Too little to learn from, or nothing to learn with; the message says which."""


def photo_embeddings(out_dir: Path) -> dict[str, np.ndarray]:
    """Per photo id, the classifier embedding ``traps run`` stored (absent: no classifier)."""
    store = out_dir / "photos.store"
    if store.exists():
        table = (read_shards(store, columns=["photo_id", "embedding"])
                 if _has_embeddings(store) else None)
    else:
        table = pd.read_parquet(out_dir / "photos.parquet")
        table = table[["photo_id", "embedding"]] if "embedding" in table else None
    if table is None:
        return {}
    frame = table if isinstance(table, pd.DataFrame) else table.to_pandas()
    frame = frame[frame["embedding"].notna()]
    return {p: np.asarray(v, np.float32) for p, v in zip(frame["photo_id"], frame["embedding"],
                                                         strict=True)}


def _has_embeddings(store: Path) -> bool:
    import pyarrow.parquet as pq

    shards = shard_files(store)
    return bool(shards) and all("embedding" in pq.read_schema(p).names for p in shards)


def unit_features(state: ReviewState, vectors: dict[str, np.ndarray]
                  ) -> tuple[list[str], np.ndarray]:
    """Unit ids with at least one embedded photo, and their mean (renormalised) embedding."""
    ids, rows = [], []
    for u in state.units.values():
        vs = [vectors[p] for p in state.pid[u.rows] if p in vectors]
        if vs:
            m = np.mean(vs, axis=0)
            ids.append(u.id)
            rows.append(m / max(float(np.linalg.norm(m)), 1e-12))
    return ids, np.array(rows, np.float32)


def zero_shot_prior(state: ReviewState, unit_ids: list[str], classes: list[str],
                    background: set[str]) -> np.ndarray:
    """The zero-shot probabilities of ``classes`` per unit (mean over its photos), with
    the background classes pooled into "empty" and new classes given a small prior."""
    names = [c[2:] for c in state.prob_columns]
    out = np.full((len(unit_ids), len(classes)), NEW_CLASS_PRIOR, np.float64)
    if state.probs is None:
        return out / out.sum(1, keepdims=True)
    for i, uid in enumerate(unit_ids):
        p = np.nan_to_num(np.nanmean(state.probs[state.units[uid].rows], axis=0))
        for j, c in enumerate(classes):
            if c == EMPTY:
                v = sum(p[k] for k, n in enumerate(names) if n in background or n == EMPTY)
            else:
                v = p[names.index(c)] if c in names else 0.0
            out[i, j] = max(float(v), NEW_CLASS_PRIOR)
    return out / out.sum(1, keepdims=True)


def mix(p_learned: np.ndarray, prior: np.ndarray, a: float) -> np.ndarray:
    logp = a * np.log(np.clip(p_learned, 1e-9, 1)) + (1 - a) * np.log(np.clip(prior, 1e-9, 1))
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(1, keepdims=True)


def _fit(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced").fit(x, y)


def _class_probs(model, x: np.ndarray, classes: list[str]) -> np.ndarray:
    """The model's probabilities in ``classes`` order (0 for a class it was not fit on)."""
    p = np.zeros((len(x), len(classes)))
    p[:, [classes.index(c) for c in model.classes_]] = model.predict_proba(x)
    return p


def cross_validate(x: np.ndarray, y: np.ndarray, prior: np.ndarray, classes: list[str],
                   folds: int = 5, seed: int = 0) -> tuple[float, np.ndarray]:
    """The mix chosen on held-out folds and its out-of-fold predictions."""
    from sklearn.model_selection import StratifiedKFold

    n_splits = max(2, min(folds, int(pd.Series(y).value_counts().min())))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    held_out = np.zeros((len(MIXES), len(y), len(classes)))
    for train, test in splitter.split(x, y):
        p = _class_probs(_fit(x[train], y[train]), x[test], classes)
        for k, a in enumerate(MIXES):
            held_out[k, test] = mix(p, prior[test], a)
    truth = np.array([classes.index(c) for c in y])
    accuracy = [(held_out[k].argmax(1) == truth).mean() for k in range(len(MIXES))]
    best = int(np.argmax(accuracy))  # the first best: the least learned weight on a tie
    return MIXES[best], held_out[best].argmax(1)


def learn_run(out: str | Path, min_per_class: int = MIN_PER_CLASS, folds: int = 5) -> dict:
    """Fit on the reviewed registrations of a run folder and re-score the rest."""
    out_dir = Path(out)
    table, settings = read_run(out_dir)
    state = ReviewState(table, settings, read_decisions(out_dir))  # without earlier learning
    vectors = photo_embeddings(out_dir)
    if not vectors:
        raise LearnError(
            f"{out_dir} has no classifier embeddings: it was made with --classifier none or "
            "by an older kadr. Rerun `kadr traps run` with a classifier on the same folder "
            "(decisions are kept), then learn.")
    unit_ids, features = unit_features(state, vectors)
    index = {u: i for i, u in enumerate(unit_ids)}
    reviewed = [u for u in state.units.values() if u.reviewed and u.id in index]
    counts = pd.Series([u.cls for u in reviewed], dtype=object).value_counts()
    classes = sorted(counts[counts >= min_per_class].index)
    too_few = {c: int(n) for c, n in counts.items() if n < min_per_class}
    if len(classes) < 2:
        have = ", ".join(f"{c} {n}" for c, n in counts.items()) or "none"
        raise LearnError(
            f"too few reviewed registrations to learn from: each class needs at least "
            f"{min_per_class} and at least two classes must have them (reviewed: {have}). "
            "Review more, then learn again.")
    train = [u for u in reviewed if u.cls in classes]
    x = features[[index[u.id] for u in train]]
    y = np.array([u.cls for u in train], dtype=object)
    background = _background(settings)
    prior = zero_shot_prior(state, [u.id for u in train], classes, background)
    a, predicted = cross_validate(x, y, prior, classes, folds)
    machine = np.array([u.machine_cls for u in train], dtype=object)
    learned_right = np.array(classes, dtype=object)[predicted] == y
    per_class = [{"class": c, "reviewed": int((y == c).sum()),
                  "zero_shot_accuracy": round(float((machine[y == c] == c).mean()), 4),
                  "learned_accuracy": round(float(learned_right[y == c].mean()), 4)}
                 for c in classes]
    # The final model on every reviewed example; every unreviewed unit re-scored.
    model = _fit(x, y)
    todo = [u for u in state.units.values() if not u.reviewed and u.id in index and not u.blank]
    scores = np.zeros((0, len(classes)))
    if todo:
        p = _class_probs(model, features[[index[u.id] for u in todo]], classes)
        scores = mix(p, zero_shot_prior(state, [u.id for u in todo], classes, background), a)
    frame = pd.DataFrame(scores.astype(np.float32), columns=[f"p_{c}" for c in classes])
    frame.insert(0, "unit", [u.id for u in todo])
    atomic_write_table(out_dir / "learned.parquet", pa.Table.from_pandas(frame,
                                                                        preserve_index=False))
    changed = int(sum(classes[int(k)] != u.cls for u, k in zip(todo, scores.argmax(1),
                                                               strict=True))) if todo else 0
    report = {
        "classes": classes, "left_out": too_few, "reviewed": len(train), "mix": a,
        "zero_shot_accuracy": round(float((machine == y).mean()), 4),
        "learned_accuracy": round(float(learned_right.mean()), 4),
        "per_class": per_class, "rescored": len(todo), "changed_class": changed,
        "message": (f"learned {len(classes)} classes from {len(train)} reviewed registrations: "
                    f"cross-validated accuracy {learned_right.mean():.0%} (zero-shot "
                    f"{(machine == y).mean():.0%}), weight of the learned part {a}; "
                    f"{len(todo)} registrations re-scored, {changed} change class"
                    + (f"; left out (too few): {', '.join(too_few)}" if too_few else "")),
    }
    atomic_write_text(out_dir / "learn.json", json.dumps(report, indent=2))
    return report


def _background(settings: dict) -> set[str]:
    prompts = saved_prompts(settings)
    return set(prompts.background) if prompts else set()
