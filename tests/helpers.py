"""Test helpers in one importable place: generated photos, a corpus of broken files, and
../shared when present (``from tests.helpers import ...``)."""

from __future__ import annotations

import importlib
import io
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KADR_SHARED", ROOT.parent / "shared"))
TINY_CLIP = "open_clip:kadr-tiny-clip@random"


def skip_outside_ci(reason: str, ci_has_it: str) -> None:
    """Skip a test whose prerequisite is absent; in CI (CI=true) that is a failure, since
    CI provides it (``ci_has_it`` says how)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; {ci_has_it}, so nothing may skip")
    pytest.skip(reason, allow_module_level=True)


def missing_shared(p: Path) -> None:
    """Skip a test whose shared data is absent (a failure in CI)."""
    skip_outside_ci(f"needs {p} (the shared data beside the repository), which is absent",
                    "CI runs with ../shared beside the clone")


def need_module(name: str, extra: str = "test"):
    """Import an optional library a test needs, or skip (a failure in CI, whose
    `make test` installs the extra that brings it)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_outside_ci(f"needs {name} (pip install -e '.[{extra}]')",
                        f"make test installs kadr[{extra}]")


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason (fail in CI)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        missing_shared(p)
    return p


def camera_of_test_images(folder: Path, names: list[str]) -> Path:
    """A camera folder ``cam1`` holding the named photos of the MegaDetector repo's real
    test images (skipped without ../shared)."""
    import shutil

    source = shared_path("data", "camera_traps", "cameratraps_repo", "test_images", "test_images")
    camera = folder / "cam1"
    camera.mkdir()
    for name in names:
        shutil.copy(source / name, camera / name)
    return camera


def jpeg_bytes(
    size=(320, 240), seed=0, when: datetime | None = None, orientation: int | None = None
) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
    exif = Image.Exif()
    if when is not None:
        exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")
    if orientation:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def make_broken_corpus(root: Path) -> dict[str, str]:
    """Every kind of bad input the decoder must survive; returns name -> expected status."""
    root.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(seed=1)
    expected: dict[str, str] = {}

    def put(name: str, data: bytes, status: str) -> None:
        (root / name).write_bytes(data)
        expected[name] = status

    put("zero.jpg", b"", "empty_file")
    put("truncated.jpg", good[: len(good) // 2], "truncated")
    put("text.jpg", b"this is not an image at all\n" * 10, "not_an_image")
    put("good.jpg", good, "ok")
    # Modes that decode fine but need converting to 8-bit RGB.
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    buf = io.BytesIO()
    rgb.convert("CMYK").save(buf, "JPEG")
    put("cmyk.jpg", buf.getvalue(), "ok")
    buf = io.BytesIO()
    Image.fromarray(np.arange(2000, dtype=np.uint16).reshape(40, 50) * 30).save(buf, "PNG")
    put("gray16.png", buf.getvalue(), "ok")
    buf = io.BytesIO()
    rgb.convert("P").save(buf, "PNG")
    put("palette.png", buf.getvalue(), "ok")
    buf = io.BytesIO()
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(buf, "PNG")
    put("alpha.png", buf.getvalue(), "ok")
    buf = io.BytesIO()
    frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    put("anim.gif", buf.getvalue(), "ok")
    # A bomb: a tiny file that claims 20000x20000 pixels.
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, "PNG", optimize=True)
    put("bomb.png", buf.getvalue(), "too_large")
    # Unreadable files (permission denied) are tested in test_decode for any user, root
    # included; a corpus file cannot be made unreadable to root.
    return expected


def megadetector_validation(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of MegaDetector's own validator on a batch-output file."""
    need_module("megadetector", extra="megadetector")
    from megadetector.postprocessing.validate_batch_results import (
        ValidateBatchResultsOptions,
        validate_batch_results,
    )

    options = ValidateBatchResultsOptions()
    result = validate_batch_results(str(path), options)["validation_results"]
    return result["errors"], result["warnings"]
