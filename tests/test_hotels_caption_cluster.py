import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from kadr.core.models import load_model
from kadr.hotels.caption import (
    CaptionSettings,
    Interrogator,
    load_vocabulary,
    run_caption,
)
from kadr.hotels.cluster import (
    ClusterSettings,
    knee_eps,
    run_cluster,
    themes,
)
from tests.helpers import TINY_CLIP, make_broken_corpus, shared_path

TINY_BLIP = "hf-caption:kadr/tiny-blip@random"


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    """24 real room photos from three room types, plus broken files."""
    root = tmp_path_factory.mktemp("rooms")
    for kind in ("bedroom", "kitchen", "bathroom"):
        for p in sorted(shared_path("data", "interiors", kind).glob("*"))[:8]:
            (root / f"{kind}_{p.name}").write_bytes(p.read_bytes())
    make_broken_corpus(root / "broken")
    return root


@pytest.mark.parametrize("mode", ["fast", "classic", "best", "negative"])
def test_caption_every_mode_end_to_end(rooms, tmp_path, mode):
    out = tmp_path / mode
    settings = CaptionSettings(captioner=TINY_BLIP, clip=TINY_CLIP, mode=mode, progress=False,
                               batch_size=8)
    captions = run_caption(str(rooms), str(out), settings).table
    table = pd.read_parquet(captions)
    assert table["key"].tolist() == pd.read_csv(out / "captions.csv")["key"].tolist()
    ok = table[table["status"] == "ok"]
    clip = load_model(TINY_CLIP)
    decodable = [k for k, v in make_broken_corpus(tmp_path / "corpus").items() if v == "ok"]
    assert len(ok) == 24 + len(decodable), "24 rooms and the broken corpus's decodable files"
    assert set(table[table["status"] != "ok"]["status"]) >= {"empty_file", "truncated"}
    for r in ok.to_dict("records"):
        phrases = json.loads(r["phrases"])
        assert phrases, "every photo gets ranked phrases"
        assert clip.count_tokens(r["prompt"]) <= clip.context_length
        if mode != "negative":
            assert r["prompt"].startswith(r["caption"])
            assert all(p in r["prompt"] for p, _ in phrases)
    assert (out / "captions.csv").exists()


def test_phrases_are_appended_within_the_models_own_context_length():
    import dataclasses

    clip = dataclasses.replace(load_model(TINY_CLIP), context_length=12)
    it = Interrogator(clip=clip, vocab=load_vocabulary("hotel"), mode="fast")
    prompt, kept = it._fit("a bedroom", [("warm light", 1.0), ("wooden floor", 0.9),
                                         ("a very large window with a view of the sea", 0.8)])
    assert clip.count_tokens(prompt) <= 12 and prompt == "a bedroom, warm light, wooden floor"
    assert [p for p, _ in kept] == ["warm light", "wooden floor"]


def test_classic_takes_one_phrase_per_table_and_vocab_filters():
    vocab = load_vocabulary("lighting,styles", exclude="budget")
    assert "budget hotel interior" not in vocab.tables["styles"]
    with pytest.raises(ValueError, match="unknown vocabulary"):
        load_vocabulary("nope")
    from kadr.core.models import load_model

    clip = load_model(TINY_CLIP)
    it = Interrogator(clip, vocab, "classic")
    img = clip.encode_texts(["a room"])  # any unit vectors stand in for image embeddings
    res = it.interrogate(["a caption"], img)[0]
    got = [p for p, _ in res["phrases"]]
    assert sum(p in vocab.tables["lighting"] for p in got[:2]) == 1
    assert sum(p in vocab.tables["styles"] for p in got[:2]) == 1


def test_best_chain_batched_equals_plain_loop():
    from kadr.core.models import load_model

    clip = load_model(TINY_CLIP)
    it = Interrogator(clip, load_vocabulary("hotel"), "best", max_phrases=4)
    img = clip.encode_texts(["a bright hotel room with a sea view", "a dark bathroom"])
    tables = [t for t in it.vocab.tables if t != "faults"]
    batched = it.best_chain(["a room", "a bathroom"], img, tables)
    for i, cap in enumerate(["a room", "a bathroom"]):
        plain = it.best_chain_plain(cap, img[i], tables)
        assert [p for p, _ in batched[i]] == [p for p, _ in plain]


def planted(n_per=60, k=5, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 4
    x = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


@pytest.mark.parametrize("reduce,method", [("tsne", "dbscan"), ("umap", "hdbscan"),
                                           ("none", "hdbscan")])
def test_planted_clusters_are_recovered(reduce, method):
    x, truth = planted()
    labels, _, note, params = themes(x, ClusterSettings(reduce=reduce, cluster=method,
                                                        min_samples=5))
    assert adjusted_rand_score(truth, labels) >= 0.9, (note, params)


def test_sampled_tsne_for_large_inputs_says_so():
    x, truth = planted(n_per=200)
    labels, coords, note, _ = themes(x, ClusterSettings(max_fit=300, min_samples=5))
    assert "sample of 300" in note and coords.shape == (1000, 2)
    assert adjusted_rand_score(truth, labels) >= 0.9


def test_knee_eps_separates_within_from_between():
    x, _ = planted(dim=2)
    eps = knee_eps(x, 3)
    assert 0.1 < eps < 4


def test_cluster_command_on_real_caption_output(rooms, tmp_path):
    cap = tmp_path / "cap"
    run_caption(str(rooms), str(cap), CaptionSettings(captioner=TINY_BLIP, clip=TINY_CLIP,
                                                      mode="fast", progress=False))
    out = tmp_path / "themes"
    s = run_cluster(str(cap), str(out), ClusterSettings(clip=TINY_CLIP, embed="both",
                                                        text_column="prompt", progress=False)).figures
    corpus = make_broken_corpus(tmp_path / "corpus")
    decodable = 24 + sum(v == "ok" for v in corpus.values())
    assert s["photos"] == decodable and s["skipped_not_ok"] == len(corpus) + 24 - decodable
    assign = pd.read_parquet(out / "assignments.parquet")
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert len(assign) == decodable and s["clusters"] == len(clusters)
    for c in clusters.to_dict("records"):
        members = assign[assign["cluster"] == c["cluster"]]
        assert c["label"] in set(members["text"]), "the label is a member's caption"
    html = (out / "map.html").read_text()
    assert "plotly_click" in html and "<script src=" not in html


def _caption_table(tmp_path, captions: list[str], extra_rows=()) -> str:
    from tests.helpers import jpeg_bytes

    photos = tmp_path / "photos"
    photos.mkdir()
    rows = []
    for i, caption in enumerate(captions):
        p = photos / f"p{i:02d}.jpg"
        p.write_bytes(jpeg_bytes(size=(96, 72), seed=i))
        rows.append({"key": f"p{i:02d}", "path": str(p), "caption": caption, "status": "ok"})
    for key, path, caption in extra_rows:
        rows.append({"key": key, "path": str(path), "caption": caption, "status": "ok"})
    table = tmp_path / "captions.parquet"
    pd.DataFrame(rows).to_parquet(table)
    return str(table)


@pytest.mark.parametrize("embed", ["image", "both"])
def test_cluster_images_with_a_repeated_photo_and_a_broken_one(tmp_path, embed):
    from tests.helpers import jpeg_bytes

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg_bytes(seed=99)[:200])
    captions = [f"a {w} room" for w in ("red", "blue", "green", "white", "dark", "bright")] * 2
    table = _caption_table(tmp_path, captions, [
        ("p00-again", tmp_path / "photos" / "p00.jpg", "a red room"),  # one image id, two rows
        ("broken", broken, "a room")])
    out = tmp_path / "themes"
    s = run_cluster(table, str(out), ClusterSettings(clip=TINY_CLIP, embed=embed, progress=False)).figures
    assign = pd.read_parquet(out / "assignments.parquet")
    assert s["photos"] == len(assign) == 13, "both rows of the repeated photo are assigned"
    a = assign.set_index("key")
    assert a.loc["p00", "cluster"] == a.loc["p00-again", "cluster"]
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped["key"]) == ["broken"] and "could not be embedded" in skipped["skipped_because"][0]


def test_cluster_identical_captions_give_one_theme_not_a_crash(tmp_path):
    table = _caption_table(tmp_path, ["a room"] * 20)
    out = tmp_path / "themes"
    s = run_cluster(table, str(out), ClusterSettings(clip=TINY_CLIP, progress=False)).figures
    assert s["clusters"] == 1 and s["noise"] == 0
    assert "only 1 distinct" in s["reduction"]
    assert pd.read_parquet(out / "clusters.parquet")["label"].tolist() == ["a room"]


def test_map_escapes_photo_keys_and_captions(tmp_path):
    from kadr.hotels.cluster import render_map
    from tests.helpers import jpeg_bytes

    photo = tmp_path / "p.jpg"
    photo.write_bytes(jpeg_bytes(size=(64, 48)))
    evil = "</script><script>alert('key')</script>"
    assign = pd.DataFrame({"key": [evil, "b"], "path": [str(photo)] * 2, "x": [0.0, 1.0],
                           "y": [0.0, 1.0], "cluster": [0, 0],
                           "text": ["<img src=x onerror=alert(1)>", "ok"]})
    clusters = pd.DataFrame({"cluster": [0], "size": [2], "label": ["<b>bold</b>"],
                             "phrases": ["[]"]})
    page = render_map(assign, clusters, {"clusters": 1, "noise": 0, "reduction": "<i>r</i>"})
    assert "<script>alert('key')" not in page
    assert "<img src=x onerror" not in page and "<b>bold</b>" not in page
    assert page.count("<script") == page.count("</script>"), "no element was ended early"


def test_label_propagation_takes_the_majority_and_the_smaller_label_on_a_tie():
    from kadr.hotels.cluster import majority

    votes = np.array([[2, 2, 1, -1, 1], [3, 3, 3, 0, 0], [-1, -1, 4, 4, 5], [7, 6, 5, 4, 3]])
    assert majority(votes).tolist() == [1, 3, -1, 3]
    rng = np.random.default_rng(0)
    many = rng.integers(-1, 6, (5000, 5))
    assert (majority(many) == [np.bincount(v + 1).argmax() - 1 for v in many]).all()


def test_caption_tables_are_written_from_every_shard_a_batch_at_a_time(tmp_path, monkeypatch):
    from kadr.core import group_sort
    from kadr.hotels.caption import write_caption_tables

    monkeypatch.setattr(group_sort, "READ_ROWS", 3)
    store = tmp_path / "captions.store"
    store.mkdir()
    photos = [tmp_path / f"p{i}.jpg" for i in range(10)]
    for k in range(2):
        rows = range(5 * k, 5 * k + 5)
        pd.DataFrame({"key": [f"p{i}" for i in rows], "path": [str(photos[i]) for i in rows],
                      "status": ["ok" if i != 7 else "decode_error" for i in rows],
                      "caption": [f"room {i}" if i != 7 else None for i in rows],
                      "prompt": [f"room {i}, suite" if i != 7 else None for i in rows]}
                     ).to_parquet(store / f"part-{k:06d}.parquet")
    write_caption_tables(tmp_path, write_txt=True)
    table = pd.read_parquet(tmp_path / "captions.parquet")
    assert table["key"].tolist() == [f"p{i}" for i in range(10)]
    assert pd.read_csv(tmp_path / "captions.csv")["prompt"].tolist()[:2] == ["room 0, suite",
                                                                              "room 1, suite"]
    assert (tmp_path / "p9.txt").read_text() == "room 9, suite\n"
    assert not (tmp_path / "p7.txt").exists(), "a failed photo has no prompt file"
