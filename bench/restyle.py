"""Restyle cost on this machine: seconds per photo at 512 px for an SD-1.5-sized inpainting
UNet (with its VAE and CLIP text encoder) at random weights, 4 and 25 steps, one mask.

    python bench/restyle.py
"""

from __future__ import annotations

import json
import time

import numpy as np
from PIL import Image

from kadr.core.models import load_model

SPEC = "diffusers:stable-diffusion-v1-5/stable-diffusion-inpainting@random"


def main() -> None:
    painter = load_model(SPEC, kind="diffusion")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8))
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (128, 96, 384, 288))
    results = {"pipeline": SPEC, "resolution": painter.model_size(photo.size)}
    for steps in (4, 25):
        for guidance, label in ((7.5, "cfg"), (1.0, "no_cfg")):
            t0 = time.perf_counter()
            painter.inpaint(photo, mask, "a glowing alien painting", steps=steps,
                            guidance=guidance, seed=0)
            results[f"{steps}_steps_{label}_s_per_photo"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(results), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
