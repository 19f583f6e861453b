"""Half precision: what a GPU runs by default, checked on this CPU with bf16.

Full-size architectures at random weights: per-photo cosine similarity of
bf16 embeddings to fp32 ones must be >= 0.99; captioners and segmenters must
run in bf16 and give their usual outputs.
"""

import numpy as np
import pytest
from PIL import Image, ImageOps

from kadr.core.models import load_model
from tests.hubcache import parity_photos


def photos() -> list[Image.Image]:
    return [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in parity_photos()[:6]]


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["open_clip:ViT-B-32@random",
                                  "hf:openai/clip-vit-base-patch32@random"])
def test_bf16_embeddings_stay_close_to_fp32(spec, monkeypatch):
    images = photos()
    texts = ["a photo of a bedroom", "an elephant at night"]
    monkeypatch.setenv("KADR_PRECISION", "fp32")
    full = load_model(spec)
    want_img = full.encode_images([full.prepare_image(im) for im in images])
    want_txt = full.encode_texts(texts)
    monkeypatch.setenv("KADR_PRECISION", "bf16")
    half = load_model(spec)
    assert str(half.modules[0].dtype if hasattr(half.modules[0], "dtype") else
               next(half.modules[0].parameters()).dtype) == "torch.bfloat16"
    got_img = half.encode_images([half.prepare_image(im) for im in images])
    got_txt = half.encode_texts(texts)
    assert got_img.dtype == np.float32, "embeddings leave as float32 whatever the weights"
    assert (got_img * want_img).sum(1).min() >= 0.99
    assert (got_txt * want_txt).sum(1).min() >= 0.99


def test_bf16_captioners_and_segmenters_run(monkeypatch):
    monkeypatch.setenv("KADR_PRECISION", "bf16")
    images = photos()[:2]
    for spec in ("hf-caption:kadr/tiny-blip@random", "coca:kadr-tiny-coca@random"):
        captions = load_model(spec, kind="captioner").caption(images)
        assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    masks = load_model("clipseg:kadr/tiny-clipseg@random", kind="segmenter").segment(
        images[0], ["the bed", "the window"])
    assert masks[0].shape == images[0].size[::-1] and masks[0].dtype == np.float32


def test_precision_is_part_of_the_fingerprint(monkeypatch):
    from kadr.core.models.factory import model_fingerprint

    monkeypatch.setenv("KADR_PRECISION", "fp32")
    full = model_fingerprint("open_clip:ViT-B-32@openai")
    monkeypatch.setenv("KADR_PRECISION", "bf16")
    assert model_fingerprint("open_clip:ViT-B-32@openai") != full


# -- --precision auto on the CPU ---------------------------------------------------------

def fake_cpu(monkeypatch, tmp_path, flags: set[str], fp32_s: float = 1.0, bf16_s: float = 0.3):
    """This test's CPU (name and flags) and what timing it would measure; returns the list
    of families measured."""
    from kadr.core.models import precision

    measured: list[str] = []

    def measure(family):
        measured.append(family)
        return fp32_s, bf16_s

    monkeypatch.setattr(precision, "cpu_features", lambda: ("Test CPU 9000", set(flags)))
    monkeypatch.setattr(precision, "measure_family", measure)
    monkeypatch.setenv("KADR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KADR_PRECISION", "auto")
    return measured


def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch, tmp_path):
    from kadr.core.models.precision import choose_cpu_precision, resolved_precision

    measured = fake_cpu(monkeypatch, tmp_path, {"avx2", "fma"})
    assert resolved_precision("transformer", "cpu") == "fp32"
    assert "Test CPU 9000" in choose_cpu_precision("conv").reason
    assert measured == [], "nothing to measure: bf16 would be emulated"
    assert resolved_precision(None, "cpu") == "fp32", "ONNX models run as they ship"


def test_auto_measures_once_per_family_and_keeps_the_decision(monkeypatch, tmp_path):
    import json

    from kadr.core.models.precision import choose_cpu_precision, resolved_precision

    measured = fake_cpu(monkeypatch, tmp_path, {"avx512f", "avx512_bf16", "amx_bf16"})
    assert resolved_precision("transformer", "cpu") == "bf16"
    assert resolved_precision("transformer", "cpu") == "bf16"
    assert measured == ["transformer"], "measured once, then read from the cache"
    kept = json.loads((tmp_path / "cache" / "precision.json").read_text())
    (key,) = kept
    assert "Test CPU 9000" in key and "transformer" in key and kept[key]["speedup"] == 3.33
    reason = choose_cpu_precision("transformer").reason
    assert "3.33x" in reason and "amx_bf16" in reason
    monkeypatch.setenv("KADR_PRECISION", "fp32")
    assert resolved_precision("transformer", "cpu") == "fp32", "fp32 stays exact when asked"


def test_auto_keeps_fp32_where_bf16_measures_slower(monkeypatch, tmp_path):
    from kadr.core.models.precision import resolved_precision

    fake_cpu(monkeypatch, tmp_path, {"avx512_bf16"}, fp32_s=1.0, bf16_s=1.1)
    assert resolved_precision("conv", "cpu") == "fp32"


def test_a_resume_on_a_cpu_that_decides_otherwise_is_refused(monkeypatch, tmp_path):
    from kadr.core.errors import StoreMismatchError
    from kadr.core.models.factory import model_fingerprint
    from kadr.embed import embed_photos
    from tests.helpers import TINY_CLIP, jpeg_bytes

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    fake_cpu(monkeypatch, tmp_path, {"amx_bf16"})
    assert model_fingerprint(TINY_CLIP)["precision"] == "bf16"
    assert model_fingerprint("yolox:/x.onnx")["precision"] == "fp32"
    first = embed_photos(str(folder), str(tmp_path / "out"), TINY_CLIP, progress=False)
    assert first.summary.ok == 2
    fake_cpu(monkeypatch, tmp_path / "other", {"avx2"})  # another machine, same folder
    with pytest.raises(StoreMismatchError, match='"precision": "bf16"'):
        embed_photos(str(folder), str(tmp_path / "out"), TINY_CLIP, progress=False)


def test_models_device_says_what_auto_chose_and_why(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from kadr.cli import app

    fake_cpu(monkeypatch, tmp_path, {"avx512_bf16"})
    r = CliRunner().invoke(app, ["models", "--device"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "transformer models: bf16" in text and "3.33x fp32" in text, text
    assert "conv models: bf16" in text
    assert "ONNX" in text


def test_the_measurement_times_both_precisions():
    from kadr.core.models.precision import measure_family

    fp32_s, bf16_s = measure_family("transformer", rounds=1, reps=1)
    assert 0 < fp32_s < 10 and 0 < bf16_s < 60


@pytest.mark.slow
def test_bf16_zero_shot_classes_match_fp32(monkeypatch):
    """The same class for every photo whose fp32 decision is not a tie at bf16's resolution
    (top-two cosine gap >= 1e-3; random weights leave some photos nearer than that)."""
    from tests.helpers import shared_path

    traps = shared_path("data", "camera_traps", "cameratraps_repo")
    paths = sorted(p for p in (traps / "test_images" / "test_images").iterdir()
                   if p.suffix.lower() == ".jpg")
    paths += sorted((traps / "api" / "synchronous" / "sample_input").rglob("*.JPG"))
    paths += sorted(shared_path("data", "interiors").rglob("*.jpg"))[::40]
    images = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in paths]
    assert len(images) >= 40
    names = [f"a camera trap photo of a {c}" for c in (
        "bear", "wolf", "fox", "deer", "wild boar", "hare", "lynx", "elk", "badger", "bird",
        "person", "empty scene", "tiger", "leopard", "marten", "squirrel")]
    scores = {}
    for precision in ("fp32", "bf16"):
        monkeypatch.setenv("KADR_PRECISION", precision)
        model = load_model("open_clip:ViT-B-32@random")
        img = np.concatenate([model.encode_images([model.prepare_image(im) for im in images[k:k + 8]])
                              for k in range(0, len(images), 8)])
        scores[precision] = img @ model.encode_texts(names).T
    full, half = scores["fp32"], scores["bf16"]
    top2 = np.sort(full, 1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= 1e-3
    assert clear.mean() >= 0.8, "most decisions are not ties"
    same = full.argmax(1) == half.argmax(1)
    assert same[clear].mean() >= 0.99, (same.mean(), clear.mean())
