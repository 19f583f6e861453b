"""Themes of a collection larger than a block and than ``--max-fit``: streamed from disk,
the same answer as in memory."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from kadr.hotels import cluster, theme_input
from kadr.hotels.cluster import ClusterSettings, label_clusters, run_cluster, themes
from tests.helpers import TINY_CLIP


def planted_table(tmp_path, n_per=200, k=5, dim=64, failed_every=37):
    """Photos around k planted centres with their own embeddings and phrases; every
    ``failed_every``-th row failed (status not ok)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, dim)) * 4
    x = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    truth = np.repeat(np.arange(k), n_per)
    order = rng.permutation(len(x))  # themes interleaved through every block
    x, truth = x[order], truth[order]
    n = len(x)
    status = np.where(np.arange(n) % failed_every == 5, "decode_error", "ok")
    phrases = [json.dumps([[f"theme-{t} phrase", 0.3], ["everywhere", 0.2]] if i % 4 else [])
               for i, t in enumerate(truth)]
    frame = pd.DataFrame({"key": [f"p{i:05d}" for i in range(n)],
                          "path": [f"/photos/p{i:05d}.jpg" for i in range(n)],
                          "caption": [f"room of kind {t}, photo {i}" for i, t in enumerate(truth)],
                          "status": status, "phrases": phrases, "embedding": list(x)})
    path = tmp_path / "captions.parquet"
    frame.to_parquet(path)
    ok = status == "ok"
    return str(path), frame[ok].reset_index(drop=True), x[ok], truth[ok]


def test_streamed_themes_equal_the_in_memory_answer(tmp_path, monkeypatch):
    monkeypatch.setattr(theme_input, "BLOCK_ROWS", 128)  # eight blocks, none aligned to a theme
    monkeypatch.setattr(cluster, "MAP_POINTS", 250)
    table, rows, x, truth = planted_table(tmp_path)
    settings = ClusterSettings(embed="image", max_fit=300, min_samples=5, progress=False)
    summary = run_cluster(table, str(tmp_path / "out"), settings).figures

    labels, coords, note, _ = themes(x, settings)
    assert "sample of 300" in note and summary["reduction"] == note
    assign = pd.read_parquet(tmp_path / "out" / "assignments.parquet")
    assert assign["key"].tolist() == rows["key"].tolist(), "every usable photo once, in order"
    assert (assign["cluster"].to_numpy() == labels).all()
    np.testing.assert_allclose(assign[["x", "y"]].to_numpy(), coords, rtol=1e-5, atol=1e-5)
    assert adjusted_rand_score(truth, labels) >= 0.9

    expected = label_clusters(labels, x, rows["caption"].tolist(), rows["key"].tolist(),
                              rows["phrases"].tolist())
    got = pd.read_parquet(tmp_path / "out" / "clusters.parquet")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)
    assert all("theme-" in json.loads(p)[0] for p in got["phrases"]), "its own phrase first"

    failed = len(x) != 1000
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert failed and summary["skipped_not_ok"] == len(skipped) == 1000 - len(x)
    assert summary["photos"] == len(x) and summary["noise"] == int((labels == -1).sum())
    page = (tmp_path / "out" / "map.html").read_text()
    assert f"a sample of 250 of the {len(x):,} photos" in page


def test_label_clusters_in_blocks_match_one_block():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(500, 8)).astype(np.float32)
    labels = rng.integers(-1, 6, 500)
    keys = np.array([f"k{i}" for i in range(500)], object)
    whole = label_clusters(labels, emb, keys.tolist(), keys.tolist())
    tally = cluster.ThemeLabels(6, 8)
    for a in range(0, 500, 64):
        tally.add_sums(labels[a:a + 64], emb[a:a + 64])
    for a in range(0, 500, 64):
        tally.add_nearest(a, labels[a:a + 64], emb[a:a + 64], keys[a:a + 64], keys[a:a + 64])
    pd.testing.assert_frame_equal(tally.table(), whole)
    for c in whole.to_dict("records"):  # the label is the member nearest the theme's mean
        member = labels == c["cluster"]
        nearest = np.linalg.norm(emb[member] - emb[member].mean(0), axis=1).argmin()
        assert c["label"] == keys[member][nearest]


def test_a_rerun_reuses_the_embeddings_until_the_input_changes(tmp_path, monkeypatch):
    rows = pd.DataFrame({"key": [f"p{i}" for i in range(40)], "path": [f"p{i}.jpg" for i in range(40)],
                         "caption": [f"a {c} room" for c in ("red", "blue", "green", "white")] * 10,
                         "status": "ok"})
    table = tmp_path / "captions.parquet"
    rows.to_parquet(table)
    out = tmp_path / "themes"
    first = run_cluster(str(table), str(out), ClusterSettings(clip=TINY_CLIP, progress=False)).figures

    import kadr.core.models

    def no_model(*_, **__):
        raise AssertionError("the captions were embedded again")

    monkeypatch.setattr(kadr.core.models, "load_model", no_model)
    again = run_cluster(str(table), str(out), ClusterSettings(clip=TINY_CLIP, eps="0.5",
                                                              progress=False)).figures
    assert again["photos"] == first["photos"] == 40 and again["eps"] == 0.5
    rows.assign(caption="a room").to_parquet(table)
    with pytest.raises(AssertionError, match="embedded again"):
        run_cluster(str(table), str(out), ClusterSettings(clip=TINY_CLIP, progress=False))


def test_photo_vectors_are_found_by_path_even_when_a_path_is_stored_twice(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = tmp_path / "image.store"
    store.mkdir()
    vectors = np.arange(12, dtype=np.float32).reshape(6, 2)
    paths = ["a.jpg", "b.jpg", "c.jpg", "b.jpg", "d.jpg", "e.jpg"]
    status = ["ok", "ok", "decode_error", "ok", "ok", "ok"]
    for k in range(2):
        part = slice(3 * k, 3 * k + 3)
        pq.write_table(pa.table({"path": paths[part], "status": status[part],
                                 "embedding": pa.FixedSizeListArray.from_arrays(
                                     pa.array(vectors[part].ravel()), 2)}),
                       store / f"part-{k:06d}.parquet")
    found_vectors, found = theme_input._ImageVectors(store, tmp_path).lookup(
        ["e.jpg", "b.jpg", "c.jpg", "x.jpg", "a.jpg"])
    assert found.tolist() == [True, True, False, False, True]
    np.testing.assert_array_equal(found_vectors[[0, 1, 4]], vectors[[5, 1, 0]])
