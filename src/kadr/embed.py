"""Image and text embeddings with any CLIP-family model; resumable, cached.

Importable and a command (``kadr embed``, ``kadr embed-text``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from kadr.core.collection import PhotoCollection
from kadr.core.models import load_model
from kadr.core.models.device import computes_on_cpu
from kadr.core.models.factory import model_fingerprint
from kadr.core.remote import staged
from kadr.core.runner import EngineOptions, Job, RunOptions, WorkflowResult, run_workflow
from kadr.core.store import atomic_write_table
from kadr.core.text_cache import text_embeddings

if TYPE_CHECKING:  # torch is imported only when a model is built
    from kadr.core.models.image_text import ImageTextModel


def image_embedding_job(model: ImageTextModel, batch_size: int = 32) -> Job:
    def process(inputs: list[np.ndarray], rows: list[dict]) -> list[dict]:
        if not inputs:
            return []
        vectors = model.encode_images(inputs)
        return [{"embedding": v} for v in vectors]  # float32, as encode_images gives them

    return Job(
        name="embed",
        prepare=model.prepare,
        process=process,
        # Decode JPEGs at the coarsest DCT scale that keeps the short side >= the model's input.
        min_side=model.image_size,
        batch_size=batch_size,
        empty_result={"embedding": None},
        decode_between_batches=computes_on_cpu(model),
    )


def make_embedding_job(model_spec: str, batch_size: int, trust_checkpoint: bool) -> Job:
    """Builds the model and the job: what each Ray actor runs once."""
    return image_embedding_job(load_model(model_spec, kind="image-text",
                                          trust_checkpoint=trust_checkpoint), batch_size)


@staged
def embed_photos(
    source: str,
    out: str,
    model_spec: str,
    *,
    batch_size: int = 32,
    workers: int = 2,
    group_level: int | None = None,
    group_column: str | None = None,
    path_column: str | None = None,
    max_pixels: int | None = None,
    time_pattern: str | None = None,
    trust_checkpoint: bool = False,
    progress: bool = True,
    engine: EngineOptions | None = None,
    retry_failed: bool = False,
) -> WorkflowResult:
    """Embed every photo of ``source`` into Parquet shards under ``out`` (the result's
    table)."""
    options = RunOptions(batch_size=batch_size, workers=workers, path_column=path_column,
                         group_column=group_column, retry_failed=retry_failed,
                         progress=progress, engine=engine or EngineOptions(),
                         **({"max_pixels": max_pixels} if max_pixels else {}))
    collection = PhotoCollection(
        source, group_level=group_level, group_column=group_column, path_column=path_column,
        max_pixels=options.max_pixels)
    fingerprint = {"job": "embed", "model": model_fingerprint(model_spec), "vector": "float32"}
    # float32 vectors of one size: what the model computes, half the size of float64 lists.
    summary = run_workflow(
        collection, out, functools.partial(make_embedding_job, model_spec, batch_size,
                                           trust_checkpoint),
        options, name="embed", fingerprint=fingerprint, column_types={"embedding": pa.float32()},
        time_pattern=time_pattern)
    return WorkflowResult(summary, out, out)


def read_text_lines(path: str) -> list[str]:
    """One phrase per line; blank lines and lines starting with # are ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def embed_text_file(path: str, out: str, model_spec: str) -> int:
    """``kadr embed-text``: a text file (one phrase per line) or a JSON prompt file."""
    model = load_model(model_spec, kind="image-text")
    if path.endswith(".json"):  # a class prompt file, in either of its forms
        from kadr.traps.prompts import load_prompts

        pairs = [(c.name, p) for c in load_prompts(path).classes for p in c.prompts]
    else:
        pairs = [("", t) for t in read_text_lines(path)]
    vectors = text_embeddings(model, [t for _, t in pairs])
    table = pa.table({
        "label": [lbl for lbl, _ in pairs],
        "text": [t for _, t in pairs],
        "embedding": pa.array(list(vectors.astype(np.float32)), pa.list_(pa.float32(), vectors.shape[1])),
    })
    atomic_write_table(out, table)
    return len(pairs)
