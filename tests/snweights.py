"""SpeciesNet model folders at seeded random weights, for parity tests and benches.

SpeciesNet ships as a folder that its ``ModelInfo`` reads: ``info.json`` names
the classifier (a whole pickled PyTorch module taking NHWC float photos in
[0, 1], 480x480; EfficientNetV2-M converted from Keras), its labels (one
7-part taxonomy string a line: ``uuid;class;order;family;genus;species;common
name``), the MegaDetector file, the taxonomy the rollups walk, and the
geofence rules. This writes the same files with the real architecture
(torchvision's EfficientNetV2-M behind a channels-last adapter) at random
weights, a small label set of real taxa, and a geofence with allow and block
rules, where kagglehub keeps a downloaded model when ``kaggle_handle`` is given.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

# The special labels are SpeciesNet's own (speciesnet.constants.Classification): the
# ensemble compares them as strings.
SPECIAL = [
    "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank",
    "1f689929-883d-4dae-958c-3d57ab5b6c16;;;;;;animal",
    "990ae9dd-7a59-4344-afcb-1b7b21368000;mammalia;primates;hominidae;homo;sapiens;human",
    "e2895ed5-780b-48f6-8a11-9e27cb594511;;;;;;vehicle",
    "f2efdae9-efb8-48fb-8a91-eccf79ab4ffb;no cv result;no cv result;no cv result;no cv result;"
    "no cv result;no cv result",
]
TAXA = [  # class;order;family;genus;species;common name
    "mammalia;carnivora;canidae;vulpes;vulpes;red fox",
    "mammalia;carnivora;canidae;canis;lupus;gray wolf",
    "mammalia;carnivora;ursidae;ursus;arctos;brown bear",
    "mammalia;cetartiodactyla;cervidae;capreolus;capreolus;western roe deer",
    "mammalia;cetartiodactyla;cervidae;alces;alces;moose",
    "mammalia;cetartiodactyla;suidae;sus;scrofa;wild boar",
    "mammalia;proboscidea;elephantidae;loxodonta;africana;african elephant",
    "mammalia;cetartiodactyla;bovidae;;;bovid family",
    "aves;;;;;bird",
]
ANCESTORS = [  # what the rollups climb to (in the taxonomy file, not the labels)
    "mammalia;carnivora;canidae;;;canine family",
    "mammalia;carnivora;ursidae;;;bear family",
    "mammalia;cetartiodactyla;cervidae;;;deer family",
    "mammalia;cetartiodactyla;suidae;;;pig family",
    "mammalia;proboscidea;elephantidae;;;elephant family",
    "mammalia;carnivora;;;;carnivorous mammal",
    "mammalia;cetartiodactyla;;;;even-toed ungulate",
    "mammalia;proboscidea;;;;proboscidean",
    "mammalia;;;;;mammal",
    "mammalia;carnivora;canidae;vulpes;;vulpes species",
    "mammalia;cetartiodactyla;cervidae;capreolus;;capreolus species",
]
GEOFENCE = {  # full class strings (the label without its uuid and common name)
    "mammalia;proboscidea;elephantidae;loxodonta;africana": {"allow": {"KEN": [], "TZA": []}},
    "mammalia;carnivora;canidae;vulpes;vulpes": {"block": {"AUS": []}},
    "mammalia;carnivora;ursidae;ursus;arctos": {"allow": {"RUS": [], "USA": ["AK", "MT"]}},
}


def _label(taxa: str) -> str:
    return f"{uuid.uuid5(uuid.NAMESPACE_URL, taxa)};{taxa}"


LABELS = SPECIAL + [_label(t) for t in TAXA]


def common_name(label: str) -> str:
    return label.split(";")[6]


def save_random_speciesnet(folder: Path, *, seed: int = 0, full_image: bool = False,
                           detector: Path | None = None, favour: dict[str, float] | None = None,
                           spread: float = 1.0) -> Path:
    """Write a SpeciesNet model folder at ``folder`` and return it.

    ``favour`` lifts the logits of labels named by common name (random weights give
    near-uniform scores, which would leave every crop "unknown"); ``spread`` scales the
    head so that scores differ from crop to crop. ``detector`` is a MegaDetector file
    to name in info.json (else a name that is not there: the classifier alone)."""
    import torch
    from torchvision.models import efficientnet_v2_m
    from torchvision.ops.misc import Permute

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = efficientnet_v2_m(num_classes=len(LABELS))
    with torch.no_grad():
        # Freshly initialised batch norms (running mean 0, variance 1) shrink the features
        # to ~1e-8 through 50 blocks: every crop would get the same scores. One pass in
        # training mode over random photos sets their statistics, as training would.
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # a plain average over the calibration pass
        net.train()(torch.rand(4, 3, 224, 224))
        net.eval()
        head = net.classifier[-1]
        head.weight.mul_(spread)
        for i, label in enumerate(LABELS):
            head.bias[i] = (favour or {}).get(common_name(label), 0.0)
    model = torch.nn.Sequential(Permute([0, 3, 1, 2]), net).eval()
    kind = "full_image" if full_image else "always_crop"
    classifier = f"{kind}_model.pt"
    torch.save(model, folder / classifier)
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    taxonomy = LABELS + [_label(t) for t in ANCESTORS]
    (folder / "taxonomy_release.txt").write_text("\n".join(taxonomy) + "\n")
    (folder / "geofence_release.json").write_text(json.dumps(GEOFENCE))
    if detector is not None:
        (folder / detector.name).write_bytes(detector.read_bytes())
    (folder / "info.json").write_text(json.dumps({
        "version": "4.0.3a-random" if not full_image else "4.0.3b-random", "type": kind,
        "classifier": classifier, "classifier_labels": "labels.txt",
        "detector": detector.name if detector is not None else "md_v5a.0.0.pt",
        "taxonomy": "taxonomy_release.txt", "geofence": "geofence_release.json"}, indent=1))
    return folder


def kaggle_folder(cache: Path, handle: str) -> Path:
    """Where kagglehub keeps model ``handle`` under cache folder ``cache`` (its
    ``KAGGLEHUB_CACHE``): models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION."""
    return cache.joinpath("models", *handle.split("/"))


def mark_kaggle_complete(cache: Path, handle: str) -> None:
    """kagglehub's own marker of a finished download, which its cache lookup needs."""
    import os

    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    old = os.environ.get("KAGGLEHUB_CACHE")
    os.environ["KAGGLEHUB_CACHE"] = str(cache)
    try:
        Cache().mark_as_complete(parse_model_handle(handle))
    finally:
        if old is None:
            del os.environ["KAGGLEHUB_CACHE"]
        else:
            os.environ["KAGGLEHUB_CACHE"] = old
