"""Zero-shot class prompts: the seed's JSON file, plus templates, weights and a background class.

Two forms are read:

1. The seed's: ``{"Bear": ["a photo of a bear", ...], "Wolf": [...]}``.
2. The extended one::

       {"templates": ["a camera trap photo of a {}.", "an infrared night photo of a {}."],
        "classes": {
            "Bear": {"names": ["brown bear"], "prompts": ["a bear in the forest"],
                     "weight": 1.0, "scientific_name": "Ursus arctos"},
            "empty": {"background": true, "prompts": ["an empty forest clearing"]}}}

   Each name is expanded through every template; ``weight`` is a prior that
   multiplies the class probability; a ``background`` class absorbs photos
   that show no animal.

   A class may be named by its taxon (``{"taxon": "Vulpes vulpes", "common":
   "red fox"}``): its name is then the form BioCLIP was trained on, "Vulpes vulpes
   with common name red fox" (the taxon alone without ``common``), and its
   scientific name the taxon. ``"templates": "openai_imagenet"`` expands names with
   the 80 OpenAI ImageNet templates (open_clip's own list), as pybioclip's
   ``CustomLabelsClassifier`` does.

3. A checklist CSV (GBIF's species-list columns: ``scientificName`` and, when
   present, ``vernacularName``): a taxon class per row, with the OpenAI ImageNet
   templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOP_KEYS = {"templates", "classes", "background"}
CLASS_KEYS = {"prompts", "names", "weight", "scientific_name", "background", "taxon", "common"}
OPENAI_IMAGENET = "openai_imagenet"  # the templates' name in a prompt file
EXAMPLE = Path(__file__).parent / "data" / "priroda_prompts.json"


class PromptFileError(ValueError):
    pass


@dataclass
class ClassPrompts:
    name: str
    prompts: list[str]
    weight: float = 1.0
    scientific_name: str | None = None
    background: bool = False


@dataclass
class PromptSet:
    classes: list[ClassPrompts]
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def background(self) -> set[str]:
        return {c.name for c in self.classes if c.background}

    def scientific_names(self) -> dict[str, str]:
        return {c.name: c.scientific_name or c.name.replace("_", " ") for c in self.classes}

    def class_embeddings(self, model) -> np.ndarray:
        """Mean of each class's normalised prompt embeddings, renormalised [C, D] (cached)."""
        from kadr.core.text_cache import text_embeddings

        texts = [p for c in self.classes for p in c.prompts]
        vectors = text_embeddings(model, texts)
        out, i = [], 0
        for c in self.classes:
            v = vectors[i : i + len(c.prompts)].mean(0)
            out.append(v / max(np.linalg.norm(v), 1e-12))
            i += len(c.prompts)
        return np.stack(out).astype(np.float32)


def _as_list(value, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PromptFileError(f"{where}: expected a list of strings, got {value!r}")
    return [v.strip() for v in value if v.strip()]


def parse_prompts(data: dict, source: str = "") -> PromptSet:
    if not isinstance(data, dict) or not data:
        raise PromptFileError(f"{source}: a prompt file is a JSON object of classes")
    extended = "classes" in data
    if extended:
        unknown = set(data) - TOP_KEYS
        if unknown:
            raise PromptFileError(f"{source}: unknown key(s) {sorted(unknown)}; "
                                  f"allowed: {sorted(TOP_KEYS)}")
        templates = _templates(data.get("templates", []), source)
        raw_classes = data["classes"]
    else:
        templates, raw_classes = [], data
    background_name = data.get("background") if extended else None
    classes = []
    for name, spec in raw_classes.items():
        where = f"{source}: class {name!r}"
        if isinstance(spec, list | str):
            spec = {"prompts": spec}
        if not isinstance(spec, dict):
            raise PromptFileError(f"{where}: expected a list of prompts or an object")
        unknown = set(spec) - CLASS_KEYS
        if unknown:
            raise PromptFileError(f"{where}: unknown key(s) {sorted(unknown)}; "
                                  f"allowed: {sorted(CLASS_KEYS)}")
        names = _as_list(spec.get("names", []), f"{where} names")
        taxon = spec.get("taxon")
        if taxon is not None:
            if not isinstance(taxon, str) or not taxon.strip():
                raise PromptFileError(f"{where}: taxon must be a scientific name")
            names.append(taxon_label(taxon, spec.get("common")))
        elif "common" in spec:
            raise PromptFileError(f"{where}: 'common' names a taxon's common name: give 'taxon'")
        prompts = _as_list(spec.get("prompts", []), f"{where} prompts")
        prompts += [t(n) for t in templates for n in names]
        if not prompts:
            raise PromptFileError(f"{where} has no prompts: give 'prompts', or 'names' with "
                                  "'templates'")
        weight = float(spec.get("weight", 1.0))
        if weight <= 0:
            raise PromptFileError(f"{where}: weight must be positive")
        classes.append(ClassPrompts(
            name=name, prompts=list(dict.fromkeys(prompts)), weight=weight,
            scientific_name=spec.get("scientific_name") or (taxon.strip() if taxon else None),
            background=bool(spec.get("background")) or name == background_name,
        ))
    if len(classes) < 2:
        raise PromptFileError(f"{source}: zero-shot classification needs at least two classes")
    return PromptSet(classes, source)


def taxon_label(taxon: str, common: str | None = None) -> str:
    """A taxon's class text in BioCLIP's taxonomic-and-common form."""
    taxon = " ".join(taxon.split())
    return f"{taxon} with common name {' '.join(common.split())}" if common else taxon


def _templates(value, source: str) -> list:
    """A prompt file's templates as functions of a class name."""
    if value == OPENAI_IMAGENET:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    templates = _as_list(value, f"{source}: templates")
    for t in templates:
        if "{}" not in t:
            raise PromptFileError(f"{source}: template {t!r} has no {{}} for the class name "
                                  f"(or use \"templates\": \"{OPENAI_IMAGENET}\")")
    return [t.format for t in templates]


def checklist_prompts(path: str | Path) -> PromptSet:
    """A species checklist CSV (GBIF's columns ``scientificName``, ``vernacularName``) as
    taxon classes, named by the common name where there is one."""
    import pandas as pd

    table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                        sep="\t" if str(path).lower().endswith(".tsv") else ",")
    table.columns = [c.strip() for c in table.columns]
    if "scientificName" not in table:
        raise PromptFileError(f"{path}: a checklist needs a scientificName column; columns: "
                              f"{list(table.columns)}")
    classes = {}
    for i, row in enumerate(table.to_dict("records"), 2):
        taxon = row["scientificName"].strip()
        if not taxon:
            raise PromptFileError(f"{path}: line {i} has no scientificName")
        common = row.get("vernacularName", "").strip() or None
        name = common or taxon
        if name in classes:  # two taxa that share a common name stay two classes
            name = f"{name} ({taxon})"
        classes[name] = {"taxon": taxon, **({"common": common} if common else {})}
    return parse_prompts({"templates": OPENAI_IMAGENET, "classes": classes}, str(path))


def load_prompts(path: str | Path) -> PromptSet:
    if str(path).lower().endswith((".csv", ".tsv")):
        return checklist_prompts(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}: not valid JSON ({e})") from e
    return parse_prompts(data, str(path))


def classify(image_embeddings: np.ndarray, prompts: PromptSet, class_embeddings: np.ndarray,
             logit_scale: float) -> np.ndarray:
    """Class probabilities [N, C]: softmax of scaled cosine similarity, times class weights."""
    logits = logit_scale * image_embeddings @ class_embeddings.T
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits) * np.array([c.weight for c in prompts.classes], np.float32)
    return p / p.sum(1, keepdims=True)
