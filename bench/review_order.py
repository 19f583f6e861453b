"""Which review order teaches ``traps learn`` most per decision.

On the planted set of :mod:`kadr.traps.planted` (embeddings carry the class; a quarter
are outliers the zero-shot classifier is least sure of), N registrations are reviewed in
each order, then ``traps learn`` names the rest; the figure is the share of every
registration that is right (reviewed ones count as right). Orders: kadr's default
(least certain and most typical first), least certain alone, and random. The mean over
seeds is printed per N.

    python bench/review_order.py --reviews 20 40 80 --seeds 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from kadr.traps.planted import accuracy_after

ORDERS = ("useful", "uncertain", "random")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reviews", type=int, nargs="+", default=[10, 20, 40, 80])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n", type=int, default=240, help="registrations in the planted set")
    args = ap.parse_args()
    print(f"accuracy after N reviews and `traps learn`, {args.n} registrations, "
          f"mean of {args.seeds} seeds")
    print("| N | " + " | ".join(ORDERS) + " |")
    print("| --- |" + " --- |" * len(ORDERS))
    for n in args.reviews:
        cells = []
        for order in ORDERS:
            with tempfile.TemporaryDirectory() as d:
                accs = [accuracy_after(order, n, Path(d) / str(s), seed=s, n=args.n)
                        for s in range(args.seeds)]
            cells.append(f"{np.mean(accs):.3f}")
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
