"""The batch runner: one loop that every kadr job (embed, detect, classify, caption) uses.

A job is two plain functions:

- ``prepare(photo: DecodedPhoto) -> input``: runs in decode worker threads
  (Pillow and NumPy release the GIL), so decoding overlaps model compute;
- ``process(inputs: list, rows: list[dict]) -> list[dict]``: a pure function
  of one batch, returning one result dict per input (the columns it adds).

The runner streams photos from a collection, skips those already in the
store, decodes at the size the job asks for, turns every failure into a
status row, writes shards atomically and shows progress.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from kadr.core.collection import PhotoCollection, PhotoRef, file_stamp
from kadr.core.decode import DEFAULT_MAX_PIXELS, DecodedPhoto, DecodeError, decode_photo, read_bytes
from kadr.core.phototime import naive_local, photo_time
from kadr.core.progress import PhotoProgress, console
from kadr.core.status import PhotoStatus
from kadr.core.store import DoneKeys, ShardStore, read_shards
from kadr.core.video import read_frames


def photo_id(data: bytes) -> str:
    """Content id: the same bytes give the same id wherever the file lives."""
    # SHA-256 runs on the CPU's SHA extensions: about 3x faster here than BLAKE2b.
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass
class Job:
    """What a batch job does with each photo; see the module docstring."""

    name: str
    prepare: Callable[[DecodedPhoto], Any]
    process: Callable[[list[Any], list[dict]], list[dict]]
    min_side: int | None = None  # smallest side the model needs (enables JPEG draft decoding)
    batch_size: int = 32
    empty_result: dict = field(default_factory=dict)  # result columns for failed photos
    # What the built job's numbers depend on, where it differs from what the settings say
    # (a model whose weights were missing and a fallback that ran instead); None: the same.
    fingerprint: dict | None = None
    notes: list[str] = field(default_factory=list)  # said at the end of the run
    # True when ``process`` computes on the CPU (torch, ONNX Runtime), which then uses every
    # core: photos are decoded between batches instead of beside them. A decode thread
    # beside such a model stalls all of its threads at every operation (they wait for the
    # one that lost its core), which costs more than the decode (bench/precision.py).
    decode_between_batches: bool = False


def _runs_on_actors(*_args):
    raise RuntimeError("this job's models live in the Ray actors; the driver only writes rows")


def _driver_job(name: str, batch_size: int) -> Job:
    """The job as a Ray driver holds it: a name and a batch size, no model.

    The models are built by the job factory in each actor; the driver reads the
    collection, writes the store, and takes the fingerprint from the settings."""
    return Job(name, _runs_on_actors, _runs_on_actors, batch_size=batch_size)


SHOWN_FAILURES = 50  # failures listed at the end of a run (all are in the store)


@dataclass
class RunSummary:
    total: int = 0
    already_done: int = 0
    changed: int = 0  # stored before, but the file changed since: processed again
    processed: int = 0
    ok: int = 0
    failed: int = 0
    # The first failures (key, status, reason) for the end-of-run message; every one of
    # them is a row of the store, so memory does not grow with a collection's bad files.
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    empty_groups: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the outputs could not say right
    fingerprint: dict = field(default_factory=dict)  # what the store's rows were made with

    @property
    def nothing_processed(self) -> bool:
        return self.total > 0 and self.ok == 0 and self.already_done == 0

    def print(self) -> None:
        console.print(
            f"[bold]{self.total}[/] photos: {self.already_done} already done, "
            f"{self.processed} processed now, {self.ok} ok, {self.failed} failed"
        )
        if self.changed:
            console.print(f"[yellow]{self.changed} changed since stored, processed again[/] "
                          "(another size or modification time)")
        if self.failures:
            console.print("[yellow]Photos that could not be processed:[/]")
            for key, status, reason in self.failures[:SHOWN_FAILURES]:
                console.print(f"  {key}: [red]{status}[/] {reason}")
            if self.failed > SHOWN_FAILURES:
                console.print(f"  ... and {self.failed - SHOWN_FAILURES} more (see the status "
                              "column of the output)")
        if self.skipped_files:
            console.print(
                f"[yellow]{len(self.skipped_files)} files without an image extension were not "
                f"read[/], e.g. {', '.join(self.skipped_files[:5])}"
            )
        if self.empty_groups:
            console.print(f"[yellow]Folders with no photos:[/] {', '.join(self.empty_groups[:20])}")
        for warning in self.warnings:
            console.print(f"[yellow]Warning:[/] {warning}")


@dataclass
class WorkflowResult:
    """What every workflow's ``run_*`` returns: the photos' pass, where the outputs are,
    the main table, and the stage's own figures (what its ``summary.json`` holds)."""

    summary: RunSummary  # counts, failures, warnings (empty for a stage without a photo pass)
    output: Path | str  # the output folder (or its URL)
    table: Path | str  # the main table: a Parquet file, or a store's folder of shards
    figures: dict = field(default_factory=dict)

    def frame(self):
        """The main table as a pandas DataFrame (read from disk: it can be large)."""
        if str(self.table).endswith(".parquet"):
            import pandas as pd

            return pd.read_parquet(self.table)
        return read_shards(self.table).to_pandas()


# The columns every store row starts with, whatever the job adds.
BASE_COLUMNS = ("key", "path", "group", "photo_id", "time", "time_source", "width", "height",
                "format", "mode", "status", "reason", "file_stamp")


def _base_row(ref: PhotoRef) -> dict:
    return {
        "key": ref.key,
        "path": ref.path,
        "group": ref.group,
        "photo_id": None,
        "time": None,
        "time_source": "none",
        "width": None,
        "height": None,
        "format": None,
        "mode": None,
        "status": PhotoStatus.OK,
        "reason": None,
        "file_stamp": file_stamp(ref.path),  # before reading: a later change is seen next run
    }


def load_photo(
    ref: PhotoRef,
    job: Job,
    max_pixels: int,
    time_pattern: str | None,
) -> tuple[dict, Any]:
    """Read, hash, decode and prepare one photo; never raises for bad input."""
    if ref.frame is not None:
        return load_frames([ref], job, time_pattern)[0]
    row = _base_row(ref)
    if ref.failure is not None:  # a clip that could not be read when it was listed
        row["status"], row["reason"] = ref.failure
        return row, None
    try:
        data = read_bytes(ref.path)
        row["photo_id"] = photo_id(data)
        photo = decode_photo(data, min_side=job.min_side, max_pixels=max_pixels)
    except DecodeError as e:
        row["status"], row["reason"] = e.status, e.reason
        if e.status not in (PhotoStatus.MISSING, PhotoStatus.UNREADABLE):
            t, src = photo_time(ref.path, None, time_pattern)
            row["time"], row["time_source"] = naive_local(t), src
        return row, None
    t, src = photo_time(ref.path, photo.exif, time_pattern)
    row.update(
        time=naive_local(t),
        time_source=src,
        width=photo.width,
        height=photo.height,
        format=photo.format,
        mode=photo.mode,
    )
    try:
        return row, job.prepare(photo)
    except Exception as e:  # noqa: BLE001 - a job's preprocessing failure is per photo
        row["status"], row["reason"] = "prepare_error", f"{type(e).__name__}: {e}"
        return row, None


def load_frames(refs: list[PhotoRef], job: Job, time_pattern: str | None
                ) -> list[tuple[dict, Any]]:
    """Frames of one clip (``ref.frame``, in order), decoded in one pass: rows and
    prepared inputs as :func:`load_photo` gives them for photos."""
    out = []
    start, source = refs[0].frame.start, refs[0].frame.start_source  # the clip's, for all
    if start is None:  # no time in the container: the photos' fallbacks, then the offsets
        start, source = photo_time(refs[0].path, None, time_pattern)
    frames = read_frames(refs[0].path, [r.frame for r in refs])
    for ref, (frame, image) in zip(refs, frames, strict=True):
        row = _base_row(ref)
        row.update(media_key=frame.clip_key, media_type=frame.media_type,
                   frame_index=frame.index, frame_offset_s=frame.offset_s)
        if start is not None:
            row["time"] = naive_local(start + timedelta(seconds=frame.offset_s))
        row["time_source"] = source
        if isinstance(image, DecodeError):
            row["status"], row["reason"] = image.status, image.reason
            out.append((row, None))
            continue
        photo = DecodedPhoto(image.convert("RGB"), image.width, image.height, "VIDEO", "RGB", None)
        row.update(photo_id=photo_id(photo.image.tobytes()), width=photo.width,
                   height=photo.height, format=photo.format, mode=photo.mode)
        try:
            out.append((row, job.prepare(photo)))
        except Exception as e:  # noqa: BLE001 - a job's preprocessing failure is per frame
            row["status"], row["reason"] = "prepare_error", f"{type(e).__name__}: {e}"
            out.append((row, None))
    return out


# Sampled frames of one clip decoded by one task: one open, and each task starts with a
# seek back to the keyframe before its first frame. With keyframes far apart (x264's
# default is 10 s at 25 fps) short runs decode the same stretch twice; 32 frames at
# 1 frame a second was 1.18x a plain decode of every frame where 8 was 0.87x, and
# 1.45x against 1.33x with a keyframe a second (bench/video.py). The prefetch window
# still bounds the frames in memory.
FRAME_RUN = 32


def load_tasks(refs: Iterable[PhotoRef]) -> Iterator[list[PhotoRef]]:
    """The photos one at a time, a clip's consecutive frames in runs of :data:`FRAME_RUN`."""
    run: list[PhotoRef] = []
    for ref in refs:
        if run and (ref.frame is None or ref.path != run[0].path or len(run) >= FRAME_RUN):
            yield run
            run = []
        if ref.frame is None:
            yield [ref]
        else:
            run.append(ref)
    if run:
        yield run


class CpuTurns:
    """Decoding and a batch's compute take turns: a batch waits for the decodes under way,
    and no decode starts while it runs. Off (``enabled=False``) both simply run."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._cond = threading.Condition()
        self._decoding = 0
        self._computing = False

    @contextmanager
    def decoding(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._cond:
            self._cond.wait_for(lambda: not self._computing)
            self._decoding += 1
        try:
            yield
        finally:
            with self._cond:
                self._decoding -= 1
                self._cond.notify_all()

    @contextmanager
    def computing(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._cond:
            self._computing = True
            self._cond.wait_for(lambda: self._decoding == 0)
        try:
            yield
        finally:
            with self._cond:
                self._computing = False
                self._cond.notify_all()


def _ordered_prefetch(
    fn: Callable[[list[PhotoRef]], list[tuple[dict, Any]]],
    refs: Iterable[PhotoRef],
    pool: ThreadPoolExecutor,
    window: int,
) -> Iterator[tuple[dict, Any]]:
    """Like ``pool.map`` over :func:`load_tasks` but with at most about ``window`` photos
    or frames in flight (flat memory), in the order given."""
    pending: deque[tuple[Future, int]] = deque()
    in_flight = 0
    for task in load_tasks(refs):
        pending.append((pool.submit(fn, task), len(task)))
        in_flight += len(task)
        while in_flight >= window:
            done, n = pending.popleft()
            in_flight -= n
            yield from done.result()
    while pending:
        yield from pending.popleft()[0].result()


def _count_and_spool(refs: Iterable[PhotoRef], done: DoneKeys, summary: RunSummary,
                     block: int = 4096) -> Iterator[PhotoRef]:
    """Count the collection (for the progress bar) and return the photos still to do.

    The collection is listed once: the photos to do are spooled to a temporary
    file and replayed from it, because listing a bucket of a million objects
    takes minutes and keeping their references in memory would grow with the
    collection. Keys are looked up in ``done`` a block at a time.
    """
    spool = tempfile.TemporaryFile(prefix="kadr-refs-")
    pending = 0

    def sort_out(batch: list[PhotoRef]) -> None:
        nonlocal pending
        summary.total += len(batch)
        keys = [r.key for r in batch]
        # Stamps only on a resume: a first run has nothing stored to compare them with.
        skipped, changed = done.lookup(keys, [file_stamp(r.path) for r in batch] if len(done)
                                       else None)
        summary.changed += int(changed.sum())
        for ref, skip in zip(batch, skipped, strict=True):
            if skip:
                summary.already_done += 1
            else:
                pickle.dump(ref, spool, protocol=pickle.HIGHEST_PROTOCOL)
                pending += 1

    batch: list[PhotoRef] = []
    for ref in refs:
        batch.append(ref)
        if len(batch) >= block:
            sort_out(batch)
            batch = []
    sort_out(batch)
    spool.seek(0)

    def replay() -> Iterator[PhotoRef]:
        with spool:
            for _ in range(pending):
                yield pickle.load(spool)  # noqa: S301 - kadr's own spool file, written above

    return replay()


def load_refs(refs: list[PhotoRef], job: Job, max_pixels: int, time_pattern: str | None,
              extra_columns: bool = True) -> list[tuple[dict, Any]]:
    """One load task (:func:`load_tasks`): a photo, or a run of one clip's frames, as
    :func:`load_photo` gives them, plus the manifest's extra columns (``extra_<name>``)."""
    if refs[0].frame is not None:
        loaded = load_frames(refs, job, time_pattern)
    else:
        loaded = [load_photo(ref, job, max_pixels, time_pattern) for ref in refs]
    if extra_columns:
        for ref, (row, _) in zip(refs, loaded, strict=True):
            if ref.extra:
                row.update({f"extra_{k}": v for k, v in ref.extra.items()})
    return loaded


def apply_batch(job: Job, rows: list[dict], inputs: list[Any]) -> list[dict]:
    """The per-batch step both engines run: the job's results merged into the status rows.

    When the model fails on a batch (out of memory, one odd photo), each photo
    is tried alone; one that still fails gets the status ``process_error``,
    which the next run tries again.
    """
    ok_idx = [i for i, x in enumerate(inputs) if x is not None]
    try:
        results = job.process([inputs[i] for i in ok_idx], [rows[i] for i in ok_idx])
        by_idx = dict(zip(ok_idx, results, strict=True))
    except Exception:  # noqa: BLE001 - narrowed down photo by photo below
        by_idx = {}
        for i in ok_idx:
            try:
                by_idx[i] = job.process([inputs[i]], [rows[i]])[0]
            except Exception as e:  # noqa: BLE001 - a per-photo status, retried on a rerun
                rows[i]["status"], rows[i]["reason"] = PhotoStatus.PROCESS_ERROR, f"{type(e).__name__}: {e}"
    for i, row in enumerate(rows):
        row.update(by_idx.get(i, job.empty_result))
    return rows


@dataclass
class EngineOptions:
    """Where batches run: ``local`` (this process) or ``ray`` (Ray Data actor pools)."""

    @property
    def on_ray(self) -> bool:
        return self.engine == "ray"

    engine: str = "local"
    ray_address: str | None = None  # join a cluster; None starts a local Ray runtime
    actors: int = 1  # actor pool size (one model load per actor)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    # Photo references per Ray block; None = 2 batches. Blocks are Ray's unit of
    # work sharing: small ones spread photos evenly over the actors.
    block_rows: int | None = None


@dataclass(kw_only=True)
class RunOptions:
    """What every batch command shares, declared once: how its photos are listed and how
    its batches run. Each workflow's settings extend it (``TrapSettings``,
    ``CaptionSettings``, ...); the commands take the same options (``cli_common``)."""

    batch_size: int = 32
    workers: int = 2  # decode threads
    path_column: str | None = None  # manifests: the column with paths or URLs
    group_column: str | None = None  # manifests: the column naming the camera or hotel
    retry_failed: bool = False  # try every earlier failure again, not only transient ones
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger photos and clip frames are refused
    progress: bool = True
    engine: EngineOptions = field(default_factory=EngineOptions)


def run_workflow(collection: PhotoCollection | Iterable[PhotoRef], store_path, job_factory:
                 Callable[[], Job], options: RunOptions, *, name: str, fingerprint: dict,
                 column_types: dict | None = None, **loop) -> RunSummary:
    """The one entry of every batch command: run a workflow's job over ``collection`` into
    the result store at ``store_path``, on the engine ``options`` name.

    ``job_factory`` (picklable) builds the job with its models: here on the local engine,
    once per actor on Ray, where this process holds no model and ``fingerprint`` (from
    the settings alone) names the results. ``loop``: :func:`run_job`'s own options
    (``time_pattern``)."""
    # No model is built for a new run of a collection without a photo: the run's (empty)
    # outputs are written and the user hears of it at once, not after the models load.
    nothing = not Path(store_path).exists() and _holds_no_photo(collection)
    job = (_driver_job(name, options.batch_size) if options.engine.on_ray or nothing
           else job_factory())
    fingerprint = job.fingerprint or fingerprint
    with ShardStore(store_path, fingerprint, column_types=column_types) as store:
        summary = run_job(collection, job, store, workers=options.workers,
                          progress=options.progress, retry_failed=options.retry_failed,
                          max_pixels=options.max_pixels, engine=options.engine,
                          job_factory=job_factory, **loop)
    summary.fingerprint = fingerprint
    summary.warnings.extend(job.notes)
    return summary


def _holds_no_photo(collection: PhotoCollection | Iterable[PhotoRef]) -> bool:
    """A collection that lists no photo (the listing stops at the first one: cheap even
    for a bucket); False for a stream of references, which cannot be read twice."""
    return isinstance(collection, PhotoCollection) and next(iter(collection), None) is None


def run_job(
    collection: PhotoCollection | Iterable[PhotoRef],
    job: Job,
    store: ShardStore,
    *,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    time_pattern: str | None = None,
    extra_columns: bool = True,
    progress: bool = True,
    engine: EngineOptions | None = None,
    job_factory: Callable[[], Job] | None = None,
    retry_failed: bool = False,
) -> RunSummary:
    """Run ``job`` over every photo not yet in ``store``; returns what happened.

    With ``engine.engine == "ray"``, ``job_factory`` (a picklable function that
    builds the job, models included) runs once per Ray actor, and the same
    :func:`load_refs` and :func:`apply_batch` run there; rows come back to this
    process, which writes the store exactly as the local engine does.

    Photos that failed on an earlier run for a reason a rerun may change (an
    I/O error, a missing file, a model error) are tried again; with
    ``retry_failed`` every earlier failure is.
    """
    summary = RunSummary()
    todo = _count_and_spool(collection, store.done_keys(retry_failed), summary)

    def record(rows: list[dict]) -> None:
        for row in rows:
            if row["status"] == PhotoStatus.OK:
                summary.ok += 1
            else:
                summary.failed += 1
                if len(summary.failures) < SHOWN_FAILURES:
                    summary.failures.append((row["key"], row["status"], row["reason"]))
        summary.processed += len(rows)
        store.add(rows)

    with PhotoProgress(job.name, summary.total, summary.already_done, progress) as bar:
        if engine is not None and engine.engine == "ray":
            from kadr.core.ray_engine import run_batches_on_ray

            if job_factory is None:
                raise ValueError(f"{job.name}: this command cannot run on Ray")
            for rows in run_batches_on_ray(todo, job_factory, job.batch_size, engine, workers,
                                           max_pixels, time_pattern, extra_columns):
                record(rows)
                bar.update(summary.processed)
        elif engine is not None and engine.engine != "local":
            raise ValueError(f"unknown engine {engine.engine!r}: local or ray")
        else:
            with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
                rows: list[dict] = []
                inputs: list[Any] = []
                window = max(2 * job.batch_size, 4 * workers)
                turns = CpuTurns(job.decode_between_batches)
                load_one = functools.partial(load_refs, job=job, max_pixels=max_pixels,
                                             time_pattern=time_pattern,
                                             extra_columns=extra_columns)

                def load(task: list[PhotoRef]) -> list[tuple[dict, Any]]:
                    with turns.decoding():
                        return load_one(task)

                def compute(rows: list[dict], inputs: list[Any]) -> list[dict]:
                    with turns.computing():
                        return apply_batch(job, rows, inputs)

                for row, x in _ordered_prefetch(load, todo, pool, window):
                    rows.append(row)
                    inputs.append(x)
                    if len(rows) >= job.batch_size:
                        record(compute(rows, inputs))
                        rows, inputs = [], []
                        bar.update(summary.processed)
                if rows:
                    record(compute(rows, inputs))
        bar.update(summary.processed)
    store.flush()
    if isinstance(collection, PhotoCollection):
        summary.skipped_files = collection.report.skipped_files
        summary.empty_groups = collection.report.empty_groups
    return summary
