"""Machine versus reviewers: per class, reviewed registrations, precision and recall, and the
confusion matrix (``review-agreement.csv``, ``review-confusion.csv``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kadr.core.store import atomic_write_text


def agreement_tables(pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Machine versus human on the reviewed registrations (``pairs``: columns machine,
    human; "empty" where either said no animal).

    Per class: how many reviewed registrations the human gave that class, how many of
    them the machine got right, precision and recall; and the confusion matrix (rows:
    human, columns: machine)."""
    confusion = pd.crosstab(pairs["human"], pairs["machine"]) if len(pairs) else pd.DataFrame()
    classes = sorted(set(pairs["human"]) | set(pairs["machine"]))
    confusion = confusion.reindex(index=classes, columns=classes, fill_value=0)
    rows = []
    for c in classes:
        right = int(confusion.at[c, c])
        said = int(confusion[c].sum())
        truth = int(confusion.loc[c].sum())
        rows.append({"class": c, "reviewed": truth, "machine_predicted": said,
                     "machine_right": right,
                     "precision": round(right / said, 4) if said else None,
                     "recall": round(right / truth, 4) if truth else None})
    confusion.index.name = "human \\ machine"
    return pd.DataFrame(rows), confusion


def write_agreement(pairs: pd.DataFrame, out_dir: str | Path) -> dict:
    """``review-agreement.csv`` and ``review-confusion.csv``; returns both for the report."""
    table, confusion = agreement_tables(pairs)
    atomic_write_text(Path(out_dir) / "review-agreement.csv", table.to_csv(index=False))
    atomic_write_text(Path(out_dir) / "review-confusion.csv", confusion.to_csv())
    total = len(pairs)
    right = int((pairs["human"] == pairs["machine"]).sum()) if total else 0
    return {"table": table.to_dict("records"), "confusion": confusion, "reviewed": total,
            "right": right}
