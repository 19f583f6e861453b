"""``kadr hotels profile``: what a hotel-photo collection holds, and what is wrong with it.

One streamed pass over the photos (the core runner: resumable, broken files
become status rows) computes per photo its size, format, colour mode,
content id and perceptual hashes (upright and rotated), and, when a CLIP
model is given, zero-shot scores for "which rotation looks upright" and
"is this a hotel photo at all". Everything else is aggregation over that
table: counts and imbalance per hotel/chain/source, duplicates, flags.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from kadr.core.decode import DecodedPhoto
from kadr.core.models import WeightsNotFoundError, load_model
from kadr.core.models.device import computes_on_cpu
from kadr.core.models.factory import model_fingerprint
from kadr.core.remote import staged
from kadr.core.runner import BASE_COLUMNS, Job, RunOptions, WorkflowResult, run_workflow
from kadr.core.status import PhotoStatus
from kadr.core.store import atomic_write_table, atomic_write_text, output_folder, read_shards
from kadr.hotels.duplicates import ROTATIONS, duplicates
from kadr.hotels.report import render_profile
from kadr.hotels.sources import hotel_collection
from kadr.hotels.statistics import group_columns, imbalance

ON_TOPIC = [
    "a photo of a hotel room with a bed", "a photo of a hotel bathroom",
    "a photo of a hotel lobby", "a photo of a hotel restaurant", "a photo of a swimming pool",
    "a photo of a hotel building exterior", "a photo of the view from a hotel window",
    "a photo of a kitchen", "a photo of a living room", "a photo of a meeting room",
]
OFF_TOPIC = [
    "a photo of a coin", "a photo of a medal", "a scanned document with text",
    "a logo on a white background", "a portrait photo of a person", "a close-up photo of food",
    "a map", "a screenshot", "a photo of a car", "a blank black image",
]


@dataclass(kw_only=True)
class ProfileSettings(RunOptions):
    clip: str | None = "open_clip:ViT-B-32@laion2b_s34b_b79k"
    near_distance: int = 4  # perceptual-hash bits that may differ for a near duplicate
    rotation_threshold: float = 0.5
    offtopic_threshold: float = 0.5
    fix_rotation: bool = False


def _phash(image: Image.Image) -> int:
    return int(str(imagehash.phash(image)), 16)


def _shrink_to_short_side(image: Image.Image, side: int) -> Image.Image:
    """A copy whose shorter side is ``side`` (the image itself when already no larger)."""
    scale = side / min(image.size)
    if scale >= 1:
        return image
    size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def profile_fingerprint(settings: ProfileSettings, with_clip: bool = True) -> dict:
    return {"job": "hotels-profile", "hash": "phash64",
            "clip": model_fingerprint(settings.clip) if with_clip and settings.clip else None}


def make_profile_job(settings: ProfileSettings) -> Job:
    return ProfileJob(settings).job()


class ProfileJob:
    def __init__(self, settings: ProfileSettings):
        self.s = settings
        self.model = None
        self.note = None
        if settings.clip:
            try:
                self.model = load_model(settings.clip, kind="image-text")
            except WeightsNotFoundError as e:
                self.note = ("model-based checks (rotation, off-topic) skipped: "
                             + str(e).splitlines()[0])
        if self.model is not None:
            from kadr.core.text_cache import text_embeddings

            self.text = text_embeddings(self.model, ON_TOPIC + OFF_TOPIC)

    @property
    def fingerprint(self) -> dict:
        return profile_fingerprint(self.s, with_clip=self.model is not None)

    def job(self) -> Job:
            return Job(name="profile", prepare=self.prepare, process=self.process,
                   min_side=256 if self.model is None else max(256, self.model.image_size),
                   batch_size=self.s.batch_size, fingerprint=self.fingerprint,
                   notes=[self.note] if self.note else [],
                   decode_between_batches=computes_on_cpu(self.model))

    def prepare(self, photo: DecodedPhoto):
        img = photo.image
        small = img.copy()
        small.thumbnail((256, 256), Image.Resampling.BILINEAR)
        hashes = [_phash(small if r == 0 else small.rotate(r, expand=True)) for r in ROTATIONS]
        if self.model is None:
            return hashes, None
        # The model sees each orientation at its own input size, not the hash's 256 px copy.
        view = _shrink_to_short_side(img, self.model.image_size)
        arrays = [self.model.prepare_image(view if r == 0 else view.rotate(r, expand=True))
                  for r in ROTATIONS]
        return hashes, arrays

    def process(self, inputs: list, rows: list[dict]) -> list[dict]:
        out = []
        for hashes, _ in inputs:
            out.append({f"phash_{r}": f"{h:016x}" for r, h in zip(ROTATIONS, hashes, strict=True)})
        if self.model is None or not inputs:
            return out
        arrays = [a for _, arrs in inputs for a in arrs]
        emb = self.model.encode_images(arrays).reshape(len(inputs), len(ROTATIONS), -1)
        sims = emb @ self.text.T  # [N, 4, P]
        scale = self.model.logit_scale
        # Rotation: which orientation best matches any on-topic scene.
        best = sims[:, :, : len(ON_TOPIC)].max(-1) * scale
        p_rot = np.exp(best - best.max(1, keepdims=True))
        p_rot /= p_rot.sum(1, keepdims=True)
        # Off-topic: the upright (or best-rotated) view against both prompt sets.
        k = p_rot.argmax(1)
        upright = sims[np.arange(len(inputs)), k] * scale
        p_text = np.exp(upright - upright.max(1, keepdims=True))
        p_text /= p_text.sum(1, keepdims=True)
        p_off = p_text[:, len(ON_TOPIC):].sum(1)
        for i, r in enumerate(out):
            top = int(p_text[i].argmax())
            r.update({
                "rotation_needed": int(ROTATIONS[k[i]]),
                "rotation_confidence": round(float(p_rot[i, k[i]]), 4),
                "offtopic_prob": round(float(p_off[i]), 4),
                "scene": (ON_TOPIC + OFF_TOPIC)[top],
            })
        return out


# -- aggregation -----------------------------------------------------------------------


def summarise(photos: pd.DataFrame, settings: ProfileSettings, note: str | None) -> dict:
    ok = photos[photos["status"] == PhotoStatus.OK]
    summary: dict = {
        "rows": len(photos),
        "unique_paths": int(photos["path"].nunique()),
        "unique_image_ids": int(photos["extra_image_id"].nunique())
        if "extra_image_id" in photos else None,
        "unique_contents": int(ok["photo_id"].nunique()),
        "readable": len(ok),
        "missing": int((photos["status"] == PhotoStatus.MISSING).sum()),
        "unreadable": int((~photos["status"].isin([PhotoStatus.OK, PhotoStatus.MISSING])).sum()),
        "status_counts": photos["status"].value_counts().to_dict(),
        "formats": ok["format"].value_counts().to_dict(),
        "colour_modes": ok["mode"].value_counts().to_dict(),
        "width": ok["width"].describe().round(1).to_dict() if len(ok) else {},
        "height": ok["height"].describe().round(1).to_dict() if len(ok) else {},
        "aspect_ratio": (ok["width"] / ok["height"]).describe().round(3).to_dict()
        if len(ok) else {},
        "model_checks": note or f"done with {settings.clip}",
    }
    for what, col in group_columns(photos).items():
        summary[f"per_{what}"] = imbalance(photos.groupby(col).size())
        summary[f"per_{what}"]["column"] = col
    if "rotation_needed" in photos and ok["rotation_needed"].notna().any():
        rot = ok[(ok["rotation_needed"] != 0)
                 & (ok["rotation_confidence"] >= settings.rotation_threshold)]
        summary["rotated"] = {"flagged": len(rot),
                              "by_angle": rot["rotation_needed"].value_counts().to_dict()}
        off = ok[ok["offtopic_prob"] >= settings.offtopic_threshold]
        summary["off_topic"] = {"flagged": len(off)}
    return summary


@staged
def run_profile(source: str, out: str, settings: ProfileSettings) -> WorkflowResult:
    out_dir = Path(out)
    output_folder(out_dir)
    collection, kind = hotel_collection(source, out_dir, settings.path_column,
                                        settings.group_column)
    run_summary = run_workflow(collection, out_dir / "photos.store",
                               functools.partial(make_profile_job, settings), settings,
                               name="profile", fingerprint=profile_fingerprint(settings))
    summary = profile_outputs(out_dir, settings, "; ".join(run_summary.warnings) or None, kind,
                              len(run_summary.skipped_files))
    return WorkflowResult(run_summary, out_dir, out_dir / "photos.parquet", summary)


def profile_outputs(out_dir: Path, settings: ProfileSettings, note: str | None, kind: str,
                    skipped_files: int = 0) -> dict:
    """Everything a profile writes after the models ran, from its store
    (``OUT/photos.store``): duplicates, statistics, tables, report. No model is loaded."""
    stored = read_shards(out_dir / "photos.store")
    atomic_write_table(out_dir / "photos.parquet", stored)  # the store's rows as they are
    photos = stored.to_pandas()
    if not len(photos):  # nothing listed: empty tables and page, not a KeyError
        photos = pd.DataFrame(columns=[*BASE_COLUMNS, *(f"phash_{r}" for r in ROTATIONS)])
    del stored
    skipped: dict = {}
    dups = duplicates(photos, settings.near_distance, settings.rotation_threshold, skipped)
    summary = summarise(photos, settings, note)
    if skipped.get("buckets"):  # said, not hidden: some near copies may be missing
        summary["duplicate_search_hot_buckets"] = skipped
    summary["source_kind"] = kind
    summary["duplicates"] = {k: int(v) for k, v in dups["kind"].value_counts().items()}
    summary["skipped_files"] = skipped_files
    atomic_write_table(out_dir / "duplicates.parquet", pa.Table.from_pandas(dups, preserve_index=False))
    for what, col in group_columns(photos).items():
        counts = photos.groupby(col).size().rename("photos").reset_index()
        atomic_write_table(out_dir / f"per_{what}.parquet",
                           pa.Table.from_pandas(counts, preserve_index=False))
    atomic_write_text(out_dir / "profile.json", json.dumps(summary, indent=2, default=str))
    atomic_write_text(out_dir / "profile.html", render_profile(photos, dups, summary, settings))
    if settings.fix_rotation and "rotation_needed" in photos:
        write_upright_copies(photos, out_dir / "upright", settings.rotation_threshold)
    return summary


def write_upright_copies(photos: pd.DataFrame, folder: Path, threshold: float) -> int:
    """Upright JPEG copies of the photos flagged as rotated (originals untouched)."""
    from kadr.core.decode import decode_photo, read_bytes
    from kadr.core.store import atomic_write_bytes

    flagged = photos[(photos["status"] == PhotoStatus.OK) & (photos["rotation_needed"] != 0)
                     & (photos["rotation_confidence"] >= threshold)]
    import io

    for r in flagged.to_dict("records"):
        img = decode_photo(read_bytes(r["path"])).image.rotate(int(r["rotation_needed"]), expand=True)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95)
        name = r["key"].replace("/", "__").replace("#", "_")
        atomic_write_bytes(folder / f"{Path(name).stem}.jpg", buf.getvalue())
    return len(flagged)
