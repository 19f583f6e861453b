"""A Hugging Face hub cache on disk, filled with files a test makes, and the network off.

The layout is the one huggingface_hub writes and reads
(``models--ORG--NAME/refs/main`` naming a snapshot folder that holds the
files), so the upstream loaders find the files exactly as on a user's
machine after a first download.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from tests.helpers import SHARED, missing_shared


def put_in_hub_cache(cache: Path, repo_id: str, files: dict[str, Path | bytes | str]) -> Path:
    """Place ``files`` (name -> a file to copy, bytes or text) under ``repo_id``; the snapshot folder."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            shutil.copyfile(data, target)
        elif isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data)
    return snapshot


def save_pretrained_to_hub_cache(cache: Path, repo_id: str, *objects) -> Path:
    """``save_pretrained`` of transformers/diffusers objects, placed in the cache under ``repo_id``."""
    folder = cache.parent / f"saved-{repo_id.replace('/', '--')}"
    for obj in objects:
        obj.save_pretrained(folder)
    return put_in_hub_cache(cache, repo_id, {
        str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()})


def parity_photos() -> list[Path]:
    """Real photos of several shapes: square rooms, 3:2 and portrait scenes, 2048x1536 trap frames."""
    data = SHARED / "data"
    if not data.exists():
        missing_shared(data)
    rooms = sorted((data / "interiors" / "bedroom").glob("*.jpg"))[:4]
    misc = sorted((data / "misc").glob("*"))
    traps = sorted((data / "camera_traps/cameratraps_repo/api/synchronous/sample_input/test_images")
                   .glob("*.JPG"))[:2]
    return rooms + misc + traps
