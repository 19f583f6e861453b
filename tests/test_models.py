import time

import numpy as np
import pytest
import torch

from kadr.core.models import (
    ModelSpec,
    SpecError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    load_model,
)
from kadr.core.models.weights import load_state_dict
from tests.helpers import TINY_CLIP


def test_spec_parsing():
    s = ModelSpec.parse("open_clip:ViT-B-32@laion2b_s34b_b79k")
    assert (s.backend, s.name, s.weights) == ("open_clip", "ViT-B-32", "laion2b_s34b_b79k")
    assert ModelSpec.parse("hf:openai/clip-vit-base-patch32").weights is None
    assert ModelSpec.parse("yolox:/models/x.onnx").name == "/models/x.onnx"
    with pytest.raises(SpecError):
        ModelSpec.parse("ViT-B-32")
    with pytest.raises(SpecError, match="unknown model backend"):
        load_model("nope:thing")


@pytest.mark.parametrize("spec", [TINY_CLIP, "hf:kadr/tiny-clip@random"])
def test_random_weights_are_seeded(spec):
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    a = load_model(spec).encode_images(x)
    b = load_model(spec).encode_images(x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    t = load_model(spec).encode_texts(["a bear", "a deer", "a bear"])
    np.testing.assert_allclose(t[0], t[2], atol=1e-5)
    assert not np.allclose(t[0], t[1])


@pytest.mark.parametrize(
    "spec", ["open_clip:ViT-B-32@laion2b_s34b_b79k", "hf:openai/clip-vit-base-patch32"]
)
def test_missing_weights_fail_fast_and_say_where(spec, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("KADR_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as e:
        load_model(spec)
    assert time.monotonic() - t0 < 10
    assert str(tmp_path / "hub") in str(e.value) and "@random" in str(e.value)


def test_local_checkpoint_and_pickle_refusal(tmp_path):
    model = load_model(TINY_CLIP)
    net = model.modules[0]
    path = tmp_path / "ckpt.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model(f"open_clip:kadr-tiny-clip@{path}")
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(loaded.encode_images(x), model.encode_images(x), atol=1e-5)

    class Evil:  # a pickle that needs arbitrary code
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": net.state_dict(), "x": Evil()}, bad)
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        load_state_dict(bad)
    assert "visual.conv1.weight" in load_state_dict(bad, trust_pickle=True)


def test_device_setting(monkeypatch):
    from kadr.core.models.device import torch_device

    monkeypatch.setenv("KADR_DEVICE", "cpu")
    model = load_model(TINY_CLIP)
    assert model.device == torch.device("cpu") and torch_device() == torch.device("cpu")
    assert model.encode_images(np.zeros((1, 64, 64, 3), np.uint8)).shape == (1, 64)
    monkeypatch.setenv("KADR_DEVICE", "gpu-please")
    with pytest.raises(SpecError, match="not a device"):
        load_model(TINY_CLIP)
    if not torch.cuda.is_available():
        monkeypatch.setenv("KADR_DEVICE", "cuda")
        with pytest.raises(SpecError, match="sees no GPU"):
            load_model(TINY_CLIP)


def test_uint8_crops_and_normalised_tensors_give_the_same_embeddings():
    model = load_model(TINY_CLIP)
    crops = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    mean, std = np.asarray(model.mean, np.float32), np.asarray(model.std, np.float32)
    normalised = ((crops / 255.0 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(model.encode_images(list(crops)), model.encode_images(normalised),
                               atol=1e-5)


def test_models_command_lists_backends_and_test_models():
    from tests.test_embed import kadr

    r = kadr("models")
    assert r.returncode == 0, r.stderr
    for backend in ("open_clip:", "hf:", "yolox:", "megadetector:", "coca:", "hf-caption:",
                    "diffusers:", "clipseg:", "sam:", "boxes:"):
        assert backend in r.stdout
    assert "kadr-tiny-clip@random" in r.stdout and "kadr/tiny-sd@random" in r.stdout
    assert "models run on: " in r.stdout
    # What each family needs is printed as written: an extra in brackets is no markup.
    flat = " ".join(r.stdout.split())
    assert "pip install 'kadr[speciesnet]'" in flat and "kadr[megadetector]" in flat
    assert "speciesnet:v4.0.3a" in r.stdout


def test_importing_the_cli_loads_no_heavy_library():
    import subprocess
    import sys

    heavy = ("torch", "transformers", "diffusers", "open_clip", "ray", "plotly")
    code = ("import sys, kadr.cli, kadr.embed; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"loaded at start-up: {r.stdout}"


def test_listing_models_loads_no_heavy_library(tmp_path):
    import os
    import subprocess
    import sys

    heavy = ("torch", "transformers", "diffusers", "open_clip", "ray", "plotly")
    code = ("import sys; from typer.testing import CliRunner; from kadr.cli import app; "
            "r = CliRunner().invoke(app, ['models', '--all']); assert r.exit_code == 0, r.output; "
            "assert 'open_clip:ViT-B-32@openai' in r.output; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    env = {**os.environ, "KADR_CACHE": str(tmp_path / "cache"), "KADR_OFFLINE": "1"}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == "[]", \
        "open_clip's tags come from kadr's cache once listed"


def test_text_cache_is_bounded_and_keeps_what_was_used_last(tmp_path, monkeypatch):
    import time

    from kadr.core.text_cache import text_embeddings

    monkeypatch.setenv("KADR_CACHE", str(tmp_path))
    model = load_model(TINY_CLIP)
    first = text_embeddings(model, ["a bed"])
    one_file = next((tmp_path / "text").iterdir()).stat().st_size
    monkeypatch.setenv("KADR_TEXT_CACHE_MB", str(3.5 * one_file / 2**20))  # room for three
    for i in range(6):
        time.sleep(0.01)  # distinct modification times
        text_embeddings(model, [f"phrase {i}"])
    names = {p.name for p in (tmp_path / "text").iterdir()}
    assert len(names) == 3, "the least recently used files were removed"
    last = text_embeddings(model, ["phrase 5"])
    assert {p.name for p in (tmp_path / "text").iterdir()} == names, "the newest was kept"
    np.testing.assert_array_equal(text_embeddings(model, ["a bed"]), first)
    assert last.shape == first.shape
