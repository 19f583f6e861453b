"""Engine overhead: photos/s for ``local`` and for ``ray`` with 1 and 2 actors, one run.

Same job (open_clip ViT-B-32 at random weights, batch 32) on the same real
room photos from ../shared/data/interiors (or generated 414x309 JPEGs).
Ray's start-up is timed apart from the throughput.

    python bench/scale.py [--photos 192]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from embed import make_photos  # noqa: E402

from kadr.core.runner import EngineOptions  # noqa: E402
from kadr.embed import embed_photos  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "interiors"
SPEC = "open_clip:ViT-B-32@random"


def photos(folder: Path, n: int) -> None:
    files = sorted(SHARED.rglob("*.jpg"))[:n] if SHARED.exists() else []
    if len(files) < n:
        make_photos(folder, n, (414, 309))
        return
    folder.mkdir(parents=True)
    for p in files:
        shutil.copy(p, folder / p.name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=192)
    args = ap.parse_args()
    import ray

    results: dict = {"model": SPEC, "photos": args.photos}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos(tmp / "p", args.photos)
        embed_photos(str(tmp / "p"), str(tmp / "warm"), SPEC, progress=False)  # caches, imports
        t0 = time.perf_counter()
        embed_photos(str(tmp / "p"), str(tmp / "local"), SPEC, progress=False)
        local = args.photos / (time.perf_counter() - t0)
        results["local_photos_per_s"] = round(local, 1)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        results["ray_start_s"] = round(time.perf_counter() - t0, 1)
        for actors in (1, 2):
            engine = EngineOptions("ray", actors=actors, cpus_per_actor=2 / actors)
            t0 = time.perf_counter()
            embed_photos(str(tmp / "p"), str(tmp / f"ray{actors}"), SPEC, progress=False,
                         engine=engine)
            rate = args.photos / (time.perf_counter() - t0)
            results[f"ray_{actors}_actor_photos_per_s"] = round(rate, 1)
            results[f"ray_{actors}_actor_vs_local"] = round(rate / local, 2)
            print(json.dumps(results), flush=True)
        ray.shutdown()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
