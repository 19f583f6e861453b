"""The photos ``kadr hotels cluster`` groups, and their embeddings, kept on disk.

A million embeddings of 768 floats are 3 GB: far more than grouping needs at
once. The input (a captions table, CSV or store) is read a block of rows at a
time. Each usable row's key, path, text and phrases go to
``embeddings/rows.parquet`` and its embedding to ``embeddings/vectors.f32``
(float32, row after row); later passes read them a block at a time, or a
sample by row number. Rows whose status is not ok, and photos that could not
be embedded, go to ``skipped.csv`` with the reason.

The folder says what it was made from (model, embedding kind, the input's
size and time): a rerun with other grouping settings (eps, reduction) on the
same input reuses it instead of embedding every caption again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kadr.core.progress import row_blocks
from kadr.core.status import PhotoStatus
from kadr.core.store import CsvAppender, atomic_open, atomic_write_text, output_folder, shard_files

BLOCK_ROWS = 20_000
ROW_COLUMNS = ["key", "path", "text", "phrases"]
NOT_OK = "its row's status is not ok"
NOT_EMBEDDED = "the photo could not be embedded (see image.store)"


@dataclass(frozen=True)
class EmbeddedRows:
    """The usable rows (``rows.parquet``) and their embeddings (``vectors.f32``)."""

    folder: Path
    rows: int
    dim: int
    skipped: int  # input rows left out (see skipped.csv)

    @property
    def vectors_path(self) -> Path:
        return self.folder / "vectors.f32"

    def vectors(self, first: int, count: int) -> np.ndarray:
        """Rows ``first`` .. ``first + count`` of the embeddings, read from the file."""
        flat = np.fromfile(self.vectors_path, np.float32, count * self.dim,
                           offset=first * self.dim * 4)
        return flat.reshape(count, self.dim)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The embeddings of the given row numbers."""
        return read_rows(self.vectors_path, self.dim, rows)

    def blocks(self, columns: list[str] | None = None
               ) -> Iterator[tuple[int, pd.DataFrame, np.ndarray]]:
        """(first row number, rows, embeddings), a block at a time, in row order."""
        first = 0
        for batch in pq.ParquetFile(self.folder / "rows.parquet").iter_batches(
                BLOCK_ROWS, columns=columns or ROW_COLUMNS):
            yield first, batch.to_pandas(), self.vectors(first, batch.num_rows)
            first += batch.num_rows


def read_rows(path: Path, dim: int, rows: np.ndarray) -> np.ndarray:
    """Rows of a float32 matrix file, each read on its own. A memory map would do the
    same in one line, but every page it reads ahead stays in the process: a sample of
    10,000 rows of a 2 GB file mapped all of it."""
    out = np.empty((len(rows), dim), np.float32)
    size = dim * 4
    with open(path, "rb", buffering=0) as f:
        for i, row in enumerate(rows.tolist()):
            os.preadv(f.fileno(), [out[i]], row * size)
    return out


def input_files(path: str) -> list[Path]:
    """What the input is read from: a captions folder's ``captions.parquet`` (or
    ``assignments.parquet``), a store folder's shards, or the Parquet or CSV file itself."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    tables = [p / n for n in ("captions.parquet", "assignments.parquet") if (p / n).exists()]
    files = tables[:1] or shard_files(p)
    if not files:
        raise ValueError(f"{path}: holds no captions.parquet, assignments.parquet "
                         "or store shards (part-*.parquet)")
    return files


def input_blocks(path: str) -> Iterator[pa.RecordBatch]:
    """The input's rows a block at a time (:func:`input_files`). Arrow batches:
    embeddings are read as arrays of floats, not a Python object a row."""
    from kadr.core.group_sort import file_batches

    files = input_files(path)
    if files[0].suffix != ".parquet":
        for chunk in pd.read_csv(files[0], chunksize=BLOCK_ROWS):
            yield pa.RecordBatch.from_pandas(chunk, preserve_index=False)
    elif len(files) == 1:
        yield from pq.ParquetFile(files[0]).iter_batches(BLOCK_ROWS)
    else:
        yield from file_batches(files)  # shards under one schema; its own batch size


def input_rows(path: str) -> int | None:
    """How many rows the input holds, from Parquet metadata (None for a CSV file)."""
    files = input_files(path)
    if files[0].suffix != ".parquet":
        return None
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def input_identity(path: str) -> str:
    """A digest of the input's files (name, size, modification time)."""
    parts = [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
             for f in input_files(path)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class _ImageVectors:
    """Embeddings of photos from an ``embed_photos`` store, found by path: the paths in
    memory, the vectors in a file on disk."""

    def __init__(self, store: Path, folder: Path):
        self.path = folder / "image.f32"
        self.index: dict[str, int] = {}
        self.dim = 0
        with open(self.path, "wb") as out:
            for shard in shard_files(store):
                table = pq.read_table(shard, columns=["path", "status", "embedding"])
                ok = table.filter(pc.equal(table["status"], PhotoStatus.OK))
                if not ok.num_rows:
                    continue
                vectors, _ = arrow_vectors(ok["embedding"])
                self.dim = vectors.shape[1]
                new = np.zeros(len(vectors), bool)  # a path stored twice: its first vector
                for i, p in enumerate(ok["path"].to_pylist()):
                    if p not in self.index:
                        self.index[p], new[i] = len(self.index), True
                out.write(np.ascontiguousarray(vectors[new]).tobytes())

    def lookup(self, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The embeddings of ``paths`` (zeros where there is none), and which have one."""
        at = np.array([self.index.get(p, -1) for p in paths], np.int64)
        found = at >= 0
        vectors = np.zeros((len(paths), max(self.dim, 1)), np.float32)
        if found.any():
            vectors[found] = read_rows(self.path, self.dim, at[found])
        return vectors, found


def embed_input(input_path: str, out_dir: Path, *, embed: str, clip: str, text_column: str,
                progress: bool = True) -> EmbeddedRows:
    """Read the input, embed its usable rows, and keep rows and vectors on disk."""
    if embed not in ("caption", "image", "both"):
        raise ValueError("--embed must be caption, image or both")
    folder = out_dir / "embeddings"
    made_from = {"input": input_identity(input_path), "embed": embed, "clip": clip,
                 "text_column": text_column, "format": 1}
    meta_path = folder / "meta.json"
    if meta_path.exists() and (out_dir / "skipped.csv").exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("made_from") == made_from:
            return EmbeddedRows(folder, meta["rows"], meta["dim"], meta["skipped"])
    output_folder(folder)
    meta_path.unlink(missing_ok=True)  # the folder is incomplete until it is written again

    model = None
    if embed in ("caption", "both"):
        from kadr.core.models import load_model

        model = load_model(clip, kind="image-text")
    images = None
    if embed in ("image", "both"):
        images = _embedded_photos(input_path, out_dir, clip, progress)

    rows, dim, left_out = 0, 0, 0
    schema = pa.schema([(c, pa.string()) for c in ROW_COLUMNS])
    with atomic_open(out_dir / "skipped.csv") as skipped_out, \
            atomic_open(folder / "rows.parquet", binary=True) as rows_out, \
            atomic_open(folder / "vectors.f32", binary=True) as vectors_out:
        skipped = CsvAppender(skipped_out)
        with pq.ParquetWriter(rows_out, schema, compression="zstd") as writer:
            for batch in row_blocks(input_blocks(input_path), "embed", input_rows(input_path),
                                    progress):
                names = batch.schema.names
                if embed != "image" and text_column not in names:
                    raise ValueError(f"the input has no {text_column!r} column to embed "
                                     f"(it has: {', '.join(names)})")
                own = arrow_vectors(batch.column("embedding")) if "embedding" in names else None
                block = pa.Table.from_batches([batch]).drop_columns(
                    [c for c in ("embedding",) if c in names]).to_pandas()
                ok = (block["status"] == PhotoStatus.OK).to_numpy() if "status" in block \
                    else np.ones(len(block), bool)
                skipped.write(block[~ok].assign(skipped_because=NOT_OK))
                left_out += int((~ok).sum())
                block = block[ok].reset_index(drop=True)
                own = (own[0][ok], own[1][ok]) if own is not None else None
                parts, usable = [], np.ones(len(block), bool)
                texts = (block[text_column].fillna("").astype(str).tolist()
                         if text_column in block else block["key"].astype(str).tolist())
                if model is not None:
                    parts.append(model.encode_texts(texts) if texts
                                 else np.zeros((0, model.embed_dim), np.float32))
                if embed != "caption":
                    vectors, found = _image_vectors(block, own, images)
                    parts.append(vectors)
                    usable &= found
                skipped.write(block[~usable].assign(skipped_because=NOT_EMBEDDED))
                left_out += int((~usable).sum())
                kept = block[usable]
                if not len(kept):
                    continue
                vectors = np.concatenate([v[usable] for v in parts], axis=1)
                if len(parts) > 1:
                    vectors /= np.sqrt(len(parts))
                dim = vectors.shape[1]
                vectors_out.write(np.ascontiguousarray(vectors, np.float32).tobytes())
                writer.write_table(pa.table({
                    "key": _strings(kept["key"].astype(str)),
                    "path": _strings((kept["path"] if "path" in kept else kept["key"]).astype(str)),
                    "text": pa.array(np.asarray(texts, object)[usable], pa.string()),
                    "phrases": _strings(kept["phrases"]) if "phrases" in kept
                    else pa.nulls(len(kept), pa.string())}, schema=schema))
                rows += len(kept)
    atomic_write_text(meta_path, json.dumps({"made_from": made_from, "rows": rows, "dim": dim,
                                              "skipped": left_out}))
    if images is not None:
        os.unlink(images.path)
    return EmbeddedRows(folder, rows, dim, left_out)


def arrow_vectors(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list column of embeddings as float32 rows (zeros where null), and which are there."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    present = ~column.is_null().to_numpy(zero_copy_only=False)
    values = column.filter(pa.array(present))
    if not len(values):
        return np.zeros((len(column), 1), np.float32), present
    lengths = pc.list_value_length(values)
    dim = pc.max(lengths).as_py()
    if pc.min(lengths).as_py() != dim:
        raise ValueError("the input's embeddings are not all of one length")
    vectors = np.zeros((len(column), dim), np.float32)
    vectors[present] = values.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return vectors, present


def _image_vectors(block: pd.DataFrame, own: tuple[np.ndarray, np.ndarray] | None,
                   images: _ImageVectors | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the input's own embedding where it has one (``own``: vectors, present),
    else the photo's from the image store; and whether there was one."""
    n = len(block)
    if own is not None and own[1].all():
        return own
    if images is not None:
        vectors, found = images.lookup(block["path"].astype(str).tolist())
    else:
        vectors, found = np.zeros((n, 1), np.float32), np.zeros(n, bool)
    if own is not None and own[1].any():
        given_vectors, given = own
        if vectors.shape[1] != given_vectors.shape[1]:
            if found.any():
                raise ValueError(f"the input's embeddings have {given_vectors.shape[1]} "
                                 f"dimensions and the photos' {vectors.shape[1]}")
            vectors = np.zeros_like(given_vectors)
        vectors[given], found = given_vectors[given], found | given
    return vectors, found


def _strings(values: pd.Series) -> pa.Array:
    return pa.array(values, pa.string(), from_pandas=True)


def _embedded_photos(input_path: str, out_dir: Path, clip: str, progress: bool
                     ) -> _ImageVectors | None:
    """Embed the photos whose rows bring no embedding (each file once), and index the
    result by path; None when every row brings its own."""
    from kadr.embed import embed_photos

    manifest = out_dir / "image_manifest.csv"
    seen: set[str] = set()
    with atomic_open(manifest) as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["path"])
        for batch in input_blocks(input_path):
            names = batch.schema.names
            wanted = pc.equal(batch.column("status"), PhotoStatus.OK) if "status" in names \
                else pa.array(np.ones(batch.num_rows, bool))
            if "embedding" in names:
                wanted = pc.and_(wanted, batch.column("embedding").is_null())
            for p in batch.column("path").filter(pc.fill_null(wanted, False)).to_pylist():
                if p not in seen:
                    seen.add(p)
                    out.writerow([p])
    if not seen:
        manifest.unlink()
        return None
    del seen
    embed_photos(str(manifest), str(out_dir / "image.store"), clip, progress=progress)
    return _ImageVectors(out_dir / "image.store", out_dir / "embeddings")
