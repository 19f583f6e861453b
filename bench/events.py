"""Registration throughput: kadr's default method against the seed's simple rule as a row loop.

One million photos (the case table's 21,013 rows repeated across 48x more
cameras, times shifted), in one run:

- baseline: the seed's simple rule written as a plain Python loop over rows;
- kadr: ``form_registrations(method="sessions")`` (vectorised), and the
  vectorised ``simple`` and ``window`` methods for reference.

    python bench/events.py [--photos 1000000]
    python bench/events.py --process [--rounds 3]   # whole processes, start-up and CSV included

``--process`` writes the table as the case's CSV and times, as whole
processes interleaved over rounds (best of each), the seed's rule as a plain
script (pandas reads the CSV, a row loop forms registrations, a CSV is written)
against ``kadr traps events CSV -o OUT``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kadr.traps.registrations import form_registrations
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


BASELINE_SCRIPT = """
import sys
import pandas as pd
df = pd.read_csv(sys.argv[1], parse_dates=["date_registration"])
df = df.sort_values(["name_folder", "date_registration"])
gap = pd.Timedelta(minutes=30)
regs, prev = [], None
for cam, t, cls, cnt in zip(df["name_folder"], df["date_registration"], df["class_predict"],
                            df["count"].fillna(1)):
    if cam != prev or not regs or cls != regs[-1][1] or cnt != regs[-1][4] or t - regs[-1][3] > gap:
        regs.append([cam, cls, t, t, cnt])
    else:
        regs[-1][3] = t
    prev = cam
pd.DataFrame(regs, columns=["name_folder", "class", "date_registration_start",
                            "date_registration_end", "count"]).to_csv(sys.argv[2], index=False)
"""


def process_bench(photos: pd.DataFrame, rounds: int) -> dict:
    """Whole processes, interleaved over rounds; the best time of each."""
    folder = Path(tempfile.mkdtemp(prefix="kadr-events-bench-"))
    table = folder / "photos.csv"
    pd.DataFrame({"name_folder": photos["camera"], "name": photos["file"],
                  "class_predict": photos["class"],
                  "date_registration": photos["time"].dt.strftime("%Y-%m-%d %H:%M:%S"),
                  "count": photos["count"]}).to_csv(table, index=False)
    kadr = [str(Path(sys.executable).parent / "kadr"), "traps", "events", str(table),
            "-o", str(folder / "kadr.csv")]
    baseline = [sys.executable, "-c", BASELINE_SCRIPT, str(table), str(folder / "plain.csv")]
    best = {"plain script": float("inf"), "kadr traps events": float("inf")}
    for _ in range(rounds):
        for name, cmd in (("plain script", baseline), ("kadr traps events", kadr)):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            best[name] = min(best[name], time.perf_counter() - t0)
    n = len(photos)
    return {"photos": n, "rounds": rounds,
            **{name: {"seconds": round(t, 2), "photos_per_s": round(n / t)}
               for name, t in best.items()},
            "kadr_vs_plain": round(best["plain script"] / best["kadr traps events"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=1_000_000)
    ap.add_argument("--process", action="store_true", help="time whole processes")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    photos = synthetic_table(args.photos)
    if args.process:
        print(json.dumps(process_bench(photos, args.rounds), indent=2))
        return
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
