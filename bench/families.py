"""Compute per photo of the model families kadr runs for camera traps, on this CPU.

Each model at seeded random weights of its real architecture (the same compute as the
released weights), alone on ready inputs: photos a second, fp32 and bf16 weights where
kadr's ``--precision auto`` may choose bf16 (the torch image-text models), best of
interleaved rounds (the machine's speed drifts):

- CLIP ViT-B-32 (``open_clip:ViT-B-32``), BioCLIP (ViT-B-16), BioCLIP 2 (ViT-L-14),
  image towers at 224 px, batches of 8;
- MegaDetector v5 (YOLOv5x6, three classes) at 1280x960, one photo a call, as the
  ``megadetector`` package runs it (fp32);
- SpeciesNet (EfficientNetV2-M, torchvision's, as the released classifier is) at its
  480 px, batches of 8;
- YOLOX-Nano, the real ONNX file in ../shared, at 416 px through ONNX Runtime.

    python bench/families.py [--rounds 3] [--only SpeciesNet --only "CLIP ViT-B-32"]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"

VITS = {"CLIP ViT-B-32": "ViT-B-32", "BioCLIP (ViT-B-16)": "ViT-B-16",
        "BioCLIP 2 (ViT-L-14)": "ViT-L-14"}


def rate(fn, photos: int, calls: int = 2) -> float:
    fn()  # warm up: first calls allocate
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return photos * calls / (time.perf_counter() - start)


def vit_runner(arch: str, dtype: torch.dtype, batch: int = 8):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).eval().to(dtype)
    x = torch.randn(batch, 3, 224, 224, dtype=dtype)

    def run():
        with torch.inference_mode():
            model.encode_image(x)
    return run


def megadetector_runner(folder: Path):
    from tests.mdweights import save_random_mdv5

    path = save_random_mdv5(folder / "md_v5a.0.0.pt")
    model = torch.load(path, map_location="cpu", weights_only=False)["model"].float().fuse().eval()
    x = torch.rand(1, 3, 960, 1280)

    def run():
        with torch.inference_mode():
            model(x)
    return run


def speciesnet_runner(dtype: torch.dtype, batch: int = 8):
    from torchvision.models import efficientnet_v2_m

    torch.manual_seed(0)
    # 2,000+ labels as released; the head is a sliver of the compute either way.
    model = efficientnet_v2_m(num_classes=2000).eval().to(dtype)
    x = torch.randn(batch, 3, 480, 480, dtype=dtype)

    def run():
        with torch.inference_mode():
            model(x)
    return run


def yolox_runner():
    from kadr.core.models import load_model

    detector = load_model(f"yolox:{SHARED / 'models' / 'yolox_nano.onnx'}", kind="detector")
    x = np.random.default_rng(0).random((1, 3, detector.size, detector.size), np.float32)

    def run():
        detector.session.run(None, {detector.input_name: x})
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", action="append", default=[],
                    help="measure only the families whose name starts so (repeatable)")
    args = ap.parse_args()
    from kadr.core.models.precision import choose_cpu_precision, cpu_features

    def wanted(name: str) -> bool:
        return not args.only or any(name.startswith(o) for o in args.only)

    runners: dict[str, tuple] = {}
    for name, arch in VITS.items():
        if wanted(name):
            runners[f"{name} fp32"] = (vit_runner(arch, torch.float32), 8)
            runners[f"{name} bf16"] = (vit_runner(arch, torch.bfloat16), 8)
    with tempfile.TemporaryDirectory() as tmp:
        if wanted("MegaDetector"):
            runners["MegaDetector v5 (YOLOv5x6, 1280 px) fp32"] = (
                megadetector_runner(Path(tmp)), 1)
        if wanted("SpeciesNet"):
            runners["SpeciesNet (EfficientNetV2-M, 480 px) fp32"] = (
                speciesnet_runner(torch.float32), 8)
            runners["SpeciesNet (EfficientNetV2-M, 480 px) bf16"] = (
                speciesnet_runner(torch.bfloat16), 8)
        if wanted("YOLOX"):
            runners["YOLOX-Nano (416 px, ONNX Runtime) fp32"] = (yolox_runner(), 1)
        best = dict.fromkeys(runners, 0.0)
        for i in range(args.rounds):
            for name, (fn, n) in runners.items():
                best[name] = max(best[name], rate(fn, n))
            print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in best.items()),
                  flush=True)
    print(json.dumps({"cpu": cpu_features()[0], "threads": torch.get_num_threads(),
                      "auto_for_transformers": choose_cpu_precision("transformer").precision,
                      "photos_per_s": {k: round(v, 2) for k, v in best.items()}}, indent=2))


if __name__ == "__main__":
    main()
