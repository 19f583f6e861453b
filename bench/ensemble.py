"""What a second classifier costs a camera-trap run: whole ``kadr traps run`` photos a
second with one classifier, with the other alone, and with both (an ensemble), on the
real test photos in ../shared with the real YOLOX-Nano; the classifiers at seeded random
weights of their real architectures (CLIP ViT-B-32 and BioCLIP's ViT-B-16: the released
weights' compute). Every run starts with an empty output folder (no resume), the three
interleaved over rounds, the best of each kept (the machine's speed drifts).

The ensemble's plain baseline is the two one-classifier runs back to back: the ratio
says what running both in one pass saves (one decode and one detection per photo) or
costs (the votes, the wider store).

    python bench/ensemble.py [--rounds 3] [--photos 24]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
TEST_IMAGES = SHARED / "data" / "camera_traps" / "cameratraps_repo" / "test_images" / "test_images"
CLASSIFIERS = {"ViT-B-32": "open_clip:ViT-B-32@random", "ViT-B-16": "open_clip:ViT-B-16@random"}


def photo_folder(folder: Path, n: int) -> Path:
    """n of the real test photos (repeated under new names when there are fewer), one
    camera."""
    sources = sorted(p for p in TEST_IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    camera = folder / "photos" / "cam1"
    camera.mkdir(parents=True)
    for i in range(n):
        src = sources[i % len(sources)]
        shutil.copy(src, camera / f"{i:03d}_{src.name}")
    return camera.parent


def run_seconds(photos: Path, out: Path, classifiers: list[str]) -> float:
    from kadr.traps.pipeline import TrapSettings, run_traps

    shutil.rmtree(out, ignore_errors=True)
    settings = TrapSettings(detector=f"yolox:{SHARED / 'models' / 'yolox_nano.onnx'}",
                            classifier=classifiers[0], more_classifiers=classifiers[1:],
                            progress=False)
    start = time.perf_counter()
    run_traps(str(photos), str(out), settings)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--photos", type=int, default=24)
    args = ap.parse_args()
    from kadr.core.models.precision import cpu_features

    configs = {name: [spec] for name, spec in CLASSIFIERS.items()}
    configs["both (ensemble)"] = list(CLASSIFIERS.values())
    best = dict.fromkeys(configs, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        photos = photo_folder(Path(tmp), args.photos)
        run_seconds(photos, Path(tmp) / "warm", configs["both (ensemble)"])  # caches, kernels
        for i in range(args.rounds):
            for name, specs in configs.items():
                best[name] = min(best[name], run_seconds(photos, Path(tmp) / "out", specs))
            print(f"round {i + 1}: " + ", ".join(
                f"{k} {args.photos / v:.2f} photos/s" for k, v in best.items()), flush=True)
    one_after_other = sum(best[name] for name in CLASSIFIERS)
    print(json.dumps({
        "cpu": cpu_features()[0], "photos": args.photos,
        "photos_per_s": {k: round(args.photos / v, 2) for k, v in best.items()},
        "two_runs_back_to_back_photos_per_s": round(args.photos / one_after_other, 2),
        "ensemble_vs_two_runs": round(one_after_other / best["both (ensemble)"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
