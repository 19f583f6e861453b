"""Registration throughput: kadr's default method against the seed's simple rule as a row loop.

One million photos (the case table's 21,013 rows repeated across 48x more
cameras, times shifted), in one run:

- baseline: the seed's simple rule written as a plain Python loop over rows;
- kadr: ``form_registrations(method="sessions")`` (vectorised), and the
  vectorised ``simple`` and ``window`` methods for reference.

    python bench/events.py [--photos 1000000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kadr.traps.events import form_registrations
from kadr.traps.tables import read_photo_table

CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "priroda" / "registration.csv"


def synthetic_table(n: int) -> pd.DataFrame:
    """The real table when present (repeated to ``n`` rows on new cameras), else random visits."""
    if CASE.exists():
        base = read_photo_table(str(CASE))
    else:
        rng = np.random.default_rng(0)
        m = 20_000
        t = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.cumsum(rng.exponential(600, m)), "s")
        base = pd.DataFrame({"camera": "1", "file": [f"f{i}" for i in range(m)], "time": t,
                             "class": rng.choice(["Bear", "Wolf", "Fox"], m),
                             "count": rng.integers(1, 3, m).astype(float), "confidence": 1.0,
                             "row_status": "ok"})
    reps = int(np.ceil(n / len(base)))
    parts = [base.assign(camera=base["camera"] + f"_{r}", file=base["file"] + f"_{r}")
             for r in range(reps)]
    return pd.concat(parts, ignore_index=True).iloc[:n]


def simple_rule_loop(photos: pd.DataFrame, gap=pd.Timedelta(minutes=30)) -> list[tuple]:
    """The seed's simple rule, the way a notebook writes it: one row at a time."""
    regs: list[list] = []
    df = photos.sort_values(["camera", "time"])
    prev_cam = None
    for cam, t, cls, cnt in zip(df["camera"], df["time"], df["class"], df["count"].fillna(1),
                                strict=True):
        if (cam != prev_cam or not regs or cls != regs[-1][1] or cnt != regs[-1][4]
                or t - regs[-1][3] > gap):
            regs.append([cam, cls, t, t, cnt])
        else:
            regs[-1][3] = t
        prev_cam = cam
    return [tuple(r) for r in regs]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=1_000_000)
    args = ap.parse_args()
    photos = synthetic_table(args.photos)
    n = len(photos)
    results = {"photos": n}
    base, tb = timed(lambda: simple_rule_loop(photos))
    results["baseline_simple_loop"] = {"seconds": round(tb, 2), "photos_per_s": round(n / tb)}
    for method in ("sessions", "simple", "window"):
        regs, t = timed(lambda m=method: form_registrations(photos, m))
        results[method] = {"seconds": round(t, 2), "photos_per_s": round(n / t),
                           "registrations": len(regs), "speedup_vs_baseline": round(tb / t, 1)}
    results["baseline_simple_loop"]["registrations"] = len(base)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
