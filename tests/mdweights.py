"""MegaDetector-shaped checkpoints at seeded random weights, for parity tests and benches.

MegaDetector v5 ships as a YOLOv5 training checkpoint: a pickled dict whose
``model`` is the repository's ``models.yolo`` detection model (YOLOv5x6, three
classes, 1280 px, stored in half precision). This builds the same architecture
from the ``yolov5`` wheel's own config and saves it the same way, so the
``megadetector`` package loads it as it loads the real file.
"""

from __future__ import annotations

from pathlib import Path

MD_CLASSES = {0: "animal", 1: "person", 2: "vehicle"}


def save_random_mdv5(path: Path, arch: str = "yolov5x6", seed: int = 0,
                     objectness_bias: float = 4.0) -> Path:
    """Write ``path`` (``md_v5a.0.0.pt``-shaped) with random weights of ``arch``.

    ``objectness_bias`` lifts the detection head's objectness and class biases:
    YOLOv5 initialises them so that an untrained model finds almost nothing,
    and a parity test needs boxes to compare."""
    import torch
    import yolov5  # noqa: F401 - puts the wheel's folder on sys.path, as MegaDetector expects
    import yolov5.models.yolo  # noqa: F401
    from models.yolo import Model  # the module name real MegaDetector checkpoints pickle

    cfg = Path(yolov5.__file__).parent / "models" / "hub" / f"{arch}.yaml"
    torch.manual_seed(seed)
    model = Model(str(cfg), ch=3, nc=len(MD_CLASSES))
    model.names = dict(MD_CLASSES)
    with torch.no_grad():
        for conv in model.model[-1].m:  # Detect: per anchor (x, y, w, h, obj, classes...)
            bias = conv.bias.view(model.model[-1].na, -1)
            bias[:, 4:] += objectness_bias
    model.eval()
    torch.save({"model": model.half(), "epoch": -1, "date": None}, path)
    return path
