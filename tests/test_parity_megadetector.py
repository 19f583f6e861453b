"""``megadetector:`` through the real ``megadetector`` package and its YOLOv5 code.

A checkpoint of the real MegaDetector v5 architecture (YOLOv5x6, three classes,
1280 px) at seeded random weights is saved as MegaDetector ships its own;
``kadr traps run`` with it must find what the package's own
``generate_detections_one_image`` finds on the same real photos.
"""

import json
import shutil

import pandas as pd
import pytest

from tests.helpers import camera_of_test_images, need_module
from tests.mdweights import save_random_mdv5

need_module("megadetector", extra="megadetector")
need_module("yolov5", extra="megadetector")

PHOTOS = [  # sizes and aspect ratios that letterbox to different shapes, and one large
    # enough (5152x3968) that a JPEG decoded at a DCT scale would hand the model other pixels
    "snapshot_serengeti_S10_D12_D12_R2_S10_D12_R2_IMAG4854.JPG",
    "snapshot_kruger_KRU_S1_25_25_R1_KRU_S1_25_R1_IMAG0012.JPG",
    "channel_islands_camera_traps_loc-h500ee05127658_007_194.jpg",
]
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_mdv5(tmp_path_factory.mktemp("md") / "md_v5a.0.0.pt")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return camera_of_test_images(tmp_path_factory.mktemp("traps"), PHOTOS)


def package_detections(checkpoint, camera) -> dict[str, list[dict]]:
    from megadetector.detection import run_detector
    from megadetector.visualization import visualization_utils as vis_utils

    detector = run_detector.load_detector(str(checkpoint), force_cpu=True)
    out = {}
    for name in PHOTOS:
        result = detector.generate_detections_one_image(
            vis_utils.load_image(str(camera / name)), name, detection_threshold=0.05)
        assert not result.get("failure"), result
        out[name] = result["detections"]
    return out


def test_traps_run_finds_what_the_package_finds(checkpoint, photos, tmp_path, monkeypatch):
    from kadr.traps.pipeline import TrapSettings, run_traps

    monkeypatch.setenv("KADR_DEVICE", "cpu")
    settings = TrapSettings(detector=f"megadetector:{checkpoint}", classifier=None,
                            trust_checkpoint=True, threshold=THRESHOLD, progress=False)
    run_traps(str(photos.parent), str(tmp_path / "out"), settings)
    table = pd.read_parquet(tmp_path / "out" / "photos.parquet").set_index("key")
    reference = package_detections(checkpoint, photos)

    categories = {"1": "animal", "2": "person", "3": "vehicle"}
    seen = 0
    for name in PHOTOS:
        ours = json.loads(table.loc[f"cam1/{name}", "detections"])
        theirs = sorted(reference[name], key=lambda d: -d["conf"])
        assert len(ours) == len(theirs), name
        seen += len(ours)
        for a, b in zip(ours, theirs, strict=True):
            assert a["category"] == categories[b["category"]]
            # The package gives scores to 3 digits and boxes to 4; a batch's last bits may
            # flip one digit (measured here: every value equal).
            assert abs(a["conf"] - b["conf"]) <= 1.0001e-3
            assert max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"], strict=True)) <= 1.0001e-4
        animals_ours = sum(d["category"] == "animal" and d["conf"] >= THRESHOLD for d in ours)
        animals_theirs = sum(d["category"] == "1" and d["conf"] >= THRESHOLD for d in theirs)
        assert animals_ours == animals_theirs, name
        assert 0 <= table.loc[f"cam1/{name}", "n_animals"] <= animals_ours
    assert seen > 0, "the random weights found nothing: the comparison would be empty"


def test_a_release_name_loads_from_the_package_download_folder_offline(checkpoint, photos,
                                                                          tmp_path, monkeypatch):
    # The package keeps what it downloads in <tmp>/megadetector_models under the release's
    # file name; a second run, offline, must find it there instead of failing or hanging.
    import tempfile

    from kadr.core.decode import decode_photo
    from kadr.core.models import WeightsNotFoundError, load_model

    monkeypatch.setenv("KADR_DEVICE", "cpu")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("MDV1000-redwood", raising=False)
    with pytest.raises(WeightsNotFoundError) as missing:
        load_model("megadetector:MDV1000-redwood", kind="detector", trust_checkpoint=True)
    cached = tmp_path / "megadetector_models" / "md_v1000.0.0-redwood.pt"
    assert str(cached) in str(missing.value) and "md_v1000.0.0-redwood.pt" in str(missing.value)

    cached.parent.mkdir()
    shutil.copy(checkpoint, cached)
    by_name = load_model("megadetector:MDV1000-redwood", kind="detector", trust_checkpoint=True)
    by_path = load_model(f"megadetector:{checkpoint}", kind="detector", trust_checkpoint=True)
    photo = decode_photo((photos / PHOTOS[2]).read_bytes())
    found = [[d.as_dict() for d in m.detect([m.prepare(photo)])[0]] for m in (by_name, by_path)]
    assert found[0] == found[1] and found[0]


def test_a_release_name_is_refused_without_trust(tmp_path, monkeypatch):
    import tempfile

    from kadr.core.models import UnsafeCheckpointError, load_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("MDV5A", str(save_random_mdv5(tmp_path / "md_v5a.0.0.pt",
                                                     arch="yolov5n6")))
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        load_model("megadetector:MDV5A", kind="detector")
