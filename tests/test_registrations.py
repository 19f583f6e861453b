import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kadr.traps.registrations import form_registrations, parse_gap
from kadr.traps.score import score_registrations
from kadr.traps.tables import (
    REGISTRATION_COLUMNS,
    normalise_photo_table,
    read_photo_table,
    read_registrations,
    registrations_csv,
)
from tests.helpers import shared_path


def photos(rows):
    df = pd.DataFrame(rows, columns=["camera", "file", "time", "class", "count"])
    return normalise_photo_table(df)


T = "2024-07-01 06:"


def test_simple_rule_as_the_seed_states_it():
    p = photos([
        ("1", "a", T + "00:00", "Bear", 1),
        ("1", "b", T + "01:00", "Bear", 2),  # count changes: new registration
        ("1", "c", T + "02:00", "Wolf", 2),  # class changes: new registration
        ("1", "d", T + "45:00", "Wolf", 2),  # 43 min later: new registration
    ])
    r = form_registrations(p, "simple")
    assert list(r["class"]) == ["Bear", "Bear", "Wolf", "Wolf"]
    assert list(r["count"]) == [1, 2, 2, 2]


def test_window_rule_smooths_a_single_wrong_class():
    rows = [("1", f"f{i}", T + f"{i:02d}:00", "Bear", 1) for i in range(7)]
    rows[3] = ("1", "f3", T + "03:00", "Wolf", 1)
    r = form_registrations(photos(rows), "window")
    assert list(r["class"]) == ["Bear"]


def test_sessions_default_one_visit_one_registration():
    rows = [("1", f"f{i}", T + f"{i:02d}:00", "Bear", 1 + (i == 2)) for i in range(6)]
    rows[4] = ("1", "f4", T + "04:00", "Wolf", np.nan)  # undetected photo: a guessed class
    rows.append(("1", "late", "2024-07-01 08:00:00", "Bear", 1))
    rows.append(("1", "x", "", "Bear", 1))  # an empty time: kept as an untimed photo
    rows.append(("1", "empty", T + "03:30", "empty", 0))
    r = form_registrations(photos(rows), "sessions")
    assert len(r) == 3, "two visits plus the untimed photo, empty photo forms none"
    first = r.iloc[0]
    assert (first["class"], first["count"]) == ("Bear", 2)
    assert str(first["date_registration_start"]) == "2024-07-01 06:00:00"
    assert str(first["date_registration_end"]) == "2024-07-01 06:05:00"
    assert pd.isna(r.iloc[2]["date_registration_start"]), "untimed photo kept, flagged by NaT"


def test_exif_form_times_give_the_same_registrations_as_iso():
    iso = [("1", f"f{i}", f"2009-04-21 0{i // 3}:{(i * 7) % 60:02d}:00", "Bear", 1) for i in range(9)]
    exif = [(c, f, t.replace("-", ":", 2), k, n) for c, f, t, k, n in iso]
    assert exif[0][2] == "2009:04:21 00:00:00"
    a, b = form_registrations(photos(iso)), form_registrations(photos(exif))
    pd.testing.assert_frame_equal(a, b)
    assert a["date_registration_start"].dt.year.eq(2009).all()


def test_a_time_that_cannot_be_read_is_an_error_naming_the_row():
    rows = [("1", "a.jpg", T + "00:00", "Bear", 1), ("1", "b.jpg", "21.04.2009 00:40", "Bear", 1)]
    with pytest.raises(ValueError, match=r"row 2 \(b.jpg\): '21.04.2009 00:40'"):
        photos(rows)


def test_events_cli_reads_exif_times(tmp_path):
    src = tmp_path / "photos.csv"
    src.write_text("camera,file,timestamp,class,count\n"
                   "c1,a.jpg,2009:04:21 00:40:00,Bear,1\nc1,b.jpg,2009:04:21 00:41:00,Bear,2\n")
    out = tmp_path / "regs.csv"
    r = subprocess.run([sys.executable, "-m", "kadr.cli", "traps", "events", str(src), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_text().splitlines()[1] == "c1,Bear,2009-04-21 00:40:00,2009-04-21 00:41:00,2"
    src.write_text("camera,file,timestamp,class,count\nc1,a.jpg,yesterday,Bear,1\n")
    r = subprocess.run([sys.executable, "-m", "kadr.cli", "traps", "events", str(src), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "row 1 (a.jpg): 'yesterday'" in r.stderr.replace("\n", " ")
    assert "Traceback" not in r.stderr


def test_events_cli_agrees_with_the_frame_route_on_a_messy_table(tmp_path):
    """The CLI reads a CSV straight into Arrow; the library takes a pandas frame. Same rules,
    same registrations: bursts at one second (ordered by file name), a photo listed twice,
    untimed photos, padded cells, a camera name with a comma (quoted in the output)."""
    rng = np.random.default_rng(3)
    lines = ["name_folder,name,date_registration,class_predict,count"]
    for i in range(400):
        cam = rng.choice(["1", " 2 ", '"cam, north"'])
        second = int(rng.integers(0, 7200)) // 5 * 5  # many photos share a second
        stamp = "" if i % 37 == 0 else f"2024-07-01 {6 + second // 3600:02d}:" \
            f"{second // 60 % 60:02d}:{second % 60:02d}"
        cls = rng.choice(["Bear", "Wolf", "empty"])
        lines.append(f"{cam},f{rng.integers(0, 300):03d}.jpg,{stamp},{cls},"
                     f"{rng.choice(['1', '2', ''])}")
    lines += lines[5:40]  # photos listed twice
    src = tmp_path / "photos.csv"
    src.write_text("\n".join(lines) + "\n")
    for method, extra in (("sessions", ["--split-species", "--count-rule", "confirmed"]),
                          ("simple", []), ("window", [])):
        out = tmp_path / f"{method}.csv"
        r = subprocess.run([sys.executable, "-m", "kadr.cli", "traps", "events", str(src),
                            "-o", str(out), "--method", method, *extra],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        options = {"split_species": True, "count_rule": "confirmed"} if extra else {}
        expected = registrations_csv(form_registrations(read_photo_table(str(src)), method,
                                                        **options))
        assert out.read_text() == expected
        assert '"cam, north",' in expected and ",,," in expected  # quoted; untimed
        assert "photos have no usable time" in r.stderr


def test_split_species_splits_only_between_sustained_runs_of_one_visit():
    def visit(hour, classes):
        return [("1", f"{hour}-{i}", f"2024-07-01 {hour:02d}:{i:02d}:00", c, 1)
                for i, c in enumerate(classes)]
    fox, mixed = visit(6, ["Fox"] * 5), visit(9, ["Bear"] * 2 + ["Wolf"] * 4)
    r = form_registrations(photos(fox + mixed), split_species=True)
    # the second visit's first sustained run follows no other in that visit: no split
    assert list(r["class"]) == ["Fox", "Wolf"] and list(r["photos"]) == [5, 6]
    r = form_registrations(photos(visit(9, ["Bear"] * 4 + ["Wolf"] * 4)), split_species=True)
    assert list(r["class"]) == ["Bear", "Wolf"] and list(r["photos"]) == [4, 4]


def test_duplicates_and_shuffled_rows_do_not_change_the_result():
    rows = [("1", f"f{i}", T + f"{i:02d}:00", "Bear", 1) for i in range(5)]
    a = form_registrations(photos(rows))
    b = form_registrations(photos((rows + rows[:2])[::-1]))
    pd.testing.assert_frame_equal(a, b)


def test_gap_parsing():
    assert parse_gap("30m") == pd.Timedelta(minutes=30)
    assert parse_gap("1h") == pd.Timedelta(hours=1)
    assert parse_gap(15) == pd.Timedelta(minutes=15)


def _regs(rows):
    return pd.DataFrame(rows, columns=REGISTRATION_COLUMNS).assign(
        date_registration_start=lambda d: pd.to_datetime(d.date_registration_start),
        date_registration_end=lambda d: pd.to_datetime(d.date_registration_end),
    )


def test_score_reproduces_the_case_worked_example():
    ref = _regs([
        ("10", "Deer", "2023-01-02 18:32:33", "2023-01-02 18:33:33", 3),
        ("10", "Deer", "2023-01-02 20:32:33", "2023-01-02 20:33:33", 1),
    ])
    pred = _regs([
        ("10", "Deer", "2023-01-02 18:32:33", "2023-01-02 18:32:33", 3),
        ("10", "Deer", "2023-01-02 19:39:33", "2023-01-02 19:40:03", 1),
        ("10", "Deer", "2023-01-02 20:32:33", "2023-01-02 20:33:33", 2),
    ])
    s = score_registrations(ref, pred, iou="hit")
    assert s.score == pytest.approx(0.25)
    assert (s.matched, s.missed, s.false_proposals, s.count_f1) == (2, 0, 1, 0.5)
    s = score_registrations(ref, pred)  # true IoU: the 1 s prediction covers 1/61 of the first
    assert s.mean_iou == pytest.approx((1 / 61 + 1) / 2)
    assert score_registrations(ref, ref).score == pytest.approx(1.0)


def test_csv_has_the_exact_header_and_time_format():
    ref = _regs([("10", "Deer", "2023-01-02 18:32:33", "2023-01-02 18:33:33", 3)])
    text = registrations_csv(ref)
    assert text.splitlines() == [
        "name_folder,class,date_registration_start,date_registration_end,count",
        "10,Deer,2023-01-02 18:32:33,2023-01-02 18:33:33,3",
    ]


def test_reads_the_padded_sample_submission():
    regs = read_registrations(str(shared_path("data", "priroda", "sample_submission.csv")))
    assert regs.iloc[0]["class"] == "Bear" and regs.iloc[0]["name_folder"] == "52"
    assert (regs["date_registration_start"] <= regs["date_registration_end"]).all()


def test_default_method_on_the_real_case_table():
    path = str(shared_path("data", "priroda", "registration.csv"))
    p, ref = read_photo_table(path), read_registrations(path)
    assert len(ref) == 2172
    scores = {m: score_registrations(ref, form_registrations(p, m)).score
              for m in ("sessions", "window", "simple")}
    assert scores["sessions"] >= 0.95
    assert scores["sessions"] > scores["window"] > scores["simple"]
    from bench.registrations import degraded_variants

    for name, variant in degraded_variants(p).items():
        s = score_registrations(ref, form_registrations(variant)).score
        assert s >= 0.75, f"{name}: {s:.3f}"


def test_no_animal_at_all_gives_no_registration():
    p = photos([("1", "a", T + "00:00", "empty", 0), ("1", "b", T + "01:00", "empty", 0)])
    for method in ("sessions", "window", "simple"):
        r = form_registrations(p, method)
        assert len(r) == 0 and list(r.columns)[:5] == REGISTRATION_COLUMNS


def test_reads_real_megadetector_output():
    path = shared_path("data", "camera_traps", "cameratraps_repo", "test_images",
                       "expected_output_DRAFT.json")
    p = read_photo_table(str(path))
    assert len(p) == 31
    assert (p["row_status"] == "no_time").all(), "this file carries no datetime field"
    assert p["count"].max() >= 1 and set(p["class"]) <= {"animal", ""}
    r = form_registrations(p)
    assert len(r) == int(((p["count"] > 0) & (p["class"] == "animal")).sum()), (
        "untimed photos are kept, each its own registration")


def test_a_count_rule_that_does_not_exist_is_refused(tmp_path):
    src = tmp_path / "photos.csv"
    src.write_text("camera,file,timestamp,class,count\n1,a.jpg,2024-07-01 06:00:00,Bear,1\n")
    r = subprocess.run([sys.executable, "-m", "kadr.cli", "traps", "events", str(src),
                        "-o", str(tmp_path / "r.csv"), "--count-rule", "maximum"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "max, confirmed" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r.csv").exists()


def test_traps_run_forms_its_registrations_with_the_visit_options(tmp_path):
    """--split-species and --count-rule on traps run reach every export and the review."""
    from kadr.traps.exports.write import FormedEvents
    from kadr.traps.review import ReviewState
    from kadr.traps.settings import TrapSettings, recorded_settings

    def visit(classes, counts):
        return pd.DataFrame({
            "group": "1", "key": [f"1/{i}.jpg" for i in range(len(classes))],
            "photo_id": [f"p{i}" for i in range(len(classes))], "status": "ok",
            "time": pd.date_range("2024-07-01 06:00", periods=len(classes), freq="1min"),
            "class": classes, "count": counts, "class_prob": 0.9, "n_animals": counts,
            "time_source": "exif"})

    photos = visit(["Bear"] * 4 + ["Wolf"] * 4, [1, 3, 1, 1, 2, 2, 1, 1])
    plain = TrapSettings(detector=None, classifier="x")
    split = TrapSettings(detector=None, classifier="x", split_species=True,
                         count_rule="confirmed")
    for settings, classes, counts in ((plain, ["Bear"], [3]),
                                      (split, ["Bear", "Wolf"], [1, 2])):
        regs = FormedEvents(settings).cameras(photos)[1]
        assert list(regs["class"]) == classes and list(regs["count"]) == counts
        reviewed = ReviewState(photos, recorded_settings(settings), []).registrations()
        assert list(reviewed["class"]) == classes and list(reviewed["count"]) == counts
