"""The reviewed state of a run: the machine's registrations with every human decision applied.

A *unit* is what a reviewer looks at: one registration (camera, class,
count, start, end) with its photos. Machine units come from the per-photo
table of ``traps run`` by the run's own rule (sessions, gap); photos the
machine called empty are grouped the same way into *blank* units, so a
reviewer can also find the animals the detector missed.

Decisions (:mod:`kadr.traps.decisions`) name photos by content id. Replaying
them in order makes *human groups*: explicit sets of photos with a class and
count (accept, relabel, count, empty) or with a fixed extent and the
machine's vote (split, merge). Photos in no human group form machine units
again, after the cameras' clock shifts. So the state is a pure function of
(per-photo table, decision log): the server, ``traps export`` and ``traps
learn`` all derive it with :func:`load_state`, and a rerun of ``traps run``
(new photos, another model) keeps every decision. A group whose photos are
no longer all in the run is flagged for another look, never dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kadr.core.status import PhotoStatus
from kadr.traps.decisions import Decision, read_decisions
from kadr.traps.ensemble import ENSEMBLE_COLUMNS, registration_verdict
from kadr.traps.registrations import parse_gap, registrations_with_members
from kadr.traps.settings import registration_options
from kadr.traps.tables import (
    BACKGROUND_CLASSES,
    DATED_TIME_SOURCES,
    EMPTY,
    REVIEWER_TIME,
    normalise_photo_table,
)

REQUIRED_COLUMNS = ("key", "path", "group", "photo_id", "time", "time_source", "status", "class",
                    "class_prob", "count", "detections")


class NotARunError(FileNotFoundError):
    """The folder is not the output of ``traps run`` (or one this kadr cannot read)."""


@dataclass
class Unit:
    """One registration as the reviewer sees it."""

    id: str
    camera: str
    cls: str
    count: int
    rows: np.ndarray  # positions in the photo table, in time order
    prob: float | None  # the machine's (or learned) probability of ``cls``
    alternatives: list[tuple[str, float]]
    source: str = "machine"  # machine | human
    reviewed: bool = False
    decision: Decision | None = None
    flags: list[str] = field(default_factory=list)
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    machine_cls: str | None = None  # the machine's vote over the same photos
    # Several classifiers: each one's class over the photos, whether all give the machine's
    # class, and the one most sure of it (:func:`kadr.traps.ensemble.registration_verdict`).
    verdict: dict = field(default_factory=dict)
    photo_ids: tuple[str, ...] = ()  # for a group whose photos have all gone

    @property
    def etag(self) -> str:
        """Changes whenever anything a reviewer sees of the unit changes."""
        text = f"{self.id}|{self.cls}|{self.count}|{self.reviewed}|{len(self.rows)}"
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()

    @property
    def blank(self) -> bool:
        return self.cls == EMPTY

    @property
    def uncertainty(self) -> float:
        return 1.0 - (self.prob if self.prob is not None else 1.0)

    @property
    def disputed(self) -> bool:
        """The classifiers of an ensemble do not all give this registration's machine class
        (a review looks at these first)."""
        return self.verdict.get("models_agree") is False and not self.reviewed


@dataclass
class Group:
    """Photos a decision bound together."""

    id: str
    photos: list[str]
    decision: Decision
    cls: str | None  # None: the machine's vote over the photos
    count: int | None
    reviewed: bool
    note: str | None = None  # what a reviewer should look at again


def run_summary(out_dir: str | Path) -> dict:
    """``summary.json`` of a ``traps run`` output folder (its ``settings`` among it), once
    the folder is known to be one this kadr can read (its table's schema, not its rows)."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    table_path = out_dir / "photos.parquet"
    if not table_path.exists() or not (out_dir / "summary.json").exists():
        raise NotARunError(f"{out_dir} is not an output folder of `kadr traps run` "
                           "(no photos.parquet and summary.json in it)")
    columns = pq.read_schema(table_path).names
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise NotARunError(f"{table_path} was made by an older kadr (no column(s) "
                           f"{', '.join(missing)}); rerun `kadr traps run` on the same output "
                           "folder to bring it up to date")
    return json.loads((out_dir / "summary.json").read_text())


def camera_times(table: pd.DataFrame) -> pd.DataFrame:
    """The table with each photo's time as its camera wrote it: an export made after clock
    shifts keeps that in ``time_camera``, and shifts always start from it."""
    if "time_camera" in table.columns:
        table = table.assign(time=table["time_camera"])
    return table


def read_run(out_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """The per-photo table and the settings of a ``traps run`` output folder."""
    settings = run_summary(out_dir).get("settings", {})
    return camera_times(pd.read_parquet(Path(out_dir) / "photos.parquet")), settings


# Beyond this no camera clock is wrong: the number itself is (a typo, a unit mix-up).
MAX_SHIFT_SECONDS = 200 * 365.25 * 86400
NS = np.iinfo(np.int64)


class NotApplicable(ValueError):
    """A stored decision that cannot apply to this run (flagged, never raised to a page)."""


def problem_text(d: Decision, e: Exception) -> str:
    reason = f"it has no {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
    return f"decision #{d.id} ({d.kind} by {d.reviewer}) could not be applied: {reason}"


def clock_offset(payload: dict) -> int:
    """A clock decision's offset in nanoseconds, to the microsecond a run stores its times
    in (any fraction of a second a person gives); NotApplicable for what cannot be a clock
    error."""
    try:
        seconds = float(payload["offset_seconds"])
    except (TypeError, ValueError):
        raise NotApplicable(f"the offset {payload['offset_seconds']!r} is not a number") from None
    if not np.isfinite(seconds) or abs(seconds) > MAX_SHIFT_SECONDS:
        raise NotApplicable(f"an offset of {seconds:g} s is not a camera clock error "
                            "(at most 200 years)")
    return round(seconds * 1e6) * 1000


def _shifted_times(original: np.ndarray, cameras: np.ndarray, decisions: list[Decision],
                   problems: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Photo times (datetime64[ns]) after the reviewers' clock shifts, and which photos a
    shift moved. Each shift applies to the photos of its camera from its ``from_time`` on,
    in the camera's own original time; one that cannot apply is named in ``problems``."""
    ticks = original.view(np.int64).copy()
    timed = ~np.isnat(original)
    moved = np.zeros(len(original), bool)
    for d in decisions:
        if d.kind != "clock":
            continue
        try:
            camera = str(d.payload["camera"])
            offset = clock_offset(d.payload)
            sel = (cameras == camera) & timed
            if not sel.any():
                raise NotApplicable(f"camera {camera!r} has no timed photo in this run")
            if d.payload.get("from_time"):
                sel &= original >= np.datetime64(pd.Timestamp(d.payload["from_time"]), "ns")
            lo, hi = int(ticks[sel].min()), int(ticks[sel].max())  # sel holds timed photos
            if not (NS.min < lo + offset and hi + offset < NS.max):
                raise NotApplicable("the shifted times would leave the calendar kadr can hold")
            ticks[sel] += offset
            moved |= sel
        except (KeyError, ValueError, TypeError, OverflowError) as e:
            problems.append(problem_text(d, e))
    return ticks.view("datetime64[ns]"), moved


def active_decisions(decisions: list[Decision], problems: list[str]) -> list[Decision]:
    """The decisions in force: every one but undos and what they took back."""
    undone = set()
    for d in decisions:
        if d.kind == "undo":
            try:
                undone.add(int(d.payload["undoes"]))
            except (KeyError, ValueError, TypeError) as e:
                problems.append(problem_text(d, e))
    return [d for d in decisions if d.id not in undone and d.kind != "undo"]


def _photo_list(d: Decision, least: int = 1) -> list[str]:
    photos = [str(p) for p in d.photos]
    if len(photos) < least:
        raise NotApplicable(f"it names {len(photos)} photo(s), {least} needed")
    return photos


def _label(d: Decision) -> tuple[str, int]:
    """The class and count a label or empty decision gives."""
    if d.kind == "empty":
        return EMPTY, 0
    cls = str(d.payload["class"]).strip()
    count = int(d.payload["count"])
    if not cls or count < 0:
        raise NotApplicable(f"class {cls!r} with count {count} is no label")
    return cls, count


def _replay_groups(decisions: list[Decision], problems: list[str]) -> dict[str, Group]:
    """Human groups from the decisions in order; a decision that cannot apply is skipped
    and named in ``problems`` (the replay itself never fails)."""
    groups: dict[str, Group] = {}
    owner: dict[str, str] = {}

    def take(photos, gid):
        for p in photos:
            old = owner.get(p)
            if old is not None and old in groups:
                g = groups[old]
                g.photos.remove(p)
                if not g.photos:
                    del groups[old]
            owner[p] = gid

    for d in decisions:
        try:
            if d.kind in ("label", "empty"):
                photos = _photo_list(d)
                cls, count = _label(d)
                gid = f"h{d.id}"
                take(photos, gid)
                groups[gid] = Group(gid, photos, d, cls, count, True)
            elif d.kind == "split":
                photos = _photo_list(d, 2)
                if d.payload.get("at") not in photos[1:]:
                    raise NotApplicable("the photo to split at is not among its photos")
                at = photos.index(d.payload["at"])
                for suffix, part in (("a", photos[:at]), ("b", photos[at:])):
                    take(part, f"h{d.id}{suffix}")
                    groups[f"h{d.id}{suffix}"] = Group(f"h{d.id}{suffix}", part, d, None, None,
                                                       False)
            elif d.kind == "merge":
                photos = _photo_list(d, 2)
                merged = Group(f"h{d.id}", photos, d, None, None, False)
                _keep_labels(merged, [groups[owner[p]] for p in dict.fromkeys(photos)
                                      if owner.get(p) in groups])
                take(photos, merged.id)
                groups[merged.id] = merged
        except (KeyError, ValueError, TypeError) as e:
            problems.append(problem_text(d, e))
    return groups


def _keep_labels(merged: Group, parts: list[Group]) -> None:
    """A merge keeps what reviewers said of its parts: one species among the labelled
    parts labels the whole (the largest count); two species leave it to be chosen."""
    labelled = {id(g): g for g in parts if g.reviewed and g.cls not in (None, EMPTY)}.values()
    classes = sorted({g.cls for g in labelled})
    if len(classes) == 1:
        merged.cls, merged.count, merged.reviewed = classes[0], max(g.count for g in labelled), True
    elif classes:
        merged.note = (f"merged registrations were labelled {' and '.join(classes)}: choose "
                       "the species")


def _stored_time(text) -> pd.Timestamp | None:
    """A time a decision recorded; None when it has none (or one no longer readable)."""
    try:
        t = pd.Timestamp(text) if text else None
    except (TypeError, ValueError):
        return None
    return None if t is None or pd.isna(t) else t


def _runs(labels: np.ndarray) -> list[np.ndarray]:
    """Positions of each distinct label, in order of the labels (one sort, not one scan per
    label: a season of 100k registrations costs what sorting it costs)."""
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, cuts) if len(order) else []


class ReviewState:
    """Units of one run with the decisions applied; rebuilt from scratch or per decision."""

    def __init__(self, table: pd.DataFrame, settings: dict, decisions: list[Decision],
                 learned: dict[str, dict[str, float]] | None = None):
        self.method = settings.get("method", "sessions")
        self.gap = parse_gap(settings.get("gap", "30m"))
        self.options = registration_options(settings)
        ok = table[(table["status"] == PhotoStatus.OK) & table["photo_id"].notna()]
        # A photo listed twice (same bytes) is one photo to review.
        self.table = ok.drop_duplicates("photo_id").reset_index(drop=True)
        t = self.table
        self.row_of = {p: i for i, p in enumerate(t["photo_id"])}
        # Columns as arrays once: per-unit work indexes them, never the frame.
        self.pid = t["photo_id"].astype(str).to_numpy()
        self.key = t["key"].astype(str).to_numpy()
        self.cam = t["group"].astype(str).to_numpy()
        self.cls = t["class"].fillna("").astype(str).to_numpy()
        self.cls_prob = pd.to_numeric(t["class_prob"], errors="coerce").to_numpy(float)
        self.count = pd.to_numeric(t["count"], errors="coerce").to_numpy(float)
        self.n_animals = pd.to_numeric(t.get("n_animals", t["count"]),
                                       errors="coerce").to_numpy(float)
        self.source = t["time_source"].astype(str).to_numpy()
        self.camera_t = pd.to_datetime(t["time"]).to_numpy().astype("datetime64[ns]")
        # Exports replay decisions without the detections; the review app reads them.
        self.detections = (t["detections"].to_numpy() if "detections" in t
                           else np.full(len(t), None, object))
        self.is_animal = ~pd.Series(self.cls).str.lower().isin(BACKGROUND_CLASSES).to_numpy()
        self.prob_columns = [c for c in t.columns if c.startswith("p_")]
        self.votes = t["votes"].to_numpy(dtype=object) if "votes" in t else None
        self.probs = (t[self.prob_columns].to_numpy(dtype=np.float32, na_value=np.nan)
                      if self.prob_columns else None)
        self.learned = learned or {}
        self.decisions = decisions
        self.rebuild()

    # ------------------------------------------------------------------ building
    def rebuild(self) -> None:
        """Everything from the photo table and the log (startup, undo, clock shift)."""
        self.problems: list[str] = []
        active = active_decisions(self.decisions, self.problems)
        self.t, moved = _shifted_times(self.camera_t, self.cam, active, self.problems)
        # A photo whose clock a reviewer set is no longer dated by a guess.
        self.time_source = np.where(moved, REVIEWER_TIME, self.source)
        self.units: dict[str, Unit] = {}
        self.by_camera: dict[str, set[str]] = {}
        self.unit_of_row = np.full(len(self.table), None, dtype=object)
        self.groups = _replay_groups(active, self.problems)
        grouped = np.zeros(len(self.table), bool)
        for g in self.groups.values():
            self._add(self._group_unit(g))
            grouped[[self.row_of[p] for p in g.photos if p in self.row_of]] = True
        self._machine_units(np.flatnonzero(~grouped))

    def _add(self, unit: Unit) -> None:
        self.units[unit.id] = unit
        self.by_camera.setdefault(unit.camera, set()).add(unit.id)
        self.unit_of_row[unit.rows] = unit.id

    def _remove(self, uid: str) -> None:
        unit = self.units.pop(uid, None)
        if unit is not None:
            self.by_camera.get(unit.camera, set()).discard(uid)

    def _machine_units(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        frame = normalise_photo_table(pd.DataFrame({
            "camera": self.cam[rows], "file": self.key[rows], "time": self.t[rows],
            "class": self.cls[rows], "count": self.count[rows],
            "confidence": self.cls_prob[rows]}))
        regs, members = registrations_with_members(frame, self.method, self.gap,
                                                   **self.options)
        classes, counts = regs["class"].astype(str).to_numpy(), regs["count"].to_numpy()
        inside = members >= 0
        in_members, in_rows = members[inside], rows[inside]
        for part in _runs(in_members):
            i = in_members[part[0]]
            unit_rows = self._in_time_order(in_rows[part])
            self._add(self._unit(unit_rows, str(classes[i]), int(counts[i]), "m"))
        self._blank_units(rows[~inside])

    def _blank_units(self, rows: np.ndarray) -> None:
        """Photos in no registration, grouped by camera and gap like a visit."""
        if not len(rows):
            return
        order = np.lexsort((self.key[rows], self.t[rows], self.cam[rows]))
        rows = rows[order]
        cam, t = self.cam[rows], self.t[rows]
        untimed = np.isnat(t)
        gaps = np.r_[True, (t[1:] - t[:-1]) > self.gap]
        brk = np.r_[True, cam[1:] != cam[:-1]] | gaps | untimed | np.r_[True, untimed[:-1]]
        seg = np.cumsum(brk)
        for part in _runs(seg):
            self._add(self._unit(rows[part], EMPTY, 0, "b"))

    def _in_time_order(self, rows: np.ndarray) -> np.ndarray:
        return rows[np.lexsort((self.key[rows], self.t[rows]))]

    def _unit(self, rows: np.ndarray, cls: str, count: int, prefix: str) -> Unit:
        ids = sorted(self.pid[rows])
        uid = prefix + hashlib.blake2b("|".join(ids).encode(), digest_size=8).hexdigest()
        alternatives = self._alternatives(rows)
        prob = self._blank_prob(rows) if cls == EMPTY else dict(alternatives).get(cls)
        machine_cls = cls
        learned = self.learned.get(uid)
        if learned and cls != EMPTY:  # re-scored by `traps learn`
            alternatives = sorted(learned.items(), key=lambda kv: -kv[1])[:5]
            cls, prob = alternatives[0]
        unit = Unit(uid, str(self.cam[rows[0]]), cls, count, rows, prob, alternatives,
                    machine_cls=machine_cls)
        self._decorate(unit)
        return unit

    def _group_unit(self, g: Group) -> Unit:
        rows = np.array([self.row_of[p] for p in g.photos if p in self.row_of], np.int64)
        rows = self._in_time_order(rows) if len(rows) else rows
        machine = self._machine_vote(rows)
        cls = g.cls if g.cls is not None else (machine[0] or EMPTY)
        count = g.count if g.count is not None else machine[1]
        alternatives = self._alternatives(rows) if len(rows) else []
        unit = Unit(g.id, str(g.decision.payload.get("camera", "")), cls, count, rows,
                    1.0 if g.reviewed else dict(alternatives).get(cls), alternatives,
                    source="human", reviewed=g.reviewed, decision=g.decision,
                    machine_cls=machine[0] or EMPTY, photo_ids=tuple(g.photos))
        if len(rows):
            unit.camera = str(self.cam[rows[0]])
        if g.note:
            unit.flags.append(g.note)
        gone = len(g.photos) - len(rows)
        if gone:
            unit.flags.append(f"photos changed: {gone} of {len(g.photos)} photos of this "
                              "decision are no longer in the run; look again")
            unit.reviewed = False
        self._decorate(unit)
        return unit

    def _decorate(self, unit: Unit) -> None:
        if not len(unit.rows):
            snap = (unit.decision.payload if unit.decision else {})
            unit.start, unit.end = (_stored_time(snap.get("start")),
                                    _stored_time(snap.get("end")))
            return
        t = self.t[unit.rows]
        t = t[~np.isnat(t)]
        unit.start, unit.end = ((pd.Timestamp(t.min()), pd.Timestamp(t.max())) if len(t)
                                else (None, None))
        if self.votes is not None and not unit.blank:
            unit.verdict = registration_verdict(self.votes[unit.rows], unit.machine_cls or unit.cls)
            if unit.verdict["models_agree"] is False:
                said = json.loads(unit.verdict["model_classes"])
                unit.flags.append("classifiers disagree: " + "; ".join(
                    f"{m} says {c}" for m, c in said.items()))
        guessed = int((~np.isin(self.time_source[unit.rows], DATED_TIME_SOURCES)).sum())
        if guessed:
            unit.flags.append(f"time not from EXIF: {guessed} photo(s) dated by file name or "
                              "modification time")

    def _votes(self, rows: np.ndarray) -> dict[str, float]:
        """Per animal class of these photos, the sum of its probabilities (a vote)."""
        votes: dict[str, float] = {}
        for r in rows[self.is_animal[rows]]:
            p = self.cls_prob[r]
            votes[self.cls[r]] = votes.get(self.cls[r], 0.0) + (1.0 if np.isnan(p) else p)
        return votes

    def _machine_vote(self, rows: np.ndarray) -> tuple[str | None, int]:
        """The machine's class and count for photos a human grouped (split, merge)."""
        votes = self._votes(rows) if len(rows) else {}
        if not votes:
            return None, 0
        counts = self.count[rows[self.is_animal[rows]]]
        counts = counts[~np.isnan(counts)]
        return max(votes, key=votes.get), int(counts.max()) if len(counts) else 1

    def _alternatives(self, rows: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
        """The machine's classes for these photos, most probable first (mean over photos)."""
        if self.probs is not None and len(rows):
            p = self.probs[rows]
            if np.isfinite(p).any():
                p = np.nan_to_num(np.nanmean(p, axis=0))
                order = np.argsort(-p)[:top]
                return [(self.prob_columns[i][2:], round(float(p[i]), 4)) for i in order]
        votes = self._votes(rows)
        ranked = sorted(votes.items(), key=lambda kv: -kv[1])[:top]
        return [(c, round(v / max(len(rows), 1), 4)) for c, v in ranked if v > 0]

    def _blank_prob(self, rows: np.ndarray) -> float:
        """How sure the machine is that these photos are empty: one minus its best animal box."""
        best = 0.0
        for text in self.detections[rows]:
            if not text or '"animal"' not in text:
                continue
            for d in json.loads(text):
                if d.get("category") == "animal":
                    best = max(best, float(d["conf"]))
        return round(1.0 - best, 4)

    # ------------------------------------------------------------------ decisions
    def apply(self, decisions: list[Decision]) -> None:
        """Bring the state up to date with newly stored decisions."""
        self.decisions = self.decisions + decisions
        # An undo or a clock shift changes what came before; a merge reads its parts' labels.
        if any(d.kind in ("undo", "clock", "merge") for d in decisions):
            self.rebuild()
            return
        for d in decisions:
            rows = [self.row_of[p] for p in d.photos if p in self.row_of]
            touched = {self.unit_of_row[r] for r in rows}
            for uid in touched:
                unit = self.units.get(uid)
                covered = unit is not None and set(unit.rows.tolist()) <= set(rows)
                if unit is not None and not covered:
                    # A decision on part of a unit: the rest must be regrouped by the rules.
                    self.rebuild()
                    return
            for uid in touched:
                self._remove(uid)
            fresh = _replay_groups([d], self.problems)
            for gid, g in fresh.items():
                self.groups[gid] = g
                self._add(self._group_unit(g))
            taken = set(d.photos)
            for g in list(self.groups.values()):  # groups that lost photos to this decision
                if g.decision.id != d.id and taken.intersection(g.photos):
                    g.photos = [p for p in g.photos if p not in taken]
                    if not g.photos:
                        del self.groups[g.id]

    def decisions_of(self, reviewer: str) -> list[Decision]:
        return [d for d in active_decisions(self.decisions, []) if d.reviewer == reviewer]

    def previous_unit(self, unit: Unit) -> Unit | None:
        """The registration (or blank stretch) before this one on its camera."""
        here = self.time_order(unit)
        earlier = [v for v in (self.units[i] for i in self.by_camera.get(unit.camera, ()))
                   if self.time_order(v) < here]
        return max(earlier, key=self.time_order) if earlier else None

    def time_order(self, unit: Unit) -> tuple[pd.Timestamp, str, str]:
        """Where a unit stands on its camera's time line: its start (untimed ones first),
        then its first photo's name (a burst shares a second), then its id."""
        first = str(self.key[unit.rows[0]]) if len(unit.rows) else ""
        return (unit.start if unit.start is not None else pd.Timestamp.min, first, unit.id)

    # ------------------------------------------------------------------ views
    def classes(self, project: list[str] = ()) -> list[str]:
        """The project's class list: the prompts' classes, then names reviewers typed."""
        seen = list(dict.fromkeys([*project, *(c[2:] for c in self.prob_columns),
                                   *sorted({u.machine_cls or EMPTY for u in self.units.values()})]))
        for d in self.decisions:
            c = d.payload.get("class")
            if c and c not in seen:
                seen.append(c)
        return [c for c in seen if c.lower() not in BACKGROUND_CLASSES]

    def registrations(self) -> pd.DataFrame:
        """Registrations as exported: human groups and machine units that are animals."""
        rows = []
        for u in self.units.values():
            if u.blank or not len(u.rows):
                continue
            d = u.decision if u.reviewed else None
            keys = self.key[u.rows]
            n = self.n_animals[u.rows]
            rows.append({
                "name_folder": u.camera, "class": u.cls,
                "date_registration_start": u.start, "date_registration_end": u.end,
                "count": int(u.count), "photos": len(u.rows), "eventID": u.id,
                "best_key": keys[int(np.nanargmax(np.nan_to_num(n, nan=-1)))],
                "reviewed": bool(d), "machine_class": u.machine_cls,
                "classified_by": d.reviewer if d else None,
                "classified_at": d.at if d else None,
                **({c: u.verdict.get(c) for c in ENSEMBLE_COLUMNS} if self.votes is not None
                   else {}),
            })
        regs = pd.DataFrame(rows, columns=[
            "name_folder", "class", "date_registration_start", "date_registration_end", "count",
            "photos", "eventID", "best_key", "reviewed", "machine_class", "classified_by",
            "classified_at", *(ENSEMBLE_COLUMNS if self.votes is not None else ())])
        regs["date_registration_start"] = pd.to_datetime(regs["date_registration_start"])
        regs["date_registration_end"] = pd.to_datetime(regs["date_registration_end"])
        return regs.sort_values(["name_folder", "date_registration_start", "eventID"],
                                kind="stable").reset_index(drop=True)

    def photo_events(self) -> pd.DataFrame:
        """Per photo id: its registration (event id), the human class where reviewed, and
        its time after clock shifts (with where that time came from)."""
        human = np.full(len(self.table), None, dtype=object)
        event = np.full(len(self.table), None, dtype=object)
        for u in self.units.values():
            if u.reviewed:
                human[u.rows] = u.cls
            if not u.blank:
                event[u.rows] = u.id
        return pd.DataFrame({"photo_id": self.table["photo_id"], "event_id": event,
                             "human_class": human, "time": self.t,
                             "time_source": self.time_source})

    def reviewed_pairs(self) -> pd.DataFrame:
        """(machine, human) class of every reviewed unit; "empty" where one saw no animal."""
        done = [u for u in self.units.values() if u.reviewed]
        return pd.DataFrame({"unit": [u.id for u in done],
                             "machine": [u.machine_cls or EMPTY for u in done],
                             "human": [u.cls for u in done]})


def load_learned(out_dir: str | Path) -> dict[str, dict[str, float]]:
    """Per unit id, the learned classifier's probabilities (``traps learn``), if any."""
    path = Path(out_dir) / "learned.parquet"
    if not path.exists():
        return {}
    df = pd.read_parquet(path)
    classes = [c for c in df.columns if c.startswith("p_")]
    return {uid: {c[2:]: float(v) for c, v in zip(classes, vals, strict=True)}
            for uid, *vals in df[["unit", *classes]].itertuples(index=False)}


def load_state(out_dir: str | Path) -> ReviewState:
    """The reviewed state of a run folder (photos, settings, decisions, learned scores)."""
    table, settings = read_run(out_dir)
    return ReviewState(table, settings, read_decisions(out_dir), load_learned(out_dir))
