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


# What a person types for a time: ISO 8601 (space or T), EXIF's colons, or day.month.year;
# seconds and their fraction optional. Anything else is refused, never guessed.
_TYPED_TIME = re.compile(
    r"\s*(?:(?P<y>\d{4})[-:/.](?P<m>\d{1,2})[-:/.](?P<d>\d{1,2})"
    r"|(?P<d2>\d{1,2})\.(?P<m2>\d{1,2})\.(?P<y2>\d{4}))"
    r"(?:[ T]+(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?\s*")


def typed_time(text: str) -> datetime:
    """A time as a person types it (``2012-10-20 07:36:53``, ``2012-10-20T07:36``,
    ``2012:10:20 07:36:53``, ``20.10.2012 07:36``), to the microsecond; ValueError
    naming the accepted forms otherwise."""
    m = _TYPED_TIME.fullmatch(str(text or ""))
    try:
        if m is None:
            raise ValueError
        year, month, day = ((m["y"], m["m"], m["d"]) if m["y"] else (m["y2"], m["m2"], m["d2"]))
        micro = int((m["f"] or "0")[:6].ljust(6, "0"))
        return datetime(int(year), int(month), int(day), int(m["H"] or 0), int(m["M"] or 0),
                        int(m["S"] or 0), micro)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: type it as 2012-10-20 07:36:53 (seconds "
                         "optional; 2012:10:20 07:36:53 and 20.10.2012 07:36 work too)") from None
