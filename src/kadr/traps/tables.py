"""Reading and writing the tables ecologists exchange: per-photo tables and registrations.

Every reader returns one normalised per-photo frame with the columns
``camera, file, time, class, count, confidence`` (plus ``row_status`` saying
what was wrong with a row), whatever the input looked like.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kadr.core.store import atomic_write_text

REGISTRATION_COLUMNS = [
    "name_folder",
    "class",
    "date_registration_start",
    "date_registration_end",
    "count",
]
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PHOTO_COLUMNS = ["camera", "file", "time", "class", "count", "confidence"]
BACKGROUND_CLASSES = frozenset({"", "empty", "background", "blank", "none", "nan"})

# Column names other tools use, mapped onto kadr's normalised names.
ALIASES = {
    "camera": ("camera", "name_folder", "group", "deployment", "deploymentID", "station"),
    "file": ("file", "name", "path", "key", "filename", "filePath"),
    "time": ("time", "timestamp", "date_registration", "datetime", "date_time"),
    "class": ("class", "class_predict", "species", "label", "scientificName"),
    "count": ("count", "n", "animal_count"),
    "confidence": ("confidence", "class_confidence", "probability", "class_prob"),
}


# EXIF's own date form (exiftool and many camera tools write it): 2009:04:21 00:40:00.
_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})(?=[ T]|$)")
# A trailing UTC offset: the wall-clock time as written is kept (camera-local, like EXIF).
_UTC_OFFSET = re.compile(r"(?<=\d)(Z|[+-]\d{2}:?\d{2})$")
_NO_TIME = {"", "nan", "nat", "none", "null"}


class TimeParseError(ValueError):
    """Times that are present but cannot be read: never guessed."""


def parse_times(raw: pd.Series, names: pd.Series | None = None, what: str = "time") -> pd.Series:
    """Naive (camera-local) datetimes from ISO 8601 or EXIF-form strings.

    Empty cells are missing times (NaT). Any other cell that is not one of
    those two forms is an error naming the rows: a time read wrongly moves a
    photo into another registration without a trace, so nothing is guessed.
    """
    if pd.api.types.is_datetime64_any_dtype(raw):
        t = pd.Series(raw)
        return t.dt.tz_localize(None) if t.dt.tz is not None else t
    text = pd.Series(raw, dtype="string").str.strip()
    missing = text.isna() | text.str.lower().isin(_NO_TIME)
    # The common forms in vectorised passes (the case's own form through Arrow's strptime,
    # then any ISO 8601); only what they cannot read is rewritten (EXIF dates, UTC
    # offsets), so a million times parse at C speed.
    parsed = _case_form(text.where(~missing))
    rest = (parsed.isna() & ~missing).to_numpy()
    if rest.any():
        iso = pd.to_datetime(text[rest], errors="coerce", format="ISO8601")
        if getattr(iso.dt, "tz", None) is None:  # with UTC offsets: the rewrite below
            parsed[rest] = iso.to_numpy()
    retry = (parsed.isna() & ~missing).to_numpy()
    if retry.any():
        other = text[retry].str.replace(_EXIF_DATE, r"\1-\2-\3", regex=True)
        text = text.copy()
        text[retry] = other.str.replace(_UTC_OFFSET, "", regex=True)
        parsed = pd.to_datetime(text.where(~missing), errors="coerce", format="ISO8601")
    bad = np.flatnonzero((parsed.isna() & ~missing).to_numpy())
    if len(bad):
        shown = []
        for i in bad[:5]:
            label = f" ({names.iloc[i]})" if names is not None else ""
            shown.append(f"row {i + 1}{label}: {raw.iloc[i]!r}")
        raise TimeParseError(
            f"{len(bad)} {what} value(s) cannot be read as ISO 8601 (2024-07-01 06:00:00) or "
            f"EXIF (2024:07:01 06:00:00) times: " + "; ".join(shown)
            + ("; ..." if len(bad) > 5 else "") + ". Fix or empty those cells.")
    return parsed.astype("datetime64[ns]")  # one unit, whichever parser read them


def numbers(values: pd.Series) -> pd.Series:
    """Floats from numbers or text; what is not a number (an empty cell) is NaN. Text goes
    through Arrow's cast (C speed); pandas' parser reads what Arrow refuses."""
    if not pd.api.types.is_string_dtype(values.dtype):
        return pd.to_numeric(values, errors="coerce").astype(float)
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pa.array(values, type=pa.string())
        arr = pc.if_else(pc.equal(pc.utf8_trim_whitespace(arr), ""), None, arr)
        floats = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        return pd.Series(floats, index=values.index, dtype=float)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pd.to_numeric(values, errors="coerce").astype(float)


def _case_form(text: pd.Series) -> pd.Series:
    """``YYYY-MM-DD HH:MM:SS`` times (NaT elsewhere), parsed by Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(text, type=pa.string())
    stamps = pc.strptime(arr, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    values = stamps.to_numpy(zero_copy_only=False).astype("datetime64[ns]")
    return pd.Series(values, index=text.index)


def _read_any(path: str) -> pd.DataFrame:
    p = str(path)
    if p.endswith((".parquet", ".pq")) or os.path.isdir(p):
        if os.path.isdir(p):
            from kadr.core.store import read_shards

            return read_shards(p).to_pandas()
        return pd.read_parquet(p)
    if p.endswith(".json"):
        return megadetector_to_frame(json.loads(Path(p).read_text()))
    return read_text_csv(p)


def read_text_csv(path: str) -> pd.DataFrame:
    """A CSV with every cell as text, stripped (the case's own sample file pads every field
    with spaces); empty cells stay empty strings. Arrow's multithreaded reader; pandas' for
    what it refuses (ragged rows, other encodings), which gives the same frame."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header}, strings_can_be_null=False))
        return pd.DataFrame({name.strip(): pc.utf8_trim_whitespace(table.column(i)).to_pandas()
                             for i, name in enumerate(table.column_names)})
    except (pa.ArrowInvalid, UnicodeDecodeError, StopIteration):
        df = pd.read_csv(path, skipinitialspace=True, dtype=str, keep_default_na=False)
        df.columns = [c.strip() for c in df.columns]
        return df.apply(lambda s: s.str.strip() if s.dtype == object or s.dtype == "str" else s)


def normalise_photo_table(df: pd.DataFrame) -> pd.DataFrame:
    """Map any known per-photo schema onto PHOTO_COLUMNS; flag rows that are unusable."""
    out = pd.DataFrame(index=df.index)
    for name, options in ALIASES.items():
        col = next((c for c in options if c in df.columns), None)
        out[name] = df[col] if col is not None else np.nan
    if out["camera"].isna().all() and "file" in out:
        out["camera"] = out["file"].astype(str).map(lambda f: os.path.dirname(f) or ".")
    out["camera"] = out["camera"].astype(str).str.strip()
    out["file"] = out["file"].astype(str).str.strip()
    out["time"] = parse_times(out["time"], out["file"]).to_numpy()
    out["class"] = out["class"].fillna("").astype(str).str.strip()
    out["count"] = numbers(out["count"])
    out["confidence"] = numbers(out["confidence"]).fillna(1.0)
    status = np.where(out["time"].isna(), "no_time", "ok")
    out["row_status"] = status
    if "registrations_id" in df.columns:
        out["registrations_id"] = df["registrations_id"].astype(str).str.strip()
        out["registration_class"] = df.get("registration_class", out["class"])
        out["max_count"] = pd.to_numeric(df.get("max_count"), errors="coerce")
    return out


def read_photo_table(path: str) -> pd.DataFrame:
    """A per-photo table: the case's CSV, a generic CSV/Parquet, kadr's output, or MD JSON."""
    return normalise_photo_table(_read_any(path))


def megadetector_to_frame(data: dict, threshold: float | None = None) -> pd.DataFrame:
    """MegaDetector batch output -> one row per image (count of animal boxes, top class).

    The counting threshold is the file's own ``typical_detection_threshold``
    when it states one, else 0.2 (MegaDetector v5's usual value).
    """
    if threshold is None:
        meta = (data.get("info") or {}).get("detector_metadata") or {}
        threshold = float(meta.get("typical_detection_threshold") or 0.2)
    cats = data.get("detection_categories", {})
    ccats = data.get("classification_categories", {})
    rows = []
    for im in data.get("images", []):
        dets = [d for d in im.get("detections") or [] if d.get("conf", 0) >= threshold]
        animals = [d for d in dets if cats.get(str(d.get("category"))) == "animal"]
        cls, conf = ("", 1.0)
        if animals:
            best = max(animals, key=lambda d: d["conf"])
            conf = float(best["conf"])
            if best.get("classifications"):
                cid, p = max(best["classifications"], key=lambda c: c[1])
                cls, conf = ccats.get(str(cid), str(cid)), float(p)
            else:
                cls = "animal"
        rows.append({
            "file": im.get("file"),
            "time": im.get("datetime"),
            "class": cls,
            "count": len(animals),
            "confidence": conf,
            "status": "failed" if im.get("failure") else "ok",
        })
    return pd.DataFrame(rows)


def read_registrations(path: str) -> pd.DataFrame:
    """A registrations CSV, or a per-photo table with ``registrations_id`` (reference)."""
    df = _read_any(path)
    if "registrations_id" in df.columns:
        photos = normalise_photo_table(df)
        photos = photos[photos["time"].notna()]
        g = photos.groupby(["camera", "registrations_id"], sort=False)
        regs = g.agg(
            cls=("registration_class", "first"),
            start=("time", "min"),
            end=("time", "max"),
            count=("max_count", "max"),
            count_photo=("count", "max"),
        ).reset_index()
        regs["count"] = regs["count"].fillna(regs["count_photo"]).fillna(1)
        return _registrations_frame(regs["camera"], regs["cls"], regs["start"], regs["end"],
                                    regs["count"])
    missing = [c for c in REGISTRATION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a registrations table; missing columns {missing}")
    return _registrations_frame(
        df["name_folder"], df["class"],
        parse_times(df["date_registration_start"], what="date_registration_start"),
        parse_times(df["date_registration_end"], what="date_registration_end"),
        pd.to_numeric(df["count"], errors="coerce").fillna(1),
    )


def _registrations_frame(camera, cls, start, end, count) -> pd.DataFrame:
    return pd.DataFrame({
        "name_folder": pd.Series(camera).astype(str).str.strip().to_numpy(),
        "class": pd.Series(cls).astype(str).str.strip().to_numpy(),
        "date_registration_start": pd.to_datetime(pd.Series(start)).to_numpy(),
        "date_registration_end": pd.to_datetime(pd.Series(end)).to_numpy(),
        "count": pd.Series(count).astype(int).to_numpy(),
    })


def registrations_csv(regs: pd.DataFrame) -> str:
    """The case's submission format: exact header, clean fields, YYYY-MM-DD HH:MM:SS."""
    out = regs[REGISTRATION_COLUMNS].copy()
    for c in ("date_registration_start", "date_registration_end"):
        out[c] = time_text(out[c])
    out["count"] = out["count"].astype(int)
    buf = io.StringIO()
    out.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def time_text(times: pd.Series) -> np.ndarray:
    """``YYYY-MM-DD HH:MM:SS`` (TIME_FORMAT) for each time; "" where there is none.
    NumPy's formatter: a hundred times faster than strftime per row."""
    t = pd.to_datetime(times).to_numpy(dtype="datetime64[s]")
    if not len(t):
        return np.zeros(0, dtype=object)
    text = np.char.replace(np.datetime_as_string(t, unit="s"), "T", " ").astype(object)
    text[np.isnat(t)] = ""
    return text


def write_registrations(regs: pd.DataFrame, path: str) -> None:
    atomic_write_text(path, registrations_csv(regs))
