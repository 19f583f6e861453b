"""``kadr hotels caption``: the CLIP Interrogator algorithm over a whole collection.

A caption model writes a base sentence; CLIP ranks vocabulary phrases
against the photo and the best are appended. Modes, as in
clip-interrogator:

- ``fast``: the caption plus the top phrases of all chosen tables by
  similarity, up to CLIP's token limit;
- ``classic``: the caption plus the best phrase of each table (room type,
  style, lighting, ...), then the top three of the rest;
- ``best``: greedy chaining: starting from the caption, repeatedly append the
  candidate phrase that raises the text-image similarity most, stopping when
  it no longer rises or the prompt reaches the token limit; every step
  encodes all candidates of all photos in one text batch;
- ``negative``: the phrases least like the photo (a negative prompt).

Vocabularies are plain text files (one phrase per line, # comments) in named
tables. Domain tables (hotel) are the default: the seed found that phrases
from unrelated domains make captions worse. Tables can be chosen, combined
(``--vocab hotel,mediums``) and filtered (``--include``/``--exclude``
regexes). Phrase embeddings are cached per (model, table content).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from kadr.core.decode import DecodedPhoto
from kadr.core.models import load_model
from kadr.core.models.device import computes_on_cpu
from kadr.core.models.factory import model_fingerprint
from kadr.core.remote import staged
from kadr.core.runner import Job, RunOptions, WorkflowResult, run_workflow
from kadr.core.status import PhotoStatus
from kadr.core.store import (
    CsvAppender,
    atomic_open,
    atomic_write_table,
    atomic_write_text,
    output_folder,
    shard_files,
)
from kadr.core.text_cache import text_embeddings
from kadr.embed import read_text_lines

VOCAB_DIR = Path(__file__).parent / "vocab"
GROUPS = {
    "hotel": ["room_types", "furniture", "materials", "colours", "lighting", "styles", "views",
              "faults"],
    "generic": ["mediums", "movements", "flavors"],
}
GROUPS["all"] = GROUPS["hotel"] + GROUPS["generic"]
# --vocab generic runs clip-interrogator's own modes on its tables (kadr.hotels.interrogator_modes).
INTERROGATOR_VOCAB = "generic"
FAULTS = "faults"
FAULT_ANCHOR = "a sharp, well exposed, upright photo"
MODES = ("fast", "classic", "best", "negative")


@dataclass
class Vocabulary:
    tables: dict[str, list[str]]

    @property
    def phrases(self) -> list[tuple[str, str]]:
        return [(t, p) for t, ps in self.tables.items() for p in ps]


def load_vocabulary(spec: str = "hotel", include: str | None = None,
                    exclude: str | None = None) -> Vocabulary:
    """Tables named by group (hotel, generic, all), table name, or path to a .txt file."""
    tables: dict[str, list[str]] = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        names = GROUPS.get(item, [item])
        for name in names:
            path = Path(name) if name.endswith(".txt") else VOCAB_DIR / f"{name}.txt"
            if not path.exists():
                known = ", ".join(sorted(GROUPS) + sorted(p.stem for p in VOCAB_DIR.glob("*.txt")))
                raise ValueError(f"unknown vocabulary {name!r}; known: {known}, or a .txt path")
            phrases = _filtered(read_text_lines(str(path)), include, exclude)
            if phrases:
                tables[path.stem] = phrases
    if not tables:
        raise ValueError(f"vocabulary {spec!r} with the given filters holds no phrases")
    return Vocabulary(tables)


def _filtered(phrases: list[str], include: str | None, exclude: str | None) -> list[str]:
    if include:
        phrases = [p for p in phrases if re.search(include, p, re.I)]
    if exclude:
        phrases = [p for p in phrases if not re.search(exclude, p, re.I)]
    return phrases


@dataclass
class Interrogator:
    clip: object  # ImageTextModel
    vocab: Vocabulary
    mode: str = "best"
    max_phrases: int = 8
    candidates: int = 32
    table_embeddings: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        for name, phrases in self.vocab.tables.items():
            self.table_embeddings[name] = text_embeddings(self.clip, phrases)
        self.anchor = text_embeddings(self.clip, [FAULT_ANCHOR])[0]

    # -- ranking as matrix products ------------------------------------------
    def _scores(self, img: np.ndarray, tables: list[str]) -> tuple[list[str], np.ndarray]:
        phrases = [p for t in tables for p in self.vocab.tables[t]]
        emb = np.concatenate([self.table_embeddings[t] for t in tables])
        return phrases, img @ emb.T  # [N, P]

    def _faults(self, img: np.ndarray) -> list[list[tuple[str, float]]]:
        """Fault phrases that beat the 'sharp, upright photo' anchor, per photo."""
        if FAULTS not in self.vocab.tables:
            return [[] for _ in range(len(img))]
        phrases, s = self._scores(img, [FAULTS])
        anchor = img @ self.anchor
        return [[(phrases[j], float(s[i, j])) for j in np.argsort(-s[i]) if s[i, j] > anchor[i]][:2]
                for i in range(len(img))]

    def _fit(self, caption: str, phrases: list[tuple[str, float]]) -> tuple[str, list]:
        """Append phrases to the caption while the prompt stays within CLIP's token limit."""
        prompt, kept = caption, []
        for p, s in phrases:
            candidate = f"{prompt}, {p}" if prompt else p
            if self.clip.count_tokens(candidate) > self.clip.context_length:
                break
            prompt, kept = candidate, [*kept, (p, s)]
        return prompt, kept

    def interrogate(self, captions: list[str], img: np.ndarray) -> list[dict]:
        tables = [t for t in self.vocab.tables if t != FAULTS]
        faults = self._faults(img)
        if self.mode == "best":
            chains = self.best_chain(captions, img, tables)
        else:
            chains = []
            phrases, s = self._scores(img, tables) if tables else ([], np.zeros((len(img), 0)))
            for i in range(len(img)):
                if self.mode == "negative":
                    order = np.argsort(s[i])[: self.max_phrases]
                    chains.append([(phrases[j], float(s[i, j])) for j in order])
                elif self.mode == "fast":
                    order = np.argsort(-s[i])[: self.max_phrases * 4]
                    chains.append([(phrases[j], float(s[i, j])) for j in order])
                else:  # classic: the best of each table, then the best three of the rest
                    picked, offset = [], 0
                    for t in tables:
                        n = len(self.vocab.tables[t])
                        j = offset + int(np.argmax(s[i, offset:offset + n]))
                        picked.append((phrases[j], float(s[i, j])))
                        offset += n
                    used = {p for p, _ in picked}
                    rest = [(phrases[j], float(s[i, j])) for j in np.argsort(-s[i])
                            if phrases[j] not in used][:3]
                    chains.append(picked + rest)
        out = []
        for cap, chain, fault in zip(captions, chains, faults, strict=True):
            if self.mode == "negative":
                prompt, kept = self._fit("", chain)
            else:
                prompt, kept = self._fit(cap, [*fault, *chain] if self.mode != "best" else chain)
                if self.mode == "best" and fault:
                    prompt, extra = self._fit(prompt, fault)
                    kept += extra
            out.append({"prompt": prompt, "phrases": [[p, round(s, 4)] for p, s in kept]})
        return out

    def best_chain(self, captions: list[str], img: np.ndarray, tables: list[str]) -> list[list]:
        """Greedy chaining, batched over photos and candidates: one text batch per step."""
        phrases, s = self._scores(img, tables)
        n = len(captions)
        cands = [[phrases[j] for j in np.argsort(-s[i])[: self.candidates]] for i in range(n)]
        prompts = list(captions)
        # Captions change every batch: encoded directly, not cached (the cache is for vocabularies).
        best_sim = np.einsum("nd,nd->n", self.clip.encode_texts(prompts), img)
        chains: list[list] = [[] for _ in range(n)]
        active = set(range(n))
        for _ in range(self.max_phrases):
            batch, owner = [], []
            for i in sorted(active):
                for c in cands[i]:
                    text = f"{prompts[i]}, {c}"
                    if self.clip.count_tokens(text) <= self.clip.context_length:
                        batch.append((i, c, text))
                        owner.append(i)
            if not batch:
                break
            emb = self.clip.encode_texts([t for _, _, t in batch])
            sims = np.einsum("nd,nd->n", emb, img[np.array(owner)])
            still = set()
            for i in sorted(active):
                idx = [k for k, o in enumerate(owner) if o == i]
                if not idx:
                    continue
                k = max(idx, key=lambda k: sims[k])
                if sims[k] > best_sim[i]:
                    _, c, text = batch[k]
                    prompts[i], best_sim[i] = text, sims[k]
                    chains[i].append((c, float(sims[k])))
                    cands[i].remove(c)
                    still.add(i)
            active = still
            if not active:
                break
        return chains

    def best_chain_plain(self, caption: str, img: np.ndarray, tables: list[str]) -> list:
        """The same chaining one phrase at a time (the baseline the bench compares against)."""
        phrases, s = self._scores(img[None], tables)
        cands = [phrases[j] for j in np.argsort(-s[0])[: self.candidates]]
        prompt = caption
        best = float(self.clip.encode_texts([prompt])[0] @ img)
        chain = []
        for _ in range(self.max_phrases):
            scored = [(float(self.clip.encode_texts([f"{prompt}, {c}"])[0] @ img), c)
                      for c in cands
                      if self.clip.count_tokens(f"{prompt}, {c}") <= self.clip.context_length]
            if not scored:
                break
            top, c = max(scored)
            if top <= best:
                break
            prompt, best = f"{prompt}, {c}", top
            chain.append((c, top))
            cands.remove(c)
        return chain


@dataclass(kw_only=True)
class CaptionSettings(RunOptions):
    captioner: str = "hf-caption:Salesforce/blip-image-captioning-large"
    clip: str = "open_clip:ViT-L-14@openai"
    vocab: str = "hotel"
    include: str | None = None
    exclude: str | None = None
    mode: str = "best"
    max_phrases: int = 8
    candidates: int = 2048  # --vocab generic: phrases the chains consider (its intermediate count)
    rank_chunk: int = 2048  # --vocab generic: its chunk size for ranking large tables
    batch_size: int = 16
    write_txt: bool = False
    trust_checkpoint: bool = False


def caption_vocabulary(settings: CaptionSettings) -> Vocabulary:
    """The phrase tables a run uses (no model is needed to read them)."""
    if settings.vocab == INTERROGATOR_VOCAB:
        from kadr.hotels.interrogator_modes import load_tables

        return Vocabulary({name: _filtered(phrases, settings.include, settings.exclude)
                           for name, phrases in load_tables().items()})
    return load_vocabulary(settings.vocab, settings.include, settings.exclude)


def caption_fingerprint(settings: CaptionSettings, vocab: Vocabulary) -> dict:
    """Everything that changes the captions and prompts, from the settings and tables alone."""
    s = settings
    generic = s.vocab == INTERROGATOR_VOCAB
    return {"job": "caption", "captioner": model_fingerprint(s.captioner), "max_tokens": 30,
            "decoding": "greedy", "clip": model_fingerprint(s.clip), "mode": s.mode,
            "max_phrases": s.max_phrases,
            "modes": ("clip-interrogator 0.6", s.candidates, s.rank_chunk) if generic else "kadr",
            "vocab": hashlib.sha256(json.dumps(vocab.tables, sort_keys=True).encode())
            .hexdigest()[:16]}


class CaptionJob:
    """The per-photo work of ``hotels caption``: models loaded once per process (or Ray actor)."""

    def __init__(self, settings: CaptionSettings):
        self.s = settings
        self.captioner = load_model(settings.captioner, kind="captioner",
                                    trust_checkpoint=settings.trust_checkpoint)
        self.clip = load_model(settings.clip, kind="image-text",
                               trust_checkpoint=settings.trust_checkpoint)
        self.vocab = caption_vocabulary(settings)
        self.modes = None
        if settings.vocab == INTERROGATOR_VOCAB:
            from kadr.hotels.interrogator_modes import InterrogatorModes

            if settings.mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}")
            self.modes = InterrogatorModes(self.clip, self.vocab.tables, settings.rank_chunk,
                                           settings.candidates)
        else:
            self.interrogator = Interrogator(self.clip, self.vocab, settings.mode,
                                             settings.max_phrases)
        self.side = max(self.captioner.image_size, self.clip.image_size)

    def prepare(self, photo: DecodedPhoto):
        img = photo.image
        if min(img.size) > 2 * self.side:
            img = img.copy()
            img.thumbnail((4 * self.side, 4 * self.side), Image.Resampling.BILINEAR)
        return img, self.clip.prepare_image(img)

    def process(self, inputs: list, rows: list[dict]) -> list[dict]:
        if not inputs:
            return []
        captions = self.captioner.caption([im for im, _ in inputs])
        emb = self.clip.encode_images([a for _, a in inputs])
        if self.modes is not None:
            results = []
            for caption, img in zip(captions, emb, strict=True):
                prompt = self.modes.prompt(self.s.mode, caption, img)
                added = prompt[len(caption) + 2:] if prompt.startswith(caption + ", ") else prompt
                results.append({"prompt": prompt,
                                "phrases": [[p, None] for p in added.split(", ") if p]})
        else:
            results = self.interrogator.interrogate(captions, emb)
        return [{"caption": c, "phrases": json.dumps(r["phrases"]), "prompt": r["prompt"]}
                for c, r in zip(captions, results, strict=True)]

    def job(self) -> Job:
            return Job("caption", self.prepare, self.process, min_side=self.side,
                   batch_size=self.s.batch_size,
                   empty_result={"caption": None, "phrases": None, "prompt": None},
                   decode_between_batches=computes_on_cpu(self.captioner, self.clip))


def make_caption_job(settings: CaptionSettings) -> Job:
    return CaptionJob(settings).job()


@staged
def run_caption(source: str, out: str, settings: CaptionSettings) -> WorkflowResult:
    from kadr.hotels.sources import hotel_collection

    out_dir = Path(out)
    output_folder(out_dir)
    collection, _ = hotel_collection(source, out_dir, settings.path_column, settings.group_column)
    summary = run_workflow(collection, out_dir / "captions.store",
                           functools.partial(make_caption_job, settings), settings,
                           name="caption",
                           fingerprint=caption_fingerprint(settings, caption_vocabulary(settings)))
    write_caption_tables(out_dir, settings.write_txt)
    return WorkflowResult(summary, out_dir, out_dir / "captions.parquet")


def write_caption_tables(out_dir: Path, write_txt: bool = False) -> None:
    """``captions.parquet`` and ``captions.csv`` from the store, a batch of rows at a time
    (a million captions are never in memory at once); with ``write_txt``, each photo's
    prompt in a ``.txt`` file beside it (the file layout training tools read)."""
    from kadr.core.group_sort import file_batches

    shards = shard_files(out_dir / "captions.store")
    if not shards:
        atomic_write_text(out_dir / "captions.csv", "")
        atomic_write_table(out_dir / "captions.parquet", pa.table({}))
        return
    batches = file_batches(shards)
    with atomic_open(out_dir / "captions.parquet", binary=True) as parquet_out, \
            atomic_open(out_dir / "captions.csv") as csv_out, \
            pq.ParquetWriter(parquet_out, batches.schema, compression="zstd") as writer:
        rows = CsvAppender(csv_out)
        for batch in batches:
            writer.write_batch(batch)
            frame = batch.to_pandas()
            rows.write(frame)
            if write_txt:
                for path, prompt in frame.loc[frame["status"] == PhotoStatus.OK, ["path", "prompt"]
                                              ].itertuples(index=False):
                    if "://" not in path:
                        atomic_write_text(Path(path).with_suffix(".txt"), prompt + "\n")
