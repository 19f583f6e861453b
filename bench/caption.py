"""Captioning cost per photo: the caption model, and CLIP ranking in each mode.

Full-size architectures at random weights (same compute as the real ones):
BLIP-base (hf-caption:Salesforce/blip-image-captioning-base@random) and CLIP
ViT-L/14 (open_clip:ViT-L-14@random, CLIP Interrogator's default), on real
room photos from ../shared/data/interiors (or generated ones), in one run:

- seconds per photo for the caption model (one generate call per batch);
- seconds per photo for ranking in fast, classic, best, negative modes
  (image embedding excluded: it is shared by every mode; the vocabulary's
  text embeddings are computed once and cached, as in real runs);
- best mode's chaining batched over photos and candidates against the same
  chaining done one phrase at a time (the plain loop), same results.

    python bench/caption.py [--photos 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kadr.core.models import load_model
from kadr.hotels.caption import Interrogator, load_vocabulary

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "interiors"
CAPTIONER = "hf-caption:Salesforce/blip-image-captioning-base@random"
CLIP = "open_clip:ViT-L-14@random"


def photos(n: int) -> list[Image.Image]:
    files = sorted(SHARED.rglob("*.jpg"))[:n] if SHARED.exists() else []
    if files:
        return [Image.open(p).convert("RGB") for p in files]
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (309, 414, 3), dtype=np.uint8)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=8)
    args = ap.parse_args()
    images = photos(args.photos)
    n = len(images)
    captioner = load_model(CAPTIONER, kind="captioner")
    clip = load_model(CLIP, kind="image-text")
    vocab = load_vocabulary("hotel")
    results: dict = {"photos": n, "captioner": CAPTIONER, "clip": CLIP,
                     "vocabulary_phrases": len(vocab.phrases)}

    t0 = time.perf_counter()
    captioner.caption(images)
    results["caption_model_s_per_photo"] = round((time.perf_counter() - t0) / n, 3)
    # Random weights write random words; ranking is timed on real-length captions instead.
    captions = [f"a hotel room with a bed, photo {i}" for i in range(n)]
    t0 = time.perf_counter()
    emb = clip.encode_images([clip.prepare_image(im) for im in images])
    results["clip_image_embedding_s_per_photo"] = round((time.perf_counter() - t0) / n, 3)
    t0 = time.perf_counter()
    Interrogator(clip, vocab, "fast")  # computes (and caches) the vocabulary embeddings
    results["vocabulary_embedding_once_s"] = round(time.perf_counter() - t0, 2)

    for mode in ("fast", "classic", "negative", "best"):
        it = Interrogator(clip, vocab, mode, max_phrases=8)
        t0 = time.perf_counter()
        it.interrogate(captions, emb)
        per = (time.perf_counter() - t0) / n
        results[f"rank_{mode}_s_per_photo"] = round(per, 4)
        results[f"rank_{mode}_vs_caption_model"] = round(per / results["caption_model_s_per_photo"], 4)

    it = Interrogator(clip, vocab, "best", max_phrases=8)
    tables = [t for t in vocab.tables if t != "faults"]
    t0 = time.perf_counter()
    batched = it.best_chain(captions, emb, tables)
    tb = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = [it.best_chain_plain(c, e, tables) for c, e in zip(captions, emb, strict=True)]
    tp = time.perf_counter() - t0
    same = all([p for p, _ in a] == [p for p, _ in b] for a, b in zip(batched, plain, strict=True))
    results["best_chain"] = {"batched_s_per_photo": round(tb / n, 3),
                             "plain_loop_s_per_photo": round(tp / n, 3),
                             "speedup": round(tp / tb, 2), "same_chains": same}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
