"""Hotel photo sources: a plain folder, a manifest, or a Hotels-50K folder laid out by its tools.

A Hotels-50K root is recognised by ``input/train_set.csv``; its photos are
expected at ``images/train/<chain_id>/<hotel_id>/<image_source>/<image_id>.jpg``
(the layout its downloader writes). The tables are joined into one manifest
(one row per train_set row, so repeated image ids stay visible) that the core
collection reads like any other.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from kadr.core.collection import PhotoCollection
from kadr.core.store import atomic_write_text


def is_hotels50k(root: str | Path) -> bool:
    return (Path(root) / "input" / "train_set.csv").is_file()


def hotels50k_manifest(root: str | Path) -> pd.DataFrame:
    """train_set joined with hotel_info and chain_info, with the expected photo path."""
    root = Path(root).resolve()  # the manifest lives elsewhere: its paths must not be relative
    train = pd.read_csv(root / "input" / "train_set.csv", dtype=str, skipinitialspace=True)
    train.columns = [c.strip() for c in train.columns]
    hotels_path = root / "input" / "hotel_info.csv"
    chains_path = root / "input" / "chain_info.csv"
    if hotels_path.exists():
        hotels = pd.read_csv(hotels_path, dtype=str)
        train = train.merge(hotels, on="hotel_id", how="left")
    if chains_path.exists() and "chain_id" in train:
        chains = pd.read_csv(chains_path, dtype=str)
        train = train.merge(chains, on="chain_id", how="left")
    if "chain_id" not in train:  # no hotel table: each hotel's chain folder as it is on disk
        train["chain_id"] = train["hotel_id"].map(_chain_folders(root / "images" / "train"))
    chain = train["chain_id"].fillna("unknown")
    train["path"] = [
        os.path.join(str(root), "images", "train", c, h, s, f"{i}.jpg")
        for c, h, s, i in zip(chain, train["hotel_id"], train["image_source"], train["image_id"],
                              strict=True)
    ]
    return train


def hotel_collection(source: str, out_dir: Path, path_column: str | None = None,
                     group_column: str | None = None) -> tuple[PhotoCollection, str]:
    """A collection for any hotel source; returns it and a word for what it was."""
    if os.path.isdir(source) and is_hotels50k(source):
        manifest = hotels50k_manifest(source)
        path = out_dir / "hotels50k_manifest.csv"
        atomic_write_text(path, manifest.to_csv(index=False))
        return PhotoCollection(path, group_column=group_column or "hotel_id"), "hotels50k"
    kind = "manifest" if os.path.isfile(source) else "folder"
    return PhotoCollection(source, path_column=path_column, group_column=group_column), kind


def _chain_folders(train_dir: Path) -> dict[str, str]:
    """hotel_id -> the chain folder holding it (``images/train/<chain>/<hotel>``): two
    directory levels, one listing per chain, not a walk over the photos."""
    found: dict[str, str] = {}
    if not train_dir.is_dir():
        return found
    for chain in os.scandir(train_dir):
        if chain.is_dir():
            for hotel in os.scandir(chain.path):
                if hotel.is_dir():
                    found.setdefault(hotel.name, chain.name)
    return found
