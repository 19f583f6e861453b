import io
import json
import shutil

import pandas as pd
import pytest

import kadr
from kadr.traps.exports import validate_camtrap_dp
from kadr.traps.pipeline import TrapSettings, run_traps
from kadr.traps.prompts import PromptFileError, load_prompts, parse_prompts
from tests.helpers import TINY_CLIP, jpeg_bytes, megadetector_validation, shared_path

D04 = ("data", "camera_traps", "cameratraps_repo", "api", "synchronous", "sample_input")


@pytest.fixture
def d04_camera(tmp_path):
    """The Serengeti D04 frames gathered into one camera folder."""
    src = shared_path(*D04)
    cam = tmp_path / "photos" / "D04"
    cam.mkdir(parents=True)
    for p in sorted(src.rglob("*.JPG")):
        shutil.copy(p, cam / p.name)
    return tmp_path / "photos"


def yolox() -> str:
    return f"yolox:{shared_path('models', 'yolox_nano.onnx')}"


def test_real_yolox_run_gives_one_elephant_registration(d04_camera, tmp_path):
    out = tmp_path / "out"
    settings = TrapSettings(detector=yolox(), classifier=None, progress=False)
    result = run_traps(str(d04_camera), str(out), settings)
    summary, regs = result.summary, result.frame()
    assert summary.ok == 10
    photos = pd.read_parquet(out / "photos.parquet").set_index("key")
    assert photos.loc["D04/S1_D04_R6_PICT0275.JPG", "class"] == "empty"
    assert photos.loc["D04/S1_D04_R6_PICT0020.JPG", "n_animals"] == 1
    assert (photos["time_source"] == "exif").all()
    burst = regs[regs["date_registration_start"] <= pd.Timestamp("2010-08-19 18:25:00")]
    assert len(burst) == 1, "the 0020-0022 burst is one registration"
    assert burst.iloc[0]["count"] == 1
    assert str(burst.iloc[0]["date_registration_start"]) == "2010-08-19 18:24:57"
    assert str(burst.iloc[0]["date_registration_end"]) == "2010-08-19 18:24:58"
    empty_t = pd.Timestamp("2010-08-28 10:42:04")
    assert not ((regs["date_registration_start"] <= empty_t)
                & (regs["date_registration_end"] >= empty_t)).any(), "0275 forms none"
    csv = (out / "registrations.csv").read_text().splitlines()
    assert csv[0] == "name_folder,class,date_registration_start,date_registration_end,count"
    md = json.loads((out / "megadetector.json").read_text())
    assert len(md["images"]) == 10 and md["detection_categories"]["1"] == "animal"
    assert megadetector_validation(out / "megadetector.json") == ([], [])
    assert "<svg" in (out / "report.html").read_text() and "data:image/jpeg;base64" in (
        out / "report.html").read_text()
    schemas = shared_path("data", "camtrap-dp-1.0.2")
    assert validate_camtrap_dp(out / "camtrap-dp", schemas) == []
    # Who classified: the detector whose labels are the classes, by its file's name (not
    # this machine's path), and the kadr release that ran it.
    obs = pd.read_csv(out / "camtrap-dp" / "observations.csv")
    assert set(obs["classifiedBy"]) == {f"kadr {kadr.__version__} (yolox:yolox_nano.onnx)"}


def test_classifier_path_with_tiny_clip_and_broken_photo(d04_camera, tmp_path):
    (d04_camera / "D04" / "broken.JPG").write_bytes(b"\xff\xd8\xff garbage")
    (d04_camera / "empty_camera").mkdir()
    out = tmp_path / "out"
    settings = TrapSettings(detector=yolox(), classifier=TINY_CLIP, progress=False, batch_size=4)
    result = run_traps(str(d04_camera), str(out), settings)
    summary, regs = result.summary, result.frame()
    photos = pd.read_parquet(out / "photos.parquet")
    assert len(photos) == 11
    bad = photos[photos["key"] == "D04/broken.JPG"].iloc[0]
    assert bad["status"] in ("not_an_image", "truncated", "decode_error")
    ok = photos[photos["status"] == "ok"]
    prob_cols = [c for c in photos.columns if c.startswith("p_")]
    assert len(prob_cols) == 22, "all 21 classes plus the background are kept"
    assert ok[prob_cols].sum(axis=1).round(3).eq(1.0).all()
    assert "broken.JPG" in (out / "report.html").read_text()
    assert summary.empty_groups == ["empty_camera"]
    # Classifications, a failed photo: MegaDetector's own validator accepts the file.
    assert megadetector_validation(out / "megadetector.json") == ([], [])
    obs = pd.read_csv(out / "camtrap-dp" / "observations.csv")
    assert set(obs["classifiedBy"]) == {f"kadr {kadr.__version__} ({TINY_CLIP}, "
                                        "yolox:yolox_nano.onnx)"}
    # Resume: a second run processes nothing and gives the same registrations.
    result = run_traps(str(d04_camera), str(out), settings)
    s2, regs2 = result.summary, result.frame()
    assert s2.processed == 0 and s2.already_done == 11
    pd.testing.assert_frame_equal(regs.drop(columns=["eventID", "best_key"]),
                                  regs2.drop(columns=["eventID", "best_key"]))


def test_validator_catches_a_broken_package(d04_camera, tmp_path):
    out = tmp_path / "out"
    run_traps(str(d04_camera), str(out), TrapSettings(detector=yolox(), classifier=None,
                                                      progress=False))
    dp = out / "camtrap-dp"
    desc = json.loads((dp / "datapackage.json").read_text())
    del desc["project"]
    (dp / "datapackage.json").write_text(json.dumps(desc))
    errors = validate_camtrap_dp(dp, shared_path("data", "camtrap-dp-1.0.2"))
    assert any("project" in e for e in errors)


def test_prompt_file_forms_and_errors(tmp_path):
    seed = parse_prompts({"Bear": ["a bear"], "Wolf": ["a wolf", "a grey wolf"]})
    assert seed.names == ["Bear", "Wolf"]
    ext = parse_prompts({"templates": ["a photo of a {}."], "background": "empty",
                         "classes": {"Bear": {"names": ["bear", "brown bear"], "weight": 2},
                                     "empty": {"prompts": ["nothing"]}}})
    assert ext.classes[0].prompts == ["a photo of a bear.", "a photo of a brown bear."]
    assert ext.background == {"empty"} and ext.classes[0].weight == 2
    with pytest.raises(PromptFileError, match="unknown key"):
        parse_prompts({"classes": {"Bear": {"promts": ["x"]}, "Wolf": ["w"]}})
    with pytest.raises(PromptFileError, match="no prompts"):
        parse_prompts({"Bear": [], "Wolf": ["w"]})
    shipped = load_prompts(
        __import__("kadr.traps.prompts", fromlist=["EXAMPLE"]).EXAMPLE)
    assert len(shipped.names) == 22 and "Roe_Deer" in shipped.names


def test_events_and_score_cli_on_the_case_table(tmp_path):
    from tests.test_embed import kadr

    table = shared_path("data", "priroda", "registration.csv")
    out = tmp_path / "regs.csv"
    r = kadr("traps", "events", str(table), "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = kadr("traps", "score", str(table), str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["score"] >= 0.95


def test_jpeg_helper_is_deterministic():
    assert jpeg_bytes(seed=3) == jpeg_bytes(seed=3)


def test_clock_jumping_back_is_reported(tmp_path):
    from datetime import datetime

    from tests.helpers import jpeg_bytes

    cam = tmp_path / "photos" / "cam1"
    cam.mkdir(parents=True)
    times = [datetime(2024, 5, 1, 12, 0, 0), datetime(2024, 5, 1, 12, 0, 5),
             datetime(2023, 1, 1, 0, 0, 0), datetime(2023, 1, 1, 0, 0, 3)]
    for i, t in enumerate(times):
        (cam / f"IMG_{i:04d}.JPG").write_bytes(jpeg_bytes(seed=i, when=t))
    out = tmp_path / "out"
    run_traps(str(tmp_path / "photos"), str(out), TrapSettings(detector=yolox(), classifier=None,
                                                                progress=False))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clock_jumps_back"] == {"cam1": 1}
    assert "go backwards" in (out / "report.html").read_text()


def test_events_read_megadetector_json_and_detector_label_fallback(d04_camera, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("KADR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    out = tmp_path / "out"
    settings = TrapSettings(detector=yolox(), classifier="open_clip:ViT-B-32@laion2b_s34b_b79k",
                            allow_detector_labels=True, progress=False)
    regs = run_traps(str(d04_camera), str(out), settings).frame()
    assert len(regs) >= 1
    from kadr.traps.registrations import form_registrations
    from kadr.traps.tables import read_photo_table

    md = read_photo_table(str(out / "megadetector.json"))
    assert len(md) == 10 and md["time"].notna().all()
    again = form_registrations(md)
    assert len(again) == len(regs), "the MD JSON round trip gives the same registrations"
    settings.allow_detector_labels = False
    from kadr.core.models import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError):
        run_traps(str(d04_camera), str(tmp_path / "o2"), settings)


def test_animal_crops_keep_the_whole_animal_at_full_resolution():
    from PIL import Image, ImageDraw

    from kadr.core.decode import decode_photo
    from kadr.traps.pipeline import TrapJob

    trap = TrapJob(TrapSettings(detector=yolox(), classifier=TINY_CLIP, progress=False))
    canvas = Image.new("RGB", (4000, 3000), (120, 120, 120))
    draw = ImageDraw.Draw(canvas)
    # A long animal: red head, green body, blue tail, 2000 x 200 px.
    draw.rectangle((1000, 1400, 1399, 1599), fill=(255, 0, 0))
    draw.rectangle((1400, 1400, 2599, 1599), fill=(0, 255, 0))
    draw.rectangle((2600, 1400, 2999, 1599), fill=(0, 0, 255))
    # A distant animal: a 32 x 32 px checkerboard of 2 px squares.
    for y in range(200, 232, 2):
        for x in range(3000 + (y // 2 % 2) * 2, 3032, 4):
            draw.rectangle((x, y, x + 1, y + 1), fill=(255, 255, 255))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    _, image = trap.prepare(decode_photo(buffer.getvalue()))
    assert image.size == (4000, 3000), "crops are cut from the full-resolution photo"

    long_view = trap.primary.classifier_input(image, (0.25, 1400 / 3000, 0.5, 200 / 3000)).astype(int)
    middle = long_view[long_view.shape[0] // 2]
    assert (middle[:, 0] > 200).any() and (middle[:, 2] > 200).any(), "head and tail both seen"
    assert (long_view[0] == long_view[0, 0]).all(), "padded above, not stretched"

    small_view = trap.primary.classifier_input(image, (0.75, 200 / 3000, 32 / 4000, 32 / 3000))
    assert small_view.std() > 40, "the distant animal keeps its detail"


def test_camtrap_dp_paths_ids_and_clock_offset(d04_camera, tmp_path):
    schemas = shared_path("data", "camtrap-dp-1.0.2")
    local = tmp_path / "local"
    summary = run_traps(str(d04_camera), str(local),
                           TrapSettings(detector=yolox(), classifier=None, progress=False)).summary
    deployments = pd.read_csv(local / "camtrap-dp" / "deployments.csv")
    assert deployments["timestampIssues"].all(), "no --utc-offset: times are not true instants"
    assert "utc-offset" in deployments["deploymentComments"].iloc[0]
    assert any("--utc-offset" in w for w in summary.warnings)
    assert any("--utc-offset" in w for w in json.loads((local / "summary.json").read_text())[
        "warnings"])
    media = pd.read_csv(local / "camtrap-dp" / "media.csv")
    assert media["filePath"].str.startswith("media/D04/").all(), "inside the package"
    assert all((local / "camtrap-dp" / p).is_file() for p in media["filePath"]), \
        "media/ links to the photos"
    assert validate_camtrap_dp(local / "camtrap-dp", schemas) == []

    published = tmp_path / "elsewhere" / "published"
    run_traps(str(d04_camera), str(published),
              TrapSettings(detector=yolox(), classifier=None, progress=False,
                           utc_offset="+03:00", media_url="https://example.org/season1/"))
    deployments = pd.read_csv(published / "camtrap-dp" / "deployments.csv")
    assert not deployments["timestampIssues"].any(), "EXIF times with a known offset"
    media = pd.read_csv(published / "camtrap-dp" / "media.csv")
    assert media["timestamp"].str.endswith("+03:00").all()
    assert media["filePath"].str.startswith("https://example.org/season1/D04/").all()
    assert media["filePublic"].all()
    assert validate_camtrap_dp(published / "camtrap-dp", schemas) == []
    ids = [json.loads((o / "camtrap-dp" / "datapackage.json").read_text())["id"]
           for o in (local, published)]
    assert ids[0] == ids[1], "the package id depends on the photos, not on the output folder"


def test_megadetector_json_files_are_relative_for_a_manifest_of_absolute_paths(d04_camera,
                                                                                tmp_path):
    photos = sorted((d04_camera / "D04").glob("*.JPG"))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": [str(p.resolve()) for p in photos], "camera": "D04"}).to_csv(
        manifest, index=False)
    out = tmp_path / "out"
    run_traps(str(manifest), str(out), TrapSettings(detector=yolox(), classifier=None,
                                                    group_column="camera", progress=False))
    md = json.loads((out / "megadetector.json").read_text())
    assert sorted(i["file"] for i in md["images"]) == sorted(p.name for p in photos)


def test_photos_link_to_the_registration_of_their_camera_time_and_class():
    from kadr.traps.linking import link_events

    t = pd.Timestamp("2024-05-01 10:00:00")
    m = pd.Timedelta(minutes=1)
    table = pd.DataFrame({
        "key": list("abcdefgh"), "group": ["1", "1", "1", "1", "1", "2", "1", "1"],
        "status": ["ok"] * 6 + ["unreadable", "ok"],
        "time": [t, t + 5 * m, t + 6 * m, t + 20 * m, t + 90 * m, t + 5 * m, t + 5 * m,
                 t + 10 * m],
        "class": ["Bear", "Bear", "Fox", "Bear", "Bear", "Bear", "Bear", "Wolf"],
        "n_animals": [1, 2, 1, 1, 1, 1, 1, 1], "class_prob": [0.9] * 8})
    regs = pd.DataFrame({
        "name_folder": ["1", "1", "2"], "class": ["Bear", "Fox", "Bear"], "count": [2, 1, 1],
        "date_registration_start": [t, t + 4 * m, t + 5 * m],
        "date_registration_end": [t + 20 * m, t + 7 * m, t + 5 * m]})
    regs, linked = link_events(regs, table)
    ev = dict(zip(linked["key"], linked["event_id"], strict=True))
    bear, fox, cam2 = regs["eventID"]
    assert ev["a"] == ev["b"] == ev["d"] == bear, "inside the bear visit"
    assert ev["c"] == fox, "overlapping visits: the photo's own class wins"
    assert ev["f"] == cam2, "another camera's registration"
    assert pd.isna(ev["e"]), "after every registration"
    assert pd.isna(ev["g"]), "a failed photo belongs to none"
    assert ev["h"] == bear, "no class match: the visit that still holds it, not the later one"
    assert regs.loc[0, "best_key"] == "b", "most animals"


def test_a_resume_with_nothing_to_do_rewrites_nothing(d04_camera, tmp_path):
    out = tmp_path / "out"
    settings = TrapSettings(detector=yolox(), classifier=None, progress=False)
    first = run_traps(str(d04_camera), str(out), settings).frame()
    outputs = [out / "registrations.csv", out / "report.html", out / "photos.parquet",
               out / "megadetector.json", out / "camtrap-dp" / "media.csv"]
    stamps = [p.stat().st_mtime_ns for p in outputs]
    result = run_traps(str(d04_camera), str(out), settings)
    summary, again = result.summary, result.frame()
    assert summary.processed == 0
    assert [p.stat().st_mtime_ns for p in outputs] == stamps, "nothing rewritten"
    pd.testing.assert_frame_equal(first, again)
    assert any("--utc-offset" in w for w in summary.warnings), "the warnings are still said"
    run_traps(str(d04_camera), str(out),
              TrapSettings(detector=yolox(), classifier=None, progress=False, gap="1m"))
    assert (out / "registrations.csv").stat().st_mtime_ns != stamps[0], "new settings, new files"


def test_no_detector_classifies_whole_photos(d04_camera, tmp_path):
    """`--detector none`: a classifier-only workflow; every photo is named from the whole
    frame, no boxes are invented, and the exports and the review still work."""
    import subprocess
    import sys
    from pathlib import Path

    from kadr.traps.review import load_state

    out = tmp_path / "out"
    kadr = str(Path(sys.executable).with_name("kadr"))
    done = subprocess.run([kadr, "traps", "run", str(d04_camera), "-o", str(out), "--detector",
                           "none", "--classifier", TINY_CLIP, "--quiet"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    photos = pd.read_parquet(out / "photos.parquet")
    assert len(photos) == 10 and (photos["status"] == "ok").all()
    assert (photos["detections"] == "[]").all() and (photos["n_animals"] == 0).all()
    from kadr.traps.prompts import EXAMPLE

    names = set(load_prompts(EXAMPLE).names) | {"empty"}
    assert set(photos["class"]) <= names and photos["class_prob"].notna().all()
    md = json.loads((out / "megadetector.json").read_text())
    assert all(i["detections"] == [] for i in md["images"])
    assert validate_camtrap_dp(out / "camtrap-dp", shared_path("data", "camtrap-dp-1.0.2")) == []
    assert sum(len(u.rows) for u in load_state(out).units.values()) == 10
    refused = subprocess.run([kadr, "traps", "run", str(d04_camera), "-o", str(tmp_path / "o2"),
                              "--detector", "none", "--classifier", "none"], capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "--detector none" in refused.stderr + refused.stdout


def test_each_animal_box_keeps_its_own_crops_class(tmp_path):
    # Two animals in one photo: each box is named by its own crop, as the classifier sees
    # that crop alone, and the photo's class stays the vote of its crops and the photo.
    from kadr.core.decode import decode_photo
    from kadr.traps.pipeline import TrapJob
    from kadr.traps.prompts import classify

    name = "snapshot_camdeboo_CDB_S1_A05_A05_R2_CDB_S1_A05_R2_IMAG0084.JPG"
    source = shared_path("data", "camera_traps", "cameratraps_repo", "test_images",
                         "test_images", name)
    (tmp_path / "cam").mkdir()
    shutil.copy(source, tmp_path / "cam" / name)
    settings = TrapSettings(detector=yolox(), classifier=TINY_CLIP, progress=False)
    run_traps(str(tmp_path), str(tmp_path / "out"), settings)
    row = pd.read_parquet(tmp_path / "out" / "photos.parquet").iloc[0]
    boxes = [d for d in json.loads(row["detections"]) if "class" in d]
    assert len(boxes) == row["n_animals"] == 2

    clip = TrapJob(settings).primary
    image = decode_photo(source.read_bytes()).image
    for box in boxes:
        emb = clip.model.encode_images([clip.classifier_input(image, box["bbox"])])
        p = classify(emb, clip.prompts, clip.class_emb, clip.model.logit_scale)[0]
        assert box["class"] == clip.class_names[int(p.argmax())]
        # Alone here, in a batch with the photo in the run: float kernels differ a little.
        assert box["class_prob"] == pytest.approx(float(p.max()), abs=1e-3)


def test_two_species_in_one_photo_are_two_observations_and_two_classified_boxes():
    from kadr.traps.exports.camtrap_dp import _media_observations
    from kadr.traps.exports.megadetector import _md_image

    dets = [{"label": "zebra", "category": "animal", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.3],
             "class": "zebra", "class_prob": 0.8},
            {"label": "dog", "category": "animal", "conf": 0.7, "bbox": [0.6, 0.5, 0.2, 0.2],
             "class": "jackal", "class_prob": 0.6},
            {"label": "cat", "category": "animal", "conf": 0.5, "bbox": [0.0, 0.7, 0.1, 0.1]}]
    row = {"key": "cam/p.jpg", "group": "cam", "status": "ok", "time": pd.Timestamp("2024-01-01"),
           "detections": json.dumps(dets), "class": "zebra", "class_prob": 0.7}
    md = _md_image(row, "", {"zebra": "1", "jackal": "2"})
    assert [d["classifications"] for d in md["detections"]] == [[["1", 0.8]], [["2", 0.6]],
                                                               [["1", 0.7]]]
    names = {"zebra": "Equus zebra", "jackal": "Lupulella mesomelas"}
    observations = _media_observations(row, "m1", "Z", "2024-01-02T00:00:00Z",
                                       lambda cls, label: (names[cls], "animal"))
    assert [(o["scientificName"], o["classificationProbability"]) for o in observations] == [
        ("Equus zebra", 0.8), ("Lupulella mesomelas", 0.6), ("Equus zebra", 0.7)]
