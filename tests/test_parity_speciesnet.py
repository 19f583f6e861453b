"""``speciesnet:`` through the real ``speciesnet`` package: its loading, its crops, its
ensemble and geofence.

A SpeciesNet model folder at seeded random weights of the real classifier
(EfficientNetV2-M, 480 px, NHWC) is put where kagglehub keeps a downloaded
release, and loaded by the release's name with the network off. ``kadr traps
run`` must give every box the scores the package's own ``SpeciesNet.classify``
gives on the same photos and detections (within 1e-4), and the label its own
``ensemble_from_past_runs`` gives, with and without a country.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.helpers import camera_of_test_images, need_module, shared_path
from tests.snweights import kaggle_folder, mark_kaggle_complete, save_random_speciesnet

need_module("speciesnet", extra="speciesnet")

HANDLE = "google/speciesnet/pyTorch/v4.0.3a/1"
PHOTOS = [  # elephants, zebras, a sheep-like antelope, a car: several boxes of each kind
    "snapshot_kruger_KRU_S1_25_25_R1_KRU_S1_25_R1_IMAG0012.JPG",
    "snapshot_serengeti_S5_U10_U10_R4_S5_U10_R4_IMAG3595.JPG",
    "snapshot_mountain_zebra_MTZ_S1_F04_F04_R1_MTZ_S1_F04_R1_IMAG1143.JPG",
    "wcs_camera_traps_animals_0090_1439.jpg",
]
SN_CATEGORY = {"animal": ("1", "animal"), "person": ("2", "human"), "vehicle": ("3", "vehicle")}


@pytest.fixture(scope="module")
def kaggle_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("kaggle")
    save_random_speciesnet(kaggle_folder(cache, HANDLE),
                           favour={"african elephant": 3.0, "red fox": 2.0}, spread=0.3)
    mark_kaggle_complete(cache, HANDLE)
    return cache


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return camera_of_test_images(tmp_path_factory.mktemp("traps"), PHOTOS)


@pytest.fixture
def offline(kaggle_cache, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(kaggle_cache))
    monkeypatch.setenv("KADR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return kaggle_folder(kaggle_cache, HANDLE)


def kadr_run(photos, out, **settings):
    from kadr.traps.pipeline import TrapSettings, run_traps

    yolox = shared_path("models", "yolox_nano.onnx")
    run_traps(str(photos.parent), str(out), TrapSettings(
        detector=f"yolox:{yolox}", classifier="speciesnet:v4.0.3a", trust_checkpoint=True,
        batch_size=2, **settings))
    return pd.read_parquet(out / "photos.parquet")


def reference(folder, table, photos, country=None):
    """The package's own classification and ensemble of kadr's stored detections."""
    from speciesnet import SpeciesNet

    detections = {}
    for row in table.itertuples():
        boxes = [d for d in json.loads(row.detections) if d["category"] in SN_CATEGORY]
        boxes.sort(key=lambda d: -d["conf"])
        detections[str(photos / row.key.split("/")[-1])] = {"detections": [
            {"category": SN_CATEGORY[d["category"]][0], "label": SN_CATEGORY[d["category"]][1],
             "conf": d["conf"], "bbox": d["bbox"]} for d in boxes]}
    files = list(detections)
    classified = SpeciesNet(str(folder), components="classifier").classify(
        filepaths=files, detections_dict=detections, max_classifications_per_image=8,
        max_classifications_per_detection=5)
    classified = {p["filepath"]: p for p in classified["predictions"]}
    ensembled = SpeciesNet(str(folder), components="ensemble").ensemble_from_past_runs(
        filepaths=files, classifications_dict=classified, detections_dict=detections,
        country=country, max_classifications_per_detection=5)
    return {p["filepath"].split("/")[-1]: p for p in ensembled["predictions"]}


def kadr_boxes(row) -> list[dict]:
    boxes = [d for d in json.loads(row.detections) if d["category"] in SN_CATEGORY]
    return sorted(boxes, key=lambda d: -d["conf"])


@pytest.mark.parametrize("country", [None, "RUS"])
def test_traps_run_gives_the_package_scores_and_labels(offline, photos, tmp_path, country):
    table = kadr_run(photos, tmp_path / "out", country=country)
    assert (table["status"] == "ok").all()
    ref = reference(offline, table, photos, country)
    compared = labels = 0
    for row in table.itertuples():
        theirs = ref[row.key.split("/")[-1]].get("detections", [])
        ours = kadr_boxes(row)
        assert len(ours) == len(theirs)
        for mine, other in zip(ours, theirs, strict=True):
            assert mine["bbox"] == other["bbox"]
            if "raw_classifications" not in other:
                assert "class" not in mine  # below SpeciesNet's threshold: not classified
                continue
            raw = other["raw_classifications"]
            assert mine["classifications"]["classes"] == raw["classes"]
            assert mine["classifications"]["scores"] == pytest.approx(raw["scores"], abs=1e-4)
            processed = other["processed_classification"]
            assert mine["taxon"] == processed["class"]
            assert mine["class_source"] == processed["source"]
            assert mine["class_prob"] == pytest.approx(processed["score"], abs=1e-4)
            compared += 1
            labels += mine["class"] == processed["class"].split(";")[-1]
    assert compared >= 5 and labels == compared


@pytest.fixture(scope="module")
def elephant_cache(tmp_path_factory):
    """A model whose every crop is an African elephant (allowed in KEN and TZA only)."""
    cache = tmp_path_factory.mktemp("kaggle-elephant")
    save_random_speciesnet(kaggle_folder(cache, HANDLE), favour={"african elephant": 14.0},
                           spread=0.01)
    mark_kaggle_complete(cache, HANDLE)
    return cache


@pytest.mark.parametrize("country, expected, source", [
    ("KEN", "african elephant", "classifier"),
    (None, "african elephant", "classifier"),  # no country: no geofence
    ("RUS", "elephant family", "classifier+geofence+rollup_to_family"),
])
def test_geofence_rolls_up_a_species_not_found_in_the_country(
        elephant_cache, photos, tmp_path, monkeypatch, country, expected, source):
    from kadr.traps.exports import validate_camtrap_dp

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(elephant_cache))
    monkeypatch.setenv("KADR_OFFLINE", "1")
    table = kadr_run(photos, tmp_path / "out", country=country)
    named = table[table["class"] != "empty"]
    assert len(named) >= 3 and set(named["class"]) == {expected}
    assert set(named["class_source"]) == {source}
    # Camtrap DP names the taxon and its rank; the package validates.
    out = tmp_path / "out"
    obs = pd.read_csv(out / "camtrap-dp" / "observations.csv")
    media = obs[(obs["observationLevel"] == "media") & (obs["observationType"] == "animal")]
    want = "Loxodonta africana" if source == "classifier" else "Elephantidae"
    assert set(media["scientificName"]) == {want}
    package = json.loads((out / "camtrap-dp" / "datapackage.json").read_text())
    assert {"scientificName": want, "taxonRank": "species" if source == "classifier"
            else "family"} in package["taxonomic"]
    assert validate_camtrap_dp(out / "camtrap-dp", shared_path("data", "camtrap-dp-1.0.2")) == []
    regs = pd.read_csv(out / "registrations.csv")
    assert set(regs["class"]) <= {expected, "empty"} and expected in set(regs["class"])


def test_speciesnet_is_refused_clearly_without_its_model_or_trust(tmp_path, monkeypatch):
    from kadr.core.models import WeightsNotFoundError, load_model
    from kadr.core.models.weights import UnsafeCheckpointError

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("KADR_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as e:
        load_model("speciesnet:v4.0.3a", kind="classifier", trust_checkpoint=True)
    assert str(tmp_path / "empty-cache" / "models" / "google" / "speciesnet") in str(e.value)
    assert "kagglehub.model_download('google/speciesnet/pyTorch/v4.0.3a/1')" in str(e.value)
    # Said before the package (torch, torchvision, YOLOv5: seconds) is imported.
    code = ("import sys\nfrom kadr.core.models import load_model\ntry:\n"
            "    load_model('speciesnet:v4.0.3a', kind='classifier', trust_checkpoint=True)\n"
            "except Exception as e:\n    print(type(e).__name__)\n"
            "print(sorted(m for m in ('speciesnet.classifier', 'yolov5', 'torch') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "KAGGLEHUB_CACHE": str(tmp_path / "empty-cache"),
                            "KADR_OFFLINE": "1"})
    assert r.stdout.split("\n")[:2] == ["WeightsNotFoundError", "[]"], r.stdout + r.stderr
    folder = save_random_speciesnet(tmp_path / "model", spread=0.3)
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        load_model(f"speciesnet:{folder}", kind="classifier")


@pytest.mark.parametrize("args, message", [
    (["--country", "KEN"], "need --classifier speciesnet"),  # the default classifier is CLIP
    (["--classifier", "speciesnet:v4.0.3a", "--country", "Kenya"], "ISO 3166-1 alpha-3"),
    (["--classifier", "speciesnet:v4.0.3a", "--admin1-region", "CA"], "needs --country"),
    (["--ensemble", "megaclip"], "speciesnet[:MODEL]"),
])
def test_geofence_options_are_checked_before_any_work(tmp_path, args, message):
    from tests.test_embed import kadr

    (tmp_path / "cam1").mkdir()
    r = kadr("traps", "run", str(tmp_path), "-o", str(tmp_path / "out"), "--detector", "none",
             *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in " ".join((r.stdout + r.stderr).split())
    assert "Traceback" not in r.stderr


def test_ensemble_speciesnet_runs_its_own_megadetector(tmp_path, photos, monkeypatch):
    """--ensemble speciesnet:FOLDER: the classifier, and the detector file its info.json
    names, from a command run in another working directory."""
    from tests.mdweights import save_random_mdv5
    from tests.test_embed import kadr

    md = save_random_mdv5(tmp_path / "md_v5a.0.0.pt")
    folder = save_random_speciesnet(tmp_path / "model", detector=md,
                                    favour={"african elephant": 14.0}, spread=0.01)
    camera = tmp_path / "photos" / "cam1"
    camera.mkdir(parents=True)
    shutil.copy(photos / PHOTOS[0], camera / PHOTOS[0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = kadr("traps", "run", "../photos", "-o", "out", "--ensemble", f"speciesnet:{folder}",
             "--trust-checkpoint", "--country", "ken", cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    # The packages' own talk (device found, layer summary, Python warnings) stays out.
    assert not re.search(r"\w+Warning:|Fusing layers|PTDetector", r.stdout + r.stderr)
    summary = json.loads((elsewhere / "out" / "summary.json").read_text())
    assert summary["settings"]["detector"] == f"megadetector:{folder / 'md_v5a.0.0.pt'}"
    assert summary["settings"]["classifier"] == f"speciesnet:{folder}"
    assert summary["settings"]["country"] == "KEN"
    table = pd.read_parquet(elsewhere / "out" / "photos.parquet")
    assert table["status"].tolist() == ["ok"]


def test_speciesnet_votes_in_an_ensemble_as_it_names_alone(offline, photos, tmp_path):
    """SpeciesNet beside a CLIP model: its vote on each photo is its label alone, brought to
    the prompt class of the same taxon (African elephant: the prompt file's Elephant)."""
    from kadr.traps.ensemble import RunClasses
    from kadr.traps.pipeline import TrapSettings, run_traps
    from kadr.traps.prompts import load_prompts
    from tests.helpers import TINY_CLIP

    folder = save_random_speciesnet(tmp_path / "model", favour={"african elephant": 14.0},
                                    spread=0.01)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"classes": {
        "Elephant": {"taxon": "Loxodonta africana", "common": "African elephant"},
        "Zebra": {"taxon": "Equus quagga"}, "car": ["a car"],
        "empty": {"background": True, "prompts": ["an empty savanna"]}},
        "templates": ["a camera trap photo of {}."]}))
    sn = f"speciesnet:{folder}"

    def run(out, **more):
        run_traps(str(photos.parent), str(out), TrapSettings(
            detector=f"yolox:{shared_path('models', 'yolox_nano.onnx')}", classifier=sn,
            trust_checkpoint=True, batch_size=2, **more))
        return pd.read_parquet(out / "photos.parquet").set_index("key")

    alone = run(tmp_path / "alone")
    both = run(tmp_path / "both", more_classifiers=[TINY_CLIP], prompts=str(prompts))
    classes = RunClasses(load_prompts(prompts))
    said = []
    for key, row in both.iterrows():
        votes = json.loads(row["votes"])
        assert set(votes) == {"speciesnet:model", TINY_CLIP}
        mine = alone.loc[key]
        cls, prob = votes["speciesnet:model"]
        assert cls == classes.of(mine["class"], mine["taxon"])
        assert prob == pytest.approx(mine["class_prob"] if pd.notna(mine["class_prob"]) else 1.0,
                                     abs=1e-4)
        said.append(cls)
    assert "Elephant" in said, "SpeciesNet's african elephant is the prompt file's Elephant"
    regs = pd.read_parquet(tmp_path / "both" / "registrations.parquet")
    assert len(regs) and regs["models_agree"].notna().all()


def test_speciesnet_at_bf16_names_the_crops_as_at_fp32(offline, photos, monkeypatch):
    """--precision bf16 (what auto picks on a CPU with native bf16) runs SpeciesNet's
    weights in bf16 through the package's own calls: the same top label wherever fp32's
    is clear, and scores close to fp32's."""
    import torch
    from PIL import Image

    from kadr.core.models import load_model

    boxes = [(0.1, 0.2, 0.4, 0.5), (0.5, 0.4, 0.3, 0.4)]
    runs, crops = {}, None
    for precision in ("fp32", "bf16"):  # bf16 is emulated, and slow, on a CPU without it
        monkeypatch.setenv("KADR_PRECISION", precision)
        model = load_model("speciesnet:v4.0.3a", kind="classifier", trust_checkpoint=True)
        crops = crops or [model.preprocess(Image.open(photos / name).convert("RGB"), boxes)
                          for name in PHOTOS[:1]]
        dtype = next(model.classifier.model.parameters()).dtype
        assert dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        runs[precision] = [c for photo in model.predict(crops, 5) for c in photo]
    clear = 0
    for full, half in zip(runs["fp32"], runs["bf16"], strict=True):
        scores = dict(zip(full["classes"], full["scores"], strict=True))
        for cls, score in zip(half["classes"], half["scores"], strict=True):
            if cls in scores:
                assert score == pytest.approx(scores[cls], abs=0.03)
        if full["scores"][0] - full["scores"][1] > 0.05:
            clear += 1
            assert half["classes"][0] == full["classes"][0]
    assert clear >= 1, "a crop with a clear label to compare"
