"""Stages after the models at 100k and 1M photos: time and peak memory, and their ratios.

No model runs: each stage gets a synthetic input of N photos, in a fresh
process (peak memory is the process's high-water mark, VmHWM):

- ``listing``: a manifest of N photos listed by ``PhotoCollection``;
- ``skipping``: a rerun of a finished job on that manifest: every photo is
  listed, found done in the store, and skipped;
- ``exports``: ``traps run``'s exports from a store of N per-photo rows
  (registrations CSV/Parquet, photos table, MegaDetector JSON, Camtrap DP,
  report), as a resume that must rewrite them does;
- ``duplicates``: the hotel profile's duplicate search on N hashes in families
  of ten (re-encoded copies and copies turned by 90 degrees);
- ``profile``: everything ``hotels profile`` does after its models, from a store
  of N photos of 5,000 hotels with those hash families: duplicates, statistics,
  tables and the report;
- ``themes``: ``hotels cluster`` from a store of N captioned photos with image
  embeddings (512 floats) around 40 themes: t-SNE and DBSCAN fitted on 10,000,
  every other photo assigned (theme assignment beyond ``--max-fit``), themes
  labelled, the tables and the map written.

    python bench/stages.py [--sizes 100000 1000000] [--rounds 1]
                           [--stages listing skipping exports duplicates profile themes]

Targets (issue): time ratio <= 12 for 10x the photos; peak memory at 1M <= 2 GB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def manifest(n: int, folder: Path) -> None:
    """A manifest of n photos on 100 cameras, written a block of rows at a time."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    block = 100_000
    with pacsv.CSVWriter(folder / "manifest.csv", pa.schema([("path", pa.string()),
                                                             ("camera", pa.string())])) as w:
        for a in range(0, n, block):
            i = np.arange(a, min(n, a + block))
            cam = np.char.add("cam", np.char.zfill((i % 100).astype(str), 3))
            path = np.char.add(np.char.add(np.char.add("/photos/", cam), "/IMG_"),
                               np.char.zfill(i.astype(str), 7))
            w.write_table(pa.table({"path": np.char.add(path, ".JPG"), "camera": cam}))


def listing(n: int, folder: Path) -> float:
    from kadr.core.collection import PhotoCollection

    manifest = folder / "manifest.csv"
    t = time.perf_counter()
    count = sum(1 for _ in PhotoCollection(str(manifest), group_column="camera"))
    assert count == n, count
    return time.perf_counter() - t


def done_store(n: int, folder: Path) -> None:
    """A manifest of n photos and a store in which every one of them is done."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest(n, folder)
    store = folder / "store"
    store.mkdir()
    (store / "run.json").write_text(json.dumps({"fingerprint": {"job": "bench"}}))
    paths = pacsv_paths(folder / "manifest.csv")
    shard = 2048
    for k, a in enumerate(range(0, n, shard)):
        keys = paths[a:a + shard]
        pq.write_table(pa.table({"key": keys, "status": np.full(len(keys), "ok")}),
                       store / f"part-{k:06d}.parquet")


def pacsv_paths(path: Path) -> np.ndarray:
    import pyarrow.csv as pacsv

    return pacsv.read_csv(path).column("path").to_numpy(zero_copy_only=False)


def skipping(n: int, folder: Path) -> float:
    """A rerun of a finished job: every photo is listed, found done, and skipped."""
    from kadr.core.collection import PhotoCollection
    from kadr.core.runner import Job, run_job
    from kadr.core.store import ShardStore

    def never(*_):
        raise AssertionError("a done photo was processed")

    t = time.perf_counter()
    with ShardStore(folder / "store", {"job": "bench"}) as store:
        summary = run_job(PhotoCollection(str(folder / "manifest.csv"), group_column="camera"),
                          Job("bench", never, never), store, progress=False)
    assert summary.already_done == n and summary.processed == 0, summary
    return time.perf_counter() - t


def trap_store(n: int, out: Path) -> None:
    """A `traps run` store of n photos: 100 cameras, visits of three photos, half empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    store = out / "photos.store"
    store.mkdir(parents=True)
    cam = np.array([f"cam{c:03d}" for c in range(100)])[np.arange(n) % 100]
    seq = np.arange(n) // 100
    t = pd.Timestamp("2024-01-01") + pd.to_timedelta(seq * 600 + (seq % 3) * 5, unit="s")
    animal = (seq // 3) % 2 == 0
    det = json.dumps([{"label": "deer", "category": "animal", "conf": 0.8,
                       "bbox": [0.1, 0.2, 0.3, 0.3]}])
    keys = np.char.add(np.char.add(cam, "/IMG_"), seq.astype(str))
    shard = 50_000
    for k, a in enumerate(range(0, n, shard)):
        b = min(n, a + shard)

        def same(value, size=b - a):
            return np.full(size, value)

        pq.write_table(pa.table({
            "key": keys[a:b], "path": np.char.add("/photos/", keys[a:b]), "group": cam[a:b],
            "photo_id": [f"{i:032x}" for i in range(a, b)], "time": t[a:b],
            "time_source": same("exif"), "width": same(2048), "height": same(1536),
            "format": same("JPEG"), "mode": same("RGB"), "status": same("ok"),
            "reason": pa.nulls(b - a, pa.string()),
            "detections": np.where(animal[a:b], det, "[]"),
            "n_animals": animal[a:b].astype(np.int64),
            "class": np.where(animal[a:b], "deer", "empty"),
            "class_prob": np.where(animal[a:b], rng.uniform(0.5, 1, b - a), np.nan),
            "count": animal[a:b].astype(np.int64),
            "top_bbox": pa.nulls(b - a, pa.string())}), store / f"part-{k:06d}.parquet")


def exports(n: int, folder: Path) -> float:
    from kadr.core.runner import RunSummary
    from kadr.traps.exports import outputs_key, write_outputs
    from kadr.traps.settings import TrapSettings

    out = folder / "out"
    settings = TrapSettings(detector="yolox:bench.onnx", classifier=None, progress=False)
    t = time.perf_counter()
    regs = write_outputs(out, settings, None, {"detector": settings.detector}, RunSummary(),
                         outputs_key(out, settings))
    assert len(regs) > 0
    return time.perf_counter() - t


def hash_families(n: int) -> dict[int, np.ndarray]:
    """Perceptual hashes (upright and turned by 90, 180, 270 degrees) of n photos in families
    of ten: eight re-encoded copies (a bit or two off) and two turned by 90 degrees."""
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 2**63, n // 10, dtype=np.int64).astype(np.uint64)
    upright = np.repeat(originals, 10) ^ (rng.integers(0, 4, n, dtype=np.int64)
                                          .astype(np.uint64))  # re-encoding flips a bit or two
    turned = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    rotate = np.arange(n) % 10 >= 8  # two of each ten are turned by 90 degrees
    phash = {r: rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) for r in (90, 180, 270)}
    phash[0] = np.where(rotate, turned, upright)
    phash[270] = np.where(rotate, upright, phash[270])  # turning it back gives the original
    return phash


def hex_text(values: np.ndarray, digits: int = 16) -> np.ndarray:
    """Integers as hex text of ``digits`` digits (hashes: 16; photo ids: 32)."""
    return np.char.zfill(np.char.mod("%x", values), digits) if len(values) else values.astype(str)


def duplicates(n: int, folder: Path) -> float:
    from kadr.hotels.duplicates import duplicates as find

    phash = hash_families(n)
    photos = pd.DataFrame({"key": [f"p{i}" for i in range(n)], "status": "ok",
                           "photo_id": hex_text(np.arange(n), 32),
                           **{f"phash_{r}": hex_text(v) for r, v in phash.items()}})
    t = time.perf_counter()
    dups = find(photos, 4)
    assert (dups["kind"] == "rotated").sum() >= n // 10, dups["kind"].value_counts()
    return time.perf_counter() - t


def profile_store(n: int, folder: Path) -> None:
    """A `hotels profile` store of n photos (hash families as above) in 5,000 hotels of 50
    chains, sized and typed like Hotels-50K's, 1% unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    store = folder / "out" / "photos.store"
    store.mkdir(parents=True)
    phash = hash_families(n)
    weight = 1 / (np.arange(5000) + 20.0)  # a few hotels with many photos, most with few
    hotel = rng.choice(5000, n, p=weight / weight.sum())
    broken = rng.random(n) < 0.01
    shard = 50_000
    for k, a in enumerate(range(0, n, shard)):
        b = min(n, a + shard)
        i = np.arange(a, b)
        key = np.char.add(np.char.add(np.char.add("hotel", hotel[a:b].astype(str)), "/"),
                          np.char.add(i.astype(str), ".jpg"))
        ok = ~broken[a:b]
        columns = {
            "key": key, "path": np.char.add("/data/hotels50k/", key),
            "group": np.char.add("hotel", hotel[a:b].astype(str)),
            "photo_id": hex_text(i, 32),
            "status": np.where(ok, "ok", "decode_error"),
            "reason": np.where(ok, None, "cannot identify image file"),
            "width": np.where(ok, rng.choice([640, 800, 1024, 1280], b - a), None),
            "height": np.where(ok, rng.choice([480, 600, 768, 960], b - a), None),
            "format": np.where(ok, "JPEG", None), "mode": np.where(ok, "RGB", None),
            **{f"phash_{r}": np.where(ok, hex_text(v[a:b]), None) for r, v in phash.items()},
            "extra_hotel_id": hotel[a:b].astype(str),
            "extra_chain_id": (hotel[a:b] % 50).astype(str),
            "extra_image_source": np.where(i % 3 == 0, "travel_website", "traffickcam"),
        }
        pq.write_table(pa.table(columns), store / f"part-{k:06d}.parquet")


def profile(n: int, folder: Path) -> float:
    """`hotels profile` after its models: duplicates, statistics, tables and report."""
    from kadr.hotels.profile import ProfileSettings, profile_outputs

    t = time.perf_counter()
    summary = profile_outputs(folder / "out", ProfileSettings(), "bench: no model", "manifest")
    assert summary["duplicates"].get("rotated", 0) >= n // 20, summary["duplicates"]
    return time.perf_counter() - t


THEMES = 40
DIM = 512  # ViT-B-32's embedding size


def theme_store(n: int, folder: Path) -> None:
    """A store of n captioned photos with their image embeddings (512 floats) around 40
    themes, the phrases of each photo as captioning writes them; 1% unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(THEMES, DIM)).astype(np.float32)
    store = folder / "store"
    store.mkdir(parents=True)
    shard = 50_000
    for a in range(0, n, shard):
        m = min(n, a + shard) - a
        theme = rng.integers(0, THEMES, m)
        emb = centres[theme] + rng.normal(scale=0.6, size=(m, DIM)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        name = np.char.add("kind ", theme.astype(str))
        key = np.char.add(np.char.add("hotel", (np.arange(a, a + m) // 200).astype(str)),
                          np.char.add("/", np.char.add(np.arange(a, a + m).astype(str), ".jpg")))
        table = pa.table({
            "key": key, "path": np.char.add("/data/hotels50k/", key),
            "status": np.where(rng.random(m) < 0.01, "decode_error", "ok"),
            "caption": np.char.add("a hotel room of ", name),
            "phrases": np.char.add(np.char.add('[["', name), ' decor", 0.31], ["hotel room", 0.25]]'),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM)})
        for j in range(0, m, 2048):  # shards as a store writes them
            pq.write_table(table.slice(j, 2048), store / f"part-{a + j:08d}.parquet")


def themes(n: int, folder: Path) -> float:
    """`hotels cluster` from image embeddings: reduction and clustering fitted on 10,000
    photos, every other photo assigned, themes labelled, tables and map written."""
    from kadr.hotels.cluster import ClusterSettings, run_cluster

    out = folder / "themes"
    shutil.rmtree(out, ignore_errors=True)  # every round embeds the input again
    t = time.perf_counter()
    summary = run_cluster(str(folder / "store"), str(out),
                          ClusterSettings(embed="image", max_fit=10_000, progress=False)).figures
    assert summary["photos"] >= 0.98 * n and summary["clusters"] >= THEMES * 0.9, summary
    return time.perf_counter() - t


STAGES = {"listing": listing, "skipping": skipping, "exports": exports,
          "duplicates": duplicates, "profile": profile, "themes": themes}
# Each stage's input, made in a process of its own so that making it does not count.
INPUTS = {"listing": manifest, "skipping": done_store,
          "exports": lambda n, folder: trap_store(n, folder / "out"), "profile": profile_store,
          "themes": theme_store}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--stages", nargs="+", default=list(STAGES))
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs of each stage at each size, interleaved; the best is kept")
    ap.add_argument("--one", nargs=3, metavar=("STAGE", "N", "FOLDER"), help=argparse.SUPPRESS)
    ap.add_argument("--input", nargs=3, metavar=("STAGE", "N", "FOLDER"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.input:  # a child process: one stage's input
        INPUTS[a.input[0]](int(a.input[1]), Path(a.input[2]))
        return
    if a.one:  # a child process: one stage at one size
        seconds = STAGES[a.one[0]](int(a.one[1]), Path(a.one[2]))
        print(json.dumps({"seconds": seconds, "peak_mb": peak_mb()}))
        return
    rows = []
    for stage in a.stages:
        figures: dict = {}
        folders = {n: tempfile.mkdtemp(prefix="kadr-stage-") for n in a.sizes}
        for n, folder in folders.items():
            if stage in INPUTS:
                subprocess.run([sys.executable, __file__, "--input", stage, str(n), folder],
                               check=True)
        # Sizes interleaved over rounds, the best of each kept: this machine's speed drifts.
        for _ in range(a.rounds):
            for n, folder in folders.items():
                r = subprocess.run([sys.executable, __file__, "--one", stage, str(n), folder],
                                   capture_output=True, text=True)
                if r.returncode:
                    print(r.stderr[-2000:], file=sys.stderr)
                    figures[n] = None
                    continue
                got = json.loads(r.stdout.strip().splitlines()[-1])
                print(f"{stage} {n}: {got}", flush=True)
                if n not in figures:
                    figures[n] = got
                elif figures[n] is not None:
                    figures[n] = {k: min(v, got[k]) for k, v in figures[n].items()}
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        rows.append((stage, figures))
    small, large = a.sizes[0], a.sizes[-1]
    print(f"\n| stage | {small:,} s | {large:,} s | time ratio | {small:,} MB | {large:,} MB "
          "| memory ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for stage, f in rows:
        if f.get(small) and f.get(large):
            s, g = f[small], f[large]
            print(f"| {stage} | {s['seconds']:.1f} | {g['seconds']:.1f} | "
                  f"{g['seconds'] / s['seconds']:.1f} | {s['peak_mb']:.0f} | {g['peak_mb']:.0f} | "
                  f"{g['peak_mb'] / s['peak_mb']:.2f} |")
        else:
            print(f"| {stage} | failed: see above | | | | | |")


if __name__ == "__main__":
    main()
