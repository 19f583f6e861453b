"""Precision on this CPU: what ``--precision auto`` chose, what fp32 and bf16 weights cost,
how close bf16 stays, and how near ``kadr embed`` gets to the model alone.

open_clip ViT-B-32 at seeded random weights (the real compute cost):

- model alone (batch 32, ready tensors) with fp32 weights and with bf16 weights;
- per-photo cosine of bf16 to fp32 image embeddings on the real photos in ../shared;
- ``kadr embed`` (the runner, decode threads, store) at the precision ``auto`` chose,
  against the model alone at that precision, on 414x309 and 2048x1536 JPEGs; and
  with decoding beside the model instead of between batches;
- ``traps run`` with the real YOLOX-Nano on 2048x1536 JPEGs, ONNX Runtime's threads
  spinning between calls (its default and kadr's) against sleeping; and with ViT-B-32
  classifying, fp32 against ``auto``.

Rounds interleave the compared runs and each keeps its best (the machine's speed drifts).

    python bench/precision.py [--photos 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.embed import SHARED, SPEC, ceiling, kadr_embed, make_photos  # noqa: E402


def load(precision: str):
    from kadr.core.models import load_model

    os.environ["KADR_PRECISION"] = precision
    return load_model(SPEC)


def real_photo_cosines(full, half) -> float | None:
    from kadr.core.decode import decode_photo

    photos = sorted((SHARED / "data").rglob("*.JPG"))[:30] + sorted(
        (SHARED / "data" / "interiors").rglob("*.jpg"))[::20]
    if not photos:
        return None
    arrays = [full.prepare(decode_photo(p.read_bytes(), full.image_size)) for p in photos]
    a = np.concatenate([full.encode_images(arrays[i:i + 16]) for i in range(0, len(arrays), 16)])
    b = np.concatenate([half.encode_images(arrays[i:i + 16]) for i in range(0, len(arrays), 16)])
    return float((a * b).sum(1).min())


def traps_rate(folder: Path, out: Path, spin: str = "1", classifier: str | None = None,
               precision: str = "fp32") -> float:
    """``traps run`` with YOLOX-Nano (and ``classifier`` on each animal, if given) on
    ``folder``, photos per second, models loaded included; ONNX Runtime's threads
    spinning (1, kadr's setting) or sleeping (0) between calls."""
    import time

    from kadr.traps.pipeline import TrapSettings, run_traps

    os.environ["KADR_ORT_SPIN"] = spin
    os.environ["KADR_PRECISION"] = precision
    n = len(list(folder.rglob("*.jpg")))
    settings = TrapSettings(detector=f"yolox:{SHARED / 'models' / 'yolox_nano.onnx'}",
                            classifier=classifier, progress=False)
    start = time.perf_counter()
    run_traps(str(folder), str(out), settings)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from kadr.core.models.precision import choose_cpu_precision, cpu_features

    name, _ = cpu_features()
    choice = choose_cpu_precision("transformer")
    results: dict = {"cpu": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "auto": choice.precision, "why": choice.reason}
    full, half = load("fp32"), load("bf16")
    chosen = half if choice.precision == "bf16" else full
    alone = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(args.rounds):
        alone["fp32"] = max(alone["fp32"], ceiling(32, full.modules[0], full.image_size))
        alone["bf16"] = max(alone["bf16"], ceiling(32, half.modules[0], half.image_size,
                                                   dtype=torch.bfloat16))
    results["model_alone_photos_per_s"] = {k: round(v, 1) for k, v in alone.items()}
    results["bf16_vs_fp32_speed"] = round(alone["bf16"] / alone["fp32"], 2)
    results["bf16_min_cosine_to_fp32_real_photos"] = real_photo_cosines(full, half)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, size in (("414x309", (414, 309)), ("2048x1536", (2048, 1536))):
            folder = tmp / label
            make_photos(folder, args.photos, size)
            run = ceil = run_fp32 = beside = 0.0
            dtype = torch.bfloat16 if chosen is half else torch.float32
            for i in range(args.rounds):
                ceil = max(ceil, ceiling(args.photos, chosen.modules[0], chosen.image_size,
                                         dtype=dtype))
                run = max(run, kadr_embed(folder, tmp / f"out-{label}-{i}", chosen))
                beside = max(beside, kadr_embed(folder, tmp / f"beside-{label}-{i}", chosen,
                                                turns=False))
                if chosen is not full:
                    run_fp32 = max(run_fp32, kadr_embed(folder, tmp / f"fp32-{label}-{i}", full))
            results[label] = {"kadr_embed_photos_per_s": round(run, 1),
                              "model_alone_photos_per_s": round(ceil, 1),
                              "kadr_vs_model_alone": round(run / ceil, 2),
                              "decoding_beside_the_model_photos_per_s": round(beside, 1),
                              "turns_vs_beside": round(run / beside, 2)}
            if run_fp32:
                results[label]["kadr_embed_fp32_photos_per_s"] = round(run_fp32, 1)
                results[label]["auto_vs_fp32"] = round(run / run_fp32, 2)
            print(label, results[label], flush=True)
        folder = tmp / "traps" / "cam1"
        make_photos(folder, args.photos, (2048, 1536))
        spin = {"1": 0.0, "0": 0.0}
        for i in range(args.rounds):
            for k in spin:
                spin[k] = max(spin[k], traps_rate(folder.parent, tmp / f"traps-{k}-{i}", k))
        results["traps_run_yolox_photos_per_s"] = {
            "threads_spin (kadr, ORT's default)": round(spin["1"], 1),
            "threads_sleep": round(spin["0"], 1)}
        print("traps", results["traps_run_yolox_photos_per_s"], flush=True)
        if choice.precision != "fp32":  # the whole traps run, detector and classifier
            rate = {"fp32": 0.0, "auto": 0.0}
            for i in range(args.rounds):
                for k in rate:
                    rate[k] = max(rate[k], traps_rate(folder.parent, tmp / f"cls-{k}-{i}",
                                                      classifier=SPEC, precision=k))
            results["traps_run_yolox_vit_b_32_photos_per_s"] = {
                k: round(v, 1) for k, v in rate.items()} | {
                "auto_vs_fp32": round(rate["auto"] / rate["fp32"], 2)}
            print("traps + classifier", results["traps_run_yolox_vit_b_32_photos_per_s"],
                  flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
