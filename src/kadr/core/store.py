"""Result stores: a folder of Parquet shards written atomically, with a run lock.

A store is the cache and the resume point of a batch job. Rows are buffered
and written as whole shards (write to a temporary name, fsync, rename), so a
run killed at any moment leaves only complete shards; the rows of the lost
buffer are simply computed again on resume. Each row carries its input key,
so a resumed run skips exactly the photos already stored: none is lost and
none is written twice. A photo that is tried again (a failure on an earlier
run) gets a new row in a new shard; the old row is then removed from its
shard (rewritten atomically), so each key has one row, the newest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from kadr.core.errors import StoreLockedError, StoreMismatchError  # noqa: F401 (re-exported)
from kadr.core.remote import upload_now

_UMASK = os.umask(0)
os.umask(_UMASK)


# Failures that a rerun cannot change (the bytes themselves are bad). Any other
# failure (an I/O error, a file not there yet, a model that ran out of memory) is
# tried again on the next run; ``retry_failed`` tries these as well.
PERMANENT_FAILURES = frozenset({"empty_file", "truncated", "not_an_image", "too_large",
                                "decode_error"})


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """A file that readers see whole or not at all: written under a temporary name,
    fsynced, then renamed over ``path``. Large outputs are written through it piece by
    piece, never held whole in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary
              else os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see either the old content or the new, never half."""
    with atomic_open(path, binary=True) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_table(path: str | os.PathLike, table: pa.Table) -> None:
    with atomic_open(path, binary=True) as f:
        pq.write_table(table, f, compression="zstd")


def atomic_write_csv(path: str | os.PathLike, frame, rows_per_chunk: int = 50_000,
                     **to_csv) -> None:
    """A pandas frame as CSV, written a chunk of rows at a time (no whole-file string)."""
    with atomic_open(path) as f:
        for start in range(0, max(len(frame), 1), rows_per_chunk):
            frame.iloc[start:start + rows_per_chunk].to_csv(
                f, index=False, header=start == 0, lineterminator="\n", **to_csv)


class ShardStore:
    """``OUT/<name>/part-NNNNNN.parquet`` plus ``run.json`` describing what made them.

    ``fingerprint``: everything that changes the numbers (model spec,
    preprocessing, thresholds). Resuming with a different fingerprint is
    refused rather than mixing results of two settings in one table.
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: dict, shard_rows: int | None = None,
                 column_types: dict[str, pa.DataType] | None = None):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        # Columns whose type is fixed rather than inferred. A list type is used as given; a
        # value type (pa.float32()) means vectors of it, their size taken from the rows.
        self.column_types = column_types or {}
        # Smaller shards lose less work to a kill; larger ones read faster.
        self.shard_rows = shard_rows or int(os.environ.get("KADR_SHARD_ROWS", "2048"))
        self._buffer: list[dict] = []
        self._lock_fd: int | None = None
        self._next_index = 0
        self.schema: pa.Schema | None = None

    # -- lifecycle ------------------------------------------------------------
    def __enter__(self) -> ShardStore:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close(flush=exc[0] is None or exc[0] is KeyboardInterrupt)

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"{self.folder} is in use by another kadr run (lock {self.folder / '.lock'}); "
                "wait for it to finish or choose another output folder"
            ) from None
        self._lock_fd = fd
        meta_path = self.folder / "run.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            if old.get("fingerprint") != self.fingerprint and self.shard_paths():
                self.close(flush=False)
                raise StoreMismatchError(
                    f"{self.folder} holds results made with different settings:\n"
                    f"  stored: {json.dumps(old.get('fingerprint'), sort_keys=True)}\n"
                    f"  now:    {json.dumps(self.fingerprint, sort_keys=True)}\n"
                    "use another output folder, or delete it to start over"
                )
        atomic_write_text(meta_path, json.dumps({"fingerprint": self.fingerprint}, indent=2))
        existing = self.shard_paths()
        self._next_index = 1 + max((int(p.stem.split("-")[1]) for p in existing), default=-1)
        self.drop_superseded_rows()  # a run killed between a retry and its clean-up

    def close(self, flush: bool = True) -> None:
        if flush:
            self.flush()
            self.drop_superseded_rows()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- reading ----------------------------------------------------------------
    def shard_paths(self) -> list[Path]:
        return shard_files(self.folder)

    def _key_status(self, path: Path) -> tuple[list, list]:
        names = pq.read_schema(path).names
        t = pq.read_table(path, columns=["key", "status"] if "status" in names else ["key"])
        keys = t.column("key").to_pylist()
        return keys, t.column("status").to_pylist() if "status" in names else ["ok"] * len(keys)

    def done_keys(self, retry_failed: bool = False) -> set[str]:
        """Keys a run skips: stored ok, or failed for good (unless ``retry_failed``)."""
        keys: set[str] = set()
        for p in self.shard_paths():
            for key, status in zip(*self._key_status(p), strict=True):
                if status == "ok" or (status in PERMANENT_FAILURES and not retry_failed):
                    keys.add(key)
                else:
                    keys.discard(key)
        return keys

    def drop_superseded_rows(self) -> int:
        """Remove rows whose key has a newer row in a later shard; returns how many."""
        latest: dict[str, int] = {}
        stale: set[int] = set()
        paths = self.shard_paths()
        for i, p in enumerate(paths):
            for key in self._key_status(p)[0]:
                if key in latest:
                    stale.add(latest[key])
                latest[key] = i
        dropped = 0
        for i in sorted(stale):
            table = pq.read_table(paths[i])
            keep = pa.array([latest[k] == i for k in table.column("key").to_pylist()])
            kept = table.filter(keep)
            dropped += table.num_rows - kept.num_rows
            if kept.num_rows:
                atomic_write_table(paths[i], kept)
                upload_now(paths[i])
            else:
                paths[i].unlink()
        return dropped

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return read_shards(self.folder, columns)

    # -- writing ----------------------------------------------------------------
    def add(self, rows: Iterable[dict]) -> None:
        self._buffer.extend(rows)
        if len(self._buffer) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        for name, kind in self.column_types.items():
            if name in table.column_names:
                column = table.column(name)
                if pa.types.is_null(column.type):
                    continue  # only failures in this shard: nothing to type
                if not pa.types.is_list(kind) and not pa.types.is_fixed_size_list(kind):
                    import pyarrow.compute as pc  # only stores with vectors need it

                    sizes = pc.list_value_length(column).drop_null()
                    if len(sizes) == 0:
                        continue
                    kind = pa.list_(kind, sizes[0].as_py())
                i = table.column_names.index(name)
                table = table.set_column(i, name, column.cast(kind))
        path = self.folder / f"part-{self._next_index:06d}.parquet"
        atomic_write_table(path, table)
        upload_now(path)
        self._next_index += 1
        self._buffer = []


def shard_files(folder: str | os.PathLike) -> list[Path]:
    """A store's shards, in the order they were written."""
    return sorted(Path(folder).glob("part-*.parquet"))


def read_shards(folder: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """All shards of a store as one table (an empty table when there are none)."""
    paths = shard_files(folder)
    if not paths:
        return pa.table({})
    tables = [pq.read_table(p, columns=columns) for p in paths]
    return pa.concat_tables(tables, promote_options="permissive")
