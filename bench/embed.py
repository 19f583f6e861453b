"""Embedding throughput: kadr embed against the plain loop and the model-only ceiling.

Same model (open_clip ViT-B-32 at seeded random weights: the real compute
cost), same photos, one run:

- plain: PIL open + open_clip's preprocess + encode_image in batches of 32;
- kadr: ``embed_photos`` (DCT-scaled JPEG decode in worker threads, overlapped
  with the model, Parquet shards);
- ceiling: the model alone on ready tensors.

Also: peak memory of kadr embed for 5,000 vs 1,000 photos (separate
processes), and the mean cosine similarity between fast-path and plain
embeddings on the real photos in ../shared/data.

Each rate is the best of ``--repeats`` interleaved rounds (3), for all three
alike, as timeit does: the machine's noise only ever slows a run down.

    python bench/embed.py [--photos 192] [--repeats 3] [--skip-memory]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPEC = "open_clip:ViT-B-32@random"


def make_photos(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """Photo-like JPEGs: smooth random colour fields with noise, quality 90."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        img = np.asarray(base.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
        p = folder / f"p{i:05d}.jpg"
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


def plain_loop(paths: list[Path], model, preprocess, batch: int = 32) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + batch]])
            model.encode_image(x)
    return len(paths) / (time.perf_counter() - t0)


def ceiling(n: int, model, size: int, batch: int = 32, dtype=torch.float32) -> float:
    x = torch.randn(batch, 3, size, size, dtype=dtype)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(0, n, batch):
            model.encode_image(x)
    return n / (time.perf_counter() - t0)


def kadr_embed(folder: Path, out: Path, model_wrap, turns: bool | None = None) -> float:
    """kadr's runner and store, timed like the plain loop: the model is already loaded.
    ``turns``: force decoding between batches (True) or beside them (False)."""
    from kadr.core.collection import PhotoCollection
    from kadr.core.runner import run_job
    from kadr.core.store import ShardStore
    from kadr.embed import image_embedding_job

    n = len(list(folder.glob("*.jpg")))
    job = image_embedding_job(model_wrap, batch_size=32)
    if turns is not None:
        job.decode_between_batches = turns
    t0 = time.perf_counter()
    with ShardStore(out, {"bench": 1}) as store:
        run_job(PhotoCollection(folder), job, store, workers=2, progress=False)
    return n / (time.perf_counter() - t0)


def peak_memory_mb(folder: Path, out: Path) -> float:
    """Peak RSS of a fresh process running kadr embed on ``folder``."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the parent.
    code = ("from kadr.embed import embed_photos; "
            f"embed_photos({str(folder)!r}, {str(out)!r}, {SPEC!r}, progress=False); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def fast_path_similarity(model_wrap, preprocess) -> float | None:
    from kadr.core.decode import decode_photo

    photos = sorted((SHARED / "data").rglob("*.JPG")) + sorted((SHARED / "data").rglob("*.jpg"))
    photos = photos[:60]
    if not photos:
        return None
    sims = []
    for p in photos:
        data = p.read_bytes()
        fast = model_wrap.encode_images([model_wrap.prepare(decode_photo(data, 224))])
        plain = model_wrap.encode_images(preprocess(Image.open(p).convert("RGB"))[None].numpy())
        sims.append(float((fast * plain).sum()))
    return float(np.mean(sims))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()

    import open_clip

    from kadr.core.models import load_model

    wrap = load_model(SPEC)
    model = wrap.modules[0]
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    results: dict = {"model": SPEC, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, size in (("2048x1536", (2048, 1536)), ("414x309", (414, 309))):
            folder = tmp / name
            paths = make_photos(folder, args.photos, size)
            # Rounds interleave the three measurements so that a slow spell on
            # a shared machine hits all three alike; each keeps its best round.
            ceil = plain = fast = 0.0
            for i in range(args.repeats):
                ceil = max(ceil, ceiling(args.photos, model, wrap.image_size))
                plain = max(plain, plain_loop(paths, model, preprocess))
                fast = max(fast, kadr_embed(folder, tmp / f"out-{name}-{i}", wrap))
            results[name] = {
                "plain_photos_per_s": round(plain, 1),
                "kadr_photos_per_s": round(fast, 1),
                "ceiling_photos_per_s": round(ceil, 1),
                "kadr_vs_plain": round(fast / plain, 2),
                "kadr_vs_ceiling": round(fast / ceil, 2),
            }
            print(name, results[name], flush=True)
        if not args.skip_memory:
            small = tmp / "mem"
            make_photos(small / "a", 1000, (414, 309))
            m1 = peak_memory_mb(small / "a", tmp / "mem-out-1k")
            make_photos(small / "b", 5000, (414, 309))
            m5 = peak_memory_mb(small / "b", tmp / "mem-out-5k")
            results["peak_rss_mb"] = {"1000": round(m1), "5000": round(m5),
                                      "ratio_5k_vs_1k": round(m5 / m1, 3)}
    sim = fast_path_similarity(wrap, preprocess)
    results["fast_vs_plain_mean_cosine_real_photos"] = None if sim is None else round(sim, 4)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
