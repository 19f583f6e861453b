"""Sources and outputs on object storage, with fsspec's in-memory filesystem standing in."""

import shutil

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from kadr.core.remote import staging_dir
from kadr.embed import embed_photos
from tests.helpers import TINY_CLIP, jpeg_bytes


def test_embed_from_and_to_object_storage_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("KADR_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    for cam in ("camA", "camB"):
        for i in range(3):
            fs.pipe(f"/bucket/photos/{cam}/p{i}.jpg", jpeg_bytes(seed=i))
    fs.pipe("/bucket/photos/camA/broken.jpg", b"")
    s = embed_photos("memory://bucket/photos", "memory://bucket/out", TINY_CLIP, progress=False).summary
    assert s.total == 7 and s.ok == 6
    shards = [p for p in fs.find("/bucket/out") if p.endswith(".parquet")]
    assert shards, "result shards were uploaded"
    table = pd.concat(pq.read_table(fs.open(p, "rb")).to_pandas() for p in shards)
    assert sorted(table["key"]) == sorted(["camA/p0.jpg", "camA/p1.jpg", "camA/p2.jpg",
                                           "camB/p0.jpg", "camB/p1.jpg", "camB/p2.jpg",
                                           "camA/broken.jpg"])
    assert set(table["group"]) == {"camA", "camB"}
    # A fresh machine: no staging folder; the results are found in the bucket and skipped.
    shutil.rmtree(staging_dir("memory://bucket/out"))
    again = embed_photos("memory://bucket/photos", "memory://bucket/out", TINY_CLIP,
                         progress=False).summary
    assert again.already_done == 7 and again.processed == 0


def test_manifest_on_object_storage(tmp_path, monkeypatch):
    monkeypatch.setenv("KADR_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/b2/imgs/a.jpg", jpeg_bytes(seed=1))
    fs.pipe("/b2/list.csv", b"path,hotel\nimgs/a.jpg,7\n")
    s = embed_photos("memory://b2/list.csv", str(tmp_path / "out"), TINY_CLIP,
                     group_column="hotel", progress=False).summary
    assert s.ok == 1


def test_a_second_run_on_the_same_bucket_output_is_refused(tmp_path, monkeypatch):
    # Two machines have separate staging folders; only the lease in the bucket can stop the second.
    import json
    import time

    import pytest

    from kadr.core.remote import LEASE_NAME, staged_output
    from kadr.core.store import StoreLockedError

    monkeypatch.setenv("KADR_CACHE", str(tmp_path / "machine-a"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/b3/photos/a.jpg", jpeg_bytes(seed=1))
    with staged_output("memory://b3/out"):
        assert fs.exists(f"/b3/out/{LEASE_NAME}")
        monkeypatch.setenv("KADR_CACHE", str(tmp_path / "machine-b"))
        with pytest.raises(StoreLockedError, match="in use by another kadr run"):
            embed_photos("memory://b3/photos", "memory://b3/out", TINY_CLIP, progress=False)
    assert not fs.exists(f"/b3/out/{LEASE_NAME}"), "the lease is released at the end"
    # A lease left by a run that died long ago does not block.
    stale = {"owner": "gone:1:x", "started": 0, "renewed": time.time() - 3600}
    fs.pipe(f"/b3/out/{LEASE_NAME}", json.dumps(stale).encode())
    s = embed_photos("memory://b3/photos", "memory://b3/out", TINY_CLIP, progress=False).summary
    assert s.ok == 1 and not fs.exists(f"/b3/out/{LEASE_NAME}")


def test_bucket_listing_streams_folder_by_folder():
    from kadr.core.remote import list_photo_urls

    fs = fsspec.filesystem("memory")
    for p in ["b/2.jpg", "b/1.jpg", "a/x/3.jpg", "a/1.jpg", "c.txt", "z.jpg"]:
        fs.pipe(f"/listing/{p}", b"x")
    listing = list_photo_urls("memory://listing", frozenset({".jpg"}))
    assert next(listing)[0] == "z.jpg", "a generator: the first folder comes before the rest"
    assert [rel for rel, _ in listing] == ["a/1.jpg", "a/x/3.jpg", "b/1.jpg", "b/2.jpg"]
