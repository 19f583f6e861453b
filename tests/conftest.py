"""Shared fixtures (their helpers live in :mod:`tests.helpers`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import jpeg_bytes, make_broken_corpus


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Two cameras with five timed JPEGs each."""
    root = tmp_path / "photos"
    t0 = datetime(2024, 7, 1, 6, 0, 0)
    for cam in ("camA", "camB"):
        (root / cam).mkdir(parents=True)
        for i in range(5):
            data = jpeg_bytes(seed=i + (10 if cam == "camB" else 0), when=t0 + timedelta(minutes=i))
            (root / cam / f"IMG_{i:04d}.JPG").write_bytes(data)
    return root


@pytest.fixture
def broken_corpus(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "broken"
    return root, make_broken_corpus(root)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache that every loader uses, with downloads switched off (as HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KADR_OFFLINE", "1")
    # huggingface_hub reads these once, at import; a user sets them before starting Python.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(autouse=True)
def exact_precision(monkeypatch):
    """fp32 whatever the CPU: tests compare numbers across runs and with upstream code.
    What ``--precision auto`` picks, and how close bf16 stays, is tested on its own
    (tests/test_precision.py)."""
    monkeypatch.setenv("KADR_PRECISION", "fp32")


@pytest.fixture(autouse=True)
def process_settings_left_as_found(monkeypatch):
    """Settings a library changes for the whole process when imported go back after the
    test that imported it: pybioclip sets TORCH_FORCE_WEIGHTS_ONLY_LOAD, which makes every
    later torch.load refuse pickled checkpoints (MegaDetector's among them)."""
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
