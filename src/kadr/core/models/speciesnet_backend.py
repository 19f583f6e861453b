"""``speciesnet:MODEL``: SpeciesNet's classifier, a fixed-label image classifier, through
the ``speciesnet`` package's own loading and preprocessing.

MODEL is what the package itself takes (a local model folder, ``kaggle:HANDLE`` or
``hf:REPO``) or a release name (``v4.0.3a``: ``kaggle:google/speciesnet/pyTorch/v4.0.3a/1``).
kadr finds the folder first, offline where it can (kagglehub's and the Hugging Face
cache), so that a missing model is refused at once with where it was looked for instead
of a download that hangs; the package then loads it from that folder. Its labels are
7-part taxonomy strings (``uuid;class;order;family;genus;species;common name``); what
turns them into one class per animal (the ensemble with the detector, the geofence, the
rollups) belongs to the camera-trap workflow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kadr.core.models.factory import KnownModel, register_backend
from kadr.core.models.spec import ModelSpec, SpecError
from kadr.core.models.weights import (
    UnsafeCheckpointError,
    WeightsNotFoundError,
    hf_cached_file,
    hub_reachable,
    hub_repo_folder,
    missing_weights_message,
)

KAGGLE = "google/speciesnet/pyTorch"
# The package's own releases (speciesnet.SUPPORTED_MODELS); "a" classifies each detection's
# crop, "b" the whole photo.
RELEASES = {"v4.0.3a": f"{KAGGLE}/v4.0.3a/1", "v4.0.3b": f"{KAGGLE}/v4.0.3b/1"}
INSTALL_HINT = ("pip install 'kadr[speciesnet]' && pip install --no-deps speciesnet==5.0.6 "
                "yolov5==7.0.11")


@dataclass
class SpeciesNetModel:
    """SpeciesNet's classifier as loaded by the package, with where it came from."""

    spec: ModelSpec
    folder: Path  # the model folder (info.json and the files it names)
    classifier: Any  # speciesnet.classifier.SpeciesNetClassifier
    labels: list[str] = field(default_factory=list)
    notes: tuple[str, ...] = ()

    @property
    def whole_image(self) -> bool:
        """A classifier of whole photos (one per photo) rather than of detections' crops."""
        return self.classifier.model_info.type_ == "full_image"

    @property
    def version(self) -> str:
        return self.classifier.model_info.version

    @property
    def device(self) -> str:
        return self.classifier.device

    @property
    def detector_file(self) -> Path:
        """The MegaDetector file the folder's info.json names (SpeciesNet's own detector)."""
        return Path(self.classifier.model_info.detector)

    def preprocess(self, image, boxes: list[tuple[float, float, float, float]]) -> list:
        """The package's own crops of ``image`` (an upright RGB PIL image) for the given
        normalised [x, y, w, h] boxes, or its one whole-photo crop; uint8 HWC arrays."""
        from speciesnet.utils import BBox

        return self.classifier.preprocess(image, bboxes=[BBox(*b) for b in boxes])

    def predict(self, crops_per_photo: list[list], top_k: int) -> list[list[dict]]:
        """The top ``top_k`` labels and scores of each crop (``{"classes", "scores"}``),
        a list per photo, from the package's own batch call."""
        keys = [str(i) for i in range(len(crops_per_photo))]
        out = self.classifier.batch_predict(keys, crops_per_photo, num_classes=top_k)
        return [r.get("classifications_list", []) for r in out]


def _check_installed() -> None:
    """Refuse at once when the package is absent, without importing it (its import loads
    torch, torchvision and YOLOv5: seconds, spent only once the model is known here)."""
    from importlib.util import find_spec

    missing = [name for name in ("speciesnet", "kagglehub") if find_spec(name) is None]
    if missing:
        raise SpecError(f"speciesnet: specs need {' and '.join(missing)}: {INSTALL_HINT}")


def _speciesnet_module():
    try:
        import speciesnet.classifier
    except ImportError as e:
        raise SpecError(f"speciesnet: specs need the speciesnet package ({e}): "
                        f"{INSTALL_HINT}") from e
    return speciesnet.classifier


def kaggle_cached(handle: str) -> tuple[Path | None, Path]:
    """kagglehub's cached copy of model ``handle`` (OWNER/MODEL/FRAMEWORK/VARIATION/VERSION):
    (the folder when its download finished, else None; where it would be)."""
    from kagglehub.cache import Cache, get_cached_path
    from kagglehub.handle import parse_model_handle

    parsed = parse_model_handle(handle)
    if parsed.version is None:
        raise SpecError(f"speciesnet:kaggle:{handle} names no version: add it "
                        f"(e.g. {RELEASES['v4.0.3a']})")
    found = Cache().load_from_cache(parsed)
    return (Path(found) if found else None), Path(get_cached_path(parsed))


def model_folder(name: str) -> Path:
    """The local folder SpeciesNet model ``name`` is in, downloading it only when the
    source can be reached; :class:`WeightsNotFoundError` otherwise."""
    name = RELEASES.get(name, name)
    if name in RELEASES.values():
        name = f"kaggle:{name}"
    if name.startswith("kaggle:"):
        handle = name[len("kaggle:"):]
        found, where = kaggle_cached(handle)
        if found is None:
            if not hub_reachable("www.kaggle.com"):
                raise WeightsNotFoundError(missing_weights_message(
                    f"speciesnet:{name}", [f"{where} (kagglehub's cache, $KAGGLEHUB_CACHE)"],
                    f"on a machine with the internet run python -c \"import kagglehub; "
                    f"kagglehub.model_download('{handle}')\" and copy its cache folder, or "
                    "pass the model folder: speciesnet:/path/to/folder"))
            import kagglehub

            found = Path(kagglehub.model_download(handle))
        return found
    if name.startswith("hf:"):
        repo = name[len("hf:"):]
        cached = hf_cached_file(repo, ("info.json",))
        if cached:
            return Path(cached).parent
        if not hub_reachable():
            raise WeightsNotFoundError(missing_weights_message(
                f"speciesnet:{name}", [str(hub_repo_folder(repo))],
                f"huggingface-cli download {repo} on a machine with the internet and copy the "
                "cache, or pass the model folder: speciesnet:/path/to/folder"))
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo))
    folder = Path(os.path.expanduser(name))
    if not (folder / "info.json").is_file():
        raise WeightsNotFoundError(
            f"speciesnet:{name}: {folder} is not a SpeciesNet model folder (no info.json). "
            f"Give a folder, kaggle:HANDLE, hf:REPO or a release ({', '.join(RELEASES)}).")
    return folder


def detector_path(folder: Path, info: dict) -> Path:
    """The MegaDetector file a model folder's info.json names; one named by URL is where
    the package saves its download (the URL, sanitised, in the folder)."""
    detector = str(info.get("detector", ""))
    if detector.startswith(("http://", "https://")):
        detector = detector.split("?")[0].replace(":", "_").replace("/", "_")
    return folder / detector


def check_folder(folder: Path) -> dict:
    """The folder's info.json, refused when a file it names is missing. The package would
    download a detector named by URL while loading the classifier: here that is said
    instead, with where the file goes."""
    info = json.loads((folder / "info.json").read_text())
    for key in ("classifier", "classifier_labels", "taxonomy", "geofence"):
        if not (folder / str(info.get(key, ""))).is_file():
            raise WeightsNotFoundError(f"SpeciesNet model folder {folder}: its {key} file "
                                       f"{info.get(key)!r} (named in info.json) is missing")
    url = str(info.get("detector", ""))
    local = detector_path(folder, info)
    if url.startswith(("http://", "https://")) and not local.is_file() \
            and not hub_reachable("github.com"):
        raise WeightsNotFoundError(
            f"SpeciesNet model folder {folder} names its detector by URL ({url}) and it has "
            f"not been downloaded: put that file at {local}.")
    return info


class SpeciesNetBackend:
    name = "speciesnet"
    kind = "classifier"  # fixed labels (no prompts): a label and score per crop
    family = "conv"  # --precision: an EfficientNet, decided as kadr's convolution stacks are
    help = ("SpeciesNet classifiers (Google's camera-trap species model, 2,000+ labels, "
            f"geofenced); MODEL: a release ({', '.join(RELEASES)}), kaggle:HANDLE, hf:REPO or "
            f"a model folder. Needs {INSTALL_HINT}; code and models Apache-2.0")

    def known(self) -> list[KnownModel]:
        models = []
        for release, handle in RELEASES.items():
            try:
                found, where = kaggle_cached(handle)
            except ImportError:
                found, where = None, Path("~/.cache/kagglehub/models", handle)
            looks_at = "each detection's crop" if release.endswith("a") else "whole photos"
            models.append(KnownModel(f"speciesnet:{release}", self.kind,
                                     f"SpeciesNet {release} ({looks_at}), with its geofence "
                                     "and taxonomy", str(where), found is not None))
        return models

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> SpeciesNetModel:
        _check_installed()
        folder = model_folder(spec.name)
        info = check_folder(folder)
        if not trust_checkpoint:
            raise UnsafeCheckpointError(
                f"{folder / info['classifier']} is a pickled PyTorch model (SpeciesNet): "
                "loading it runs code stored in the file. Pass --trust-checkpoint if it came "
                "from SpeciesNet's releases or another source you trust.")
        from kadr.core.models.device import run_in, torch_device, torch_dtype
        from kadr.core.models.upstream import quiet_upstream

        with quiet_upstream():
            classifier = _speciesnet_module().SpeciesNetClassifier(
                str(folder), device=str(torch_device()))
        # The package's batch call feeds float32 crops and reads float32 logits: at bf16
        # (--precision auto on a CPU with native bf16) the weights change, not the calls.
        run_in(classifier.model, torch_dtype(torch_device(), self.family))
        labels = [classifier.labels[i] for i in range(len(classifier.labels))]
        return SpeciesNetModel(spec, folder, classifier, labels,
                               notes=(f"SpeciesNet {classifier.model_info.version} from {folder}",))


register_backend(SpeciesNetBackend())
