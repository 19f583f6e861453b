"""A run's exports, written one camera at a time from a store whose cameras are mixed
across every shard, agree with the rules applied to the whole run."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kadr.core import group_sort
from kadr.core.group_sort import runs, sorted_groups
from kadr.core.runner import RunSummary
from kadr.traps.exports import outputs_key
from kadr.traps.exports import write as outputs
from kadr.traps.exports.write import per_photo_table, photo_files, photos_for_events, write_outputs
from kadr.traps.registrations import form_registrations
from kadr.traps.settings import TrapSettings
from kadr.traps.tables import registrations_csv

DEER = json.dumps([{"label": "deer", "category": "animal", "conf": 0.8,
                    "bbox": [0.1, 0.2, 0.3, 0.3]}])


def mixed_store(out, n=3000, cameras=7, shards=4, seed=0):
    """A store of n photos whose cameras are interleaved in every shard: visits of a few
    photos, deer and foxes, some photos without a time and some that failed."""
    rng = np.random.default_rng(seed)
    store = out / "photos.store"
    store.mkdir(parents=True)
    i = rng.permutation(n)
    cam = np.array([f"cam{c}" for c in range(cameras)])[i % cameras]
    seq = i // cameras
    time = (pd.Timestamp("2024-05-01") + pd.to_timedelta(seq * 400 + (seq % 4) * 7, unit="s")
            ).to_numpy().copy()
    time[rng.random(n) < 0.04] = np.datetime64("NaT")
    animal = (seq // 4) % 3 != 0
    cls = np.where(animal, np.where((seq // 12) % 2 == 0, "deer", "fox"), "empty")
    ok = rng.random(n) > 0.03
    keys = np.char.add(np.char.add(cam, "/IMG_"), np.char.zfill(seq.astype(str), 5))
    for k, part in enumerate(np.array_split(np.arange(n), shards)):
        pq.write_table(pa.table({
            "key": keys[part], "path": np.char.add("/photos/", keys[part]), "group": cam[part],
            "photo_id": [f"{j:032x}" for j in i[part]],
            "time": pa.array(time[part], pa.timestamp("ns")),
            "time_source": np.where(rng.random(len(part)) < 0.1, "mtime", "exif"),
            "format": np.full(len(part), "JPEG"),
            "status": np.where(ok[part], "ok", "unreadable"),
            "reason": pa.array(np.where(ok[part], None, "truncated file"), pa.string()),
            "detections": np.where(animal[part] & ok[part], DEER, "[]"),
            "n_animals": animal[part].astype(np.int64),
            "class": np.where(ok[part], cls[part], None),
            "class_prob": np.where(animal[part], rng.uniform(0.5, 1, len(part)), np.nan),
            "count": animal[part].astype(np.int64) + (seq[part] % 5 == 0),
        }), store / f"part-{k:06d}.parquet")
    return n


# One part in memory and every camera written together; parts on disk, a camera at a time.
@pytest.mark.parametrize(("part_rows", "chunk_rows"), [(50_000, 10_000), (700, 1)])
def test_exports_a_camera_at_a_time_agree_with_the_whole_run(tmp_path, monkeypatch, part_rows,
                                                             chunk_rows):
    monkeypatch.setattr(group_sort, "PART_ROWS", part_rows)
    monkeypatch.setattr(outputs, "CHUNK_ROWS", chunk_rows)
    out = tmp_path / "out"
    n = mixed_store(out)
    settings = TrapSettings(detector="yolox:none.onnx", classifier=None, progress=False)
    regs = write_outputs(out, settings, None, {}, RunSummary(), outputs_key(out, settings))

    whole = form_registrations(photos_for_events(per_photo_table(photo_files(out))),
                               settings.method, settings.gap)
    assert (out / "registrations.csv").read_text() == registrations_csv(whole)
    assert regs["date_registration_start"].isna().sum() > 0, "untimed photos' registrations"
    assert regs["eventID"].is_unique

    photos = pd.read_csv(out / "photos.csv", dtype={"event_id": str})
    assert len(photos) == n and photos["key"].is_unique
    order = photos.assign(t=pd.to_datetime(photos["time"]))
    assert order.equals(order.sort_values(["group", "t", "key"], kind="stable",
                                          na_position="last")), "camera/time order"
    linked = photos.dropna(subset=["event_id"]).merge(
        regs, left_on="event_id", right_on="eventID", validate="many_to_one")
    assert (linked["group"] == linked["name_folder"]).all()
    t = pd.to_datetime(linked["time"])
    assert ((t >= linked["date_registration_start"])
            & (t <= linked["date_registration_end"])).all(), "a photo lies in its registration"
    timed = regs[regs["date_registration_start"].notna()]
    assert set(timed["eventID"]) == set(linked["event_id"]), "every visit has its photos"

    observations = pd.read_csv(out / "camtrap-dp" / "observations.csv")
    events = observations[observations["observationLevel"] == "event"]
    assert sorted(events["eventID"]) == sorted(timed["eventID"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["photos"] == n
    assert len(summary["failed"]) == (photos["status"] != "ok").sum()
    md = json.loads((out / "megadetector.json").read_text())
    assert len(md["images"]) == n
    assert sorted(md["classification_categories"].values()) == ["deer", "fox"]


def test_runs_cut_sorted_batches_where_the_value_changes():
    values = ["a"] * 5 + ["b"] + ["c"] * 4 + [None] * 2
    batches = pa.table({"g": values, "i": range(len(values))}).to_batches(max_chunksize=3)
    got = [(t["g"][0].as_py(), t["i"].to_pylist()) for t in runs(batches, "g")]
    assert got == [("a", [0, 1, 2, 3, 4]), ("b", [5]), ("c", [6, 7, 8, 9]), (None, [10, 11])]


def test_sorted_groups_sort_through_parts_on_disk_with_missing_values_last(tmp_path):
    rng = np.random.default_rng(1)
    files = []
    for k in range(3):
        t = rng.integers(0, 50, 400).astype(float)
        t[rng.random(400) < 0.1] = np.nan
        groups = rng.choice(np.array(["x", "y", "z", "w", None], dtype=object), 400)
        files.append(tmp_path / f"{k}.parquet")
        pq.write_table(pa.table({"g": pa.array(groups, pa.string()), "t": t,
                                 "wide": ["w" * 200] * 400}), files[-1])
    for part_rows in (100, 10_000):  # several parts on disk; one part in memory
        groups = list(sorted_groups(files, "g", ("t",), exclude=("wide",), part_rows=part_rows,
                                    spill_dir=tmp_path))
        assert [g["g"][0].as_py() for g in groups] == ["w", "x", "y", "z", None]
        rows = pa.concat_tables(groups)
        assert rows.column_names == ["g", "t"] and rows.num_rows == 1200
        frame = rows.to_pandas()
        assert frame.equals(frame.sort_values(["g", "t"], na_position="last", kind="stable")
                            .reset_index(drop=True))
    assert not list(tmp_path.glob("kadr-sort-*")), "the parts are removed"


def test_class_list_reads_shards_where_no_photo_has_a_class(tmp_path):
    pq.write_table(pa.table({"class": pa.nulls(3)}), tmp_path / "failed.parquet")
    pq.write_table(pa.table({"class": ["deer", None, "fox"]}), tmp_path / "read.parquet")
    assert outputs.photo_labels([tmp_path / "failed.parquet", tmp_path / "read.parquet"]) == {
        "deer", "fox"}
