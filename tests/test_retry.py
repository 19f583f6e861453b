"""Failures on one run are not forever: transient ones are tried again, permanent ones kept."""

import subprocess
import sys

from kadr.core.collection import PhotoCollection
from kadr.core.runner import Job, run_job
from kadr.core.store import ShardStore, read_shards
from tests.helpers import jpeg_bytes


def counting_job(calls: list, fail_keys: set) -> Job:
    def process(inputs, rows):
        calls.extend(r["key"] for r in rows)
        if any(r["key"] in fail_keys for r in rows):
            raise MemoryError("out of memory")  # what a model does on a batch too large
        return [{"value": 1} for _ in rows]

    return Job("count", prepare=lambda photo: 1, process=process, batch_size=8,
               empty_result={"value": None})


def rows_by_key(folder):
    t = read_shards(folder).to_pandas()
    assert t["key"].is_unique, "one row per photo, the newest"
    return t.set_index("key")


def test_transient_failures_are_retried_and_permanent_ones_kept(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(4):
        (src / f"ok{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    (src / "later.jpg").symlink_to(tmp_path / "not-yet")  # missing now (a mount not up), there later
    good = jpeg_bytes(seed=9)
    (src / "cut.jpg").write_bytes(good[: len(good) // 2])  # truncated: permanent
    store_dir = tmp_path / "store"
    calls: list = []
    with ShardStore(store_dir, {"job": "count"}) as store:
        run_job(PhotoCollection(str(src)), counting_job(calls, {"ok2.jpg"}), store, progress=False)
    first = rows_by_key(store_dir)
    assert first.loc["later.jpg", "status"] == "missing"
    assert first.loc["cut.jpg", "status"] == "truncated"
    assert first.loc["ok2.jpg", "status"] == "process_error"
    assert "MemoryError" in first.loc["ok2.jpg", "reason"]
    assert (first.loc[["ok0.jpg", "ok1.jpg", "ok3.jpg"], "status"] == "ok").all(), \
        "a failing batch is narrowed down to the photo that fails"

    (tmp_path / "not-yet").write_bytes(jpeg_bytes(seed=5))
    calls.clear()
    with ShardStore(store_dir, {"job": "count"}) as store:
        summary = run_job(PhotoCollection(str(src)), counting_job(calls, set()), store, progress=False)
    assert sorted(calls) == ["later.jpg", "ok2.jpg"], "only the transient failures run again"
    assert (summary.total, summary.already_done, summary.ok) == (6, 4, 2)
    second = rows_by_key(store_dir)
    assert len(second) == 6
    assert second.loc["later.jpg", "status"] == "ok" and second.loc["ok2.jpg", "status"] == "ok"
    assert second.loc["cut.jpg", "status"] == "truncated", "a file left as it was is kept"

    calls.clear()
    with ShardStore(store_dir, {"job": "count"}) as store:
        summary = run_job(PhotoCollection(str(src)), counting_job(calls, set()), store,
                          progress=False, retry_failed=True)
    assert summary.processed == 1 and summary.failed == 1, "tried again, still truncated"
    assert rows_by_key(store_dir).loc["cut.jpg", "status"] == "truncated"

    (src / "cut.jpg").write_bytes(good)  # repaired: the file changed, so it is looked at again
    calls.clear()
    with ShardStore(store_dir, {"job": "count"}) as store:
        summary = run_job(PhotoCollection(str(src)), counting_job(calls, set()), store,
                          progress=False)
    assert calls == ["cut.jpg"] and summary.changed == 1
    assert (rows_by_key(store_dir)["status"] == "ok").all()


def test_stale_rows_left_by_a_killed_retry_are_removed_on_open(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store_dir = tmp_path / "store"
    store_dir.mkdir()
    pq.write_table(pa.table({"key": ["a", "b"], "status": ["missing", "ok"]}),
                   store_dir / "part-000000.parquet")
    pq.write_table(pa.table({"key": ["a"], "status": ["ok"]}), store_dir / "part-000001.parquet")
    with ShardStore(store_dir, {"job": "x"}) as store:
        done = store.done_keys()
        assert len(done) == 2 and "a" in done and "b" in done and "c" not in done
    t = rows_by_key(store_dir)
    assert list(t.index) == ["b", "a"] and (t["status"] == "ok").all()


def test_embed_cli_has_retry_failed(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kadr.cli", "embed", "--help"], capture_output=True,
                       text=True)
    assert "--retry-failed" in r.stdout


def test_the_newest_row_of_a_key_decides_whether_it_is_done(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store_dir = tmp_path / "store"
    store_dir.mkdir()
    pq.write_table(pa.table({"key": ["a", "b", "c"], "status": ["ok", "truncated", "ok"]}),
                   store_dir / "part-000000.parquet")
    pq.write_table(pa.table({"key": ["a"], "status": ["io_error"]}),
                   store_dir / "part-000001.parquet")
    with ShardStore(store_dir, {"job": "x"}) as store:
        done = store.done_keys()
        assert [k in done for k in "abcd"] == [False, True, True, False]
        again = store.done_keys(retry_failed=True)
        assert [k in again for k in "abcd"] == [False, False, True, False]
    assert list(rows_by_key(store_dir).index) == ["b", "c", "a"], "one row per key, newest"
