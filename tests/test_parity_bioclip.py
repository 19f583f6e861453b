"""Taxonomic prompts through kadr against pybioclip's own CustomLabelsClassifier, on the
same BioCLIP repo (seeded random ViT-B-16 weights in a hub-shaped cache) and photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kadr.core.models import load_model
from kadr.traps.prompts import classify, load_prompts, parse_prompts, taxon_label
from tests.helpers import need_module
from tests.hubcache import parity_photos
from tests.test_parity_open_clip import cached_hub_repo

REPO = "imageomics/bioclip"
TAXA = {"red fox": {"taxon": "Vulpes vulpes", "common": "red fox"},
        "wild boar": {"taxon": "Sus scrofa", "common": "wild boar"},
        "roe deer": {"taxon": "Capreolus capreolus", "common": "roe deer"},
        "Mustelidae": {"taxon": "Mustelidae"}}


def test_taxon_classes_are_named_as_bioclip_was_trained():
    prompts = parse_prompts({"templates": ["a camera trap photo of {}."], "classes": TAXA})
    fox = prompts.classes[0]
    assert fox.prompts == ["a camera trap photo of Vulpes vulpes with common name red fox."]
    assert fox.scientific_name == "Vulpes vulpes"
    assert prompts.classes[3].prompts == ["a camera trap photo of Mustelidae."]
    assert len(parse_prompts({"templates": "openai_imagenet", "classes": TAXA})
               .classes[0].prompts) == 80


def test_a_gbif_checklist_is_a_class_list(tmp_path):
    path = tmp_path / "checklist.tsv"
    path.write_text("taxonKey\tscientificName\tvernacularName\ttaxonRank\n"
                    "5219243\tVulpes vulpes\tred fox\tSPECIES\n"
                    "7705930\tSus scrofa\twild boar\tSPECIES\n"
                    "5219234\tCanis lupus\t\tSPECIES\n")
    prompts = load_prompts(path)
    assert prompts.names == ["red fox", "wild boar", "Canis lupus"]
    assert prompts.classes[0].prompts[0] == "a bad photo of a Vulpes vulpes with common name red fox."
    assert prompts.scientific_names()["red fox"] == "Vulpes vulpes"


@pytest.mark.slow
def test_probabilities_match_pybioclip(offline_hub, tmp_path, monkeypatch):
    import open_clip as oc

    bioclip = need_module("bioclip")
    cached_hub_repo(offline_hub, oc, REPO, "ViT-B-16", tmp_path, {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bilinear", "resize_mode": "squash"})
    monkeypatch.setattr(torch, "compile", lambda model, **_: model)  # same numbers, no compiler
    monkeypatch.setenv("KADR_CACHE", str(tmp_path / "cache"))
    images = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in parity_photos()[:4]]
    labels = [taxon_label(v["taxon"], v.get("common")) for v in TAXA.values()]
    reference = bioclip.CustomLabelsClassifier(labels, model_str=f"hf-hub:{REPO}")
    want = np.zeros((len(images), len(labels)))
    for row in reference.predict(images):
        want[int(row["file_name"]), labels.index(row["classification"])] = row["score"]

    model = load_model(f"open_clip:hf-hub:{REPO}")
    prompts = parse_prompts({"templates": "openai_imagenet", "classes": TAXA})
    classes = prompts.class_embeddings(model)
    np.testing.assert_allclose(classes, reference.txt_embeddings.T.numpy(), atol=1e-5)
    # The same pixels: pybioclip's own transform of each photo, through kadr's model.
    same_pixels = model.encode_images([reference.preprocess(im).numpy() for im in images])
    got = classify(same_pixels, prompts, classes, model.logit_scale)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # kadr's own preprocessing follows the repo's config (squash, bilinear, on the photo)
    # where pybioclip resizes the float tensor: the probabilities stay within 5e-4.
    own = classify(model.encode_images([model.prepare_image(im) for im in images]), prompts,
                   classes, model.logit_scale)
    np.testing.assert_allclose(own, want, atol=5e-4)
