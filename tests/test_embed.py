import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kadr.core.decode import decode_photo
from kadr.core.store import ShardStore, StoreLockedError, read_shards
from kadr.embed import embed_photos
from tests.helpers import TINY_CLIP, jpeg_bytes, make_broken_corpus, shared_path

KADR = [sys.executable, "-m", "kadr.cli"]


def kadr(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*KADR, *args], capture_output=True, text=True, **kw)


def by_key(folder) -> dict:
    t = read_shards(folder).to_pandas()
    return {r.key: r for r in t.itertuples()}


def test_embed_cli_with_broken_photos_reports_them(tmp_path):
    root = tmp_path / "mixed"
    expected = make_broken_corpus(root)
    r = kadr("embed", str(root), "-o", str(tmp_path / "out"), "--model", TINY_CLIP, "-q")
    assert r.returncode == 0, r.stderr
    rows = by_key(tmp_path / "out")
    assert {k: v.status for k, v in rows.items()} == expected
    assert "truncated.jpg" in r.stderr and "too_large" in r.stderr
    good = rows["good.jpg"]
    assert len(good.embedding) == 64 and good.photo_id and pd.isna(good.reason)


def test_nothing_processable_exits_nonzero(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"")
    r = kadr("embed", str(root), "-o", str(tmp_path / "out"), "--model", TINY_CLIP, "-q")
    assert r.returncode == 1 and "empty_file" in r.stderr


def test_resume_skips_done_and_refuses_other_settings(photo_folder, tmp_path):
    out = tmp_path / "out"
    s1 = embed_photos(str(photo_folder), str(out), TINY_CLIP, batch_size=3, progress=False).summary
    assert s1.processed == 10
    s2 = embed_photos(str(photo_folder), str(out), TINY_CLIP, batch_size=3, progress=False).summary
    assert s2.already_done == 10 and s2.processed == 0
    with pytest.raises(Exception, match="different settings"):
        embed_photos(str(photo_folder), str(out), "hf:kadr/tiny-clip@random", progress=False)


def test_collection_is_listed_once_and_every_photo_processed_once(photo_folder, tmp_path):
    # A bucket listing of a million objects takes minutes: the runner must not list twice.
    from kadr.core.collection import PhotoCollection
    from kadr.core.models import load_model
    from kadr.core.runner import run_job
    from kadr.embed import image_embedding_job

    class CountedListing:
        def __init__(self):
            self.inner, self.listings = PhotoCollection(photo_folder), 0

        def __iter__(self):
            self.listings += 1
            return iter(self.inner)

    listing = CountedListing()
    job = image_embedding_job(load_model(TINY_CLIP), batch_size=4)
    with ShardStore(tmp_path / "o", {"t": 1}) as store:
        summary = run_job(listing, job, store, progress=False)
    assert listing.listings == 1
    keys = read_shards(tmp_path / "o").column("key").to_pylist()
    assert summary.total == summary.ok == 10 and sorted(keys) == sorted(r.key for r in listing.inner)


def test_second_run_on_same_output_is_refused(tmp_path):
    with ShardStore(tmp_path / "o", {"a": 1}):
        with pytest.raises(StoreLockedError, match="in use"):
            ShardStore(tmp_path / "o", {"a": 1}).open()


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(240):
        (root / f"p{i:04d}.jpg").write_bytes(jpeg_bytes(size=(96, 80), seed=i))
    ref = tmp_path / "ref"
    assert kadr("embed", str(root), "-o", str(ref), "--model", TINY_CLIP, "-q").returncode == 0

    out = tmp_path / "killed"
    env = {**os.environ, "KADR_SHARD_ROWS": "16"}
    proc = subprocess.Popen(
        [*KADR, "embed", str(root), "-o", str(out), "--model", TINY_CLIP, "-q",
         "--batch-size", "8"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_shards(out)
    assert 0 < partial.num_rows < 240, "the kill landed mid-run"
    r = kadr("embed", str(root), "-o", str(out), "--model", TINY_CLIP, "-q")
    assert r.returncode == 0, r.stderr
    a, b = by_key(ref), by_key(out)
    assert len(read_shards(out)) == 240, "no photo lost or duplicated"
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].embedding, b[k].embedding, atol=1e-5)


def test_store_writes_shards_as_rows_arrive(tmp_path):
    # Rows reach disk shard by shard during the run, not all at the end.
    store = ShardStore(tmp_path / "s", {"x": 1}, shard_rows=10)
    with store:
        for i in range(35):
            store.add([{"key": str(i), "v": i}])
        assert len(store.shard_paths()) == 3
    assert pq.read_table(store.shard_paths()[-1]).num_rows == 5


def test_fast_path_matches_plain_preprocessing_on_real_photos():
    import open_clip

    from kadr.core.models import load_model

    folder = shared_path(
        "data", "camera_traps", "cameratraps_repo", "api", "synchronous", "sample_input"
    )
    model = load_model("open_clip:ViT-B-16@random")
    _, _, plain = open_clip.create_model_and_transforms("ViT-B-16")
    sims = []
    for p in sorted(Path(folder).rglob("*.JPG"))[:6]:
        fast = model.encode_images([model.prepare(decode_photo(p.read_bytes(), 224))])
        ref = model.encode_images(plain(Image.open(p).convert("RGB")).unsqueeze(0).numpy())
        sims.append(float((fast * ref).sum()))
    assert np.mean(sims) > 0.99, sims


def test_embed_text_on_the_shipped_extended_prompt_file(tmp_path):
    from kadr.traps.prompts import EXAMPLE, load_prompts

    out = tmp_path / "prompts.parquet"
    r = kadr("embed-text", str(EXAMPLE), "-o", str(out), "--model", TINY_CLIP)
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out).to_pandas()
    prompts = load_prompts(EXAMPLE)
    assert len(t) == sum(len(c.prompts) for c in prompts.classes)
    assert set(t["label"]) == set(prompts.names), "every row is labelled with its class"
    assert "a camera trap photo of a roe deer." in set(t["text"]), "templates are expanded"
    assert len(t["embedding"].iloc[0]) == 64


def test_embeddings_are_stored_as_float32_vectors_unchanged(tmp_path, monkeypatch):
    """What the model produced is what the store holds, to the bit; a recomputation one
    photo at a time agrees within float tolerance (batch shapes change CPU kernels)."""
    import pyarrow as pa

    from kadr.core.decode import decode_photo
    from kadr.core.models import load_model

    model = load_model(TINY_CLIP)
    produced: list[np.ndarray] = []
    encode = type(model).encode_images

    def recording(self, arrays):
        vectors = encode(self, arrays)
        produced.extend(np.array(vectors, np.float32, copy=True))
        return vectors

    monkeypatch.setattr(type(model), "encode_images", recording)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    embed_photos(str(folder), str(tmp_path / "out"), TINY_CLIP, progress=False)
    table = read_shards(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    made = np.stack(produced)
    assert len(made) == 3
    for row in table.to_pylist():
        stored = np.asarray(row["embedding"], np.float32)
        assert (made == stored).all(axis=1).any(), "stored exactly as the model gave it"
        photo = decode_photo((folder / row["key"]).read_bytes(), min_side=model.image_size)
        again = model.encode_images([model.prepare(photo)])[0]
        np.testing.assert_allclose(stored, again, rtol=1e-4, atol=1e-5)


def test_a_run_counts_every_failure_and_keeps_only_the_first_in_memory(tmp_path):
    from kadr.core.runner import SHOWN_FAILURES

    folder = tmp_path / "empty"
    folder.mkdir()
    for i in range(SHOWN_FAILURES + 15):
        (folder / f"{i:03d}.jpg").write_bytes(b"")
    summary = embed_photos(str(folder), str(tmp_path / "out"), TINY_CLIP, progress=False).summary
    assert summary.failed == SHOWN_FAILURES + 15
    assert len(summary.failures) == SHOWN_FAILURES
    rows = read_shards(tmp_path / "out").to_pandas()
    assert (rows["status"] == "empty_file").sum() == SHOWN_FAILURES + 15, "all in the store"


def test_a_file_changed_since_it_was_stored_is_processed_again(tmp_path):
    """A half-copied photo completed later, and a photo replaced at its path, are looked at
    again on the next run (results and failures alike); the rest is not."""
    folder = tmp_path / "card"
    folder.mkdir()
    whole = jpeg_bytes(seed=1)
    (folder / "copying.jpg").write_bytes(whole[: len(whole) // 2])  # the copy not done yet
    (folder / "kept.jpg").write_bytes(jpeg_bytes(seed=2))
    (folder / "replaced.jpg").write_bytes(jpeg_bytes(seed=3))
    out = tmp_path / "out"
    first = embed_photos(str(folder), str(out), TINY_CLIP, progress=False).summary
    assert first.failed == 1
    before = by_key(out)
    assert before["copying.jpg"].status == "truncated"

    (folder / "copying.jpg").write_bytes(whole)  # the copy finished
    replacement = jpeg_bytes(seed=4, size=(90, 70))
    (folder / "replaced.jpg").write_bytes(replacement)
    os.utime(folder / "replaced.jpg", ns=(1, os.stat(folder / "kept.jpg").st_mtime_ns))
    again = embed_photos(str(folder), str(out), TINY_CLIP, progress=False).summary
    assert again.changed == 2 and again.processed == 2 and again.already_done == 1
    after = by_key(out)
    assert len(read_shards(out)) == 3, "one row a photo, the newest"
    assert after["copying.jpg"].status == "ok"
    assert after["replaced.jpg"].photo_id != before["replaced.jpg"].photo_id
    assert after["replaced.jpg"].width == 90
    assert after["kept.jpg"].photo_id == before["kept.jpg"].photo_id
    r = kadr("embed", str(folder), "-o", str(out), "--model", TINY_CLIP, "-q")
    assert r.returncode == 0 and "processed again" not in r.stdout + r.stderr, r.stderr
    (folder / "kept.jpg").write_bytes(jpeg_bytes(seed=5))
    r = kadr("embed", str(folder), "-o", str(out), "--model", TINY_CLIP, "-q")
    said = " ".join((r.stdout + r.stderr).split())
    assert "1 changed since stored, processed again" in said, said
