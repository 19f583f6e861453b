"""Several classifiers on one camera-trap run: their votes per photo and box, per
registration, in the review queue (disagreements first) and in Camtrap DP's classifiedBy."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kadr.traps.ensemble import RunClasses, decide, registration_verdict, votes_json
from kadr.traps.exports import export_run, validate_camtrap_dp
from kadr.traps.prompts import parse_prompts
from kadr.traps.review_app import Review
from tests.helpers import TINY_CLIP, camera_of_test_images, shared_path
from tests.test_review import make_run, photo_row

FOX = "a1b2;mammalia;carnivora;canidae;vulpes;vulpes;red fox"


def test_votes_decide_a_photo_by_summed_probability_and_name_the_surest_model():
    assert decide({"A": ("fox", 0.9), "B": ("fox", 0.7)}) == ("fox", 0.8, "A")
    # One sure, one of another mind: the surer wins, at half its certainty.
    assert decide({"A": ("fox", 0.9), "B": ("badger", 0.6)}) == ("fox", 0.45, "A")
    # Two weaker votes for one class outweigh one strong vote for another.
    assert decide({"A": ("fox", 0.9), "B": ("badger", 0.5), "C": ("badger", 0.5)})[:1] == (
        "badger",)


def test_a_speciesnet_label_is_brought_to_the_prompt_class_of_its_taxon_or_name():
    prompts = parse_prompts({"Fox": {"taxon": "Vulpes vulpes", "common": "red fox",
                                     "prompts": ["a fox"]},
                             "Badger": ["a badger"], "empty": {"background": True,
                                                               "prompts": ["grass"]}})
    run = RunClasses(prompts)
    assert run.of("red fox", FOX) == "Fox", "by scientific name"
    assert run.of("badger", "x;mammalia;carnivora;mustelidae;meles;meles;badger") == "Badger"
    assert run.of("wolf", "x;mammalia;carnivora;canidae;canis;lupus;wolf") == "wolf"
    assert run.of("empty") == "empty"


def test_a_registration_knows_each_models_class_and_whether_they_agree():
    photos = [votes_json({"A": ("fox", 0.9), "B": ("fox", 0.6)}),
              votes_json({"A": ("fox", 0.8), "B": ("badger", 0.7)}),
              votes_json({"A": ("empty", 1.0), "B": ("badger", 0.3)})]
    v = registration_verdict(photos, "fox")
    assert json.loads(v["model_classes"]) == {"A": "fox", "B": "badger"}
    assert v["models_agree"] is False and v["winning_model"] == "A"
    agreed = registration_verdict(photos[:1], "fox")
    assert agreed["models_agree"] is True
    assert registration_verdict([None, None], "fox")["models_agree"] is None
    # A model that sees no animal in any photo is a disagreement, not an abstention.
    assert registration_verdict([photos[2]], "badger")["models_agree"] is False


def test_review_shows_disagreements_first_and_camtrap_dp_names_the_winning_model(tmp_path):
    rows = [photo_row(tmp_path, "camA", 0, 0, "fox", 1, 0.95),
            photo_row(tmp_path, "camA", 1, 1, "fox", 1, 0.9),
            photo_row(tmp_path, "camA", 2, 120, "badger", 1, 0.85),
            photo_row(tmp_path, "camA", 3, 121, "badger", 1, 0.8),
            photo_row(tmp_path, "camB", 0, 10, "deer", 1, 0.5)]
    said = {("camA", 0): {"clip": ("fox", 0.95), "sn": ("fox", 0.95)},
            ("camA", 1): {"clip": ("fox", 0.9), "sn": ("fox", 0.9)},
            ("camA", 2): {"clip": ("marten", 0.8), "sn": ("badger", 0.9)},
            ("camA", 3): {"clip": ("marten", 0.7), "sn": ("badger", 0.9)},
            ("camB", 0): {"clip": ("deer", 0.5), "sn": ("deer", 0.5)}}
    for r in rows:
        r["votes"] = votes_json(said[(r["group"], int(r["key"][-8:-4]))])
    out = make_run(tmp_path, rows)

    review = Review(out, "ana")
    queue = review.queue({})["units"]
    assert [u["cls"] for u in queue] == ["badger", "deer", "fox"], (
        "the disputed badger visit before the less certain deer")
    assert queue[0]["disputed"] and not queue[1]["disputed"]
    assert any("clip says marten" in f and "sn says badger" in f for f in queue[0]["flags"])

    regs, _ = export_run(out)
    by_class = regs.set_index("class")
    assert bool(by_class.loc["fox", "models_agree"]) and not bool(
        by_class.loc["badger", "models_agree"])
    assert by_class.loc["badger", "winning_model"] == "sn"
    events = pd.read_csv(out / "camtrap-dp" / "observations.csv")
    events = events[events["observationLevel"] == "event"].set_index("eventID")
    badger = events.loc[by_class.loc["badger", "eventID"], "classifiedBy"]
    assert badger.endswith("(sn, yolox:none.onnx)"), badger


@pytest.fixture()
def second_tiny_clip(tmp_path):
    """kadr's tiny CLIP at other random weights, as a checkpoint file: a second model."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from kadr.core.models.factory import load_model

    load_model(TINY_CLIP, kind="image-text")  # registers kadr's configs with open_clip
    torch.manual_seed(11)
    model = open_clip.create_model("kadr-tiny-clip")
    path = tmp_path / "tiny-b.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"open_clip:kadr-tiny-clip@{path}"


def test_two_classifiers_vote_on_every_photo_and_box_of_a_run(tmp_path, second_tiny_clip,
                                                              monkeypatch):
    from typer.testing import CliRunner

    from kadr.cli import app

    names = ["snapshot_camdeboo_CDB_S1_A05_A05_R2_CDB_S1_A05_R2_IMAG0084.JPG",
             "snapshot_kruger_KRU_S1_25_25_R1_KRU_S1_25_R1_IMAG0012.JPG",
             "snapshot_karoo_KAR_S1_E03_E03_R1_KAR_S1_E03_R1_IMAG0440.JPG"]
    (tmp_path / "photos").mkdir()
    cam = camera_of_test_images(tmp_path / "photos", names)
    detector = f"yolox:{shared_path('models', 'yolox_nano.onnx')}"
    monkeypatch.chdir(tmp_path)  # the store's paths resolve from anywhere
    res = CliRunner().invoke(app, ["traps", "run", str(cam.parent), "-o", "out",
                                   "--detector", detector, "--classifier", TINY_CLIP,
                                   "--classifier", second_tiny_clip, "--threshold", "0.1"])
    assert res.exit_code == 0, res.output
    photos = pd.read_parquet(tmp_path / "out" / "photos.parquet")
    models = {"open_clip:kadr-tiny-clip@random", "open_clip:kadr-tiny-clip@tiny-b.safetensors"}
    boxes = 0
    for r in photos.to_dict("records"):
        votes = {m: tuple(v) for m, v in json.loads(r["votes"]).items()}
        assert set(votes) == models
        cls, prob, winner = decide(votes)
        assert (r["class"], r["class_prob"], r["winning_model"]) == (cls, prob, winner)
        for d in json.loads(r["detections"]):
            if "votes" in d:
                boxes += 1
                assert set(d["votes"]) == models
                assert d["model"] == decide({m: tuple(v) for m, v in d["votes"].items()})[2]
    assert boxes >= 2, "each animal box was named by both models"
    # MegaDetector JSON gives each box the class its votes decided, even one that is no
    # photo's class.
    md = json.loads((tmp_path / "out" / "megadetector.json").read_text())
    names = md["classification_categories"]
    stored = {r["key"].rsplit("/", 1)[-1]: json.loads(r["detections"])
              for r in photos.to_dict("records")}
    for image in md["images"]:
        own = {tuple(d["bbox"]): d["class"] for d in stored[image["file"].rsplit("/", 1)[-1]]
               if "votes" in d}
        for d in image["detections"]:
            if tuple(d["bbox"]) in own:
                assert names[d["classifications"][0][0]] == own[tuple(d["bbox"])]
    regs = pd.read_parquet(tmp_path / "out" / "registrations.parquet")
    assert len(regs) and regs["winning_model"].isin(models).all()
    disputed = int((~regs["models_agree"].astype(bool)).sum())
    said = f"disagree on {disputed} of"
    assert said in " ".join(res.output.split())
    assert said in (tmp_path / "out" / "report.html").read_text()
    events = pd.read_csv(tmp_path / "out" / "camtrap-dp" / "observations.csv")
    events = events[events["observationLevel"] == "event"].set_index("eventID")
    for e in regs.to_dict("records"):
        assert f"({e['winning_model']}, yolox:yolox_nano.onnx)" in events.loc[
            e["eventID"], "classifiedBy"]
    assert validate_camtrap_dp(tmp_path / "out" / "camtrap-dp",
                               shared_path("data", "camtrap-dp-1.0.2")) == []


def test_an_ensemble_names_each_classifier_once(tmp_path):
    from kadr.traps.pipeline import TrapSettings, run_traps

    (tmp_path / "cam").mkdir()
    settings = TrapSettings(detector=None, classifier=TINY_CLIP, more_classifiers=[TINY_CLIP],
                            progress=False)
    with pytest.raises(ValueError, match="given twice"):
        run_traps(str(tmp_path), str(tmp_path / "out"), settings)


def test_megadetector_json_classifies_a_box_whose_class_no_photo_has(tmp_path):
    # Two animals in one photo: the photo's vote says fox, one box's own crop a marten.
    row = photo_row(tmp_path, "camA", 0, 0, "fox", 2, 0.9)
    row["detections"] = json.dumps([
        {"label": "dog", "category": "animal", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2],
         "class": "fox", "class_prob": 0.8},
        {"label": "cat", "category": "animal", "conf": 0.7, "bbox": [0.6, 0.6, 0.2, 0.2],
         "class": "marten", "class_prob": 0.6}])
    out = make_run(tmp_path, [row])
    export_run(out)
    md = json.loads((out / "megadetector.json").read_text())
    names = md["classification_categories"]
    said = {tuple(d["bbox"]): (names[d["classifications"][0][0]], d["classifications"][0][1])
            for d in md["images"][0]["detections"]}
    assert said == {(0.1, 0.1, 0.2, 0.2): ("fox", 0.8), (0.6, 0.6, 0.2, 0.2): ("marten", 0.6)}
