"""Every export of a camera-trap run, written one camera at a time.

The per-photo rows are sorted by camera and time out of core (:mod:`kadr.core.group_sort`, from
the store's shards) and cut into cameras. Each camera's registrations are
formed and linked to its photos, and its photos go through every writer at
once (photos CSV and Parquet, MegaDetector JSON, Camtrap DP) and into the
tallies of the report and the run summary. Memory holds one camera's photos
and the registrations, not the collection.

A reviewed run (with decisions) forms its registrations over the whole
per-photo table first (a review's state spans the run: merges, clock shifts,
the learned classifier), then streams the same way.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kadr.core.collection import PhotoRoot, resolved_paths
from kadr.core.group_sort import file_batches, gathered, read_columns, sorted_groups
from kadr.core.runner import RunSummary
from kadr.core.status import PhotoStatus
from kadr.core.store import (
    CsvAppender,
    atomic_open,
    atomic_write_table,
    atomic_write_text,
    shard_files,
)
from kadr.traps.decisions import Decision, last_decision_id, read_decisions
from kadr.traps.ensemble import with_verdicts
from kadr.traps.exports.agreement import write_agreement
from kadr.traps.exports.camtrap_dp import CamtrapPackage
from kadr.traps.exports.clips import clips_parquet
from kadr.traps.exports.megadetector import common_folder, megadetector_json
from kadr.traps.linking import link_events
from kadr.traps.prompts import PromptSet
from kadr.traps.registrations import form_registrations
from kadr.traps.report import MAX_GALLERY, PhotoTally, write_report
from kadr.traps.review import ReviewState, camera_times, load_learned, run_summary
from kadr.traps.settings import (
    TrapSettings,
    classified_by,
    recorded_settings,
    registration_options,
    run_prompts,
    saved_settings,
    trap_fingerprint,
)
from kadr.traps.tables import registrations_csv, time_text

# The per-photo columns a review reads (registrations, links, the summary). The wide ones
# (detections, paths, per-class probabilities, embeddings) stay on disk until the exports
# stream them.
SMALL_COLUMNS = ("key", "group", "photo_id", "time", "time_source", "status", "reason", "class",
                 "class_prob", "count", "n_animals", "time_camera")

# Columns an earlier export added to photos.parquet, which is the source when a folder has
# no store: this export computes them afresh.
PREVIOUS_EXPORT_COLUMNS = ("event_id", "human_class", "time_camera")

PHOTO_ORDER = ("group", "time", "key")  # the exports' order: by camera, then time
CHUNK_ROWS = 10_000  # whole cameras are written a few small ones together, to this many photos


def photo_files(out_dir: str | Path) -> list[Path]:
    """Where a run's per-photo rows are: the store's shards, else the exported table (a
    folder copied without its store)."""
    out_dir = Path(out_dir)
    store = out_dir / "photos.store"
    return shard_files(store) if store.exists() else [out_dir / "photos.parquet"]


def per_photo_table(files: list[Path], columns: tuple[str, ...] | None = SMALL_COLUMNS,
                    class_probabilities: bool = False) -> pd.DataFrame:
    """The per-photo results in camera/time order (:data:`PHOTO_ORDER`): ``columns``
    (None: all but the embeddings, which `traps learn` reads), and the ``p_<class>``
    columns with ``class_probabilities``."""
    names = list(dict.fromkeys(n for f in files for n in pq.read_schema(f).names))
    wanted = [n for n in names if n != "embedding" and (
        columns is None or n in columns or (class_probabilities and n.startswith("p_")))]
    table = read_columns(files, wanted)
    if not table.num_rows:
        return table.to_pandas()
    # Sorted by Arrow (stable, missing times last) and handed to pandas a column at a time,
    # each read column freed once its sorted copy is made: one table's worth in memory.
    order = pc.sort_indices(table, sort_keys=[(c, "ascending") for c in PHOTO_ORDER])
    columns = {name: table.column(name) for name in table.column_names}
    del table
    df = pd.DataFrame({name: columns.pop(name).take(order).to_pandas()
                       for name in list(columns)})
    df["time"] = pd.to_datetime(df["time"])
    return df


def photos_for_events(df: pd.DataFrame) -> pd.DataFrame:
    """The read photos in the columns :mod:`events` reads. The stored columns are typed
    already (text, times, numbers), so only the gaps are filled: no class is background,
    no class probability is a full vote (a column no photo has a value in may be typed as
    text)."""
    ok = (df["status"] == PhotoStatus.OK).to_numpy()
    return pd.DataFrame({
        "camera": df["group"][ok], "file": df["key"][ok], "time": df["time"][ok],
        "class": df["class"][ok].fillna(""), "count": df["count"][ok],
        "confidence": pd.to_numeric(df["class_prob"][ok]).fillna(1.0),
    })


class FormedEvents:
    """Registrations formed by the rules (``method``, ``gap``), a camera at a time, in the
    order :func:`form_registrations` gives for the whole run: those with a time by camera,
    then one per photo without a time."""

    added = ("event_id",)  # the per-photo column this adds

    def __init__(self, settings: TrapSettings):
        self.method, self.gap = settings.method, settings.gap
        self.options = registration_options(settings)
        self.timed: list[pd.DataFrame] = []
        self.untimed: list[pd.DataFrame] = []
        self.count = 0  # registrations with a time so far

    def cameras(self, photos: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Whole cameras' photos with their ``event_id``, and the cameras' registrations
        with a time (with ``eventID`` and ``best_key``)."""
        regs = form_registrations(photos_for_events(photos), self.method, self.gap,
                                  **self.options)
        timed = regs["date_registration_start"].notna().to_numpy()
        linked, photos = link_events(regs[timed], photos, first=self.count)
        linked = with_verdicts(linked, photos)
        self.count += len(linked)
        self.timed.append(linked)
        self.untimed.append(regs[~timed])
        return photos, linked

    def registrations(self) -> pd.DataFrame:
        if not self.timed:  # no photos: the columns of no registrations
            self.cameras(pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
                ("group", str), ("key", str), ("time", "datetime64[ns]"), ("status", str),
                ("class", str), ("count", float), ("class_prob", float),
                ("n_animals", float))}))
        untimed, _ = link_events(pd.concat(self.untimed), pd.DataFrame(), first=self.count)
        regs = pd.concat([*self.timed, untimed], ignore_index=True)
        # Typed as one camera's would be (text, or nothing when no registration has a photo).
        for name in ("eventID", "best_key"):
            regs[name] = regs[name].to_numpy(dtype=object)
        return regs


class ReviewedEvents:
    """Registrations with the reviewers' decisions (:func:`reviewed_outputs`, over the
    whole table); each camera's photos take their columns from that table."""

    added = ("time", "time_camera", "time_source", "event_id", "human_class")

    def __init__(self, regs: pd.DataFrame, table: pd.DataFrame):
        self.regs = regs
        self.table = table  # in camera/time order, as the photos come
        self.next = 0
        self.per_camera = {str(cam): rows for cam, rows in regs.groupby("name_folder")}

    def cameras(self, photos: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows = self.table.iloc[self.next:self.next + len(photos)]
        self.next += len(photos)
        if not np.array_equal(rows["key"].to_numpy(), photos["key"].to_numpy()):
            raise RuntimeError("the per-photo rows changed while the exports were written; "
                               "run `kadr traps export` again")
        photos = photos.assign(**{c: rows[c].to_numpy() for c in self.added})
        cameras = [self.per_camera[c] for c in photos["group"].astype(str).unique()
                   if c in self.per_camera]
        return photos, pd.concat(cameras) if cameras else self.regs[:0]

    def registrations(self) -> pd.DataFrame:
        return self.regs


def photo_labels(files: list[Path]) -> set[str]:
    """Every class a stored photo or one of its boxes has (a box named by its own crop may
    be of a class no photo has)."""
    labels: set[str] = set()
    for path in files:
        names = pq.read_schema(path).names
        if "class" in names:
            column = pq.read_table(path, columns=["class"])["class"]  # null-typed: no class
            labels.update(v for v in pc.unique(column).to_pylist() if v is not None)
        if "detections" in names:
            dets = pq.read_table(path, columns=["detections"])["detections"]
            if pa.types.is_string(dets.type) or pa.types.is_large_string(dets.type):
                # Only the photos with a classified box are parsed.
                named = dets.filter(pc.fill_null(pc.match_substring(dets, '"class":'), False))
                labels.update(d["class"] for text in named.to_pylist()
                              for d in json.loads(text) if isinstance(d.get("class"), str))
    return labels


def stored_keys(files: list[Path]):
    """The stored photos' keys, a file at a time."""
    for path in files:
        yield pq.read_table(path, columns=["key"])["key"].to_pandas()


def _photo_table(rows: pa.Table, photos: pd.DataFrame, added: tuple[str, ...]) -> pa.Table:
    """The stored rows with the columns the exports added (replaced in place, or appended)."""
    time_type = rows.schema.field("time").type
    for name in added:
        if name in ("time", "time_camera"):  # a shifted time keeps the store's unit
            column = pa.array(photos[name], from_pandas=True).cast(time_type, safe=False)
        else:
            column = pa.array(photos[name], type=pa.string(), from_pandas=True)
        at = rows.schema.get_field_index(name)
        rows = rows.set_column(at, name, column) if at >= 0 else rows.append_column(name, column)
    return rows


def write_outputs(out_dir: Path, settings: TrapSettings, prompts: PromptSet | None,
                  fingerprint: dict, summary: RunSummary, key: str,
                  photo_root: PhotoRoot | None = None) -> pd.DataFrame:
    """Every export of a run, from its per-photo rows (:func:`photo_files`), a camera at a
    time; returns the registrations. ``key`` (:func:`kadr.traps.pipeline.outputs_key`) is
    recorded so that a later resume with nothing to do can leave them all as they are.
    ``photo_root``: where the photos are now (their stored paths are written as found)."""

    files = photo_files(out_dir)
    decisions = read_decisions(out_dir)
    labels = photo_labels(files)
    pairs, problems = None, []
    if decisions:
        table = per_photo_table(files, class_probabilities=True)
        regs, table, pairs, problems = reviewed_outputs(table, settings, decisions, out_dir)
        labels |= set(table["human_class"].dropna())
        events: FormedEvents | ReviewedEvents = ReviewedEvents(regs, table)
    else:
        events = FormedEvents(settings)
    tally = PhotoTally()
    gallery = 2 * MAX_GALLERY  # best photos still wanted (:func:`report.gallery_keys`)
    camtrap = CamtrapPackage(
        out_dir / "camtrap-dp", scientific_names=prompts.scientific_names() if prompts else {},
        deployments_csv=settings.deployments, utc_offset=settings.utc_offset,
        media_url=settings.media_url, classified_by=functools.partial(classified_by, settings))
    exclude = ("embedding", *PREVIOUS_EXPORT_COLUMNS)
    with (atomic_open(out_dir / "photos.csv") as photos_csv,
          atomic_open(out_dir / "photos.parquet", binary=True) as photos_parquet,
          megadetector_json(out_dir / "megadetector.json", fingerprint, labels,
                                   common_folder(stored_keys(files))) as md_json,
          clips_parquet(out_dir / "clips.parquet") as clips_table,
          camtrap):
        parquet = None  # opened on the first camera, with its schema
        photo_rows = CsvAppender(photos_csv)
        cameras = sorted_groups(files, "group", PHOTO_ORDER[1:], exclude=exclude,
                                spill_dir=out_dir)
        for rows in gathered(cameras, CHUNK_ROWS):
            photos = rows.to_pandas()
            photos["time"] = pd.to_datetime(photos["time"])
            photos["path"] = resolved_paths(photos["path"], photo_root)
            photos, camera_regs = events.cameras(photos)
            rows = _photo_table(rows, photos, (*events.added, "path"))
            if "file_stamp" in rows.column_names:  # the store's resume check, not a result
                rows = rows.drop_columns(["file_stamp"])
            photos = photos[rows.column_names]
            photo_rows.write(photos.assign(time=time_text(photos["time"])))
            if parquet is None:
                parquet = pq.ParquetWriter(photos_parquet, rows.schema, compression="zstd")
            parquet.write_table(rows.cast(parquet.schema))
            md_json(photos)
            clips_table(photos)
            camtrap.write(photos)
            camtrap.write_events(camera_regs)
            best = camera_regs["best_key"].dropna().head(gallery).tolist() if gallery else []
            gallery -= len(best)
            tally.add(photos, best)
        regs = events.registrations()
        if parquet is None:  # no photos: the table keeps its columns
            schema = file_batches(files, exclude).schema if files else pa.schema([])
            pq.write_table(schema.empty_table(), photos_parquet)
        else:
            parquet.close()
    atomic_write_text(out_dir / "registrations.csv", registrations_csv(regs))
    atomic_write_table(out_dir / "registrations.parquet",
                       pa.Table.from_pandas(regs, preserve_index=False))
    warnings = problems + camtrap.warnings + tally.file_dated_warning()
    summary.warnings = [w for w in summary.warnings if w not in warnings] + warnings
    agreement = write_agreement(pairs, out_dir) if pairs is not None else None
    learned = out_dir / "learn.json"
    learning = json.loads(learned.read_text()) if learned.exists() and decisions else None
    write_report(out_dir / "report.html", tally, regs, settings, summary.warnings, agreement,
                 learning)
    failed = tally.failed_rows()
    atomic_write_text(out_dir / "summary.json", json.dumps({
        "photos": tally.photos, "ok": tally.ok,
        "failed": failed.to_dict("records"),
        "skipped_files": summary.skipped_files, "empty_folders": summary.empty_groups,
        "clock_jumps_back": dict(sorted(tally.jumps.items())),
        "photos_without_exif_time": tally.without_exif,
        "registrations": len(regs), "method": settings.method, "gap": settings.gap,
        "decisions": len(decisions), "reviewed_registrations": int(regs["reviewed"].sum())
        if "reviewed" in regs else 0,
        "warnings": summary.warnings,
        "outputs_key": key,
        "photo_root": photo_root.record(out_dir) if photo_root else None,
        "settings": recorded_settings(settings),
    }, indent=2, default=str))
    return regs


def reviewed_outputs(table: pd.DataFrame, settings: TrapSettings, decisions: list[Decision],
                     out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Registrations and the per-photo table with the reviewers' decisions applied: human
    classes, counts, splits and merges, clock shifts (``time``; ``time_camera`` keeps the
    camera's own; ``time_source`` "reviewer" where a shift set it), and the learned
    classifier's classes for what nobody reviewed. Also the (machine, human) class of every
    reviewed registration, and the decisions that could not be applied."""

    table = camera_times(table).copy()
    state = ReviewState(table, settings.__dict__, decisions, load_learned(out_dir))
    regs = state.registrations()
    per_photo = state.photo_events().set_index("photo_id")
    table["time_camera"] = table["time"]
    ids = table["photo_id"]
    table["event_id"] = ids.map(per_photo["event_id"])
    table["human_class"] = ids.map(per_photo["human_class"])
    shifted = ids.map(per_photo["time"])
    table["time"] = pd.to_datetime(shifted.where(ids.isin(per_photo.index), table["time"]))
    source = ids.map(per_photo["time_source"])
    table["time_source"] = source.where(ids.isin(per_photo.index), table["time_source"])
    return regs, table, state.reviewed_pairs(), state.problems


def outputs_key(out_dir: Path, settings: TrapSettings) -> str:
    """What the exports are made from: the store's shards, the reviewers' decisions and
    the settings that shape them."""
    shards = shard_files(out_dir / "photos.store")
    parts = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in shards]
    parts.append(("decisions", last_decision_id(out_dir)))
    learned = out_dir / "learned.parquet"
    if learned.exists():
        parts.append((learned.name, learned.stat().st_size, learned.stat().st_mtime_ns))
    shaping = {k: v for k, v in recorded_settings(settings).items()
               if k not in ("progress", "workers", "batch_size", "retry_failed")}
    if settings.deployments and Path(settings.deployments).exists():
        st = Path(settings.deployments).stat()
        shaping["deployments_file"] = (st.st_size, st.st_mtime_ns)
    text = json.dumps({"shards": parts, "settings": shaping}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def export_run(out: str | Path) -> tuple[pd.DataFrame, RunSummary]:
    """``kadr traps export``: rewrite every export of a run folder from its per-photo store,
    with the reviewers' decisions applied. No model is loaded."""
    out_dir = Path(out)
    before = run_summary(out_dir)
    settings = saved_settings(before.get("settings", {}))
    prompts = run_prompts(settings)
    summary = RunSummary(skipped_files=before.get("skipped_files", []),
                         empty_groups=before.get("empty_folders", []))
    regs = write_outputs(out_dir, settings, prompts, trap_fingerprint(settings, prompts),
                         summary, outputs_key(out_dir, settings),
                         PhotoRoot.recorded(before.get("photo_root"), out_dir))
    return regs, summary
