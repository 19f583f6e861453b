"""The built wheel carries everything a `pip install` user needs (vocabularies, audiences, configs)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, jpeg_bytes


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what a release holds, so the build leaves nothing in the work tree.
    source = tmp / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp / "dist").glob("kadr-*.whl"))
    target = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                        str(target), str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return wheel, target


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # The installed copy comes first on the path; the dependencies come from this environment.
    env = {**os.environ, "PYTHONPATH": str(target), "KADR_OFFLINE": "1",
           "KADR_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "kadr.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env)


def test_wheel_holds_the_data_files(installed_wheel):
    wheel, _ = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in ("kadr/hotels/vocab/furniture.txt", "kadr/hotels/vocab/flavors.txt",
                "kadr/hotels/audiences/aliens.yaml", "kadr/traps/data/priroda_prompts.json",
                "kadr/core/models/configs/kadr-tiny-clip.json"):
        assert rel in names, f"{rel} is missing from {wheel.name}"


@pytest.mark.slow
def test_installed_wheel_runs_hotel_vocabulary_and_audience(installed_wheel, tmp_path):
    _, target = installed_wheel
    r = subprocess.run([sys.executable, "-c", "import kadr; print(kadr.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(target)})
    assert r.stdout.strip().startswith(str(target)), f"not the installed copy: {r.stdout}"
    photos = tmp_path / "rooms"
    photos.mkdir()
    for i in range(2):
        (photos / f"room{i}.jpg").write_bytes(jpeg_bytes(size=(96, 72), seed=i))
    r = run_installed(target, tmp_path, "hotels", "caption", str(photos), "-o", "cap",
                      "--captioner", "hf-caption:kadr/tiny-blip@random",
                      "--clip", "open_clip:kadr-tiny-clip@random", "--vocab", "hotel", "--mode", "fast",
                      "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cap" / "captions.csv").exists()
    r = run_installed(target, tmp_path, "hotels", "restyle", str(photos / "room0.jpg"), "-o", "alien",
                      "--audience", "aliens", "--pipeline", "diffusers:kadr/tiny-sd@random",
                      "--segmenter", "clipseg:kadr/tiny-clipseg@random", "--steps", "2", "-q")
    assert r.returncode == 0, r.stderr
    assert "aliens" in (tmp_path / "alien" / "restyle.csv").read_text().lower() or \
        (tmp_path / "alien" / "gallery.html").exists()
