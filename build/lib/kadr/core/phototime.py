"""When a photo was taken: EXIF first, then a file-name pattern, then mtime.

Every time kadr reports comes with ``time_source`` (exif, filename, mtime,
none) so a user can see which photos carry a guessed time.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone

from PIL import Image

EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011
SUBSEC_TIME_ORIGINAL = 0x9291
DATETIME = 0x0132  # IFD0 DateTime: a fallback many trail cameras write instead


def exif_time(exif: Image.Exif | None) -> datetime | None:
    """DateTimeOriginal (+SubSecTimeOriginal, +OffsetTimeOriginal) or IFD0 DateTime."""
    if not exif:
        return None
    try:
        ifd = exif.get_ifd(EXIF_IFD)
    except Exception:  # noqa: BLE001 - a broken sub-IFD means no EXIF time
        ifd = {}
    raw = ifd.get(DATETIME_ORIGINAL) or exif.get(DATETIME)
    if not raw:
        return None
    raw = str(raw).strip().rstrip("\x00")
    try:
        t = datetime.strptime(raw[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    sub = str(ifd.get(SUBSEC_TIME_ORIGINAL, "") or "").strip().rstrip("\x00")
    if sub.isdigit():
        t = t.replace(microsecond=int((sub + "000000")[:6]))
    offset = str(ifd.get(OFFSET_TIME_ORIGINAL, "") or "").strip().rstrip("\x00")
    m = re.fullmatch(r"([+-])(\d\d):(\d\d)", offset)
    if m:
        delta = timedelta(hours=int(m[2]), minutes=int(m[3]))
        t = t.replace(tzinfo=timezone(delta if m[1] == "+" else -delta))
    return t


_STRPTIME_TO_REGEX = {
    "%Y": r"\d{4}",
    "%m": r"\d{2}",
    "%d": r"\d{2}",
    "%H": r"\d{2}",
    "%M": r"\d{2}",
    "%S": r"\d{2}",
    "%y": r"\d{2}",
    "%f": r"\d{1,6}",
    "%%": "%",
}


def filename_time(name: str, pattern: str) -> datetime | None:
    """Find a time written in a file name with a strptime ``pattern``, e.g. ``%Y%m%d_%H%M%S``.

    The pattern may stand anywhere in the name: ``CAM1_20240712_061502.jpg``.
    """
    regex = ""
    i = 0
    while i < len(pattern):
        tok = pattern[i : i + 2]
        if tok in _STRPTIME_TO_REGEX:
            regex += _STRPTIME_TO_REGEX[tok]
            i += 2
        else:
            regex += re.escape(pattern[i])
            i += 1
    for m in re.finditer(regex, os.path.basename(name)):
        try:
            return datetime.strptime(m.group(0), pattern)
        except ValueError:
            continue
    return None


def photo_time(
    path: str, exif: Image.Exif | None, name_pattern: str | None = None
) -> tuple[datetime | None, str]:
    """The photo's time and where it came from: exif, filename, mtime or none."""
    t = exif_time(exif)
    if t is not None:
        return t, "exif"
    if name_pattern:
        t = filename_time(path, name_pattern)
        if t is not None:
            return t, "filename"
    if "://" not in path:
        try:
            return datetime.fromtimestamp(os.stat(path).st_mtime), "mtime"
        except OSError:
            pass
    return None, "none"


def naive_local(t: datetime | None) -> datetime | None:
    """Drop the UTC offset, keeping the camera's wall-clock time (what reports show)."""
    return None if t is None else t.replace(tzinfo=None)
