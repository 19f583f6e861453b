"""The review server as a reviewer meets it: clock shifts of any kind, a log replay that
never fails, splits and merges that keep what was decided, conflicts that say what the
other reviewer did, garbage requests, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kadr.traps.decisions import DecisionLog, NewDecision
from kadr.traps.exports import export_run
from kadr.traps.review import load_state
from kadr.traps.review_app import Conflict, Review, create_app
from tests.test_review import make_run, photo_row, ref, unit_with

KADR = str(Path(sys.executable).with_name("kadr"))


def mtime_run(tmp_path: Path) -> Path:
    """A run whose badger photos are dated by mtime, to the nanosecond, as a file system
    dates them (a clock 14 years off)."""
    rows = [photo_row(tmp_path, "camA", 0, 0, "fox", 1, 0.9),
            photo_row(tmp_path, "camA", 3, 120, "badger", 1, 0.4, source="mtime"),
            photo_row(tmp_path, "camA", 4, 121, "badger", 1, 0.5, source="mtime")]
    rows[1]["time"] = pd.Timestamp("2026-11-11 10:13:13.807554123")
    rows[2]["time"] = pd.Timestamp("2026-11-11 10:14:13.111111789")
    out = make_run(tmp_path, rows)
    table = pd.read_parquet(out / "photos.parquet")  # microseconds, as a run stores them
    table.assign(time=table["time"].astype("datetime64[us]")).to_parquet(out / "photos.parquet")
    return out


@pytest.mark.parametrize("typed", ["2012-10-20 07:36:53", "2012-10-20T07:36:53",
                                   "2012:10:20 07:36:53", "20.10.2012 07:36:53",
                                   "2012-10-20 07:36"])
def test_a_clock_shift_takes_any_time_typed_and_the_folder_stays_usable(tmp_path, typed):
    out = mtime_run(tmp_path)
    review = Review(out, "ana")
    badger = unit_with(review, "badger")
    first = review._photo_ids(badger)[0]
    r = review.clock({"camera": "camA", "photo": first, "true_time": typed,
                      "from_photo_on": True})
    assert r["offset_seconds"] == pytest.approx(-443673380.8, abs=61)
    shown = unit_with(review, "badger")
    assert str(shown.start).startswith("2012-10-20 07:36")
    assert not any("not from EXIF" in f for f in shown.flags), "the reviewer fixed the clock"
    # Everything that reads the folder later still opens it.
    state = load_state(out)
    assert str(unit_with(review, "fox").start) == "2024-07-01 06:00:00"
    assert any(str(u.start).startswith("2012-10-20 07:36") for u in state.units.values())
    regs, summary = export_run(out)
    assert "2012-10-20 07:36" in (out / "registrations.csv").read_text()
    assert Review(out, "ben").queue({})["total"] == 2
    assert not any("dated by file name" in w for w in summary.warnings)


def test_a_clock_shift_refuses_what_is_not_a_time_and_stores_nothing(tmp_path):
    out = mtime_run(tmp_path)
    review = Review(out, "ana")
    first = review._photo_ids(unit_with(review, "badger"))[0]
    for body in ({"camera": "camA", "photo": first, "true_time": "yesterday"},
                 {"camera": "camA", "photo": first, "offset_seconds": "ten"},
                 {"camera": "camA", "photo": first, "offset_seconds": float("nan")},
                 {"camera": "camA", "photo": first, "offset_seconds": 1e30},
                 {"camera": "nowhere", "offset_seconds": 60},
                 {"photo": first, "offset_seconds": 60}):
        with pytest.raises(ValueError):
            review.clock(body)
    with DecisionLog(out) as log:
        assert log.all() == []
    # Any offset a person gives, to the fraction of a second, works.
    review.clock({"camera": "camA", "photo": first, "offset_seconds": -0.123456789})
    review.clock({"camera": "camA", "offset_seconds": 86400 * 365.25 * 3})
    export_run(out)
    assert load_state(out).units


def test_replay_is_total_a_decision_that_cannot_apply_is_flagged_not_raised(tmp_path):
    out = make_run(tmp_path)
    with DecisionLog(out) as log:  # what an older kadr, a bug or a hand edit could store
        log.append("ana", [
            NewDecision("clock", ("camA-0003",), {"camera": "camA",
                                                  "offset_seconds": -445518980.807554,
                                                  "from_time": "2024-07-01 08:00:00.5"}),
            NewDecision("clock", (), {"camera": "camA", "offset_seconds": "abc"}),
            NewDecision("clock", (), {"offset_seconds": 5}),
            NewDecision("clock", (), {"camera": "camA", "offset_seconds": 1e300}),
            NewDecision("split", ("camA-0000", "camA-0001"), {"at": "not-a-photo"}),
            NewDecision("label", ("camA-0000",), {"count": 2}),
            NewDecision("label", ("camB-0000",), {"class": "deer", "count": "many"}),
            NewDecision("undo", (), {"undoes": "x"}),
            NewDecision("merge", (), {}),
        ])
    state = load_state(out)
    assert len(state.problems) == 8, state.problems
    assert all(re.match(r"decision #\d+ \(\w+ by ana\) could not be applied", p)
               for p in state.problems)
    covered = sorted(r for u in state.units.values() for r in u.rows.tolist())
    assert covered == list(range(8)), "every photo still in exactly one registration"
    review = Review(out, "ana")
    assert review.queue({})["problems"] == state.problems, "the page says so"
    regs, summary = export_run(out)
    assert sum("could not be applied" in w for w in summary.warnings) == 8
    assert len(regs) == sum(not u.blank for u in state.units.values())


def test_split_then_label_then_merge_has_no_false_conflict_and_keeps_the_label(tmp_path):
    out = make_run(tmp_path)
    review = Review(out, "ana")
    fox = unit_with(review, "fox")
    ids = review._photo_ids(fox)
    first, second = (review.state.units[u["id"]] for u in review.decide(
        {"action": "split", "units": [ref(fox)], "at": ids[1]})["units"])
    second_seen = review.detail(second.id)  # the page holds this while the first is labelled
    review.decide({"action": "label", "units": [ref(first)], "cls": "wolf"})
    # `m` on the second part names only itself: the server finds its previous registration.
    r = review.decide({"action": "merge", "units": [{"id": second_seen["id"],
                                                     "etag": second_seen["etag"]}]})
    merged = review.state.units[r["units"][0]["id"]]
    assert len(merged.rows) == 3
    assert merged.cls == "wolf" and merged.reviewed, "the label of the labelled part is kept"
    assert load_state(out).units[merged.id].cls == "wolf", "the same on replay"


def test_merging_a_labelled_stretch_with_a_blank_one_keeps_the_label(tmp_path):
    out = make_run(tmp_path)
    review = Review(out, "ana")
    review.decide({"action": "label", "units": [ref(unit_with(review, "badger"))],
                   "cls": "marten"})
    blank = unit_with(review, "empty")
    r = review.decide({"action": "merge", "units": [ref(blank)]})  # with its previous
    merged = review.state.units[r["units"][0]["id"]]
    assert (merged.cls, merged.count, merged.reviewed, len(merged.rows)) == ("marten", 1, True, 4)


def test_a_conflict_says_what_the_other_reviewer_decided(tmp_path):
    out = make_run(tmp_path)
    ana, ben = Review(out, "ana"), Review(out, "ben")
    seen = ben.queue({})  # ben's page lists the badger as the machine left it
    badger = next(u for u in seen["units"] if u["cls"] == "badger")
    ana.decide({"action": "label", "units": [ref(unit_with(ana, "badger"))], "cls": "marten"})
    with pytest.raises(Conflict) as c:
        ben.decide({"action": "count", "units": [{"id": badger["id"], "etag": badger["etag"]}],
                    "count": 2})
    entry = c.value.units[0]
    assert entry["now"]["cls"] == "marten", "the registration that holds those photos now"
    assert entry["by"]["reviewer"] == "ana" and entry["by"]["action"] == "label"
    assert "ana" in entry["message"] and "marten" in entry["message"]
    # Apply mine anyway: the same action on the registration as it is now.
    ben.decide({"action": "count", "units": [ref(ben.state.units[entry["now"]["id"]])],
                "count": 2})
    assert unit_with(ben, "marten").count == 2


def test_queue_counts_progress_per_filter_and_saved_says_what(tmp_path):
    out = make_run(tmp_path)
    review = Review(out, "ana")
    q = review.queue({"reviewed": "no"})
    assert (q["total"], q["reviewed"], q["left"]) == (4, 0, 4)
    r = review.decide({"action": "accept", "units": [ref(unit_with(review, "fox"))]})
    assert r["said"] == ["accepted fox ×1 (camA, 3 photos)"] or "fox" in r["said"][0]
    q = review.queue({"reviewed": "no"})
    assert (q["total"], q["reviewed"], q["left"]) == (3, 1, 3)
    q = review.queue({"reviewed": "all", "camera": "camB"})
    assert (q["total"], q["reviewed"], q["left"]) == (1, 0, 1)


def test_garbage_requests_get_400_not_500(tmp_path):
    from starlette.testclient import TestClient

    out = make_run(tmp_path)
    client = TestClient(create_app(Review(out, "ana"), "tok"), raise_server_exceptions=False)
    for path in ("api/decide", "api/clock"):
        for body in (b"\x00garbage{", b"[1, 2]", b'"text"', b'{"units": [3]}',
                     b'{"action": "count", "units": "x"}', b'{"camera": ["a"]}'):
            r = client.post(f"/t/tok/{path}", content=body,
                            headers={"Content-Type": "application/json"})
            assert r.status_code in (400, 404, 409), (path, body, r.status_code, r.text)
            assert "error" in r.json()


def test_sigterm_stops_the_server_and_exports_every_decision(tmp_path):
    out = make_run(tmp_path)
    proc = subprocess.Popen([KADR, "traps", "review", str(out), "--no-browser", "--token",
                             "tok", "--reviewer", "ana"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"})
    import urllib.request

    for line in proc.stdout:
        m = re.search(r"(http://\S+/t/tok/)", line)
        if m:
            break
    else:
        raise AssertionError("no address printed")
    queue = json.loads(urllib.request.urlopen(m.group(1) + "api/queue").read())
    for u in queue["units"]:
        req = urllib.request.Request(
            m.group(1) + "api/decide", method="POST",
            data=json.dumps({"action": "accept", "units": [u]}).encode(),
            headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(60) == 0, rest
    assert "exporting" in rest
    regs = pd.read_parquet(out / "registrations.parquet")
    assert int(regs["reviewed"].sum()) == 3, "all three animal registrations, as decided"


def test_a_run_folder_works_from_anywhere_and_after_a_move(tmp_path, monkeypatch):
    """`traps run photos -o run` in one folder; review, export and report from another,
    and again after the run and its photos moved together."""
    from tests.helpers import shared_path

    src = shared_path("data", "camera_traps", "cameratraps_repo", "api", "synchronous")
    work = tmp_path / "work"
    for k, p in enumerate(sorted(src.rglob("*.JPG"))[:3]):
        (work / "photos" / "cam1").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, work / "photos" / "cam1" / f"IMG_{k}.jpg")
    onnx = shared_path("models", "yolox_nano.onnx")
    subprocess.run([KADR, "traps", "run", "photos", "-o", "run", "--detector", f"yolox:{onnx}",
                    "--classifier", "none", "--quiet"], cwd=work, check=True,
                   capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def every_photo_served(run: Path) -> None:
        review = Review(run, "ana")
        assert len(review.state.pid) == 3
        assert all(review.photo(pid, "display") is not None for pid in review.state.pid)

    every_photo_served(work / "run")
    shutil.move(work, tmp_path / "moved")
    run = tmp_path / "moved" / "run"
    every_photo_served(run)
    subprocess.run([KADR, "traps", "export", os.path.relpath(run, elsewhere)], check=True,
                   capture_output=True, cwd=elsewhere)
    photos = pd.read_parquet(run / "photos.parquet")
    assert all(Path(p).exists() for p in photos["path"]), "paths point where the photos are"
    report = (run / "report.html").read_text()
    assert report.count("data:image/jpeg") >= 1, "the report's photos are found"
    every_photo_served(run)


def test_merge_finds_the_previous_part_of_a_burst_within_one_second(tmp_path):
    rows = [photo_row(tmp_path, "camA", i, 0, "fox", 1, 0.9) for i in range(3)]
    out = make_run(tmp_path, rows)  # three photos stamped with the same second
    review = Review(out, "ana")
    fox = unit_with(review, "fox")
    ids = review._photo_ids(fox)
    first, second = (review.state.units[u["id"]] for u in review.decide(
        {"action": "split", "units": [ref(fox)], "at": ids[1]})["units"])
    review.decide({"action": "label", "units": [ref(first)], "cls": "wolf"})
    merged = review.decide({"action": "merge", "units": [ref(second)]})["units"][0]
    assert (merged["cls"], merged["photos"], merged["reviewed"]) == ("wolf", 3, True)


def test_a_shift_past_the_calendar_kadr_holds_is_flagged_not_wrapped(tmp_path):
    rows = [photo_row(tmp_path, "camA", 0, 0, "fox", 1, 0.9)]
    rows[0]["time"] = pd.Timestamp("2250-01-01 00:00:00")
    out = make_run(tmp_path, rows)
    with DecisionLog(out) as log:  # +100 years: past 2262, where datetime64[ns] ends
        log.append("ana", [NewDecision("clock", (), {"camera": "camA",
                                                     "offset_seconds": 100 * 365.25 * 86400})])
    state = load_state(out)
    assert any("leave the calendar" in p for p in state.problems), state.problems
    assert str(next(iter(state.units.values())).start) == "2250-01-01 00:00:00"
