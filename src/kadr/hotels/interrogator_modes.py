"""clip-interrogator 0.6's four prompt modes, step for step, on kadr's models.

``kadr hotels caption --vocab generic`` runs these: given clip-interrogator's
tables (its ``data`` folder: artists, flavors, mediums, movements, negative;
the "trending on" table is built from its list of sites), each mode gives
the prompt clip-interrogator's ``interrogate_fast``, ``interrogate_classic``,
``interrogate`` and ``interrogate_negative`` give on the same caption, CLIP
model and photo. Its particulars are kept on purpose, since they decide
which phrases win: table embeddings rounded to float16, the chunked top-k
over tables larger than 2,048 phrases, truncation that tests each part
without its comma, the negative chain's unsigned first similarity, and the
final choice among caption, classic, fast and chained prompts.

Tables come from ``$KADR_CLIP_INTERROGATOR_DATA``, else the installed
``clip_interrogator`` package, else kadr's own small generic tables.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from kadr.core.text_cache import text_embeddings

DATA_ENV = "KADR_CLIP_INTERROGATOR_DATA"
SITES = ["Artstation", "behance", "cg society", "cgsociety", "deviantart", "dribble", "flickr",
         "instagram", "pexels", "pinterest", "pixabay", "pixiv", "polycount", "reddit",
         "shutterstock", "tumblr", "unsplash", "zbrush central"]
MERGED = ("artists", "flavors", "mediums", "movements", "trendings")
CHUNK_SIZE = 2048  # clip-interrogator's Config.chunk_size
INTERMEDIATE = 2048  # its flavor_intermediate_count: phrases the chains consider


def data_folder() -> Path:
    """Where the generic tables are read from (see the module's docstring)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    import importlib.util

    found = importlib.util.find_spec("clip_interrogator")  # located, not imported (it loads torch)
    if found is not None and found.origin:
        folder = Path(found.origin).parent / "data"
        if (folder / "flavors.txt").exists():
            return folder
    return Path(__file__).parent / "vocab"


def _lines(path: Path) -> list[str]:
    # clip-interrogator keeps every line, stripped (blank ones too).
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f.readlines()]


def load_tables(folder: Path | None = None) -> dict[str, list[str]]:
    """clip-interrogator's six tables, from its data files."""
    folder = Path(folder or data_folder())
    artists = _lines(folder / "artists.txt")
    trendings = [*SITES, *(f"trending on {s}" for s in SITES),
                 *(f"featured on {s}" for s in SITES), *(f"{s} contest winner" for s in SITES)]
    return {
        "artists": [f"by {a}" for a in artists] + [f"inspired by {a}" for a in artists],
        "flavors": _lines(folder / "flavors.txt"),
        "mediums": _lines(folder / "mediums.txt"),
        "movements": _lines(folder / "movements.txt"),
        "trendings": trendings,
        "negative": _lines(folder / "negative.txt"),
    }


def _top(img, embeds: np.ndarray, count: int, reverse: bool = False) -> list[int]:
    import torch

    count = min(count, len(embeds))
    sims = torch.from_numpy(img)[None] @ torch.from_numpy(embeds).T
    if reverse:
        sims = -sims
    return sims.float().topk(count, dim=-1).indices[0].tolist()


class InterrogatorModes:
    """The four modes for one CLIP model and one set of tables."""

    def __init__(self, clip, tables: dict[str, list[str]], chunk_size: int = CHUNK_SIZE,
                 intermediate: int = INTERMEDIATE):
        self.clip = clip
        self.labels = tables
        self.chunk_size = chunk_size  # its Config.chunk_size (smaller for low memory)
        self.intermediate = intermediate  # its Config.flavor_intermediate_count
        # Its tables are stored in float16 and ranked in float32.
        self.embeds = {name: text_embeddings(clip, labels).astype(np.float16).astype(np.float32)
                       for name, labels in tables.items()}

    # -- its primitives ------------------------------------------------------------------
    def rank(self, img: np.ndarray, tables: tuple[str, ...], count: int,
             reverse: bool = False) -> list[str]:
        labels = [p for t in tables for p in self.labels[t]]
        embeds = np.concatenate([self.embeds[t] for t in tables])
        size = self.chunk_size
        if len(labels) <= size:
            return [labels[i] for i in _top(img, embeds, count, reverse)]
        # Larger tables: the best of each chunk, then the best of those (not a global top-k).
        chunks = math.ceil(len(labels) / size)
        keep = int(size / chunks)
        kept = []
        for start in range(0, len(labels), size):
            stop = min(start + size, len(labels))
            kept += [start + i for i in _top(img, embeds[start:stop], keep, reverse)]
        return [labels[kept[i]] for i in _top(img, embeds[kept], count)]

    def similarities(self, img: np.ndarray, texts: list[str]) -> np.ndarray:
        return self.clip.encode_texts(texts, batch_size=max(1, len(texts))) @ img

    def rank_top(self, img: np.ndarray, texts: list[str], reverse: bool = False) -> str:
        sims = self.similarities(img, texts)
        return texts[int(np.argmax(-sims if reverse else sims))]

    def at_max_length(self, text: str) -> bool:
        return self.clip.count_tokens(text) >= self.clip.context_length

    def truncate(self, text: str) -> str:
        parts = text.split(", ")
        out = parts[0]
        for part in parts[1:]:
            if self.at_max_length(out + part):  # its test leaves out the ", "
                break
            out += ", " + part
        return out

    def chain(self, img, phrases: list[str], best_prompt: str = "", best_sim: float = 0.0,
              min_count: int = 8, max_count: int = 32, reverse: bool = False) -> str:
        phrases = list(dict.fromkeys(phrases))
        if not best_prompt:
            best_prompt = self.rank_top(img, phrases, reverse)
            best_sim = float(self.similarities(img, [best_prompt])[0])  # unsigned, as it does
            phrases.remove(best_prompt)
        current, current_sim = best_prompt, best_sim
        for idx in range(max_count):
            best = self.rank_top(img, [f"{current}, {f}" for f in phrases], reverse)
            flavour = best[len(current) + 2:]
            prompt = f"{current}, {flavour}"
            sim = float(self.similarities(img, [prompt])[0])
            sim = -sim if reverse else sim
            if sim > best_sim:
                best_prompt, best_sim = prompt, sim
            if not (sim > current_sim or idx < min_count):
                break
            current, current_sim = prompt, sim
            if self.at_max_length(current):
                break
            phrases.remove(flavour)
        return best_prompt

    # -- its four modes ------------------------------------------------------------------
    def fast(self, caption: str, img: np.ndarray, max_flavors: int = 32) -> str:
        return self.truncate(caption + ", " + ", ".join(self.rank(img, MERGED, max_flavors)))

    def classic(self, caption: str, img: np.ndarray, max_flavors: int = 3) -> str:
        medium = self.rank(img, ("mediums",), 1)[0]
        artist = self.rank(img, ("artists",), 1)[0]
        trending = self.rank(img, ("trendings",), 1)[0]
        movement = self.rank(img, ("movements",), 1)[0]
        flavours = ", ".join(self.rank(img, ("flavors",), max_flavors))
        if caption.startswith(medium):
            return self.truncate(f"{caption} {artist}, {trending}, {movement}, {flavours}")
        return self.truncate(f"{caption}, {medium} {artist}, {trending}, {movement}, {flavours}")

    def negative(self, img: np.ndarray, max_flavors: int = 32) -> str:
        flavours = self.rank(img, ("flavors",), self.intermediate, reverse=True)
        return self.chain(img, flavours + self.labels["negative"], max_count=max_flavors,
                          reverse=True)

    def best(self, caption: str, img: np.ndarray, min_flavors: int = 8,
             max_flavors: int = 32) -> str:
        flavours = self.rank(img, MERGED, self.intermediate)
        chained = self.chain(img, flavours, caption, float(self.similarities(img, [caption])[0]),
                             min_count=min_flavors, max_count=max_flavors)
        candidates = [caption, self.classic(caption, img, max_flavors),
                      self.fast(caption, img, max_flavors), chained]
        return candidates[int(np.argmax(self.similarities(img, candidates)))]

    def prompt(self, mode: str, caption: str, img: np.ndarray) -> str:
        """kadr's mode names: fast, classic, best (its ``interrogate``), negative."""
        if mode == "negative":
            return self.negative(img)
        return {"fast": self.fast, "classic": self.classic, "best": self.best}[mode](caption, img)
