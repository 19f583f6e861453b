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
import pyarrow as pa
import pyarrow.compute as pc

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
EMPTY = "empty"  # the class of a photo or registration without an animal
REVIEWER_TIME = "reviewer"  # time_source of a photo whose camera clock a reviewer set
# A photo's (or clip frame's) time from the camera's own metadata or a reviewer, not
# guessed from its file: EXIF, a container's creation time (kadr.core.video.TIME_TAGS).
DATED_TIME_SOURCES = ("exif", "creation_time", "quicktime_creationdate", REVIEWER_TIME)
BACKGROUND_CLASSES = frozenset({"", EMPTY, "background", "blank", "none", "nan"})


def background_of_codes(class_names) -> np.ndarray:
    """Per class code (``class_names[code]``), whether it is background; one more entry,
    True, so that code -1 (no class at all) reads as background too."""
    return np.array([str(c).lower() in BACKGROUND_CLASSES for c in class_names] + [True])

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


def _numbers(col: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """float64 from a column of numbers or text (nulls where a cell is not a number). Text
    goes through Arrow's cast (C speed); pandas' parser reads what Arrow refuses."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        try:
            return pc.cast(col, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            col = pc.cast(col, pa.string())
    text = pc.utf8_trim_whitespace(col)
    try:
        return pc.cast(pc.if_else(pc.equal(text, ""), None, text), pa.float64())
    except pa.ArrowInvalid:
        values = pd.to_numeric(pd.Series(text.to_pylist(), dtype=object), errors="coerce")
        return pa.array(values.to_numpy(dtype=float), from_pandas=True)


def _case_form(text: pd.Series) -> pd.Series:
    """``YYYY-MM-DD HH:MM:SS`` times (NaT elsewhere), parsed by Arrow."""
    arr = pa.array(text, type=pa.string())
    stamps = pc.strptime(arr, format=TIME_FORMAT, unit="s", error_is_null=True)
    values = stamps.to_numpy(zero_copy_only=False).astype("datetime64[ns]")
    return pd.Series(values, index=text.index)


def _read_any(path: str) -> pd.DataFrame:

    return _read_arrow(path).to_pandas()


def _read_arrow(path: str, strip: bool = True) -> pa.Table:
    p = str(path)
    if os.path.isdir(p):
        from kadr.core.store import read_shards, shard_files

        if not shard_files(p):  # a photo folder, or an empty one: not a table of photos
            raise ValueError(f"{p} is a folder without result-store shards (part-*.parquet): "
                             "give a per-photo table (CSV, Parquet, MegaDetector JSON) or the "
                             "photos.store folder of a run")
        return read_shards(p)
    if p.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        return pq.read_table(p)
    if p.endswith(".json"):
        return _frame_to_arrow(megadetector_to_frame(json.loads(Path(p).read_text())))
    return read_text_csv(p, strip)


def read_text_csv(path: str, strip: bool = True) -> pa.Table:
    """A CSV with every cell as text, stripped (the case's own sample file pads every field
    with spaces; ``strip=False`` leaves that to the caller); empty cells stay empty strings.
    Arrow's multithreaded reader; pandas' for what it refuses (ragged rows, other
    encodings), which gives the same table."""
    import pyarrow.csv as pacsv

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header}, strings_can_be_null=False))
        return pa.table({name.strip(): pc.utf8_trim_whitespace(table.column(i)) if strip
                         else table.column(i) for i, name in enumerate(table.column_names)})
    except (pa.ArrowInvalid, UnicodeDecodeError, StopIteration):
        df = pd.read_csv(path, skipinitialspace=True, dtype=str, keep_default_na=False)
        return pa.table({str(c).strip(): pc.utf8_trim_whitespace(pa.array(df[c].astype(str)))
                         for c in df.columns})


def _frame_to_arrow(df: pd.DataFrame) -> pa.Table:
    """A pandas frame as an Arrow table; a column of mixed Python values becomes text."""
    columns = {}
    for name in df.columns:
        try:
            columns[str(name)] = pa.array(df[name], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[str(name)] = pa.array(
                [None if pd.isna(v) else str(v) for v in df[name]], type=pa.string())
    return pa.table(columns)


def _text(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Stripped text, "" for an empty cell."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    return pc.utf8_trim_whitespace(pc.fill_null(col, "") if col.null_count else col)


def _times(col: pa.ChunkedArray, names: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """Naive nanosecond times: the case's form read by Arrow; every other form (and every
    error, named by row) by :func:`parse_times`."""
    if pa.types.is_timestamp(col.type):
        if col.type.tz is not None:  # the wall-clock time where it was taken
            col = pc.local_timestamp(col)
        return pc.cast(col, pa.timestamp("ns"))
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    text = pc.utf8_trim_whitespace(col)
    parsed = pc.strptime(text, format=TIME_FORMAT, unit="s", error_is_null=True)
    if parsed.null_count == 0:  # the common case: every time in the case's form
        return pc.cast(parsed, pa.timestamp("ns"))
    missing = pc.or_(pc.is_null(text), pc.is_in(pc.utf8_lower(text),
                                                 value_set=pa.array(sorted(_NO_TIME))))
    unread = pc.and_(pc.is_null(parsed), pc.invert(missing))
    if pc.any(unread).as_py():
        times = parse_times(col.to_pandas(), names.to_pandas())
        return pa.array(times.to_numpy(), type=pa.timestamp("ns"))
    return pc.cast(pc.if_else(missing, None, parsed), pa.timestamp("ns"))


def normalise_photo_arrow(table: pa.Table) -> pa.Table:
    """Map any known per-photo schema onto PHOTO_COLUMNS (plus ``row_status``) in Arrow."""
    n = table.num_rows

    def pick(name: str) -> pa.ChunkedArray | None:
        col = next((c for c in ALIASES[name] if c in table.column_names), None)
        return table.column(col) if col is not None else None

    file = _text(pick("file") if pick("file") is not None else pa.nulls(n, pa.string()))
    camera = pick("camera")
    if camera is None or camera.null_count == n:  # a folder per camera
        camera = pa.array([os.path.dirname(f) or "." for f in file.to_pylist()], pa.string())
    time = pick("time")
    time = (_times(time, file) if time is not None and n else pa.nulls(n, pa.timestamp("ns")))
    count, confidence = pick("count"), pick("confidence")
    out = {
        "camera": _text(camera), "file": file, "time": time,
        "class": _text(pick("class") if pick("class") is not None else pa.nulls(n, pa.string())),
        "count": _numbers(count) if count is not None else pa.nulls(n, pa.float64()),
        "confidence": pc.fill_null(_numbers(confidence), 1.0) if confidence is not None
        else pa.array(np.ones(n)),
        "row_status": pc.if_else(pc.is_null(time), "no_time", "ok"),
    }
    if "registrations_id" in table.column_names:
        out["registrations_id"] = _text(table.column("registrations_id"))
        out["registration_class"] = (_text(table.column("registration_class"))
                                     if "registration_class" in table.column_names
                                     else out["class"])
        out["max_count"] = (_numbers(table.column("max_count"))
                            if "max_count" in table.column_names else pa.nulls(n, pa.float64()))
    return pa.table(out)


def normalise_photo_table(df: pd.DataFrame) -> pd.DataFrame:
    """Map any known per-photo schema onto PHOTO_COLUMNS; flag rows that are unusable."""

    out = normalise_photo_arrow(_frame_to_arrow(df)).to_pandas()
    out.index = df.index
    return out


def read_photo_arrow(path: str) -> pa.Table:
    """A per-photo table as a normalised Arrow table (no pandas frame on the way)."""
    return normalise_photo_arrow(_read_arrow(path, strip=False))  # it strips what it reads


def read_photo_table(path: str) -> pd.DataFrame:
    """A per-photo table: the case's CSV, a generic CSV/Parquet, kadr's output, or MD JSON."""
    return read_photo_arrow(path).to_pandas()


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


def registrations_csv(regs) -> str:
    """The case's submission format: exact header, clean fields, YYYY-MM-DD HH:MM:SS.
    ``regs``: a frame or any mapping with the REGISTRATION_COLUMNS."""
    import pyarrow.csv as pacsv

    columns = {
        "name_folder": pa.array(np.asarray(regs["name_folder"], dtype=object), pa.string()),
        "class": pa.array(np.asarray(regs["class"], dtype=object), pa.string()),
        # Arrow's text form of a timestamp[s] is TIME_FORMAT
        **{c: pc.fill_null(pc.cast(pa.array(_seconds(regs[c])), pa.string()), "")
           for c in ("date_registration_start", "date_registration_end")},
        "count": pa.array(np.asarray(regs["count"]).astype(np.int64)),
    }
    header = ",".join(REGISTRATION_COLUMNS) + "\n"
    buf = io.BytesIO()
    try:  # Arrow's writer, which refuses a value that would need quotes
        pacsv.write_csv(pa.table(columns), buf, pacsv.WriteOptions(
            include_header=False, quoting_style="none"))
        return header + buf.getvalue().decode("utf-8")
    except pa.ArrowInvalid:  # a comma, quote or line break in a name: quoted where needed
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(REGISTRATION_COLUMNS)
        writer.writerows(zip(*(c.to_pylist() for c in columns.values()), strict=True))
        return text.getvalue()


def _seconds(times) -> np.ndarray:
    """Times as NumPy datetime64[s] (NaT where there is none)."""
    t = np.asarray(times)
    if not np.issubdtype(t.dtype, np.datetime64):
        t = pd.to_datetime(times).to_numpy()
    return t.astype("datetime64[s]")


def time_text(times) -> np.ndarray:
    """``YYYY-MM-DD HH:MM:SS`` (TIME_FORMAT) for each time; "" where there is none.
    NumPy's formatter: a hundred times faster than strftime per row."""
    t = _seconds(times)
    if not len(t):
        return np.zeros(0, dtype=object)
    text = np.char.replace(np.datetime_as_string(t, unit="s"), "T", " ").astype(object)
    text[np.isnat(t)] = ""
    return text


def write_registrations(regs, path: str) -> None:
    """:func:`registrations_csv`, written atomically."""
    atomic_write_text(path, registrations_csv(regs))
