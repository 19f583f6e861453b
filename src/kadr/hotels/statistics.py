"""How a hotel collection is spread: imbalance per hotel, chain and source."""

from __future__ import annotations

import numpy as np
import pandas as pd


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of a count distribution (0 = perfectly even)."""
    x = np.sort(np.asarray(counts, dtype=float))
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def imbalance(counts: pd.Series) -> dict:
    c = counts.sort_values(ascending=False).to_numpy()
    n = len(c)
    top = lambda frac: float(c[: max(1, int(np.ceil(n * frac)))].sum() / c.sum()) if n else 0.0  # noqa: E731
    return {
        "groups": int(n), "photos": int(c.sum()), "min": int(c.min()) if n else 0,
        "median": float(np.median(c)) if n else 0.0, "mean": float(c.mean()) if n else 0.0,
        "max": int(c.max()) if n else 0, "gini": round(gini(c), 4),
        "top_1pct_share": round(top(0.01), 4), "top_10pct_share": round(top(0.10), 4),
    }


# Work a bucket of equal chunks may cause: beyond this many comparisons the bucket is left
# to the other chunks. Real perceptual hashes are skewed (plain walls, dark photos share
# most bits), and one hot bucket would otherwise make the search quadratic.

def group_columns(photos: pd.DataFrame) -> dict[str, str]:
    """Which columns say hotel, chain and source (Hotels-50K names or a manifest's)."""
    found = {}
    for what, names in (("hotel", ("extra_hotel_id", "group")),
                        ("chain", ("extra_chain_id", "extra_chain_name")),
                        ("source", ("extra_image_source", "extra_source"))):
        col = next((c for c in names if c in photos.columns and photos[c].notna().any()), None)
        if col and not (what == "hotel" and col == "group" and photos[col].nunique() <= 1):
            found[what] = col
    return found
