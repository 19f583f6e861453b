"""Which photos belong to which registration: event ids, short ids and the best photos of
each registration, beside the rules that form registrations (:mod:`kadr.traps.registrations`)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from kadr.core.status import PhotoStatus
from kadr.traps.tables import background_of_codes


def short_id(*parts) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=6).hexdigest()


def link_events(regs: pd.DataFrame, table: pd.DataFrame, first: int = 0
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give each registration an eventID and each photo the event it falls in.
    ``first``: the position of ``regs``' first row among all of a run's registrations
    (an eventID includes it), when they come a camera at a time.

    A photo belongs to the registration of its camera whose interval holds its
    time; where intervals of one camera overlap (two species at once), the one
    of the photo's own class wins. A sorted merge (``merge_asof``) on integer
    codes for cameras and classes, so the cost grows with the photos, not with
    photos x registrations, and no per-photo text is copied. Also picks each
    registration's best photo: most animals, then the highest class probability.
    """
    regs = regs.reset_index(drop=True).copy()
    regs["eventID"] = [short_id(cam, start, cls, i) for i, (cam, start, cls) in enumerate(zip(
        regs["name_folder"], regs["date_registration_start"], regs["class"], strict=True),
        start=first)]
    if table.empty or regs.empty:
        regs["best_key"] = None
        return regs, table.assign(event_id=None)
    cameras, camera_names = pd.factorize(table["group"].astype(str))
    classes, class_names = pd.factorize(table["class"].fillna("").astype(str))
    timed = regs[regs["date_registration_start"].notna()]
    intervals = pd.DataFrame({
        "camera": pd.Index(camera_names).get_indexer(timed["name_folder"].astype(str)),
        "cls": pd.Index(class_names).get_indexer(timed["class"].astype(str)),
        "start": pd.to_datetime(timed["date_registration_start"]).astype("datetime64[ns]"),
        "end": pd.to_datetime(timed["date_registration_end"]).astype("datetime64[ns]"),
        "event": timed.index.to_numpy(),
    }).sort_values("start", kind="stable")
    background = background_of_codes(class_names)
    time = pd.to_datetime(table["time"]).to_numpy(dtype="datetime64[ns]")
    animal = ((table["status"] == PhotoStatus.OK).to_numpy() & ~np.isnat(time) & ~background[classes])
    rows = np.flatnonzero(animal)
    photos = pd.DataFrame({"row": rows, "camera": cameras[rows], "cls": classes[rows],
                           "time": time[rows]}).sort_values("time", kind="stable")
    event = np.full(len(table), -1, np.int64)  # a registration's position in regs
    # Where visits of one camera overlap, the latest-starting one may have ended while an
    # earlier, longer one still holds the photo: the camera's running longest interval.
    reach = intervals.sort_values(["camera", "start"], kind="stable").copy()
    longest = reach.groupby("camera")["end"].cummax()
    reach["event"] = reach["event"].where(reach["end"] == longest)
    reach["event"] = reach.groupby("camera")["event"].ffill()
    reach["end"] = longest
    # The photo's own class first, then the latest visit of its camera, then the longest.
    for right, by in ((intervals, ["camera", "cls"]), (intervals.drop(columns=["cls"]), ["camera"]),
                      (reach.drop(columns=["cls"]).sort_values("start"), ["camera"])):
        todo = photos[event[photos["row"].to_numpy()] < 0]
        if todo.empty:
            break
        found = pd.merge_asof(todo, right, left_on="time", right_on="start", by=by,
                              direction="backward")
        inside = (found["event"].notna() & (found["time"] <= found["end"])).to_numpy()
        event[found["row"].to_numpy()[inside]] = found["event"].to_numpy()[inside]
    ids = regs["eventID"].to_numpy(dtype=object)
    table = table.assign(event_id=np.where(event >= 0, ids[event], None))
    regs["best_key"] = _best_photos(event, table, len(regs))
    return regs, table


def _best_photos(event: np.ndarray, table: pd.DataFrame, n: int) -> np.ndarray:
    """Per registration, the key of its photo with the most animals, then the highest class
    probability (None for a registration no photo links to)."""
    rows = np.flatnonzero(event >= 0)
    animals = table["n_animals"].to_numpy(dtype=float, na_value=np.nan)[rows]
    probability = table["class_prob"].to_numpy(dtype=float, na_value=np.nan)[rows]
    order = np.lexsort((-np.nan_to_num(probability), -np.nan_to_num(animals), event[rows]))
    first = order[np.r_[True, event[rows][order][1:] != event[rows][order][:-1]]] \
        if len(order) else order
    best = np.full(n, None, dtype=object)
    best[event[rows][first]] = table["key"].iloc[rows[first]].to_numpy(dtype=object)
    return best
