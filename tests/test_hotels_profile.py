import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kadr.hotels.duplicates import hash_pairs
from kadr.hotels.profile import ProfileSettings, run_profile
from kadr.hotels.sources import hotels50k_manifest, is_hotels50k
from kadr.hotels.statistics import gini, imbalance
from tests.helpers import TINY_CLIP, shared_path


@pytest.fixture
def hotels50k(tmp_path):
    """A small Hotels-50K root laid out as its tools do, with real room photos."""
    rooms = sorted(shared_path("data", "interiors", "bedroom").glob("*"))[:12]
    root = tmp_path / "hotels50k"
    (root / "input").mkdir(parents=True)
    rows = []
    for i, p in enumerate(rooms):
        hotel = "h1" if i < 8 else f"h{i}"
        source = "travel_website" if i % 3 else "traffickcam"
        dest = root / "images" / "train" / "c1" / hotel / source / f"{i}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
        rows.append((i, hotel, f"http://x/{i}.jpg", source, "2016-01-01"))
    # A rotated copy, an exact copy under another id, a missing photo, a repeated row.
    rot = root / "images/train/c1/h1/travel_website/100.jpg"
    Image.open(rooms[0]).rotate(90, expand=True).save(rot, quality=95)
    rows.append((100, "h1", "u", "travel_website", "2016"))
    shutil.copy(rooms[1], root / "images/train/c1/h1/travel_website/101.jpg")
    rows.append((101, "h1", "u", "travel_website", "2016"))
    rows.append((102, "h1", "u", "travel_website", "2016"))  # never downloaded
    rows.append(rows[2])
    pd.DataFrame(rows, columns=["image_id", "hotel_id", "image_url", "image_source",
                                "upload_timestamp"]).to_csv(root / "input/train_set.csv",
                                                            index=False)
    pd.DataFrame({"hotel_id": ["h1"] + [f"h{i}" for i in range(8, 12)], "hotel_name": "x",
                  "chain_id": "c1", "latitude": 0, "longitude": 0}).to_csv(
        root / "input/hotel_info.csv", index=False)
    pd.DataFrame({"chain_id": ["c1"], "chain_name": ["Chain"]}).to_csv(
        root / "input/chain_info.csv", index=False)
    return root


def test_hotels50k_is_recognised_and_profiled(hotels50k, tmp_path):
    assert is_hotels50k(hotels50k)
    assert len(hotels50k_manifest(hotels50k)) == 16
    out = tmp_path / "profile"
    s = run_profile(str(hotels50k), str(out), ProfileSettings(clip=TINY_CLIP, progress=False)).figures
    assert s["source_kind"] == "hotels50k"
    assert s["rows"] == 16 and s["unique_image_ids"] == 15
    assert s["missing"] == 1
    assert s["unique_contents"] == 13, "12 rooms + the rotated copy; the exact copy is one"
    assert s["per_hotel"]["groups"] == 5 and s["per_hotel"]["max"] == 12
    assert s["per_source"]["groups"] == 2
    dups = pd.read_parquet(out / "duplicates.parquet")
    kinds = dict(zip(dups["key"].str.extract(r"/(\d+)\.jpg")[0], dups["kind"], strict=True))
    assert kinds["100"] == "rotated"
    assert kinds["101"] == "exact" and kinds["1"] == "exact"
    photos = pd.read_parquet(out / "photos.parquet")
    assert {"rotation_needed", "offtopic_prob", "phash_90"} <= set(photos.columns)
    html = (out / "profile.html").read_text()
    assert "plotly" in html.lower() and "<script src=" not in html, "self-contained"
    assert f"Duplicates ({len(dups)} photos)" in html and len(dups) > 2
    assert json.loads((out / "profile.json").read_text())["rows"] == 16


def test_profile_without_weights_skips_model_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("KADR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    folder = shared_path("data", "interiors", "kitchen")
    s = run_profile(str(folder), str(tmp_path / "p"),
                    ProfileSettings(clip="open_clip:ViT-B-32@laion2b_s34b_b79k", progress=False)).figures
    assert "skipped" in s["model_checks"] and s["readable"] == 100
    assert "rotated" not in s


def test_imbalance_figures():
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 100])) == pytest.approx(0.75)
    im = imbalance(pd.Series([100] + [1] * 99))
    assert im["top_1pct_share"] == pytest.approx(100 / 199, abs=1e-3)


def test_hash_pairs_equals_brute_force_and_caps_hot_buckets():
    rng = np.random.default_rng(3)
    # Skewed hashes, as real ones are: most bits shared, a few random.
    base = np.uint64(0xFFFF0000FFFF0000)
    noise = rng.integers(0, 2**12, 400, dtype=np.int64).astype(np.uint64)
    a = base ^ noise
    b = base ^ rng.integers(0, 2**12, 300, dtype=np.int64).astype(np.uint64)
    brute = {(i, j) for i in range(len(a)) for j in range(len(b))
             if bin(int(a[i]) ^ int(b[j])).count("1") <= 3}
    assert pair_set(hash_pairs(a, b, 3)) == brute and len(brute) > 1000
    within = {(i, j) for i in range(len(a)) for j in range(i + 1, len(a))
              if bin(int(a[i]) ^ int(a[j])).count("1") <= 3}
    assert pair_set(hash_pairs(a, a, 3, upper=True)) == within and within
    skipped: dict = {}
    capped = pair_set(hash_pairs(a, b, 3, max_bucket=1000, skipped=skipped))
    assert capped <= brute, "a cap leaves pairs out, never adds wrong ones"
    assert skipped["buckets"] > 0 and skipped["comparisons"] > 1000


def test_hash_pairs_finds_pairs_of_a_skipped_bucket_through_another_chunk():
    rng = np.random.default_rng(5)
    # Every hash shares its lowest chunk (one hot bucket); the rest is random.
    a = rng.integers(0, 2**40, 500, dtype=np.int64).astype(np.uint64) << np.uint64(24)
    b = a ^ np.uint64(1)  # one bit off, in the hot chunk
    skipped: dict = {}
    pairs = pair_set(hash_pairs(a, b, 4, max_bucket=1000, skipped=skipped))
    assert skipped["buckets"] >= 1, "the shared chunk's bucket was over the cap"
    assert {(i, i) for i in range(500)} <= pairs, "found through the other chunks"
    assert len(hash_pairs(a, b, 4)) == len(pairs)  # each pair once, capped or not


def test_hash_pairs_finds_all_within_distance():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 500, dtype=np.int64).astype(np.uint64)
    flipped = base ^ np.uint64(0b1011)  # 3 bits differ
    for distance in range(3, 9):  # one-bit probes (4, 5) and exact chunks (3) alike
        assert {(i, i) for i in range(500)} <= pair_set(hash_pairs(base, flipped, distance))
    assert not {(i, i) for i in range(500)} & pair_set(hash_pairs(base, flipped, 2))


def pair_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, pairs.tolist()))


def test_families_root_and_turns_agree_with_every_edge():
    from kadr.hotels.duplicates import _families

    rng = np.random.default_rng(5)
    n = 3000
    orientation = rng.integers(0, 4, n) * 90  # each photo's true turn from upright
    i = rng.integers(0, n, 2500)
    j = rng.integers(0, n, 2500)
    keep = i != j
    i, j = i[keep], j[keep]
    r = (orientation[i] - orientation[j]) % 360  # turning i by r gives j
    root, turn = _families(n, np.column_stack([i, j, r]))
    # The same families as a plain union-find, each rooted at its first row.
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(i, j, strict=True):
        parent[max(find(a), find(b))] = min(find(a), find(b))
    assert [find(x) for x in range(n)] == root.tolist()
    assert (turn[root] == 0).all()
    assert ((r + turn[j]) % 360 == turn[i]).all(), "every edge's rotation composes"


def test_fix_rotation_writes_upright_copies(tmp_path):
    folder = shared_path("data", "interiors", "bathroom")
    out = tmp_path / "p"
    # Threshold 0: every photo the (random) model would turn gets an upright copy.
    s = run_profile(str(folder), str(out), ProfileSettings(
        clip=TINY_CLIP, fix_rotation=True, rotation_threshold=0.0, progress=False)).figures
    photos = pd.read_parquet(out / "photos.parquet")
    turned = photos[photos["rotation_needed"] != 0]
    copies = sorted((out / "upright").glob("*.jpg")) if (out / "upright").exists() else []
    assert len(copies) == len(turned) == s["rotated"]["flagged"]
    assert len(turned) > 0, "at threshold 0 the random model turns some photos"
    for r in turned.head(5).to_dict("records"):
        original = Image.open(r["path"]).convert("RGB")
        copy = Image.open(out / "upright" / f"{r['key'].rsplit('.', 1)[0]}.jpg").convert("RGB")
        want = original.rotate(int(r["rotation_needed"]), expand=True)
        assert copy.size == want.size
        diff = np.abs(np.asarray(copy, float) - np.asarray(want, float)).mean()
        assert diff < 4, "the copy is the photo turned by rotation_needed (JPEG aside)"


def _family_table(families: int, size: int, turned: dict[int, int], seed: int = 0) -> pd.DataFrame:
    """Perceptual-hash rows of ``families`` pictures, ``size`` copies each; copy ``m``
    of each is stored turned by ``turned[m]`` degrees (the rest upright), a few bits flipped."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(families):
        views = rng.integers(0, 2**63, 4, dtype=np.int64)  # hash of the picture turned by 0..270
        for m in range(size):
            stored = turned.get(m, 0)
            row = {"key": f"f{f}/m{m}.jpg", "status": "ok", "photo_id": f"{f}-{m}",
                   "truth": (360 - stored) % 360}
            for r in (0, 90, 180, 270):
                h = int(views[((stored + r) // 90) % 4]) ^ (1 << int(rng.integers(0, 64)))
                row[f"phash_{r}"] = f"{h:016x}"
            rows.append(row)
    return pd.DataFrame(rows)


def test_only_the_minority_orientation_of_a_family_is_rotated():
    from kadr.hotels.duplicates import duplicates

    table = _family_table(200, 10, {3: 90, 7: 270})
    dups = duplicates(table, max_distance=4).merge(table[["key", "truth"]], on="key")
    assert len(dups) == 2000 and dups["group"].nunique() == 200, "every family is one group"
    rotated = dups[dups["kind"] == "rotated"]
    assert len(rotated) == 400, "two of each ten are turned; the upright eight are not"
    assert (dups["rotation"] == dups["truth"]).all(), "each copy gets the turn that makes it upright"
    assert set(dups.loc[dups["kind"] != "rotated", "kind"]) == {"near"}


def test_family_tie_goes_to_a_confident_clip_vote():
    from kadr.hotels.duplicates import duplicates

    table = _family_table(1, 2, {0: 90})  # the first row is the turned one
    plain = duplicates(table, max_distance=4)
    assert list(plain["rotation"]) == [0, 90], "without CLIP, the first row's orientation"
    table["rotation_needed"] = [270, 0]
    table["rotation_confidence"] = [0.9, 0.8]
    voted = duplicates(table, max_distance=4).set_index("key")["rotation"]
    assert voted["f0/m0.jpg"] == 270 and voted["f0/m1.jpg"] == 0


def test_rotation_check_sees_the_photo_at_the_model_input_size():
    from kadr.core.decode import decode_photo
    from kadr.hotels.profile import ProfileJob

    job = ProfileJob(ProfileSettings(clip="open_clip:PE-Core-T-16-384@random", progress=False))
    assert job.model.image_size == 384
    path = sorted(shared_path("data", "camtrap-dp-1.0.2", "example", "media").glob("*.JPG"))[0]
    photo = decode_photo(path.read_bytes())  # 2048 x 1440
    _, arrays = job.prepare(photo)
    for r, array in zip((0, 90, 180, 270), arrays, strict=True):
        turned = photo.image.rotate(r, expand=True)
        direct = job.model.prepare_image(turned)
        diff = np.abs(array.astype(float) - direct.astype(float)).mean()  # levels of 255
        assert diff < 1.0, f"{r} degrees: not the model's own view"


def test_a_hotels50k_root_given_relative_from_its_parent_folder(hotels50k, tmp_path, monkeypatch):
    """The root as a user types it (relative to where they are), with or without the
    hotel and chain tables: every photo found, the same as with an absolute root."""
    monkeypatch.chdir(tmp_path)
    s = run_profile("hotels50k", "profile", ProfileSettings(clip=None, progress=False)).figures
    assert s["source_kind"] == "hotels50k" and s["rows"] == 16 and s["missing"] == 1
    for table in ("hotel_info.csv", "chain_info.csv"):
        (hotels50k / "input" / table).unlink()
    s = run_profile("hotels50k", "bare", ProfileSettings(clip=None, progress=False)).figures
    assert s["rows"] == 16 and s["missing"] == 1, "photos under images/train/unknown/... too"
