"""The rows of Parquet files in a chosen order, a batch at a time, and split into runs.

An export writes a million photos in camera/time order. Sorting them in
pandas holds every row and every column at once. Here the files are read a
batch at a time under one schema, DuckDB sorts the rows out of core (spilling
to disk past its memory limit) and hands them back in Arrow batches, and
:func:`runs` cuts that stream into the rows of one camera at a time. Memory
stays near DuckDB's limit plus one run, whatever the files hold.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MEMORY_LIMIT = os.environ.get("KADR_SORT_MEMORY", "256MB")  # DuckDB spills to disk past this
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


def sorted_batches(files: Sequence[str | os.PathLike], order_by: Sequence[str], *,
                   exclude: Iterable[str] = (), batch_rows: int = 20_000,
                   spill_dir: str | os.PathLike | None = None) -> Iterator[pa.RecordBatch]:
    """Every row of ``files`` sorted by the columns ``order_by`` (ascending, missing values
    last), in batches of ``batch_rows``; ``exclude``: columns left unread."""
    import duckdb  # only exports need it

    if not files:
        return
    rows = file_batches(files, exclude)
    keys = ", ".join(f'"{c}" ASC NULLS LAST' for c in order_by)
    spill = tempfile.TemporaryDirectory(prefix="kadr-sort-", dir=spill_dir)
    con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": spill.name,
                                 "threads": min(4, os.cpu_count() or 1)})
    try:
        con.register("photo_rows", rows)
        yield from con.sql(f"SELECT * FROM photo_rows ORDER BY {keys}").to_arrow_reader(batch_rows)
    finally:
        con.close()
        spill.cleanup()


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
