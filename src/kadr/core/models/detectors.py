"""Object detectors: ``yolox:PATH.onnx`` (ONNX Runtime) and ``megadetector:PATH``.

Detections follow the MegaDetector convention: ``bbox`` is [x, y, width,
height] normalised to the upright photo, ``category`` is animal, person,
vehicle or other, and ``label`` keeps the detector's own class name (for a
COCO detector: "elephant", "bed", "potted plant"...).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kadr.core.decode import DecodedPhoto
from kadr.core.models.device import onnx_providers
from kadr.core.models.factory import KnownModel, register_backend
from kadr.core.models.spec import ModelSpec, SpecError
from kadr.core.models.weights import (
    UnsafeCheckpointError,
    WeightsNotFoundError,
    hub_reachable,
    missing_weights_message,
)

COCO80 = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe "
    "backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat "
    "baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl "
    "banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch "
    "potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave "
    "oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()
COCO80 = tuple(c.replace("_", " ") for c in COCO80)
COCO_CATEGORY = {
    **{c: "animal" for c in COCO80[14:24]},
    "person": "person",
    **{c: "vehicle" for c in ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
                              "boat")},
}
MD_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}


@dataclass
class Detection:
    label: str
    category: str  # animal / person / vehicle / other
    conf: float
    bbox: tuple[float, float, float, float]  # x, y, w, h, normalised

    def as_dict(self) -> dict:
        return {"label": self.label, "category": self.category, "conf": round(self.conf, 4),
                "bbox": [round(v, 4) for v in self.bbox]}


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float]:
    """YOLOX input: BGR float32 CHW, image at top-left, padded with 114."""
    w, h = image.size
    r = min(size / w, size / h)
    resized = image.resize((max(1, round(w * r)), max(1, round(h * r))), Image.Resampling.BILINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    arr = np.asarray(resized)
    canvas[: arr.shape[0], : arr.shape[1]] = arr
    return np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32), r


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Per-class non-maximum suppression (torchvision's batched_nms)."""
    import torch
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.from_numpy(boxes_xyxy).float(), torch.from_numpy(scores).float(),
                       torch.from_numpy(labels).long(), iou)
    return keep.numpy()


def onnx_session_options(threads: int | None = None):
    """ONNX Runtime's CPU settings: every graph optimisation and one thread per core this
    process may use. Its threads spin between calls (ORT's default): the runner decodes
    between batches, not beside the detector, so spinning only saves a wake-up per photo
    (``KADR_ORT_SPIN=0`` makes them sleep; bench/precision.py compares both)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning",
                                  os.environ.get("KADR_ORT_SPIN", "1"))
    return opts


class YoloxDetector:
    """A YOLOX ONNX export with raw per-anchor output [1, N, 5 + classes]."""

    def __init__(self, spec: ModelSpec, path: str, labels=COCO80, min_conf: float = 0.05,
                 nms_iou: float = 0.45, threads: int | None = None):
        import onnxruntime as ort

        self.session = ort.InferenceSession(path, onnx_session_options(threads),
                                            providers=onnx_providers())
        # Where ONNX Runtime computes (the CUDA provider may be asked for and missing).
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.size = int(inp.shape[2]) if isinstance(inp.shape[2], int) else 640
        self.labels = labels
        self.spec = spec
        self.min_conf = min_conf
        self.nms_iou = nms_iou
        self.grids = self._grids(self.size)
        self.decode_side = self.size  # a JPEG may be decoded at a DCT scale down to this

    @staticmethod
    def _grids(size: int) -> tuple[np.ndarray, np.ndarray]:
        cells, strides = [], []
        for s in (8, 16, 32):
            n = size // s
            yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            cells.append(np.stack([xx, yy], -1).reshape(-1, 2))
            strides.append(np.full((n * n, 1), s))
        return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)

    def prepare(self, photo: DecodedPhoto) -> tuple[np.ndarray, float, tuple[int, int]]:
        arr, r = letterbox(photo.image, self.size)
        return arr, r, photo.image.size

    def detect(self, inputs: list) -> list[list[Detection]]:
        return [self._one(*x) for x in inputs]

    def _one(self, arr: np.ndarray, r: float, wh: tuple[int, int]) -> list[Detection]:
        raw = self.session.run(None, {self.input_name: arr[None]})[0][0]
        cells, strides = self.grids
        xy = (raw[:, :2] + cells) * strides
        half = np.exp(raw[:, 2:4]) * strides / 2
        scores_all = raw[:, 4:5] * raw[:, 5:]
        labels = scores_all.argmax(1)
        scores = scores_all[np.arange(len(labels)), labels]
        m = scores >= self.min_conf
        if not m.any():
            return []
        boxes = np.concatenate([xy[m] - half[m], xy[m] + half[m]], 1) / r
        keep = nms(boxes, scores[m], labels[m], self.nms_iou)
        w, h = wh
        out = []
        for k in keep:
            x1, y1, x2, y2 = boxes[k]
            x1, y1 = max(0.0, x1), max(0.0, y1)
            x2, y2 = min(float(w), x2), min(float(h), y2)
            if x2 <= x1 or y2 <= y1:
                continue
            label = self.labels[labels[m][k]]
            box = (x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h)
            out.append(Detection(label, COCO_CATEGORY.get(label, "other"), float(scores[m][k]),
                                 tuple(float(v) for v in box)))
        return sorted(out, key=lambda d: -d.conf)


class MegaDetector:
    """MegaDetector v5 through the ``megadetector`` package's own loader and batch call.

    The package chooses the model family, letterboxes at 1280 px and runs its
    NMS; kadr only batches the photos, says which device (``KADR_DEVICE=cpu``
    keeps it off the GPU) and converts the output to :class:`Detection`.
    """

    def __init__(self, spec: ModelSpec, path: str, min_conf: float = 0.05):
        from kadr.core.models.device import torch_device
        from kadr.core.models.upstream import quiet_upstream

        run_detector = _run_detector_module()
        with quiet_upstream():
            self.model = run_detector.load_detector(path,
                                                    force_cpu=torch_device().type == "cpu")
        self.spec = spec
        self.min_conf = min_conf
        self.size = 1280
        # Full resolution: the package resizes each photo itself (cv2 INTER_AREA to 1280 on
        # the long side), and a DCT-scaled decode would hand it other pixels than its own
        # image loader does.
        self.decode_side = None

    def prepare(self, photo: DecodedPhoto) -> Image.Image:
        return photo.image

    def detect(self, inputs: list) -> list[list[Detection]]:
        if not inputs:
            return []
        import torch

        # The package runs its model with autograd on (the weights require grad), keeping
        # every activation for a backward pass that never comes; off, the numbers are the
        # same and the memory is the forward pass's alone.
        with torch.no_grad():
            results = self.model.generate_detections_one_batch(
                list(inputs), image_id=[str(i) for i in range(len(inputs))],
                detection_threshold=self.min_conf)
        out = []
        for res in results:
            if res.get("failure"):
                raise RuntimeError(f"MegaDetector failed on a photo: {res['failure']}")
            dets = []
            for d in res.get("detections") or []:
                category = MD_CATEGORIES.get(str(d["category"]), "other")
                dets.append(Detection(category, category, float(d["conf"]),
                                      tuple(float(v) for v in d["bbox"])))
            out.append(sorted(dets, key=lambda d: -d.conf))
        return out


def _require_file(spec: ModelSpec, how: str) -> str:
    path = os.path.expanduser(spec.name)
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"{spec.backend} weights not found at {path}. {how}")
    return path


class YoloxBackend:
    name = "yolox"
    kind = "detector"
    family: str | None = None  # precision: not converted by kadr (runs as it ships, fp32 on the CPU)
    help = "YOLOX ONNX exports (COCO-80 labels); NAME is the .onnx path"

    def known(self) -> list[KnownModel]:
        shared = os.path.normpath(os.path.join(os.getcwd(), "..", "shared", "models",
                                               "yolox_nano.onnx"))
        return [KnownModel(f"yolox:{shared}", self.kind, "YOLOX-Nano, COCO-80, 416 px", shared,
                           os.path.isfile(shared))]

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> YoloxDetector:
        path = _require_file(spec, "Export a YOLOX model to ONNX (YOLOX's tools/export_onnx.py) "
                                   "or download yolox_nano.onnx from the YOLOX releases.")
        return YoloxDetector(spec, path)


class MegaDetectorBackend:
    name = "megadetector"
    kind = "detector"
    family: str | None = None  # precision: not converted by kadr (runs as it ships, fp32 on the CPU)
    help = ("MegaDetector v5 and MDv1000 checkpoints (a path, or a release name: MDV5A, "
            "MDV1000-redwood, ...) via the megadetector package. Needs pip install "
            "'kadr[megadetector]' && pip install --no-deps megadetector==10.0.28 yolov5==7.0.11; "
            "code and models MIT")

    def known(self) -> list[KnownModel]:
        models = [KnownModel("megadetector:PATH/md_v5a.0.0.pt", self.kind,
                             "a MegaDetector checkpoint by path (animal/person/vehicle)",
                             "the path given", False)]
        cache = md_download_folder()
        for name, file in MD_RELEASES.items():
            env = os.environ.get(name, "")
            where = env if env else f"${name}, else {cache / file}"
            present = os.path.isfile(env) if env else (cache / file).is_file()
            models.append(KnownModel(f"megadetector:{name}", self.kind,
                                     f"MegaDetector release {file} (by name: the package "
                                     "downloads it)", where, present))
        return models

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> MegaDetector:
        release = release_checkpoint(spec.name)
        if release is not None:  # a release name: MDV5A, MDV1000-redwood, ...
            path, looked, url = release
            if path is not None:
                return MegaDetector(spec, _trusted(path, trust_checkpoint))
            if not hub_reachable("github.com"):
                raise WeightsNotFoundError(missing_weights_message(
                    f"megadetector:{spec.name}", [*looked, f"{url} (no network)"],
                    f"download {url.rsplit('/', 1)[-1]} from the MegaDetector releases and pass "
                    f"megadetector:/path/{url.rsplit('/', 1)[-1]}, or put it where the package "
                    "keeps its downloads, or use another detector, e.g. "
                    "yolox:/path/yolox_nano.onnx"))
            # The package downloads it (and checks its MD5) into its own cache.
            return MegaDetector(spec, _trusted(spec.name, trust_checkpoint))
        path = _require_file(spec, "Download md_v5a.0.0.pt from the MegaDetector releases and "
                                   "pass its path: megadetector:/path/md_v5a.0.0.pt")
        return MegaDetector(spec, _trusted(path, trust_checkpoint))


def _run_detector_module():
    """The megadetector package's ``run_detector``, imported quietly (YOLOv5 warns as it
    imports), or a :class:`SpecError` saying how to install it."""
    from kadr.core.models.upstream import quiet_upstream

    with quiet_upstream():
        try:
            from megadetector.detection import run_detector
        except ImportError as e:
            raise SpecError(
                f"megadetector: specs need the megadetector package and its YOLOv5 code ({e}): "
                "pip install 'kadr[megadetector]' && "
                "pip install --no-deps megadetector==10.0.28 yolov5==7.0.11") from e
    return run_detector


# The releases the megadetector package downloads by name, and their files (its
# run_detector.known_models; listed here so that `kadr models` need not import it).
MD_RELEASES = {"MDV5A": "md_v5a.0.0.pt", "MDV5B": "md_v5b.0.0.pt",
               **{f"MDV1000-{tree}": f"md_v1000.0.0-{tree}.pt"
                  for tree in ("redwood", "cedar", "larch", "sorrel", "spruce")}}


def md_download_folder() -> Path:
    """Where the megadetector package keeps the releases it downloads by name."""
    return Path(tempfile.gettempdir()) / "megadetector_models"


def release_checkpoint(name: str) -> tuple[str | None, list[str], str] | None:
    """A MegaDetector release name (``MDV5A``, ``MDV1000-redwood``; the package's own table
    of names) as (the local file, or None; where it was looked for; its download URL);
    None for a name that is no release (a path). Looked for where the package itself
    looks: an environment variable of that name, then the folder it downloads into."""
    run_detector = _run_detector_module()
    version = run_detector.model_string_to_model_version.get(name.lower(), name.lower())
    info = run_detector.known_models.get(version)
    if info is None:
        return None
    looked = []
    for var in dict.fromkeys((name, name.upper())):
        value = os.environ.get(var)
        if value and os.path.isfile(value):
            return value, looked, info["url"]
        looked.append(f"${var} ({'not a file: ' + value if value else 'not set'})")
    cached = md_download_folder() / info["url"].rsplit("/", 1)[-1]
    if cached.is_file():
        return str(cached), looked, info["url"]
    looked.append(str(cached))
    return None, looked, info["url"]


def _trusted(path: str, trust_checkpoint: bool) -> str:
    """MegaDetector v5 files are pickled YOLOv5 models: loading one runs code from the file."""
    if not trust_checkpoint and not path.lower().endswith(".onnx"):
        raise UnsafeCheckpointError(
            f"{path} is a pickled PyTorch checkpoint (MegaDetector v5): loading it runs code "
            "stored in the file. Pass --trust-checkpoint if it came from the MegaDetector "
            "releases or another source you trust.")
    return path


register_backend(YoloxBackend())
register_backend(MegaDetectorBackend())
