"""``kadr traps run``: detect, count, classify, form registrations, export, report.

Per-photo work is one batch job on the core runner (resumable, streamed);
everything after it reads the per-photo store and is cheap to redo, so
exports are rewritten whole (atomically) at the end of every run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from kadr.core.collection import PhotoCollection
from kadr.core.decode import DecodedPhoto
from kadr.core.models import WeightsNotFoundError, load_model
from kadr.core.models.detectors import Detection, nms
from kadr.core.models.spec import spec_fingerprint
from kadr.core.ordered import FILE, ORDER, ROW, ordered_batches, read_with_positions
from kadr.core.remote import staged
from kadr.core.runner import EngineOptions, Job, RunSummary, driver_job, run_job
from kadr.core.store import (
    ShardStore,
    atomic_open,
    atomic_write_table,
    atomic_write_text,
    shard_files,
)
from kadr.traps.decisions import Decision, last_decision_id, read_decisions
from kadr.traps.events import form_registrations
from kadr.traps.prompts import PromptSet, classify, load_prompts
from kadr.traps.tables import registrations_csv, time_text

EMPTY = "empty"


@dataclass
class TrapSettings:
    detector: str = "megadetector:MDV5A"
    classifier: str | None = "open_clip:ViT-B-32@laion2b_s34b_b79k"  # None: detector labels
    prompts: str | None = None
    threshold: float = 0.3  # detection confidence that counts as an animal
    classify_on: str = "both"  # crops | photo | both
    crop_margin: float = 0.15
    max_crops: int = 8
    gap: str = "30m"
    method: str = "sessions"
    batch_size: int = 16
    workers: int = 2
    group_level: int | None = None
    group_column: str | None = None  # for manifests: the column naming the camera
    time_pattern: str | None = None
    trust_checkpoint: bool = False
    retry_failed: bool = False  # try every earlier failure again, not only transient ones
    progress: bool = True
    allow_detector_labels: bool = False  # classifier weights missing: use the detector's labels
    deployments: str | None = None  # CSV with deploymentID/camera, latitude, longitude
    utc_offset: str | None = None  # the cameras' clock offset (+03:00); None: unknown
    media_url: str | None = None  # where the photos will be published, for Camtrap DP
    extra: dict = field(default_factory=dict)


def trap_fingerprint(settings: TrapSettings, prompts: PromptSet | None) -> dict:
    """Everything that changes the per-photo numbers, from the settings alone (no model is
    loaded for it). ``prompts`` is None when the detector's labels are the classes."""
    s = settings
    fp = {"job": "traps", "detector": s.detector, "detector_model": spec_fingerprint(s.detector),
          "threshold": s.threshold}
    if prompts is not None:
        prompts_text = json.dumps([c.__dict__ for c in prompts.classes], sort_keys=True)
        fp.update(classifier={"model": s.classifier, **spec_fingerprint(s.classifier)},
                  classify_on=s.classify_on, crop_margin=s.crop_margin, max_crops=s.max_crops,
                  crops="full-res padded", embedding="float32 vote-weighted mean",
                  prompts=hashlib.sha256(prompts_text.encode()).hexdigest()[:16])
    return fp


def count_animals(dets: list[Detection], threshold: float, iou: float = 0.5) -> list[Detection]:
    """Animal boxes above ``threshold`` after class-agnostic NMS: one box per animal.

    Per-class NMS inside the detector keeps a "horse" and an "elephant" box on
    the same elephant; for counting, an animal is an animal.
    """
    animals = [d for d in dets if d.category == "animal" and d.conf >= threshold]
    if len(animals) < 2:
        return animals
    xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (d.bbox for d in animals)], np.float32)
    keep = nms(xyxy, np.array([d.conf for d in animals], np.float32),
               np.zeros(len(animals), np.int64), iou)
    return [animals[i] for i in keep]


def crop_with_margin(image: Image.Image, bbox, margin: float) -> Image.Image:
    """The detection's box widened by ``margin`` of its size on each side (context helps CLIP)."""
    w, h = image.size
    x, y, bw, bh = bbox
    x1, y1 = max(0.0, x - margin * bw), max(0.0, y - margin * bh)
    x2, y2 = min(1.0, x + bw * (1 + margin)), min(1.0, y + bh * (1 + margin))
    box = (int(x1 * w), int(y1 * h), max(int(x1 * w) + 1, int(x2 * w)),
           max(int(y1 * h) + 1, int(y2 * h)))
    return image.crop(box)


class TrapJob:
    """The per-photo work of ``traps run``, as a core :class:`Job`."""

    def __init__(self, settings: TrapSettings):
        self.s = settings
        self.detector = load_model(settings.detector, kind="detector",
                                   trust_checkpoint=settings.trust_checkpoint)
        self.model = None
        self.prompts: PromptSet | None = None
        self.note = None
        if settings.classifier:
            try:
                self.model = load_model(settings.classifier, kind="image-text",
                                        trust_checkpoint=settings.trust_checkpoint)
            except WeightsNotFoundError as e:
                if not settings.allow_detector_labels:
                    raise
                self.note = ("classifier weights unavailable; classes are the detector's labels: "
                             + str(e).splitlines()[0])
        if self.model is not None:
            self.prompts = settings_prompts(settings)
            self.class_emb = self.prompts.class_embeddings(self.model)

    @property
    def class_names(self) -> list[str]:
        return self.prompts.names if self.prompts else []

    def prepare(self, photo: DecodedPhoto):
        # The photo stays at full resolution: a small, distant animal keeps every pixel it has.
        return self.detector.prepare(photo), photo.image

    def classifier_input(self, image: Image.Image, bbox) -> np.ndarray:
        """One animal as the classifier sees it: the box with its margin, cut from the
        full-resolution photo and padded (never cropped) to the model's shape."""
        crop = crop_with_margin(image, bbox, self.s.crop_margin)
        return self.model.prepare_image(self.model.preprocess.pad_to_shape(crop))

    def process(self, inputs: list, rows: list[dict]) -> list[dict]:
        if not inputs:
            return []
        all_dets = self.detector.detect([x for x, _ in inputs])
        results = []
        for (_, image), dets in zip(inputs, all_dets, strict=True):
            animals = count_animals(dets, self.s.threshold)
            results.append({
                "detections": json.dumps([d.as_dict() for d in dets if d.conf >= 0.05]),
                "n_animals": len(animals),
                "_animals": animals,
                "_image": image,
            })
        if self.model is None:
            for r in results:
                top = r["_animals"][0] if r["_animals"] else None
                r.update({"class": top.label if top else EMPTY,
                          "class_prob": round(top.conf, 4) if top else None,
                          "count": len(r["_animals"]), "embedding": None})
        else:
            self._classify(results)
        for r in results:
            r["top_bbox"] = json.dumps(r["_animals"][0].as_dict()["bbox"]) if r["_animals"] else None
            del r["_animals"], r["_image"]
        return results

    def _classify(self, results: list[dict]) -> None:
        mode = self.s.classify_on
        crops, owners, weights = [], [], []
        for i, r in enumerate(results):
            for d in r["_animals"][: self.s.max_crops] if mode in ("crops", "both") else []:
                crops.append(self.classifier_input(r["_image"], d.bbox))
                owners.append(i)
                weights.append(d.conf)
            if mode in ("photo", "both"):
                crops.append(self.model.prepare_image(r["_image"]))
                owners.append(i)
                weights.append(0.5 if r["_animals"] else 1.0)
        probs = np.zeros((len(results), len(self.class_names)), np.float32)
        vectors = np.zeros((len(results), self.class_emb.shape[1]), np.float32)
        if crops:
            emb = self.model.encode_images(crops)
            p = classify(emb, self.prompts, self.class_emb, self.model.logit_scale)
            w = np.array(weights, np.float32)[:, None]
            np.add.at(probs, np.array(owners), p * w)
            # What `traps learn` fits on: the photo's animals (and the photo) as the
            # classifier saw them, weighted as their votes are.
            np.add.at(vectors, np.array(owners), emb * w)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), np.nan)
        background = self.prompts.background
        names = self.class_names
        for i, r in enumerate(results):
            total = probs[i].sum()
            r["embedding"] = None if np.isnan(vectors[i]).any() else vectors[i]
            if total <= 0:  # crops-only mode and nothing detected
                r.update({"class": EMPTY, "class_prob": None, "count": 0})
                r.update({f"p_{n}": None for n in names})
                continue
            p = probs[i] / total
            k = int(p.argmax())
            cls = names[k]
            n = r["n_animals"]
            if cls in background:
                cls, count = EMPTY, (0 if n == 0 else n)
            else:
                # An animal the classifier sees but the detector did not count: count unknown.
                count = n if n > 0 else None
            r.update({"class": cls, "class_prob": round(float(p[k]), 4), "count": count})
            r.update({f"p_{n_}": round(float(v), 4) for n_, v in zip(names, p, strict=True)})


def settings_prompts(settings: TrapSettings) -> PromptSet:
    """The class prompts a run uses: the user's file, else the shipped example."""
    from kadr.traps.prompts import EXAMPLE

    return load_prompts(settings.prompts or str(EXAMPLE))


def saved_settings(saved: dict) -> TrapSettings:
    """The settings of an earlier run, as ``summary.json`` recorded them."""
    known = TrapSettings.__dataclass_fields__
    return TrapSettings(**{k: v for k, v in saved.items() if k in known})


def saved_prompts(saved: dict) -> PromptSet | None:
    """The class prompts an earlier run used; None without a classifier, or when its prompt
    file is gone or unreadable (the run's own tables still name every class)."""
    if not saved.get("classifier"):
        return None
    try:
        return settings_prompts(saved_settings(saved))
    except (OSError, ValueError):
        return None


# The per-photo columns registrations, links, the report and the summary read. The wide ones
# (detections, paths, per-class probabilities, embeddings) stay on disk until the exports
# stream them, a batch of photos at a time.
SMALL_COLUMNS = ("key", "group", "photo_id", "time", "time_source", "status", "reason", "class",
                 "class_prob", "count", "n_animals", "time_camera")


# Columns an earlier export added to photos.parquet, which is the source when a folder has
# no store: this export computes them afresh.
PREVIOUS_EXPORT_COLUMNS = ("event_id", "human_class", "time_camera")


def photo_files(out_dir: str | Path) -> list[Path]:
    """Where a run's per-photo rows are: the store's shards, else the exported table (a
    folder copied without its store)."""
    out_dir = Path(out_dir)
    store = out_dir / "photos.store"
    return shard_files(store) if store.exists() else [out_dir / "photos.parquet"]


def per_photo_table(files: list[Path], columns: tuple[str, ...] | None = SMALL_COLUMNS,
                    class_probabilities: bool = False) -> pd.DataFrame:
    """The per-photo results in camera/time order: ``columns`` (None: all but the
    embeddings, which `traps learn` reads), the ``p_<class>`` columns with
    ``class_probabilities``, and each row's address in ``files`` (for :func:`ordered_batches`)."""
    names = list(dict.fromkeys(n for f in files for n in pq.read_schema(f).names))
    wanted = [n for n in names if n != "embedding" and (
        columns is None or n in columns or (class_probabilities and n.startswith("p_")))]
    table = read_with_positions(files, wanted)
    if not table.num_rows:
        return table.to_pandas()
    # Sorted by Arrow (stable, missing times last) and handed to pandas a column at a time,
    # each read column freed once its sorted copy is made: one table's worth in memory.
    order = pc.sort_indices(table, sort_keys=[("group", "ascending"), ("time", "ascending"),
                                              ("key", "ascending")])
    columns = {name: table.column(name) for name in table.column_names}
    del table
    df = pd.DataFrame({name: columns.pop(name).take(order).to_pandas()
                       for name in list(columns)})
    df["time"] = pd.to_datetime(df["time"])
    return df


def photos_for_events(df: pd.DataFrame) -> pd.DataFrame:
    """The read photos in the columns :mod:`events` reads. The stored columns are typed
    already (text, times, numbers), so only the gaps are filled: no class is background,
    no class probability is a full vote."""
    ok = (df["status"] == "ok").to_numpy()
    return pd.DataFrame({
        "camera": df["group"][ok], "file": df["key"][ok], "time": df["time"][ok],
        "class": df["class"][ok].fillna(""), "count": df["count"][ok],
        "confidence": df["class_prob"][ok].fillna(1.0),
    })


def trap_job(trap: TrapJob, settings: TrapSettings) -> Job:
    return Job(
        name="traps",
        prepare=trap.prepare,
        process=trap.process,
        # Crops come from the full-resolution photo; without them the detector's size will do.
        min_side=None if trap.model and settings.classify_on != "photo"
        else max(trap.detector.size, trap.model.image_size if trap.model else 0),
        batch_size=settings.batch_size,
        empty_result={"detections": None, "n_animals": None, "class": None,
                      "class_prob": None, "count": None, "top_bbox": None, "embedding": None},
    )


def make_trap_job(settings: TrapSettings) -> Job:
    """Builds the models and the job: what each Ray actor runs once."""
    return trap_job(TrapJob(settings), settings)


@staged
def run_traps(photos: str, out: str, settings: TrapSettings,
              engine: EngineOptions | None = None) -> tuple[RunSummary, pd.DataFrame]:
    """The whole camera-trap job; returns the run summary and the registrations."""
    out_dir = Path(out)
    collection = PhotoCollection(photos, group_level=settings.group_level,
                                 group_column=settings.group_column)
    if engine is not None and engine.on_ray:
        # The actors load the models; the driver only needs the prompts for the exports.
        prompts = settings_prompts(settings) if settings.classifier else None
        job = driver_job("traps", settings.batch_size)
    else:
        trap = TrapJob(settings)
        prompts, job = trap.prompts, trap_job(trap, settings)
    fingerprint = trap_fingerprint(settings, prompts)
    with ShardStore(out_dir / "photos.store", fingerprint,
                    column_types={"embedding": pa.float32()}) as store:
        summary = run_job(collection, job, store, workers=settings.workers,
                          time_pattern=settings.time_pattern, progress=settings.progress,
                          retry_failed=settings.retry_failed,
                          engine=engine, job_factory=functools.partial(make_trap_job, settings))
    # A resume with nothing to do neither reads the store nor rewrites an output.
    key = outputs_key(out_dir, settings)
    unchanged = _unchanged_outputs(out_dir, key, summary)
    if unchanged is not None:
        return summary, unchanged
    regs = write_outputs(out_dir, settings, prompts, fingerprint, summary, key)
    return summary, regs


def outputs_key(out_dir: Path, settings: TrapSettings) -> str:
    """What the exports are made from: the store's shards, the reviewers' decisions and
    the settings that shape them."""
    shards = shard_files(out_dir / "photos.store")
    parts = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in shards]
    parts.append(("decisions", last_decision_id(out_dir)))
    learned = out_dir / "learned.parquet"
    if learned.exists():
        parts.append((learned.name, learned.stat().st_size, learned.stat().st_mtime_ns))
    shaping = {k: v for k, v in settings.__dict__.items()
               if k not in ("progress", "workers", "batch_size", "retry_failed", "extra")}
    if settings.deployments and Path(settings.deployments).exists():
        st = Path(settings.deployments).stat()
        shaping["deployments_file"] = (st.st_size, st.st_mtime_ns)
    text = json.dumps({"shards": parts, "settings": shaping}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _unchanged_outputs(out_dir: Path, key: str, summary: RunSummary) -> pd.DataFrame | None:
    """The registrations of the last run when it made the outputs from the same shards and
    settings (a resume with nothing to do rewrites nothing); None otherwise."""
    try:
        before = json.loads((out_dir / "summary.json").read_text())
        if before.get("outputs_key") != key or summary.processed:
            return None
        regs = pd.read_parquet(out_dir / "registrations.parquet")
    except (OSError, ValueError):
        return None
    summary.warnings = before.get("warnings", [])
    return regs


def write_outputs(out_dir: Path, settings: TrapSettings, prompts: PromptSet | None,
                  fingerprint: dict, summary: RunSummary, key: str) -> pd.DataFrame:
    """Every export of a run, from its per-photo rows (:func:`photo_files`); ``key``
    (:func:`outputs_key`) is recorded so that a later resume with nothing to do can leave
    them all as they are.

    Registrations come from the small columns; the per-photo exports then stream
    the rows in camera/time order, a batch at a time, through every writer at once."""
    from kadr.traps import export, report

    files = photo_files(out_dir)
    decisions = read_decisions(out_dir)
    table = per_photo_table(files, class_probabilities=bool(decisions))
    pairs = None
    if decisions:
        regs, table, pairs = reviewed_outputs(table, settings, decisions, out_dir)
    else:
        regs = form_registrations(photos_for_events(table), settings.method, settings.gap)
        regs, table = export.link_events(regs, table)
    atomic_write_text(out_dir / "registrations.csv", registrations_csv(regs))
    atomic_write_table(out_dir / "registrations.parquet",
                       pa.Table.from_pandas(regs, preserve_index=False))
    # What the exports add to the stored rows, each row named by its address.
    added = [c for c in ("time", "time_camera", "event_id", "human_class") if c in table]
    later = pa.Table.from_pandas(table[[FILE, ROW, *added]].assign(**{ORDER: np.arange(len(table))}),
                                 preserve_index=False) if len(table) else pa.table({})
    gallery = set(report.gallery_keys(regs))
    best = []
    camtrap = export.CamtrapPackage(
        out_dir / "camtrap-dp", table, regs,
        scientific_names=prompts.scientific_names() if prompts else {},
        deployments_csv=settings.deployments, utc_offset=settings.utc_offset,
        media_url=settings.media_url)
    with (atomic_open(out_dir / "photos.csv") as photos_csv,
          atomic_open(out_dir / "photos.parquet", binary=True) as photos_parquet,
          export.megadetector_json(out_dir / "megadetector.json", fingerprint, table) as md_json,
          camtrap):
        parquet = None  # opened on the first batch, with its schema
        for batch in ordered_batches(files, later, spill_dir=out_dir,
                                     exclude=("embedding", *PREVIOUS_EXPORT_COLUMNS)):
            chunk = batch.to_pandas()
            chunk.assign(time=time_text(chunk["time"])).to_csv(
                photos_csv, index=False, header=parquet is None, lineterminator="\n")
            if parquet is None:
                parquet = pq.ParquetWriter(photos_parquet, batch.schema, compression="zstd")
            parquet.write_batch(batch)
            md_json(chunk)
            camtrap.write(chunk)
            best.append(chunk[chunk["key"].isin(gallery)][["key", "path", "detections",
                                                          "class_prob"]])
        if parquet is None:  # no photos: the tables keep their columns
            pq.write_table(pa.Table.from_pandas(table.drop(columns=[FILE, ROW], errors="ignore"),
                                                preserve_index=False), photos_parquet)
        else:
            parquet.close()
    warnings = camtrap.warnings + file_dated_warning(table)
    summary.warnings = [w for w in summary.warnings if w not in warnings] + warnings
    agreement = None
    if pairs is not None:
        agreement = export.write_agreement(pairs, out_dir)
    learned = out_dir / "learn.json"
    learning = json.loads(learned.read_text()) if learned.exists() and decisions else None
    best_rows = pd.concat(best).drop_duplicates("key").set_index("key") if best else None
    jumps = report.clock_jumps(table) if len(table) else {}
    atomic_write_text(out_dir / "report.html",
                      report.render_report(table, regs, settings, summary.warnings, agreement,
                                           learning, best_rows, jumps))
    failed = table[table["status"] != "ok"] if len(table) else table
    atomic_write_text(out_dir / "summary.json", json.dumps({
        "photos": len(table), "ok": len(table) - len(failed),
        "failed": failed[["key", "status", "reason"]].to_dict("records") if len(failed) else [],
        "skipped_files": summary.skipped_files, "empty_folders": summary.empty_groups,
        "clock_jumps_back": jumps,
        "photos_without_exif_time": int((table["time_source"] != "exif").sum()) if len(table)
        else 0,
        "registrations": len(regs), "method": settings.method, "gap": settings.gap,
        "decisions": len(decisions), "reviewed_registrations": int(regs["reviewed"].sum())
        if "reviewed" in regs else 0,
        "warnings": summary.warnings,
        "outputs_key": key,
        "settings": {k: v for k, v in settings.__dict__.items() if k != "extra"},
    }, indent=2, default=str))
    return regs


def reviewed_outputs(table: pd.DataFrame, settings: TrapSettings, decisions: list[Decision],
                     out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Registrations and the per-photo table with the reviewers' decisions applied: human
    classes, counts, splits and merges, clock shifts (``time``; ``time_camera`` keeps the
    camera's own), and the learned classifier's classes for what nobody reviewed. Also the
    (machine, human) class of every reviewed registration."""
    from kadr.traps.review import ReviewState, camera_times, load_learned

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
    return regs, table, state.reviewed_pairs()


def export_run(out: str | Path) -> tuple[pd.DataFrame, RunSummary]:
    """``kadr traps export``: rewrite every export of a run folder from its per-photo store,
    with the reviewers' decisions applied. No model is loaded."""
    from kadr.traps.review import run_summary

    out_dir = Path(out)
    before = run_summary(out_dir)
    settings = saved_settings(before.get("settings", {}))
    prompts = settings_prompts(settings) if settings.classifier else None
    summary = RunSummary(skipped_files=before.get("skipped_files", []),
                         empty_groups=before.get("empty_folders", []))
    regs = write_outputs(out_dir, settings, prompts, trap_fingerprint(settings, prompts),
                         summary, outputs_key(out_dir, settings))
    return regs, summary


def file_dated_warning(table: pd.DataFrame) -> list[str]:
    """A warning naming registrations dated by a file's name or modification time (no EXIF
    time): a copied or checked-out photo carries the day it was copied."""
    if not len(table) or "event_id" not in table:
        return []
    guessed = table[(table["time_source"] != "exif") & table["event_id"].notna()]
    if guessed.empty:
        return []
    cams = sorted(guessed["group"].astype(str).unique())
    return [f"{guessed['event_id'].nunique()} registration(s) on {', '.join(cams[:5])}"
            f"{' ...' if len(cams) > 5 else ''} are dated by file name or modification time "
            "(no EXIF time): check those dates, or shift the camera clock in `kadr traps review`"]
