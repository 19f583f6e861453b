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
from typing import IO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kadr.core.errors import StoreLockedError, StoreMismatchError, UserError  # noqa: F401
from kadr.core.remote import upload_now
from kadr.core.status import PERMANENT_FAILURES, PhotoStatus

_UMASK = os.umask(0)
os.umask(_UMASK)




def key_digests(keys: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """A 16-byte digest per key (BLAKE2b), as its high and low 8 bytes: what the store
    compares keys by. Sixteen bytes a photo instead of the key itself, and two different
    keys share a digest with a chance of about 1e-26 at a million photos, so none is ever
    skipped by mistake. Two integer halves, so that lookups are integer searches."""
    raw = np.frombuffer(b"".join(hashlib.blake2b(k.encode(), digest_size=16).digest()
                                 for k in keys), ">u8").astype(np.uint64)
    return raw[0::2].copy(), raw[1::2].copy()


def sorted_find(hi: np.ndarray, lo: np.ndarray, want_hi: np.ndarray,
                want_lo: np.ndarray) -> np.ndarray:
    """Where each digest (``want_hi``, ``want_lo``) is among the digests (``hi``, ``lo``),
    sorted by high then low half, or -1: a binary search on the high half, then a step
    along the (rare) digests that share it."""
    found = np.full(len(want_hi), -1, np.int64)
    at = np.searchsorted(hi, want_hi)
    while len(hi):
        here = np.minimum(at, len(hi) - 1)
        same_hi = (at < len(hi)) & (hi[here] == want_hi)
        hit = same_hi & (lo[here] == want_lo) & (found < 0)
        found[hit] = here[hit]
        more = same_hi & (found < 0)
        if not more.any():
            break
        at = np.where(more, at + 1, len(hi))
    return found


def sorted_contains(hi: np.ndarray, lo: np.ndarray, want_hi: np.ndarray,
                    want_lo: np.ndarray) -> np.ndarray:
    """Which digests are among the sorted digests (see :func:`sorted_find`)."""
    return sorted_find(hi, lo, want_hi, want_lo) >= 0


class DoneKeys:
    """The keys a run skips, as sorted digests (see :func:`key_digests`) with the stamp of
    the file each was made from (0: unknown): memory grows by 24 bytes a photo, and a
    block of keys is looked up at once."""

    def __init__(self, hi: np.ndarray, lo: np.ndarray, stamp: np.ndarray | None = None):
        self.hi, self.lo = hi, lo  # sorted by (hi, lo)
        self.stamp = stamp if stamp is not None else np.zeros(len(hi), np.int64)

    def __len__(self) -> int:
        return len(self.hi)

    def lookup(self, keys: list[str], stamps: list[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Per key, whether it is done, and whether it was stored but its file has changed
        since (another stamp; then it is not done). Unknown stamps never count as change."""
        at = sorted_find(self.hi, self.lo, *key_digests(keys))
        found = at >= 0
        changed = np.zeros(len(keys), bool)
        if stamps is not None and found.any():
            now = np.asarray(stamps, np.int64)
            then = self.stamp[np.where(found, at, 0)]
            changed = found & (now != 0) & (then != 0) & (now != then)
        return found & ~changed, changed

    def contains(self, keys: list[str]) -> np.ndarray:
        """Per key, whether it is done (stamps not compared)."""
        return self.lookup(keys)[0]

    def __contains__(self, key: str) -> bool:
        return bool(self.contains([key])[0])


OK, PERMANENT, RETRY = 0, 1, 2  # a stored row's status, as the key index keeps it


class KeyIndex(NamedTuple):
    """A store's rows by key digest (see :meth:`ShardStore._key_index`)."""

    hi: np.ndarray  # digests' high halves; rows sorted by digest, a key's in shard order
    lo: np.ndarray  # and low halves
    shard: np.ndarray  # the shard number (part-NNNNNN) holding each row
    status: np.ndarray  # OK, PERMANENT or RETRY
    stamp: np.ndarray  # the file's stamp when the row was made (0: not recorded)
    shards: dict[int, int]  # shard number -> modification time when read

    def newest(self) -> np.ndarray:
        """Per row, whether it is its key's newest (the last of its run of digests)."""
        hi, lo = self.hi, self.lo
        return np.r_[(hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1]), True] if len(hi) else (
            np.zeros(0, bool))


def _shard_keys(path: Path) -> tuple[np.ndarray, ...]:
    """A shard's key digests (two halves) and, per row, its status as OK, PERMANENT (a
    failure a rerun cannot change) or RETRY, and its file's stamp (0 when not recorded)."""
    names = pq.read_schema(path).names
    t = pq.read_table(path, columns=[c for c in ("key", "status", "file_stamp") if c in names])
    hi, lo = key_digests(t.column("key").to_pylist())
    status = np.full(len(hi), OK, np.int8)
    if "status" in names:
        text = t.column("status")
        status[~pc.equal(text, PhotoStatus.OK).to_numpy(zero_copy_only=False)] = RETRY
        status[pc.is_in(text, pa.array(sorted(PERMANENT_FAILURES))).to_numpy(
            zero_copy_only=False)] = PERMANENT
    stamp = (t.column("file_stamp").fill_null(0).to_numpy().astype(np.int64)
             if "file_stamp" in names else np.zeros(len(hi), np.int64))
    return hi, lo, status, stamp


def output_folder(path: str | os.PathLike) -> Path:
    """Create an output folder (and its parents); a file in the way is one clear error
    that names it, never a traceback, and is left as it is."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise UserError(f"{blocker} is a file, not a folder: give another output folder"
                        + (f" than {path}" if blocker != path else "")) from e
    except PermissionError as e:
        raise UserError(f"cannot create the output folder {path}: permission denied") from e
    return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """A file that readers see whole or not at all: written under a temporary name,
    fsynced, then renamed over ``path``. Large outputs are written through it piece by
    piece, never held whole in memory."""
    path = Path(path)
    output_folder(path.parent)
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


class CsvAppender:
    """Frames written one after another as one CSV (the header once, from the first)."""

    def __init__(self, out: IO):
        self.out, self.header = out, True

    def write(self, frame) -> None:
        if self.header or len(frame):
            frame.to_csv(self.out, index=False, header=self.header, lineterminator="\n")
            self.header = False


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
        self._index: KeyIndex | None = None
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
        output_folder(self.folder)
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
        self._next_index = 1 + max(self._shards_by_number(), default=-1)
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

    def _shards_by_number(self) -> dict[int, Path]:
        """The shards by their number (``part-NNNNNN``), which never changes once written."""
        return {int(p.stem.split("-")[1]): p for p in self.shard_paths()}

    def _key_index(self) -> KeyIndex:
        """Every stored row's key digest, shard number and status, sorted by digest (a key's
        rows in shard order). Built once and kept while the shards stay as they were: a
        shard written by this run is merged in; a shard rewritten or removed means a rebuild."""
        shards = self._shards_by_number()
        index = self._index
        if index is not None and not set(index.shards) <= set(shards):
            index = None  # a shard went away (superseded rows dropped by another pass)
        if index is not None and any(shards[n].stat().st_mtime_ns != stamp
                                     for n, stamp in index.shards.items()):
            index = None
        new = sorted(n for n in shards if index is None or n not in index.shards)
        if new:
            parts = [_shard_keys(shards[n]) for n in new]
            columns = [np.concatenate([part[k] for part in parts]) for k in range(4)]
            columns.insert(2, np.repeat(np.array(new, np.int32), [len(p[0]) for p in parts]))
            del parts
            if index is not None:  # older rows first: a key's newest row stays last
                columns = [np.concatenate([old, now]) for old, now in zip(
                    index[:5], columns, strict=True)]
            order = np.lexsort((columns[1], columns[0]))  # stable: shard order kept
            for k in range(len(columns)):  # one column at a time: one spare copy at most
                columns[k] = columns[k][order]
            del order
            stamps = dict(index.shards) if index is not None else {}
            stamps.update({n: shards[n].stat().st_mtime_ns for n in new})
            index = KeyIndex(*columns, stamps)
        self._index = index or KeyIndex(np.zeros(0, np.uint64), np.zeros(0, np.uint64),
                                        np.zeros(0, np.int32), np.zeros(0, np.int8),
                                        np.zeros(0, np.int64), {})
        return self._index

    def done_keys(self, retry_failed: bool = False) -> DoneKeys:
        """Keys a run skips: stored ok, or failed for good (unless ``retry_failed``). A
        key's newest row (the latest shard) decides."""
        index = self._key_index()
        done = (index.status == OK) | ((index.status == PERMANENT) & (not retry_failed))
        newest = index.newest()
        keep = newest & done
        if keep.all():  # the usual case: the index's own arrays, not a copy
            return DoneKeys(index.hi, index.lo, index.stamp)
        return DoneKeys(index.hi[keep], index.lo[keep], index.stamp[keep])

    def drop_superseded_rows(self) -> int:
        """Remove rows whose key has a newer row in a later shard; returns how many."""
        index = self._key_index()
        newest = index.newest()
        repeated = ~newest
        if not repeated.any():  # the usual case: every key once
            return 0
        # A row is stale when its key's newest row lies in another (a later) shard.
        last = np.flatnonzero(newest)  # each key's newest row
        newest_shard = index.shard[last[np.searchsorted(last, np.arange(len(newest)))]]
        stale = repeated & (index.shard != newest_shard)
        paths = self._shards_by_number()
        dropped = 0
        for n in np.unique(index.shard[stale]).tolist():
            path = paths[n]
            table = pq.read_table(path)
            gone = stale & (index.shard == n)  # in digest order, as sorted_contains needs
            kept = table.filter(pa.array(~sorted_contains(
                index.hi[gone], index.lo[gone], *key_digests(table.column("key").to_pylist()))))
            dropped += table.num_rows - kept.num_rows
            if kept.num_rows:
                atomic_write_table(path, kept)
                upload_now(path)
            else:
                path.unlink()
        self._index = None
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
        rows = self._buffer
        names = list(dict.fromkeys(k for r in rows for k in r))
        if any(len(r) != len(names) for r in rows):  # e.g. video frames beside photos
            rows = [{k: r.get(k) for k in names} for r in rows]  # Arrow reads the first's keys
        table = pa.Table.from_pylist(rows, schema=self.schema)
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
