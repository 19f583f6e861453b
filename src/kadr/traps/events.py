"""Per-photo predictions -> registrations (camera, class, start, end, count).

Three methods, all on the normalised per-photo frame of :mod:`kadr.traps.tables`:

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
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np
import pandas as pd

from kadr.traps.tables import BACKGROUND_CLASSES

METHODS = ("sessions", "window", "simple")


def parse_gap(text: str | float | pd.Timedelta) -> pd.Timedelta:
    """'30m', '1h', '90s', '00:30:00' or minutes as a number."""
    if isinstance(text, pd.Timedelta):
        return text
    if isinstance(text, int | float):
        return pd.Timedelta(minutes=float(text))
    s = str(text).strip()
    if s.replace(".", "", 1).isdigit():
        return pd.Timedelta(minutes=float(s))
    return pd.Timedelta(s.replace("m", "min") if s.endswith("m") else s)


def _animal_photos(photos: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(timed animal photos sorted by camera/time/file, untimed animal photos).

    Vectorised on codes: the class test runs on the distinct classes, the sort is
    one ``lexsort`` on (camera code, time), and file names are compared only where
    a camera has several photos at the same time (the only place they order rows
    or can repeat one: the same photo listed twice is one photo).
    """
    count = pd.to_numeric(photos["count"], errors="coerce").to_numpy(dtype=float)
    detected = ~np.isnan(count)
    count = np.where(detected, count, 1.0)  # a class without a count: 1
    codes, uniques = pd.factorize(photos["class"])
    background = np.array([str(u).lower() in BACKGROUND_CLASSES for u in uniques] + [True])
    rows = np.flatnonzero(~background[codes] & (count > 0))  # code -1 (no class): background
    t = photos["time"].to_numpy(dtype="datetime64[ns]")[rows]
    timed_rows, untimed_rows = rows[~np.isnat(t)], rows[np.isnat(t)]
    cam_codes_all = pd.factorize(photos["camera"], sort=True)[0]  # in the names' order
    cam_code = cam_codes_all[timed_rows]
    ti = t[~np.isnat(t)].astype(np.int64)
    order = np.lexsort((ti, cam_code))  # stable: equal keys keep the caller's order
    timed_rows, cam_code, ti = timed_rows[order], cam_code[order], ti[order]
    tied = np.r_[False, (cam_code[1:] == cam_code[:-1]) & (ti[1:] == ti[:-1])]
    keep = np.ones(len(timed_rows), bool)
    if tied.any():
        in_tie = np.flatnonzero(tied | np.r_[tied[1:], False])
        ties = pd.DataFrame({"run": np.cumsum(~tied)[in_tie],
                             "file": photos["file"].iloc[timed_rows[in_tie]].to_numpy(),
                             "cls": photos["class"].iloc[timed_rows[in_tie]].to_numpy(),
                             "pos": in_tie}).sort_values(["run", "file"], kind="stable")
        timed_rows[in_tie] = timed_rows[ties["pos"].to_numpy()]
        keep[in_tie[ties.duplicated(["run", "file", "cls"]).to_numpy()]] = False
    timed_rows = timed_rows[keep]

    def frame(at: np.ndarray) -> pd.DataFrame:
        df = photos.iloc[at].reset_index(drop=True)
        df["count"], df["detected"], df["_row"] = count[at], detected[at], at
        df["_camera"] = cam_codes_all[at]  # compared instead of the names
        return df

    untimed = frame(untimed_rows).drop_duplicates(subset=["camera", "file", "class"])
    return frame(timed_rows), untimed


def _by_segment(df: pd.DataFrame, seg: np.ndarray, cls, count) -> pd.DataFrame:
    """One registration per segment. Segments are runs of rows sorted by camera and time,
    so a segment's first and last rows hold its camera, class, start and end."""
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]]) if len(seg) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(seg)].astype(np.int64)
    t = df["time"].to_numpy(dtype="datetime64[ns]")
    count = np.asarray(count, dtype=float)
    return pd.DataFrame({
        "name_folder": df["camera"].iloc[starts].to_numpy(),
        "class": np.asarray(cls, dtype=object)[starts],
        "date_registration_start": t[starts],
        "date_registration_end": t[ends - 1],
        "count": np.fmax.reduceat(count, starts) if len(starts) else count[:0],
        "photos": ends - starts,
    })


def _untimed_registrations(untimed: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "name_folder": untimed["camera"].to_numpy(),
        "class": untimed["class"].to_numpy(),
        "date_registration_start": pd.NaT,
        "date_registration_end": pd.NaT,
        "count": untimed["count"].astype(int).to_numpy(),
        "photos": 1,
    })


def _gap_breaks(df: pd.DataFrame, gap: pd.Timedelta) -> np.ndarray:
    cam = df["_camera"].to_numpy() if "_camera" in df else df["camera"].to_numpy()
    t = df["time"].to_numpy()
    new_cam = np.r_[True, cam[1:] != cam[:-1]]
    long_gap = np.r_[True, (t[1:] - t[:-1]) > gap.to_timedelta64()]
    return new_cam | long_gap


def simple_rule(df: pd.DataFrame, gap: pd.Timedelta, cls=None, count=None) -> np.ndarray:
    """Segment ids under the seed's simple rule (vectorised)."""
    cls = df["class"].to_numpy() if cls is None else cls
    count = df["count"].to_numpy() if count is None else count
    change = np.r_[True, (cls[1:] != cls[:-1]) | (count[1:] != count[:-1])]
    return np.cumsum(_gap_breaks(df, gap) | change)


def window_values(df: pd.DataFrame, gap: pd.Timedelta) -> tuple[np.ndarray, np.ndarray]:
    """The seed's window smoothing: per photo, the window's mode class and left-max count."""
    t = df["time"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    g = gap.value
    cam = df["camera"].to_numpy()
    cls = df["class"].to_numpy()
    cnt = df["count"].to_numpy(dtype=float)
    out_cls = np.empty(len(df), dtype=object)
    out_cnt = np.empty(len(df))
    starts = np.r_[0, np.flatnonzero(cam[1:] != cam[:-1]) + 1, len(df)]
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        tt = t[a:b]
        lo = np.searchsorted(tt, tt - g, side="right")  # first photo less than gap before
        hi = np.searchsorted(tt, tt + g, side="left")  # first photo gap or more after
        counter: Counter = Counter()
        left, right = 0, 0
        maxq: deque = deque()  # monotone deque for max of cnt[lo_i .. i]
        for i in range(b - a):
            while right < hi[i]:
                counter[cls[a + right]] += 1
                right += 1
            while left < lo[i]:
                counter[cls[a + left]] -= 1
                left += 1
            out_cls[a + i] = max(counter.items(), key=lambda kv: (kv[1], kv[0] == cls[a + i]))[0]
            while maxq and cnt[a + maxq[-1]] <= cnt[a + i]:
                maxq.pop()
            maxq.append(i)
            while maxq[0] < lo[i]:
                maxq.popleft()
            out_cnt[a + i] = cnt[a + maxq[0]]
    return out_cls, out_cnt


def _confirmed_max(counts: pd.Series, seg: np.ndarray) -> np.ndarray:
    """Per segment: the largest count seen twice if the segment has 3+ photos, else the max."""
    frame = pd.DataFrame({"seg": seg, "c": counts.to_numpy()})
    size = frame.groupby("seg")["c"].transform("size").to_numpy()
    plain = frame.groupby("seg")["c"].transform("max").to_numpy()
    rank = frame.groupby("seg")["c"].rank(method="first", ascending=False).to_numpy()
    second = frame["c"].where(rank == 2).groupby(frame["seg"]).transform("max").to_numpy()
    return np.where(size >= 3, second, plain)


def _session_split(df: pd.DataFrame, session: np.ndarray, min_run: int) -> np.ndarray:
    """Split a session where a second class holds a sustained run of photos."""
    # Undetected photos' classes are guesses: they take the class of the photo before.
    known = df["class"].where(df["detected"]).groupby(session)
    cls = known.ffill().fillna(known.bfill()).fillna(df["class"]).to_numpy()
    change = np.r_[True, (cls[1:] != cls[:-1]) | (session[1:] != session[:-1])]
    run_id = np.cumsum(change)
    run_len = pd.Series(run_id).map(pd.Series(run_id).value_counts()).to_numpy()
    sess_len = pd.Series(session).map(pd.Series(session).value_counts()).to_numpy()
    sustained = (run_len >= min_run) & (run_len * 3 >= sess_len)
    # A split starts at the first photo of a sustained run that follows another sustained
    # run of a different class within the same session.
    starts = change & sustained
    sess_change = np.r_[True, session[1:] != session[:-1]]
    sus_cls = pd.Series(np.where(starts, cls, None)).ffill().to_numpy()
    prev_sus = np.r_[None, sus_cls[:-1]]
    split = starts & ~sess_change & (prev_sus != cls) & pd.notna(prev_sus)
    return np.cumsum(sess_change | split)


# A photo in which the detector found no animal still belongs to the visit (it
# extends its time), but its class is a guess: on the case data such photos'
# classes never agree with the published registration class.
UNDETECTED_VOTE = 0.1


def _vote_winners(seg: np.ndarray, classes: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per row, the class with the largest summed weight in its segment (ties: the class
    that appears first in the segment)."""
    codes, uniques = pd.factorize(classes)
    n = max(len(uniques), 1)
    key = seg.astype(np.int64) * n + codes
    pairs, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    # Rounded so that the order of additions cannot turn a tie into a win.
    total = np.round(np.bincount(inverse, weights=weight), 9)
    pair_seg = pairs // n
    best = np.lexsort((first, -total, pair_seg))
    winner_of_seg = pd.Series(pairs[best] % n, index=pair_seg[best])
    winner_of_seg = winner_of_seg[~winner_of_seg.index.duplicated()]
    return np.asarray(uniques, dtype=object)[winner_of_seg.reindex(seg).to_numpy()]


def sessions_rule(
    df: pd.DataFrame,
    gap: pd.Timedelta,
    split_species: bool = False,
    count_rule: str = "max",
    min_species_run: int = 4,
):
    session = np.cumsum(_gap_breaks(df, gap))
    seg = _session_split(df, session, min_species_run) if split_species and len(df) else session
    weight = df["confidence"].to_numpy(dtype=float) * np.where(
        df["detected"].to_numpy(), 1.0, UNDETECTED_VOTE)
    cls = _vote_winners(seg, df["class"].to_numpy(), weight)
    if count_rule == "confirmed":
        return seg, cls, _confirmed_max(df["count"], seg)
    return seg, cls, df["count"].to_numpy()


def form_registrations(photos: pd.DataFrame, method: str = "sessions",
                       gap: str | pd.Timedelta = "30m", **options) -> pd.DataFrame:
    """Registrations from a normalised per-photo frame; columns as the case's CSV plus
    ``photos``. ``options``: ``split_species``, ``count_rule`` (see the module's text)."""
    return registrations_with_members(photos, method, gap, **options)[0]


def registrations_with_members(
    photos: pd.DataFrame,
    method: str = "sessions",
    gap: str | pd.Timedelta = "30m",
    *,
    split_species: bool = False,
    count_rule: str = "max",
) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`form_registrations` and, per row of ``photos``, the position of the
    registration it belongs to (-1: none: a background photo or a repeated row)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    gap = parse_gap(gap)
    df, untimed = _animal_photos(photos)
    seg = np.zeros(0, np.int64)
    if df.empty:  # no animal anywhere: no registration from timed photos
        regs = pd.DataFrame({"name_folder": pd.Series(dtype=str), "class": pd.Series(dtype=str),
                             "date_registration_start": pd.Series(dtype="datetime64[ns]"),
                             "date_registration_end": pd.Series(dtype="datetime64[ns]"),
                             "count": pd.Series(dtype=float), "photos": pd.Series(dtype=int)})
    elif method == "simple":
        seg = simple_rule(df, gap)
        regs = _by_segment(df, seg, df["class"].to_numpy(), df["count"])
    elif method == "window":
        cls, cnt = window_values(df, gap) if len(df) else (np.array([]), np.array([]))
        seg = simple_rule(df, gap, cls, cnt)
        regs = _by_segment(df, seg, cls, cnt)
    else:
        seg, cls, cnt = sessions_rule(df, gap, split_species, count_rule)
        regs = _by_segment(df, seg, cls, cnt)
    regs["count"] = regs["count"].fillna(1).astype(int)
    members = np.full(len(photos), -1, np.int64)
    if len(df):  # _by_segment orders registrations by segment id
        members[df["_row"].to_numpy()] = np.unique(seg, return_inverse=True)[1]
    if len(untimed):
        members[untimed["_row"].to_numpy()] = len(regs) + np.arange(len(untimed))
        regs = pd.concat([regs, _untimed_registrations(untimed)], ignore_index=True)
    return regs.reset_index(drop=True), members
