"""Sources and outputs on object storage, with fsspec's in-memory filesystem standing in."""

import shutil

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from kadr.core.remote import staging_dir
from kadr.embed import embed_photos
from tests.conftest import TINY_CLIP, jpeg_bytes


def test_embed_from_and_to_object_storage_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("KADR_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    for cam in ("camA", "camB"):
        for i in range(3):
            fs.pipe(f"/bucket/photos/{cam}/p{i}.jpg", jpeg_bytes(seed=i))
    fs.pipe("/bucket/photos/camA/broken.jpg", b"")
    s = embed_photos("memory://bucket/photos", "memory://bucket/out", TINY_CLIP, progress=False)
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
                         progress=False)
    assert again.already_done == 7 and again.processed == 0


def test_manifest_on_object_storage(tmp_path, monkeypatch):
    monkeypatch.setenv("KADR_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/b2/imgs/a.jpg", jpeg_bytes(seed=1))
    fs.pipe("/b2/list.csv", b"path,hotel\nimgs/a.jpg,7\n")
    s = embed_photos("memory://b2/list.csv", str(tmp_path / "out"), TINY_CLIP,
                     group_column="hotel", progress=False)
    assert s.ok == 1
