"""kadr's MegaDetector backend drives the ``megadetector`` package's own loader and batch call.

A stand-in module with the package's API records what kadr asks of it: the
loader, the device switch, one batch call per batch, and the conversion of its
output. The real package and its YOLOv5 code: tests/test_parity_megadetector.py.
"""

import sys
import types

import pytest
from PIL import Image

from kadr.core.decode import DecodedPhoto
from kadr.core.models import UnsafeCheckpointError, load_model


@pytest.fixture
def fake_megadetector(monkeypatch):
    calls = {"load": [], "batch": []}

    class FakePTDetector:
        def generate_detections_one_batch(self, images, image_id=None, detection_threshold=1e-5,
                                          **kwargs):
            calls["batch"].append((len(images), image_id, detection_threshold))
            return [{"file": i, "detections": [
                {"category": "1", "conf": 0.9, "bbox": [0.1, 0.2, 0.3, 0.4]},
                {"category": "2", "conf": 0.6, "bbox": [0.5, 0.5, 0.1, 0.2]}]}
                for i in image_id]

    def load_detector(model_file, force_cpu=False, **kwargs):
        calls["load"].append((model_file, force_cpu))
        return FakePTDetector()

    run_detector = types.SimpleNamespace(load_detector=load_detector,
                                         model_string_to_model_version={}, known_models={})
    package = types.ModuleType("megadetector")
    detection = types.ModuleType("megadetector.detection")
    detection.run_detector = run_detector
    package.detection = detection
    monkeypatch.setitem(sys.modules, "megadetector", package)
    monkeypatch.setitem(sys.modules, "megadetector.detection", detection)
    monkeypatch.setitem(sys.modules, "megadetector.detection.run_detector", run_detector)
    return calls


def test_a_pickled_checkpoint_needs_trust(fake_megadetector, tmp_path):
    checkpoint = tmp_path / "md_v5a.0.0.pt"
    checkpoint.write_bytes(b"pickle")
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        load_model(f"megadetector:{checkpoint}", kind="detector")
    assert fake_megadetector["load"] == [], "nothing was unpickled"


def test_loads_through_the_package_batched_on_the_named_device(fake_megadetector, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("KADR_DEVICE", "cpu")
    checkpoint = tmp_path / "md_v5a.0.0.pt"
    checkpoint.write_bytes(b"pickle")
    detector = load_model(f"megadetector:{checkpoint}", kind="detector", trust_checkpoint=True)
    assert fake_megadetector["load"] == [(str(checkpoint), True)], "KADR_DEVICE=cpu forces the CPU"
    image = Image.new("RGB", (64, 48))
    photos = [detector.prepare(DecodedPhoto(image, 64, 48, "JPEG", "RGB", None))] * 3
    results = detector.detect(photos)
    assert len(fake_megadetector["batch"]) == 1 and fake_megadetector["batch"][0][0] == 3, \
        "one call for the whole batch"
    assert [[d.category for d in r] for r in results] == [["animal", "person"]] * 3
    assert results[0][0].bbox == (0.1, 0.2, 0.3, 0.4)
