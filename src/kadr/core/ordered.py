"""The rows of Parquet files in a chosen order, with columns computed later, a batch at a time.

An export writes a million photos in camera/time order, with columns a later
stage computed (event ids, shifted times). Doing that in pandas holds every
row and every column at once. Here the later columns come in a small Arrow
table that names each row by its file and row number; the files are read a
batch at a time, the later columns attached by position, and DuckDB sorts the
rows out of core (spilling to disk past its memory limit) and hands them back
in Arrow batches. Memory stays near one batch plus the small table, whatever
the files hold.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FILE, ROW, ORDER = "_file", "_row", "_order"  # a row's address, and its place in the output
MEMORY_LIMIT = os.environ.get("KADR_SORT_MEMORY", "256MB")  # DuckDB spills to disk past this
READ_ROWS = 20_000  # rows of a file read at a time


def read_with_positions(files: Sequence[str | os.PathLike], columns: Iterable[str] | None = None
                        ) -> pa.Table:
    """Columns of the files (those of ``columns`` each file has; a missing one is null), with
    each row's address: ``_file`` (its file's index in ``files``) and ``_row``."""
    wanted = list(columns) if columns is not None else None
    tables = []
    for i, path in enumerate(files):
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in wanted if c in names]
                              if wanted is not None else None)
        tables.append(table.append_column(FILE, pa.array(np.full(table.num_rows, i, np.int32)))
                      .append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64))))
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


def _with_later(files: Sequence[str | os.PathLike], later: pa.Table, exclude: set[str]
                ) -> pa.RecordBatchReader:
    """The files' rows, a batch at a time, with the later columns attached by position."""
    later = later.take(np.lexsort((later[ROW].to_numpy(), later[FILE].to_numpy())))
    per_file = np.bincount(later[FILE].to_numpy(), minlength=len(files))
    added = [c for c in later.column_names if c not in (FILE, ROW)]
    in_files = _unified_schema(files, exclude)  # the output keeps their column order
    stored = [f.name for f in in_files if f.name not in added]  # what is read from the files
    schema = pa.schema([later.schema.field(f.name) if f.name in added else f for f in in_files]
                       + [later.schema.field(c) for c in added if c not in in_files.names])

    def batches() -> Iterator[pa.RecordBatch]:
        start = 0
        for i, path in enumerate(files):
            parquet = pq.ParquetFile(path)
            if parquet.metadata.num_rows != per_file[i]:
                raise ValueError(f"{path} has {parquet.metadata.num_rows} rows; "
                                 f"{per_file[i]} were named")
            present = [c for c in stored if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(READ_ROWS, columns=present):
                rows = later.slice(start, batch.num_rows)
                start += batch.num_rows
                columns = {c: batch.column(c) if c in present else pa.nulls(batch.num_rows)
                           for c in stored}
                columns.update({c: rows.column(c).combine_chunks() for c in added})
                yield pa.RecordBatch.from_arrays(
                    [columns[f.name].cast(f.type) for f in schema], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def ordered_batches(files: Sequence[str | os.PathLike], later: pa.Table, *,
                    exclude: Iterable[str] = (), batch_rows: int = 20_000,
                    spill_dir: str | os.PathLike | None = None) -> Iterator[pa.RecordBatch]:
    """Every row of ``files`` in ``later``'s ``_order``, with ``later``'s other columns (a
    column the files have is replaced in place, a new one is appended). ``later`` names
    each row of the files once, by ``_file`` (index in ``files``) and ``_row``.
    ``exclude``: file columns left unread (vectors)."""
    import duckdb  # only exports need it

    if not files or later.num_rows == 0:
        return
    rows = _with_later(files, later, set(exclude))
    spill = tempfile.TemporaryDirectory(prefix="kadr-sort-", dir=spill_dir)
    con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": spill.name,
                                 "threads": min(4, os.cpu_count() or 1)})
    try:
        con.register("photo_rows", rows)
        yield from con.sql(f"SELECT * EXCLUDE ({ORDER}) FROM photo_rows ORDER BY {ORDER}"
                           ).to_arrow_reader(batch_rows)
    finally:
        con.close()
        spill.cleanup()
