"""Video clips as media items: a row per clip from its sampled frames (``clips.parquet``,
and Camtrap DP's clip media and observations).

A clip is counted as a reviewer counts one: its largest count over the frames, and its
class the vote of its frames (their class probabilities summed) among the frames that
see an animal; a clip whose frames see none is blank. ``photos.parquet`` keeps the
frames only, because review, ``traps learn`` and a re-export read it back as per-photo
rows.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kadr.core.status import PhotoStatus
from kadr.core.store import atomic_open
from kadr.traps.tables import BACKGROUND_CLASSES, EMPTY

CLIP_SCHEMA = pa.schema([
    ("media_key", pa.string()), ("group", pa.string()), ("path", pa.string()),
    ("media_type", pa.string()), ("start", pa.timestamp("us")), ("end", pa.timestamp("us")),
    ("time_source", pa.string()), ("frames", pa.int64()), ("frames_failed", pa.int64()),
    ("class", pa.string()), ("class_prob", pa.float64()), ("count", pa.int64()),
    ("event_id", pa.string()),
])


def clip_summaries(frames: pd.DataFrame) -> pd.DataFrame:
    """One row per clip (``media_key``) of ``frames``, in the order first met: see the
    module docstring. ``frames`` are stored rows with ``media_key`` set."""
    out = []
    for key, f in frames.groupby("media_key", sort=False):
        ok = f[f["status"] == PhotoStatus.OK]
        counts = pd.to_numeric(ok["count"], errors="coerce").fillna(0)
        animal = ok[~ok["class"].fillna("").str.lower().isin(BACKGROUND_CLASSES) & (counts > 0)]
        events = ok["event_id"].dropna() if "event_id" in ok else pd.Series([], dtype=str)
        row = {"media_key": key, "group": str(f["group"].iloc[0]), "path": f["path"].iloc[0],
               "media_type": f["media_type"].iloc[0], "start": ok["time"].min(),
               "end": ok["time"].max(),
               "time_source": ok["time_source"].iloc[0] if len(ok) else None,
               "frames": len(f), "frames_failed": len(f) - len(ok),
               "class": None, "class_prob": None, "count": None,
               "event_id": events.mode().iloc[0] if len(events) else None}
        if len(ok) and animal.empty:
            row.update({"class": EMPTY, "count": 0})
        elif len(ok):
            prob = pd.to_numeric(animal["class_prob"], errors="coerce").fillna(1.0)
            cls = prob.groupby(animal["class"]).sum().idxmax()
            row.update({"class": cls, "count": int(counts[animal.index].max()),
                        "class_prob": round(float(prob[animal["class"] == cls].mean()), 4)})
        out.append(row)
    return pd.DataFrame(out, columns=CLIP_SCHEMA.names)


@contextmanager
def clips_parquet(path: Path):
    """``clips.parquet``, written atomically a chunk of photos at a time: yields a writer
    that takes each chunk's rows (photos and frames; the frames make the clips). Written
    (empty) when a run has no clip, so that it always matches the run."""
    with atomic_open(path, binary=True) as f, pq.ParquetWriter(f, CLIP_SCHEMA,
                                                                compression="zstd") as writer:
        def write(photos: pd.DataFrame) -> None:
            if "media_key" not in photos or not photos["media_key"].notna().any():
                return
            clips = clip_summaries(photos[photos["media_key"].notna()])
            for name in ("start", "end"):
                clips[name] = pd.to_datetime(clips[name])
            writer.write_table(pa.Table.from_pandas(clips, schema=CLIP_SCHEMA,
                                                    preserve_index=False))
        yield write
