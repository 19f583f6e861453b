"""Photo collections: folder trees and manifests, streamed as :class:`PhotoRef`.

A collection says *which* photos there are, in a stable order, without
opening them. Content ids, sizes and times come later, from the decoder,
inside the batch runner's worker threads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kadr.core.decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, DecodeError
from kadr.core.status import PhotoStatus
from kadr.core.video import VIDEO_EXTENSIONS, VideoFrame, clip_frames, frame_key, is_video

PATH_COLUMNS = ("path", "file", "filepath", "file_path", "image_path", "url", "image_url")


@dataclass
class PhotoRef:
    """One photo a user gave: where it is, which group (camera) it belongs to, extras."""

    key: str  # unique within the collection; the resume key
    path: str  # local path or URL
    group: str = ""
    extra: dict = field(default_factory=dict)
    frame: VideoFrame | None = None  # a frame sampled from the clip at ``path``
    failure: tuple[str, str] | None = None  # (status, reason) found when it was listed


def file_stamp(path: str) -> int:
    """A local file's size and modification time as one positive 63-bit number (0 for a
    URL or a file that cannot be read): a photo stored with another stamp has changed
    since (a copy that was half done, a photo replaced at the same path)."""
    if "://" in path:
        return 0
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return ((st.st_mtime_ns * 1_000_003 + st.st_size) & 0x7FFF_FFFF_FFFF_FFFF) or 1


@dataclass
class ScanReport:
    """What a scan passed over, so nothing is dropped silently."""

    skipped_files: list[str] = field(default_factory=list)  # files without an image extension
    empty_groups: list[str] = field(default_factory=list)  # folders with no photos at all


def csv_pieces(f: IO[bytes], block_size: int = 1 << 20) -> Iterator[bytes]:
    """A CSV's bytes, read from ``f`` a block at a time, in pieces that each end on a record
    boundary: a newline outside quotes, i.e. after an even number of quote marks (an
    escaped quote is two). Arrow's own streaming reader reads the whole file ahead of its
    consumer, so a manifest of millions of rows would sit in memory."""
    carry = b""
    while True:
        block = f.read(block_size)
        if not block:
            if carry.strip():
                yield carry
            return
        data = carry + block
        cut = data.rfind(b"\n")
        while cut >= 0 and data.count(b'"', 0, cut) % 2:
            cut = data.rfind(b"\n", 0, cut)  # that newline is inside a quoted field
        if cut < 0:  # one record longer than the block: read on
            carry = data
            continue
        yield data[:cut + 1]
        carry = data[cut + 1:]


@dataclass(frozen=True)
class PhotoRoot:
    """The folder a run's photos were listed under (``then``) and where it is now.

    A run records it beside its results, also relative to its own folder, so a run folder
    moved together with its photos still finds them: a stored path under ``then`` is read
    under ``now``."""

    then: str
    now: str

    @classmethod
    def of(cls, collection: PhotoCollection) -> PhotoRoot | None:
        """A local collection's root: the folder itself, or the folder of its manifest or
        single photo (what relative manifest paths were resolved against)."""
        if "://" in collection.source:
            return None
        root = collection.source if not (collection.is_manifest or collection.is_single_photo) \
            else os.path.dirname(collection.source)
        return cls(root, root)

    @classmethod
    def recorded(cls, record: dict | None, out_dir: str | os.PathLike) -> PhotoRoot | None:
        """The root a run folder recorded (:meth:`record`), found again after a move."""
        if not record or not record.get("path"):
            return None
        then = str(record["path"])
        moved = os.path.normpath(os.path.join(os.path.abspath(out_dir),
                                              str(record.get("from_output") or ".")))
        now = then if os.path.isdir(then) or not os.path.isdir(moved) else moved
        return cls(then, now)

    def record(self, out_dir: str | os.PathLike) -> dict:
        return {"path": self.now, "from_output": os.path.relpath(self.now, os.path.abspath(out_dir))}

    def resolve(self, path: str) -> str:
        """Where a stored path is now."""
        if self.then == self.now or not path.startswith(self.then.rstrip(os.sep) + os.sep):
            return path
        return self.now.rstrip(os.sep) + path[len(self.then.rstrip(os.sep)):]


def resolved_paths(paths, root: PhotoRoot | None):
    """A column of stored paths (pandas), each where it is now."""
    if root is None or root.then == root.now:
        return paths
    return paths.map(root.resolve)


class PhotoCollection:
    """A folder tree (recursive) or a manifest (CSV/Parquet with a path/URL column).

    ``group_level``: for folders, how many directory levels below the root name
    the group (camera); ``None`` means the whole parent directory. For
    manifests, ``group_column`` names the group column.

    ``video_fps``: video clips are listed as the frames sampled from them at this rate
    (see :mod:`kadr.core.video`); ``None`` (the default) lists them as skipped files.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        group_level: int | None = None,
        group_column: str | None = None,
        path_column: str | None = None,
        video_fps: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        # A local source is kept absolute: the paths a run stores then open from any
        # working directory, not only the one the command was started in.
        self.source = str(source) if "://" in str(source) else os.path.abspath(source)
        self.group_level = group_level
        self.group_column = group_column
        self.path_column = path_column
        self.video_fps = video_fps
        self.max_pixels = max_pixels
        self.report = ScanReport()
        if "://" in self.source:
            from kadr.core.remote import url_fs

            fs, root = url_fs(self.source)
            if not fs.exists(root):
                raise FileNotFoundError(f"source not found: {self.source}")
            is_file = fs.isfile(root)
        elif not os.path.exists(self.source):
            raise FileNotFoundError(f"source not found: {self.source}")
        else:
            is_file = os.path.isfile(self.source)
        # A file is a manifest, unless it is a photo (or clip): then the collection is that.
        self.is_single_photo = is_file and os.path.splitext(self.source)[1].lower() in (
            self.extensions)
        self.is_manifest = is_file and not self.is_single_photo

    @property
    def extensions(self) -> frozenset[str]:
        """The file name endings this collection lists."""
        return IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if self.video_fps else IMAGE_EXTENSIONS

    def __iter__(self) -> Iterator[PhotoRef]:
        self.report = ScanReport()  # each pass reports afresh
        if self.is_manifest:
            refs = self._iter_manifest()
        elif self.is_single_photo:
            name = self.source.rstrip("/").rsplit("/", 1)[-1]
            refs = iter([PhotoRef(key=name, path=self.source, group=".")])
        else:
            refs = self._iter_folder()
        for ref in refs:
            if self.video_fps and is_video(ref.path):
                yield from self._clip_refs(ref)
            else:
                yield ref

    def _clip_refs(self, clip: PhotoRef) -> Iterator[PhotoRef]:
        """A clip's sampled frames; a clip that cannot be read is one item with its status."""
        if "://" in clip.path:  # seeking needs a file: FFmpeg over HTTP reads it whole
            yield PhotoRef(clip.key, clip.path, clip.group, clip.extra, failure=(
                PhotoStatus.UNREADABLE, "video clips are read from local files: copy them first"))
            return
        try:
            frames = clip_frames(clip.key, clip.path, self.video_fps, self.max_pixels)
        except DecodeError as e:
            yield PhotoRef(clip.key, clip.path, clip.group, clip.extra, failure=(e.status, e.reason))
            return
        for f in frames:
            yield PhotoRef(frame_key(clip.key, f.index), clip.path, clip.group, clip.extra, frame=f)

    # -- folders ---------------------------------------------------------
    def _group_for(self, rel_dir: str) -> str:
        parts = [p for p in Path(rel_dir).parts if p not in (".", "")]
        if self.group_level is not None:
            parts = parts[: self.group_level]
        return "/".join(parts) if parts else "."

    def _iter_folder(self) -> Iterator[PhotoRef]:
        if "://" in self.source:
            from kadr.core.remote import list_photo_urls

            for rel, url in list_photo_urls(self.source, self.extensions):
                yield PhotoRef(key=rel, path=url, group=self._group_for(os.path.dirname(rel)))
            return
        root = self.source
        # os.walk with sorted names: a stable order that streams directory by directory.
        for dirpath, dirnames, filenames in os.walk(root, onerror=None):
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, root)
            found = False
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if os.path.splitext(name)[1].lower() not in self.extensions:
                    self.report.skipped_files.append(rel)
                    continue
                found = True
                yield PhotoRef(key=rel, path=full, group=self._group_for(rel_dir))
            if not found and not dirnames and rel_dir != ".":
                self.report.empty_groups.append(rel_dir)

    # -- manifests ---------------------------------------------------------
    MANIFEST_BATCH = 10_000  # rows of a manifest held at a time

    @contextlib.contextmanager
    def _manifest_reader(self, columns: list[str] | None = None
                         ) -> Iterator[tuple[list[str], Iterator[pa.RecordBatch]]]:
        """The manifest's column names (header spaces stripped) and its rows as record
        batches, read as they are needed. A CSV's columns are text, as written ("007"
        stays "007"); a Parquet file keeps its types. ``columns``: read only these."""
        with contextlib.ExitStack() as stack:
            def stream():  # a local file is read by Arrow itself, a URL through fsspec
                if "://" not in self.source:
                    return self.source
                import fsspec

                return stack.enter_context(fsspec.open(self.source, "rb"))

            if self.source.lower().endswith((".parquet", ".pq")):
                parquet = pq.ParquetFile(stream())
                yield (parquet.schema_arrow.names,
                       parquet.iter_batches(self.MANIFEST_BATCH, columns=columns))
                return
            raw = self._csv_header(stream())
            names = [c.strip() for c in raw]  # tolerate stray spaces around header names
            stripped = dict(zip(raw, names, strict=True))

            def batches() -> Iterator[pa.RecordBatch]:  # opened when read: names cost a line
                source = stream()
                f = stack.enter_context(open(source, "rb")) if isinstance(source, str) else source
                f.readline()  # the header, read above
                convert = pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in raw}, strings_can_be_null=False,
                    include_columns=[c for c in raw if stripped[c] in columns] if columns
                    else None)
                for piece in csv_pieces(f):
                    table = pacsv.read_csv(pa.py_buffer(piece), read_options=pacsv.ReadOptions(
                        column_names=raw, use_threads=False), convert_options=convert)
                    for batch in table.to_batches(self.MANIFEST_BATCH):
                        yield batch.rename_columns([stripped[c] for c in batch.schema.names])

            yield names, batches()

    @staticmethod
    def _csv_header(source) -> list[str]:
        """A CSV's column names as written, from its first line (``source``: a path, or a
        file object opened for this alone)."""
        if isinstance(source, str):
            with open(source, "rb") as f:
                line = f.readline()
        else:
            line = source.readline()
        return pacsv.read_csv(pa.BufferReader(line)).column_names

    def _repeated_paths(self, col: str) -> set[str]:
        """Paths listed more than once, found by a first pass that keeps 8 bytes per row
        (a hash), not the paths themselves."""
        hashes = []
        with self._manifest_reader([col]) as (_, batches):
            for batch in batches:
                hashes.append(np.fromiter((hash(str(v).strip()) for v in
                                           batch.column(0).to_pylist()), np.int64, batch.num_rows))
        if not hashes:
            return set()
        values = np.concatenate(hashes)
        del hashes
        values.sort()  # in place: no copies of a million hashes
        repeated = set(values[1:][values[1:] == values[:-1]].tolist())
        found: set[str] = set()
        if repeated:
            with self._manifest_reader([col]) as (_, batches):
                for batch in batches:
                    found.update(p for p in (str(v).strip() for v in batch.column(0).to_pylist())
                                 if hash(p) in repeated)
        return found

    def _iter_manifest(self) -> Iterator[PhotoRef]:
        with self._manifest_reader() as (names, _):
            pass  # the names only
        col = self.path_column or next((c for c in PATH_COLUMNS if c in names), None)
        if col is None or col not in names:
            raise ValueError(
                f"manifest {self.source} has no path column; columns: {names}. "
                f"Name one with --path-column (looked for {', '.join(PATH_COLUMNS)})."
            )
        if self.group_column and self.group_column not in names:
            raise ValueError(f"group column {self.group_column!r} not in {names}")
        base = self.source.rsplit("/", 1)[0] if "://" in self.source else os.path.dirname(
            os.path.abspath(self.source))
        # The same path listed twice is two rows the user gave: both are kept, the second
        # keyed "PATH#1". Only repeated paths are counted, so memory does not grow with
        # the manifest.
        repeated = self._repeated_paths(col)
        seen: dict[str, int] = {}
        with self._manifest_reader() as (_, batches):
            for batch in batches:
                for row in batch.to_pylist():
                    raw = str(row[col]).strip()
                    path = raw if ("://" in raw or os.path.isabs(raw)) else (
                        f"{base}/{raw}" if "://" in base else os.path.join(base, raw))
                    key = raw
                    if raw in repeated:
                        n = seen.get(raw, 0)
                        seen[raw] = n + 1
                        key = raw if n == 0 else f"{raw}#{n}"
                    group = str(row[self.group_column]) if self.group_column else ""
                    extra = {k: v for k, v in row.items() if k != col}
                    yield PhotoRef(key=key, path=path, group=group, extra=extra)
