"""Per-photo predictions -> registrations (camera, class, start, end, count).

Three methods, all on the normalised per-photo table of :mod:`kadr.traps.tables`:

``simple`` (the seed's first rule, as stated): walk each camera's photos in
time order; start a new registration when the class changes, the count
changes, or more than ``gap`` has passed since the registration's last photo.

``window`` (the seed's robust rule, as stated): for each photo take the
photos less than ``gap`` away (both sides); its class is the window's most
frequent class and its count the maximum count from the window's left end up
to the photo; then apply the simple rule to these smoothed values.

``sessions`` (kadr's default): an animal's visit is a run of animal photos
with no pause longer than ``gap``; the visit is one registration. Its class
is the confidence-weighted vote of its photos (photos where the detector
counted no animal vote with a tenth of the weight), and its count the
maximum count of its photos, as the case defines it. Options:
``count_rule="confirmed"`` takes the largest count seen in at least two
photos when a visit has three or more (robust to a detector that over-counts
now and then, at the price of true one-photo peaks); ``split_species=True``
splits a visit where a second species holds a sustained run
(``min_species_run`` detected photos in a row, at least a third of the
visit), for cameras where two species often pass within ``gap``.
Why: on the case data a class change inside a visit is almost always
classifier noise (18% of per-photo classes disagree with the published
registration class), while real visits are separated by pauses far longer
than the bursts inside them. Splitting on every class or count change, as
the simple rule does, turns each noisy photo into a false registration.

Photos without a usable time are kept and become one registration each
(flagged in the per-photo table); background/empty photos form none.

The rules run on NumPy arrays (:class:`PhotoColumns`: codes for cameras and
classes, integer times), so a pandas frame and an Arrow table, as
``kadr traps events`` reads a CSV, go through the same code.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kadr.traps.tables import background_of_codes

if TYPE_CHECKING:
    import pandas as pd

METHODS = ("sessions", "window", "simple")
COUNT_RULES = ("max", "confirmed")
NAT = np.iinfo(np.int64).min  # NumPy's NaT as an integer

_GAP_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400,
              "day": 86400}
_GAP = re.compile(r"^(\d+(?:\.\d*)?)\s*([a-z]+?)s?$")


def parse_gap(text: Any) -> np.timedelta64:
    """'30m', '1h', '90s', '00:30:00' or minutes as a number -> a NumPy duration (ns)."""
    if isinstance(text, np.timedelta64):
        return text.astype("timedelta64[ns]")
    if hasattr(text, "to_timedelta64"):  # a pandas Timedelta
        return text.to_timedelta64().astype("timedelta64[ns]")
    if isinstance(text, int | float):
        return np.timedelta64(round(float(text) * 60e9), "ns")
    s = str(text).strip().lower()
    if s.replace(".", "", 1).isdigit():
        return np.timedelta64(round(float(s) * 60e9), "ns")
    if m := _GAP.match(s):
        if m.group(2) in _GAP_UNITS:
            return np.timedelta64(round(float(m.group(1)) * _GAP_UNITS[m.group(2)] * 1e9), "ns")
    import pandas as pd  # any other form pandas reads ("1 days 02:00:00", "1h30min")

    try:
        gap = pd.Timedelta(s).to_timedelta64().astype("timedelta64[ns]")
    except ValueError:
        gap = None
    if gap is None or gap <= np.timedelta64(0, "ns"):
        raise ValueError(f"the gap {text!r} is not a positive duration: give it like 30m, "
                         "1h, 90s, 00:30:00 or a number of minutes")
    return gap


@dataclass
class PhotoColumns:
    """The per-photo columns the rules read, as arrays.

    ``camera`` codes follow the names' sorted order (registrations come out
    by camera name); ``time`` is integer nanoseconds (``NAT``: none); a
    ``count`` of NaN means the detector counted nothing; ``files`` holds the
    file names as Arrow text (read only to order photos taken at the same
    second, and to drop a photo listed twice).
    """

    camera: np.ndarray
    camera_names: np.ndarray
    time: np.ndarray
    cls: np.ndarray
    class_names: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    files: pa.Array | pa.ChunkedArray

    def __len__(self) -> int:
        return len(self.camera)

    @classmethod
    def from_frame(cls, photos: pd.DataFrame) -> PhotoColumns:
        import pandas as pd

        camera, camera_names = pd.factorize(photos["camera"], sort=True)
        codes, class_names = pd.factorize(photos["class"])
        return cls(
            camera=camera, camera_names=np.asarray(camera_names, dtype=object),
            time=photos["time"].to_numpy(dtype="datetime64[ns]").view(np.int64),
            cls=codes, class_names=np.asarray(class_names, dtype=object),
            count=pd.to_numeric(photos["count"], errors="coerce").to_numpy(dtype=float),
            confidence=photos["confidence"].to_numpy(dtype=float),
            files=pa.array(photos["file"], type=pa.string(), from_pandas=True))

    @classmethod
    def from_arrow(cls, table: pa.Table) -> PhotoColumns:
        """From a normalised Arrow table (:func:`kadr.traps.tables.read_photo_arrow`)."""

        def codes(name: str) -> tuple[np.ndarray, np.ndarray]:
            encoded = pc.dictionary_encode(table.column(name)).combine_chunks()
            return (encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
                    np.asarray(encoded.dictionary.to_pylist(), dtype=object))

        camera, first_seen = codes("camera")
        order = np.argsort(first_seen, kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        klass, class_names = codes("class")
        stamps = pc.cast(table.column("time"), pa.timestamp("ns"))
        return cls(
            camera=rank[camera], camera_names=first_seen[order],
            time=stamps.to_numpy(zero_copy_only=False).view(np.int64),
            cls=klass, class_names=class_names,
            count=table.column("count").to_numpy(zero_copy_only=False).astype(float),
            confidence=table.column("confidence").to_numpy(zero_copy_only=False).astype(float),
            files=table.column("file"))

    def file_rank(self, rows: np.ndarray) -> np.ndarray:
        """Per row, its file name's rank among those rows' names (equal names: equal
        ranks), sorted by Arrow."""
        encoded = pc.dictionary_encode(self.files.take(rows))
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        rank = pc.rank(encoded.dictionary, sort_keys="ascending", tiebreaker="dense")
        return rank.to_numpy()[encoded.indices.to_numpy(zero_copy_only=False)].astype(np.int64)


@dataclass
class Registrations:
    """Registrations as columns (the case's CSV columns plus ``photos``) and, per photo,
    the position of its registration (-1: none: a background photo or a repeated row)."""

    camera: np.ndarray
    cls: np.ndarray
    start: np.ndarray  # datetime64[ns], NaT for an untimed photo's registration
    end: np.ndarray
    count: np.ndarray  # int
    photos: np.ndarray
    members: np.ndarray

    def __len__(self) -> int:
        return len(self.camera)

    def columns(self) -> dict[str, np.ndarray]:
        """The case's CSV columns (:data:`kadr.traps.tables.REGISTRATION_COLUMNS`) and
        ``photos``."""
        return {"name_folder": self.camera, "class": self.cls,
                "date_registration_start": self.start, "date_registration_end": self.end,
                "count": self.count, "photos": self.photos}

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.columns())


@dataclass
class _Animals:
    """The timed animal photos sorted by camera, time, file; what the rules walk."""

    rows: np.ndarray  # positions in the caller's table
    camera: np.ndarray
    time: np.ndarray
    cls: np.ndarray
    count: np.ndarray  # 1 where the detector counted nothing
    detected: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def _animal_rows(p: PhotoColumns) -> tuple[np.ndarray, np.ndarray]:
    """(timed animal rows sorted by camera/time/file, untimed animal rows, each once).

    The class test runs on the distinct classes, the sort is one ``lexsort`` on
    (camera code, time), and file names are compared only where a camera has
    several photos at the same time (the only place they order rows or can
    repeat one: the same photo listed twice is one photo).
    """
    background = background_of_codes(p.class_names)
    rows = np.flatnonzero(~background[p.cls] & ~(p.count <= 0))
    t = p.time[rows]
    timed, untimed = rows[t != NAT], rows[t == NAT]
    cam, ti = p.camera[timed], p.time[timed]
    order = np.lexsort((ti, cam))  # stable: equal keys keep the caller's order
    timed, cam, ti = timed[order], cam[order], ti[order]
    tied = np.r_[False, (cam[1:] == cam[:-1]) & (ti[1:] == ti[:-1])]
    keep = np.ones(len(timed), bool)
    if tied.any():
        in_tie = np.flatnonzero(tied | np.r_[tied[1:], False])
        run = np.cumsum(~tied)[in_tie]
        file_rank = p.file_rank(timed[in_tie])
        by_file = np.lexsort((file_rank, run))  # stable
        timed[in_tie] = timed[in_tie[by_file]]
        # A photo listed twice (same file, same class) is kept once; its copies need not be
        # next to each other when the same file also appears with another class.
        key = _combined(run, file_rank[by_file], p.cls[timed[in_tie]])
        keep[in_tie] = _first_occurrences(key)
    timed = timed[keep]
    if len(untimed):
        key = _combined(p.camera[untimed], p.file_rank(untimed), p.cls[untimed])
        untimed = untimed[_first_occurrences(key)]
    return timed, untimed


def _combined(*codes: np.ndarray) -> np.ndarray:
    """One int64 per row that is equal exactly where all the (non-negative) codes are."""
    key = np.zeros(len(codes[0]), np.int64)
    for c in codes:
        key = key * (int(c.max(initial=0)) + 1) + c
    return key


def _first_occurrences(key: np.ndarray) -> np.ndarray:
    """True at the first row holding each key."""
    first = np.zeros(len(key), bool)
    first[np.unique(key, return_index=True)[1]] = True
    return first


def _animals(p: PhotoColumns, rows: np.ndarray) -> _Animals:
    count = p.count[rows]
    detected = ~np.isnan(count)
    return _Animals(rows=rows, camera=p.camera[rows], time=p.time[rows], cls=p.cls[rows],
                    count=np.where(detected, count, 1.0), detected=detected,
                    confidence=p.confidence[rows])


def _gap_breaks(a: _Animals, gap: np.timedelta64) -> np.ndarray:
    new_cam = np.r_[True, a.camera[1:] != a.camera[:-1]]
    long_gap = np.r_[True, (a.time[1:] - a.time[:-1]) > gap.astype(np.int64)]
    return new_cam | long_gap


def simple_rule(a: _Animals, gap: np.timedelta64, cls=None, count=None) -> np.ndarray:
    """Segment ids under the seed's simple rule (vectorised)."""
    cls = a.cls if cls is None else cls
    count = a.count if count is None else count
    change = np.r_[True, (cls[1:] != cls[:-1]) | (count[1:] != count[:-1])]
    return np.cumsum(_gap_breaks(a, gap) | change)


def window_values(a: _Animals, gap: np.timedelta64) -> tuple[np.ndarray, np.ndarray]:
    """The seed's window smoothing: per photo, the window's mode class and left-max count."""
    t, g, cls, cnt = a.time, int(gap.astype(np.int64)), a.cls, a.count
    out_cls = np.empty(len(a), dtype=np.int64)
    out_cnt = np.empty(len(a))
    starts = np.r_[0, np.flatnonzero(a.camera[1:] != a.camera[:-1]) + 1, len(a)]
    for lo_row, hi_row in zip(starts[:-1], starts[1:], strict=True):
        tt = t[lo_row:hi_row]
        lo = np.searchsorted(tt, tt - g, side="right")  # first photo less than gap before
        hi = np.searchsorted(tt, tt + g, side="left")  # first photo gap or more after
        counter: Counter = Counter()
        left, right = 0, 0
        maxq: deque = deque()  # monotone deque for max of cnt[lo_i .. i]
        for i in range(hi_row - lo_row):
            while right < hi[i]:
                counter[cls[lo_row + right]] += 1
                right += 1
            while left < lo[i]:
                counter[cls[lo_row + left]] -= 1
                left += 1
            here = cls[lo_row + i]
            out_cls[lo_row + i] = max(counter.items(), key=lambda kv: (kv[1], kv[0] == here))[0]
            while maxq and cnt[lo_row + maxq[-1]] <= cnt[lo_row + i]:
                maxq.pop()
            maxq.append(i)
            while maxq[0] < lo[i]:
                maxq.popleft()
            out_cnt[lo_row + i] = cnt[lo_row + maxq[0]]
    return out_cls, out_cnt


def _run_starts(seg: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]]) if len(seg) else np.zeros(0, int)


def _confirmed_max(counts: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Per row: its segment's second-largest count if the segment has 3+ photos, else the
    largest (segments are runs of equal ids)."""
    order = np.lexsort((-counts, seg))
    ranked = counts[order]
    starts = _run_starts(seg)
    size = np.diff(np.r_[starts, len(seg)])
    per_segment = np.where(size >= 3, ranked[np.minimum(starts + 1, len(seg) - 1)],
                           ranked[starts])
    return np.repeat(per_segment, size)


def _session_split(a: _Animals, session: np.ndarray, min_run: int) -> np.ndarray:
    """Split a session where a second class holds a sustained run of photos."""
    n = len(a)
    idx = np.arange(n)
    sess_start = np.repeat(_run_starts(session), np.diff(np.r_[_run_starts(session), n]))
    sess_end = np.repeat(np.r_[_run_starts(session)[1:], n] - 1,
                         np.diff(np.r_[_run_starts(session), n]))
    # Undetected photos' classes are guesses: they take the class of the detected photo
    # before (else after) in the same session.
    before = np.maximum.accumulate(np.where(a.detected, idx, -1))
    after = np.minimum.accumulate(np.where(a.detected, idx, n)[::-1])[::-1]
    source = np.where(before >= sess_start, before, np.where(after <= sess_end, after, idx))
    cls = a.cls[source]
    change = np.r_[True, (cls[1:] != cls[:-1]) | (session[1:] != session[:-1])]
    run_id = np.cumsum(change)
    run_len = np.bincount(run_id)[run_id]
    sess_len = sess_end - sess_start + 1
    sustained = (run_len >= min_run) & (run_len * 3 >= sess_len)
    # A split starts at the first photo of a sustained run that follows another sustained
    # run of a different class within the same session.
    starts = change & sustained
    sess_change = np.r_[True, session[1:] != session[:-1]]
    last_start = np.maximum.accumulate(np.where(starts, idx, -1))
    prev_start = np.r_[-1, last_start[:-1]]
    prev_cls = np.where(prev_start >= 0, cls[np.maximum(prev_start, 0)], -2)
    split = starts & ~sess_change & (prev_start >= sess_start) & (prev_cls != cls)
    return np.cumsum(sess_change | split)


# A photo in which the detector found no animal still belongs to the visit (it
# extends its time), but its class is a guess: on the case data such photos'
# classes never agree with the published registration class.
UNDETECTED_VOTE = 0.1


def _vote_winners(seg: np.ndarray, codes: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per row, the class code with the largest summed weight in its segment (ties: the
    class that appears first in the segment)."""
    n = int(codes.max()) + 1 if len(codes) else 1
    key = seg.astype(np.int64) * n + codes
    pairs, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    # Rounded so that the order of additions cannot turn a tie into a win.
    total = np.round(np.bincount(inverse, weights=weight), 9)
    pair_seg = pairs // n
    best = np.lexsort((first, -total, pair_seg))
    winners = pairs[best][_run_starts(pair_seg[best])]
    segments = winners // n  # ascending: the lexsort's first key
    return (winners % n)[np.searchsorted(segments, seg)]


def sessions_rule(a: _Animals, gap: np.timedelta64, split_species: bool = False,
                  count_rule: str = "max", min_species_run: int = 4):
    session = np.cumsum(_gap_breaks(a, gap))
    seg = _session_split(a, session, min_species_run) if split_species and len(a) else session
    weight = a.confidence * np.where(a.detected, 1.0, UNDETECTED_VOTE)
    cls = _vote_winners(seg, a.cls, weight)
    if count_rule == "confirmed":
        return seg, cls, _confirmed_max(a.count, seg)
    return seg, cls, a.count


def check_rule(method: str, gap: Any, count_rule: str = "max") -> np.timedelta64:
    """The gap as a duration, once the rule's names are known ones (ValueError naming the
    choices otherwise): a run checks them before it looks at a photo."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if count_rule not in COUNT_RULES:
        raise ValueError(f"unknown count rule {count_rule!r}; choose from "
                         f"{', '.join(COUNT_RULES)}")
    return parse_gap(gap)


def registrations(p: PhotoColumns, method: str = "sessions", gap: Any = "30m", *,
                  split_species: bool = False, count_rule: str = "max") -> Registrations:
    """Registrations from per-photo columns by one of :data:`METHODS`."""
    gap = check_rule(method, gap, count_rule)
    timed, untimed = _animal_rows(p)
    a = _animals(p, timed)
    if not len(a):  # no timed animal photo anywhere
        seg, cls, cnt = a.cls, a.cls, a.count
    elif method == "simple":
        seg, cls, cnt = simple_rule(a, gap), a.cls, a.count
    elif method == "window":
        cls, cnt = window_values(a, gap)
        seg = simple_rule(a, gap, cls, cnt)
    else:
        seg, cls, cnt = sessions_rule(a, gap, split_species, count_rule)
    starts = _run_starts(seg)  # segments are runs of rows sorted by camera and time
    ends = np.r_[starts[1:], len(seg)].astype(np.int64)[:len(starts)]
    cnt = np.asarray(cnt, dtype=float)
    u = _animals(p, untimed)
    members = np.full(len(p), -1, np.int64)
    members[timed] = np.repeat(np.arange(len(starts)), ends - starts)
    members[untimed] = len(starts) + np.arange(len(untimed))
    nat = np.full(len(untimed), NAT)
    return Registrations(
        camera=p.camera_names[np.r_[a.camera[starts], u.camera].astype(np.int64)],
        cls=p.class_names[np.r_[cls[starts], u.cls].astype(np.int64)],
        start=np.r_[a.time[starts], nat].view("datetime64[ns]"),
        end=np.r_[a.time[ends - 1], nat].view("datetime64[ns]"),
        count=np.r_[np.fmax.reduceat(cnt, starts) if len(starts) else cnt[:0],
                    u.count].astype(int),
        photos=np.r_[ends - starts, np.ones(len(untimed), np.int64)],
        members=members)


def form_registrations(photos: pd.DataFrame, method: str = "sessions", gap: Any = "30m",
                       **options) -> pd.DataFrame:
    """Registrations from a normalised per-photo frame; columns as the case's CSV plus
    ``photos``. ``options``: ``split_species``, ``count_rule`` (see the module's text)."""
    return registrations_with_members(photos, method, gap, **options)[0]


def registrations_with_members(photos: pd.DataFrame, method: str = "sessions",
                               gap: Any = "30m", **options) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`form_registrations` and, per row of ``photos``, the position of the
    registration it belongs to (-1: none: a background photo or a repeated row)."""
    regs = registrations(PhotoColumns.from_frame(photos), method, gap, **options)
    return regs.frame(), regs.members
