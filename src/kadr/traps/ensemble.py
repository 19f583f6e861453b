"""Several classifiers on one run (``--classifier A --classifier B``): their votes, the class
they decide together, and whether they agree. Plain functions on classes and
probabilities (no model).

Each classifier names a photo (and each of its animal boxes) in its own words; a
class is brought into the run's words first (:class:`RunClasses`: a SpeciesNet label
becomes the prompt class with the same scientific name or common name). Then, per
photo or box, the classes are a soft vote: each model adds its probability to its
class, the class with the largest sum wins, its probability is that sum over the
number of models (two models sure of one class: high; one sure, one of another mind:
half), and the *winning model* is the most confident of those that voted for it.

Per registration each model's class is the vote of its photos (each photo's class
weighted by that model's probability); the models agree when all of them give the
registration's class. A review looks at disagreements first, and Camtrap DP names the
winning model in ``classifiedBy``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kadr.traps.tables import EMPTY
from kadr.traps.taxa import scientific_name

if TYPE_CHECKING:
    import pandas as pd

    from kadr.traps.prompts import PromptSet

Vote = tuple[str, float]  # a model's class and its probability


class RunClasses:
    """The run's class names, to which every model's classes are brought: a prompt class
    is its own name; a SpeciesNet label the prompt class of its scientific name, else of
    its common name (in any case), else its common name."""

    def __init__(self, prompts: PromptSet | None):
        classes = prompts.classes if prompts else []
        self.by_taxon = {c.scientific_name.casefold(): c.name for c in classes
                         if c.scientific_name}
        self.by_name = {c.name.casefold(): c.name for c in classes}

    def of(self, cls: str, taxon: str | None = None) -> str:
        if cls == EMPTY:
            return cls
        if taxon:
            named = scientific_name(taxon)
            if named and named[0].casefold() in self.by_taxon:
                return self.by_taxon[named[0].casefold()]
        return self.by_name.get(cls.casefold(), cls)


def decide(votes: dict[str, Vote]) -> tuple[str, float, str]:
    """(class, probability, winning model) of one photo's or box's votes, by model (see
    the module). Ties go to the model named first."""
    totals: dict[str, float] = {}
    for cls, prob in votes.values():
        totals[cls] = totals.get(cls, 0.0) + prob
    cls = max(totals, key=lambda c: round(totals[c], 9))
    winner = max((m for m, (c, _) in votes.items() if c == cls),
                 key=lambda m: round(votes[m][1], 9))
    return cls, round(totals[cls] / len(votes), 4), winner


def votes_json(votes: dict[str, Vote]) -> str:
    """A photo's votes as stored: ``{"model": ["class", probability], ...}``."""
    return json.dumps({m: [c, round(p, 4)] for m, (c, p) in votes.items()})


def model_classes(stored: Iterable[str | None]) -> dict[str, tuple[str, float]]:
    """Per model, its class over the given photos' stored votes (:func:`votes_json`) and
    that class's summed probability; {} where no photo has votes. A photo a model thinks
    empty says nothing of which animal the others saw; a model that thinks them all
    empty gives the registration the empty class."""
    sums: dict[str, dict[str, float]] = {}
    for text in stored:
        if not isinstance(text, str) or not text:
            continue
        for model, (cls, prob) in json.loads(text).items():
            per = sums.setdefault(model, {})
            if cls != EMPTY:
                per[cls] = per.get(cls, 0.0) + float(prob)
    return {m: max(per.items(), key=lambda kv: round(kv[1], 9)) if per else (EMPTY, 0.0)
            for m, per in sums.items()}


def registration_verdict(stored: Iterable[str | None], cls: str) -> dict:
    """The ensemble's columns of one registration of class ``cls`` from its photos' votes:
    ``model_classes`` (JSON, model: class), ``models_agree`` and ``winning_model`` (the
    model most sure of ``cls``; None where no model gives it); all None without votes."""
    per_model = model_classes(stored)
    if not per_model:
        return {"model_classes": None, "models_agree": None, "winning_model": None}
    backing = [(total, m) for m, (c, total) in per_model.items() if c == cls]
    return {"model_classes": json.dumps({m: c for m, (c, _) in per_model.items()}),
            "models_agree": len(backing) == len(per_model),
            "winning_model": max(backing)[1] if backing else None}


ENSEMBLE_COLUMNS = ("model_classes", "models_agree", "winning_model")


def with_verdicts(regs: pd.DataFrame, photos: pd.DataFrame) -> pd.DataFrame:
    """Registrations (with ``eventID``) and the ensemble's columns
    (:func:`registration_verdict`) from their photos' votes (``event_id``, ``votes``);
    as they are when the photos have no votes (one classifier)."""
    if "votes" not in photos or regs.empty:
        return regs
    by_event = photos.groupby("event_id")["votes"].agg(list)
    verdicts = [registration_verdict(by_event.get(e, []), c)
                for e, c in zip(regs["eventID"], regs["class"], strict=True)]
    return regs.assign(**{c: [v[c] for v in verdicts] for c in ENSEMBLE_COLUMNS})


def disputed(regs: pd.DataFrame) -> int | None:
    """How many registrations the classifiers disagree on; None with one classifier."""
    return int(regs["models_agree"].eq(False).sum()) if "models_agree" in regs else None
