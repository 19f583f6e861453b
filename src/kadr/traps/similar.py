"""Registrations that look alike: "more like this" and the review order.

A registration's vector is the mean of its photos' classifier embeddings
(what ``traps run`` stored, :func:`kadr.traps.learn.photo_embeddings`).

- :meth:`UnitVectors.nearest`: from one registration, the unreviewed ones whose
  vectors are nearest (cosine), for one bulk decision.
- :meth:`UnitVectors.usefulness`: the default review order, least certain *and*
  most typical first (information density: uncertainty times the cosine to the
  mean vector of the registration's class, mapped to 0..1). Least certain alone
  spends the first reviews on outliers (a blurred crop, a half animal) that
  teach the learned classifier little; typical uncertain ones sit where the
  classes meet, and each answer moves that boundary for many others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kadr.traps.learn import photo_embeddings
from kadr.traps.review import ReviewState, Unit


class UnitVectors:
    """The photos' embeddings of one run, aligned with a review state's photo rows."""

    def __init__(self, out_dir: str | Path, state: ReviewState):
        vectors = photo_embeddings(Path(out_dir))
        dim = len(next(iter(vectors.values()))) if vectors else 0
        # float16: half the memory of a season's photos; cosines need no more.
        self.photos = np.full((len(state.pid), dim), np.nan, np.float16)
        for row, pid in enumerate(state.pid):
            v = vectors.get(pid)
            if v is not None:
                self.photos[row] = v
        self.has = ~np.isnan(self.photos[:, 0]) if dim else np.zeros(len(state.pid), bool)
        self.cache: dict[str, tuple[int, np.ndarray | None]] = {}  # unit id -> (photos, vector)

    @property
    def available(self) -> bool:
        return bool(self.has.any())

    def of(self, units: list[Unit]) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors (normalised mean of their embedded photos) and which units have one."""
        out = np.zeros((len(units), self.photos.shape[1]), np.float32)
        ok = np.zeros(len(units), bool)
        for i, u in enumerate(units):
            known = self.cache.get(u.id)
            if known is None or known[0] != len(u.rows):  # a unit id keeps its photos
                rows = u.rows[self.has[u.rows]] if len(u.rows) else u.rows
                m = self.photos[rows].astype(np.float32).mean(0) if len(rows) else None
                known = (len(u.rows), None if m is None else m / max(float(np.linalg.norm(m)),
                                                                      1e-12))
                self.cache[u.id] = known
            if known[1] is not None:
                out[i], ok[i] = known[1], True
        return out, ok

    def nearest(self, unit: Unit, candidates: list[Unit], n: int = 20) -> list[tuple[Unit, float]]:
        """The ``n`` candidates most like ``unit`` (cosine of their vectors), nearest first."""
        here, ok = self.of([unit])
        if not ok[0]:
            raise ValueError("this registration has no classifier embedding to compare with")
        candidates = [c for c in candidates if c.id != unit.id]
        vecs, has = self.of(candidates)
        sims = np.where(has, vecs @ here[0], -np.inf)
        order = np.argsort(-sims, kind="stable")[:n]
        return [(candidates[i], float(sims[i])) for i in order if np.isfinite(sims[i])]

    def usefulness(self, units: list[Unit]) -> dict[str, float]:
        """Per unit, uncertainty times typicality: the default review order, highest first."""
        vecs, has = self.of(units)
        classes = np.array([u.cls for u in units], dtype=object)
        typical = np.full(len(units), 0.5)
        for c in set(classes[has]):
            members = has & (classes == c)
            centre = vecs[members].mean(0)
            centre /= max(float(np.linalg.norm(centre)), 1e-12)
            typical[members] = (1 + vecs[members] @ centre) / 2
        return {u.id: u.uncertainty * t for u, t in zip(units, typical, strict=True)}
