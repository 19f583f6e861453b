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
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


def key_digests(keys: Iterable[str]) -> np.ndarray:
    """A 16-byte digest per key (BLAKE2b): what the store compares keys by. Sixteen bytes
    a photo instead of the key itself, and two different keys share a digest with a
    chance of about 1e-26 at a million photos, so none is ever skipped by mistake."""
    return np.frombuffer(b"".join(hashlib.blake2b(k.encode(), digest_size=16).digest()
                                  for k in keys), dtype="S16")


class DoneKeys:
    """The keys a run skips, as sorted digests (see :func:`key_digests`): memory grows by
    16 bytes a photo, and a block of keys is looked up at once."""

    def __init__(self, digests: np.ndarray, presorted: bool = False):
        self.digests = digests if presorted else np.sort(digests)

    def __len__(self) -> int:
        return len(self.digests)

    def contains(self, keys: list[str]) -> np.ndarray:
        """Per key, whether it is done."""
        wanted = key_digests(keys)
        at = np.minimum(np.searchsorted(self.digests, wanted), max(len(self.digests) - 1, 0))
        return (self.digests[at] == wanted) if len(self.digests) else np.zeros(len(keys), bool)

    def __contains__(self, key: str) -> bool:
        return bool(self.contains([key])[0])


OK, PERMANENT, RETRY = 0, 1, 2  # a stored row's status, as the key index keeps it


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
        self._key_cache: dict[Path, tuple[tuple[int, int], np.ndarray, np.ndarray]] = {}
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

    def _shard_keys(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """A shard's key digests and, per row, its status as OK, PERMANENT (a failure a
        rerun cannot change) or RETRY. Kept per shard file (by size and time), so a store's keys are
        hashed once per run, not at every look."""
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        cached = self._key_cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        names = pq.read_schema(path).names
        t = pq.read_table(path, columns=["key", "status"] if "status" in names else ["key"])
        digests = key_digests(t.column("key").to_pylist())
        status = np.full(len(digests), OK, np.int8)
        if "status" in names:
            text = t.column("status")
            status[~pc.equal(text, "ok").to_numpy(zero_copy_only=False)] = RETRY
            status[pc.is_in(text, pa.array(sorted(PERMANENT_FAILURES))).to_numpy(
                zero_copy_only=False)] = PERMANENT
        self._key_cache[path] = (stamp, digests, status)
        return digests, status

    def _key_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row's key digest, shard position and status, shard by shard."""
        parts = [(self._shard_keys(p), i) for i, p in enumerate(self.shard_paths())]
        if not parts:
            return np.zeros(0, "S16"), np.zeros(0, np.int32), np.zeros(0, np.int8)
        return (np.concatenate([d for (d, _), _ in parts]),
                np.concatenate([np.full(len(d), i, np.int32) for (d, _), i in parts]),
                np.concatenate([st for (_, st), _ in parts]))

    def done_keys(self, retry_failed: bool = False) -> DoneKeys:
        """Keys a run skips: stored ok, or failed for good (unless ``retry_failed``). A
        key's newest row (the latest shard) decides."""
        digests, _, status = self._key_index()
        done = (status == OK) | ((status == PERMANENT) & (not retry_failed))
        order = np.argsort(digests, kind="stable")  # a key's rows stay in shard order
        digests, done = digests[order], done[order]
        newest = np.r_[digests[1:] != digests[:-1], True] if len(digests) else done
        return DoneKeys(digests[newest & done], presorted=True)

    def drop_superseded_rows(self) -> int:
        """Remove rows whose key has a newer row in a later shard; returns how many."""
        digests, shard, _ = self._key_index()
        ordered = np.sort(digests)
        if not (ordered[1:] == ordered[:-1]).any():  # the usual case: every key once
            return 0
        del ordered
        unique, first, counts = np.unique(digests[::-1], return_index=True, return_counts=True)
        repeated = counts > 1
        # The newest row of each repeated key, and the shards holding an older one.
        newest_shard = dict(zip(unique[repeated].tolist(),
                                shard[len(digests) - 1 - first[repeated]].tolist(), strict=True))
        stale_rows = np.isin(digests, unique[repeated])
        paths = self.shard_paths()
        dropped = 0
        for i in sorted(set(shard[stale_rows].tolist())):
            table = pq.read_table(paths[i])
            keys = key_digests(table.column("key").to_pylist()).tolist()
            keep = pa.array([newest_shard.get(k, i) == i for k in keys])
            kept = table.filter(keep)
            if kept.num_rows == table.num_rows:
                continue  # this shard holds the newest row of its repeated keys
            dropped += table.num_rows - kept.num_rows
            if kept.num_rows:
                atomic_write_table(paths[i], kept)
                upload_now(paths[i])
            else:
                paths[i].unlink()
            self._key_cache.pop(paths[i], None)
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
