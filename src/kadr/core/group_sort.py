"""The rows of Parquet files one group at a time (a camera's photos), each group sorted.

An export writes a million photos camera by camera, in time order. Sorting
them in pandas holds every row and every column at once, and a general
out-of-core sort holds its whole memory budget. Here the files are read a
batch at a time under one schema and written to parts on disk that each hold
a consecutive range of cameras; one part at a time is then sorted in memory
and cut into cameras (:func:`runs`). Memory stays near one part, whatever the
files hold.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PART_ROWS = int(os.environ.get("KADR_SORT_ROWS", 50_000))  # rows an external sort holds
READ_ROWS = 20_000  # rows of a file read at a time


def read_columns(files: Sequence[str | os.PathLike], columns: Iterable[str] | None = None
                 ) -> pa.Table:
    """Columns of the files, as one table (those of ``columns`` each file has; a column
    some files lack is null there)."""
    wanted = list(columns) if columns is not None else None
    tables = [pq.read_table(path, columns=None if wanted is None else
                            [c for c in wanted if c in pq.read_schema(path).names])
              for path in files]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def _unified_schema(files: Sequence[str | os.PathLike], exclude: set[str]) -> pa.Schema:
    """One schema for every file: a column some files lack is null there, and a column that
    is null-typed in one file takes its type from the others."""
    schemas = [pq.read_schema(f) for f in files]
    unified = pa.unify_schemas([pa.schema([f for f in s if f.name not in exclude])
                                for s in schemas], promote_options="permissive")
    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                      for f in unified])


def file_batches(files: Sequence[str | os.PathLike], exclude: Iterable[str] = ()
                 ) -> pa.RecordBatchReader:
    """The files' rows a batch at a time, under one schema (:func:`_unified_schema`);
    ``exclude``: columns left unread (vectors)."""
    schema = _unified_schema(files, set(exclude))

    def batches() -> Iterator[pa.RecordBatch]:
        for path in files:
            parquet = pq.ParquetFile(path)
            present = [c for c in schema.names if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(READ_ROWS, columns=present):
                yield pa.RecordBatch.from_arrays(
                    [(batch.column(f.name) if f.name in present else pa.nulls(batch.num_rows))
                     .cast(f.type) for f in schema], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def sorted_lookup(sorted_values: np.ndarray, values: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Which ``values`` are in ``sorted_values``, and where (a binary search each; the
    position is meaningful only where found)."""
    if not len(sorted_values):
        return np.zeros(len(values), bool), np.zeros(len(values), np.int64)
    at = np.searchsorted(sorted_values, values).clip(max=len(sorted_values) - 1)
    return sorted_values[at] == values, at


def _parts(sizes: dict, part_rows: int) -> dict:
    """Each value's part: the values in sorted order (a missing one last), cut into
    consecutive ranges of about ``part_rows`` rows (a bigger value has a part of its own)."""
    part, rows, parts = 0, 0, {}
    for value in sorted(sizes, key=lambda v: (v is None, "" if v is None else v)):
        if rows and rows + sizes[value] > part_rows:
            part, rows = part + 1, 0
        parts[value] = part
        rows += sizes[value]
    return parts


def sorted_groups(files: Sequence[str | os.PathLike], group: str, order_by: Sequence[str], *,
                  exclude: Iterable[str] = (), part_rows: int | None = None,
                  spill_dir: str | os.PathLike | None = None) -> Iterator[pa.Table]:
    """Every row of ``files``, one table per value of ``group`` (in sorted order, missing
    last), each sorted by ``order_by`` (ascending, missing values last); ``exclude``:
    columns left unread.

    An external sort in three passes: count the rows of each value, write the rows to
    parts on disk that hold consecutive ranges of values (about ``part_rows`` rows each;
    :data:`PART_ROWS`), then sort one part at a time in memory. Memory holds one part,
    whatever the files hold."""
    if not files:
        return
    sizes: dict = {}
    for path in files:
        column = pq.read_table(path, columns=[group]).column(group)
        for value, n in zip(*pc.value_counts(column).flatten(), strict=True):
            sizes[value.as_py()] = sizes.get(value.as_py(), 0) + n.as_py()
    part_of = _parts(sizes, part_rows or PART_ROWS)
    if len(set(part_of.values())) <= 1:  # one part: sorted in memory, nothing written
        yield from runs(_sorted(file_batches(files, exclude).read_all(), group, order_by), group)
        return
    reader = file_batches(files, exclude)
    with tempfile.TemporaryDirectory(prefix="kadr-sort-", dir=spill_dir) as spill:
        writers: dict[int, pq.ParquetWriter] = {}
        values = pa.array(list(part_of), reader.schema.field(group).type)
        numbers = np.array(list(part_of.values()), np.int64)
        for batch in reader:
            where = numbers[pc.index_in(batch.column(group), values).to_numpy(
                zero_copy_only=False)]
            for part in np.unique(where):
                if part not in writers:
                    writers[part] = pq.ParquetWriter(os.path.join(spill, f"{part}.parquet"),
                                                     reader.schema)
                writers[part].write_batch(batch.filter(pa.array(where == part)))
        for writer in writers.values():
            writer.close()
        for part in sorted(writers):
            table = pq.read_table(os.path.join(spill, f"{part}.parquet"))
            yield from runs(_sorted(table, group, order_by), group)


def _sorted(table: pa.Table, group: str, order_by: Sequence[str]) -> list[pa.RecordBatch]:
    order = pc.sort_indices(table, sort_keys=[(c, "ascending", "at_end")
                                              for c in (group, *order_by)])
    return table.take(order).combine_chunks().to_batches()


def runs(batches: Iterable[pa.RecordBatch], column: str) -> Iterator[pa.Table]:
    """The rows of ``batches`` (sorted by ``column``) cut where ``column`` changes: one table
    per value, in order."""
    pending: list[pa.RecordBatch] = []
    for batch in batches:
        values = batch.column(column).to_numpy(zero_copy_only=False)
        cuts = np.flatnonzero(values[1:] != values[:-1]) + 1 if len(values) else values[:0]
        if pending and len(values) and values[0] != pending[-1].column(column)[-1].as_py():
            cuts = np.r_[0, cuts]
        start = 0
        for cut in cuts:
            pending.append(batch.slice(start, cut - start))
            yield pa.Table.from_batches(pending)
            pending, start = [], int(cut)
        pending.append(batch.slice(start))
    if pending and sum(b.num_rows for b in pending):
        yield pa.Table.from_batches(pending)


def gathered(tables: Iterable[pa.Table], min_rows: int) -> Iterator[pa.Table]:
    """Consecutive tables joined until they hold at least ``min_rows`` rows (the last may
    hold fewer): whole groups, a few small ones at a time, so that work per group does not
    cost per group."""
    pending: list[pa.Table] = []
    rows = 0
    for table in tables:
        pending.append(table)
        rows += table.num_rows
        if rows >= min_rows:
            yield pa.concat_tables(pending)
            pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending)
