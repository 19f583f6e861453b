"""The rows of Parquet files in a chosen order, with columns computed later, a batch at a time.

An export writes a million photos in camera/time order, with columns a later
stage computed (event ids, shifted times). Doing that in pandas holds every
row and every column at once. Here the later columns come in a small Arrow
table that names each row by its file and row number; DuckDB joins it to the
files, sorts out of core (spilling to disk past its memory limit), and hands
the rows back in Arrow batches. Memory stays near one batch plus the small
table, whatever the files hold.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FILE, ROW, ORDER = "_file", "_row", "_order"  # a row's address, and its place in the output
MEMORY_LIMIT = os.environ.get("KADR_SORT_MEMORY", "256MB")  # DuckDB spills to disk past this


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_with_positions(files: Sequence[str | os.PathLike], columns: Iterable[str] | None = None
                        ) -> pa.Table:
    """Columns of the files (those of ``columns`` each file has; a missing one is null), with
    each row's address: ``_file`` (the path, as :func:`ordered_batches` is given it) and ``_row``."""
    wanted = list(columns) if columns is not None else None
    tables = []
    for path in map(str, files):
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in wanted if c in names]
                              if wanted is not None else None)
        tables.append(table.append_column(FILE, pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(table.num_rows, np.int32)), pa.array([path])))
            .append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64))))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive").unify_dictionaries()


def ordered_batches(files: Sequence[str | os.PathLike], later: pa.Table, *,
                    exclude: Iterable[str] = (), batch_rows: int = 50_000,
                    spill_dir: str | os.PathLike | None = None) -> Iterator[pa.RecordBatch]:
    """Every row of ``files`` that ``later`` names (by ``_file`` and ``_row``), in ``later``'s
    ``_order``, with ``later``'s other columns: a column the files have is replaced in place,
    a new one is appended. ``exclude``: file columns left unread (vectors)."""
    import duckdb  # only exports need it

    if not files or later.num_rows == 0:
        return
    spill = tempfile.TemporaryDirectory(prefix="kadr-sort-", dir=spill_dir)
    con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": spill.name,
                                 "threads": min(4, os.cpu_count() or 1)})
    try:
        con.register("later_columns", later)
        paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
        source = (f"read_parquet([{paths}], union_by_name = true, filename = true, "
                  "file_row_number = true)")
        stored = [d[0] for d in con.sql(f"SELECT * FROM {source} LIMIT 0").description]
        added = [c for c in later.column_names if c not in (FILE, ROW, ORDER)]
        skip = set(exclude) | {"filename", "file_row_number"}
        select = [f"l.{_quoted(c)}" if c in added else f"s.{_quoted(c)}"
                  for c in stored if c in added or c not in skip]
        select += [f"l.{_quoted(c)}" for c in added if c not in stored]
        query = (f"SELECT {', '.join(select)} FROM {source} s JOIN later_columns l "
                 f"ON s.filename = l.{FILE} AND s.file_row_number = l.{ROW} ORDER BY l.{ORDER}")
        yield from con.sql(query).to_arrow_reader(batch_rows)
    finally:
        con.close()
        spill.cleanup()


def parquet_files(source: str | os.PathLike) -> list[Path]:
    """A store folder's shards, or a single Parquet file."""
    source = Path(source)
    return sorted(source.glob("part-*.parquet")) if source.is_dir() else [source]
