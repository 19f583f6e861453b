"""SpeciesNet's labels as kadr names them: 7-part taxonomy strings
(``uuid;class;order;family;genus;species;common name``) to a class name, a scientific
name and rank, and a Camtrap DP observation type. Plain string work (no model)."""

from __future__ import annotations

from kadr.traps.tables import EMPTY

RANKS = ("class", "order", "family", "genus", "species")
# The labels with a meaning of their own (SpeciesNet's constants.Classification), by
# their common-name part.
SPECIAL_TYPES = {"blank": "blank", "animal": "animal", "human": "human",
                 "vehicle": "vehicle", "no cv result": "unknown"}


def _parts(label: str) -> list[str]:
    parts = label.split(";")
    if len(parts) != 7:
        raise ValueError(f"not a SpeciesNet label (7 parts separated by ';'): {label!r}")
    return parts


def class_name(label: str) -> str:
    """The class a label gives a photo or box: its common name; a blank is kadr's empty
    class, SpeciesNet's "no cv result" is "unknown"."""
    common = _parts(label)[6].strip()
    kind = SPECIAL_TYPES.get(common)
    if kind == "blank":
        return EMPTY
    return "unknown" if kind == "unknown" else common


def scientific_name(label: str) -> tuple[str, str] | None:
    """(scientific name, rank) of the lowest rank a label names: "Vulpes vulpes" species,
    "Cervidae" family; None for a label without a taxon (blank, animal, vehicle)."""
    parts = _parts(label)
    if SPECIAL_TYPES.get(parts[6].strip()) in ("blank", "vehicle", "unknown", "animal"):
        return None
    taxa = [p.strip() for p in parts[1:6]]
    if taxa[4] and taxa[3]:
        return f"{taxa[3].capitalize()} {taxa[4]}", "species"
    for rank, name in zip(reversed(RANKS[:4]), reversed(taxa[:4]), strict=True):
        if name:
            return name.capitalize(), rank
    return None


def observation_type(label: str) -> str:
    """Camtrap DP's observationType for a label: human, vehicle, blank, unknown or animal."""
    return SPECIAL_TYPES.get(_parts(label)[6].strip(), "animal")
