"""``kadr demo``: the camera-trap job end to end on the real photos in ../shared.

It writes a manifest (path + camera columns) of real camera-trap photos, runs
``traps run`` on it with the real YOLOX-Nano detector, and, when CLIP weights
are present or can be downloaded, names species zero-shot with the default
classifier; offline without weights it uses the detector's labels instead.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kadr.core.store import atomic_write_text, output_folder

DEFAULT_CLASSIFIER = "open_clip:ViT-B-32@laion2b_s34b_b79k"


def demo_manifest(shared: Path, out: Path) -> Path:
    """Real photos grouped into cameras: Serengeti D04, the LILA test set, camtrapR stations."""
    ct = shared / "data" / "camera_traps"
    rows = []
    for p in sorted((ct / "cameratraps_repo/api/synchronous/sample_input").rglob("*.JPG")):
        rows.append({"path": str(p.resolve()), "camera": "serengeti_D04"})
    for p in sorted((ct / "cameratraps_repo/test_images/test_images").glob("*")):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
            rows.append({"path": str(p.resolve()), "camera": "lila_test_images"})
    for p in sorted((ct / "camtrapR_pictures/sample_images_species_dir").rglob("*.JPG")):
        rows.append({"path": str(p.resolve()), "camera": f"camtrapR_{p.parent.parent.name}",
                     "species_folder": p.parent.name})
    if not rows:
        raise FileNotFoundError(f"no camera-trap photos under {ct}")
    path = out / "demo_manifest.csv"
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
    return path


def classifier_available(spec: str) -> bool:
    from kadr.core.models import WeightsNotFoundError, load_model

    try:
        load_model(spec, kind="image-text")
        return True
    except WeightsNotFoundError:
        return False


def run_demo(shared: str, out: str, progress: bool = True):
    from kadr.traps.pipeline import TrapSettings, run_traps

    shared_dir, out_dir = Path(shared), Path(out)
    detector = shared_dir / "models" / "yolox_nano.onnx"
    if not detector.exists():
        raise FileNotFoundError(
            f"the demo needs {detector} (the shared data beside the repository); "
            "pass --shared PATH to where it is")
    output_folder(out_dir)
    manifest = demo_manifest(shared_dir, out_dir)
    classifier = DEFAULT_CLASSIFIER if classifier_available(DEFAULT_CLASSIFIER) else None
    settings = TrapSettings(detector=f"yolox:{detector}", classifier=classifier,
                            progress=progress, group_column="camera")
    return run_traps(str(manifest), str(out_dir / "traps"), settings), classifier
