"""A self-contained HTML report of a camera-trap run (no CDN, images inlined).

One pass over the registrations grouped by camera; the timeline draws one
element per registration (not per photo), so a camera with a season of
photos costs what its registrations cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pandas as pd

from kadr.core.html import render, thumbnail, write_page
from kadr.core.status import PhotoStatus
from kadr.traps.ensemble import disputed
from kadr.traps.settings import classifiers
from kadr.traps.tables import DATED_TIME_SOURCES

MAX_GALLERY = 400  # registrations shown with a photo; the table lists them all
MAX_FAILED_ROWS = 2000  # failed photos listed in the page; photos.csv has all
MAX_CARDS = 300  # registrations listed per camera; registrations.csv has all
THUMB = 360
TIMELINE_WIDTH = 900
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def duration_text(delta: pd.Timedelta) -> str:
    """'12 s', '4 min 05 s', '2 h 10 min'."""
    s = int(delta.total_seconds())
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _boxes(detections: str | None) -> list[dict]:
    """The animal boxes worth drawing: red when counted, yellow when doubtful."""
    return [{"bbox": d["bbox"], "color": "#ff3030" if d["conf"] >= 0.3 else "#ffd000",
             "text": f"{d['label']} {d['conf']:.2f}"}
            for d in json.loads(detections or "[]")
            if d["category"] == "animal" and d["conf"] >= 0.1]


def _timeline(regs: pd.DataFrame, t0: pd.Timestamp, t1: pd.Timestamp, classes: list) -> dict:
    span = max((t1 - t0).total_seconds(), 1.0)

    def x(v) -> float:
        return 10 + (pd.Timestamp(v) - t0).total_seconds() / span * (TIMELINE_WIDTH - 20)

    bars = []
    timed = regs[regs["date_registration_start"].notna()]
    for cls, count, start, end in zip(timed["class"], timed["count"],
                                      timed["date_registration_start"],
                                      timed["date_registration_end"], strict=True):
        a, b = x(start), x(end)
        bars.append({"x": a, "w": max(b - a, 3.0),
                     "color": PALETTE[classes.index(cls) % len(PALETTE)],
                     "title": f"{cls} x{count}: {start} - {end}"})
    return {"width": TIMELINE_WIDTH, "bars": bars, "start": f"{t0:%Y-%m-%d %H:%M:%S}",
            "end": f"{t1:%Y-%m-%d %H:%M:%S}"}


def clock_jumps(table: pd.DataFrame) -> dict[str, int]:
    """Per camera: how often a photo's time is earlier than the previous photo's in file order.

    Cameras number their files in shooting order, so a time going backwards
    means the clock was reset or changed; registrations still use time order,
    but the user should know.
    """
    ok = table.loc[(table["status"] == PhotoStatus.OK) & table["time"].notna(), ["group", "key", "time"]]
    ok = ok.sort_values(["group", "key"], kind="stable")
    back = ((ok["time"].diff() < pd.Timedelta(0)) & (ok["group"] == ok["group"].shift())).to_numpy()
    counts = ok["group"][back].value_counts()
    return {str(cam): int(counts[cam]) for cam in sorted(counts.index)}


def gallery_keys(regs: pd.DataFrame) -> list[str]:
    """The best photos the gallery may show, in its order (a few spare for photos that
    cannot be read): the only photos whose paths and boxes the report needs."""
    if "best_key" not in regs or regs.empty:
        return []
    ordered = regs.sort_values("name_folder", kind="stable")["best_key"].dropna()
    return ordered.head(2 * MAX_GALLERY).tolist()


@dataclass
class PhotoTally:
    """What the report and the run summary say about the photos, tallied a chunk of photos
    at a time (:meth:`add`; a chunk holds whole cameras), so that nothing holds them all."""

    photos: int = 0
    ok: int = 0
    untimed: int = 0  # read, without a time
    guessed: int = 0  # read, dated by file name or modification time
    without_exif: int = 0  # every photo whose time is not from EXIF
    cameras: dict[str, list] = field(default_factory=dict)  # [first, last, photos read]
    jumps: dict[str, int] = field(default_factory=dict)  # :func:`clock_jumps`
    guessed_events: set[str] = field(default_factory=set)  # linked to a photo not EXIF-dated
    guessed_cameras: set[str] = field(default_factory=set)
    failed: list[pd.DataFrame] = field(default_factory=list)  # key, status, reason
    best: list[pd.DataFrame] = field(default_factory=list)  # gallery photos, by key

    def add(self, chunk: pd.DataFrame, gallery: Iterable[str] = ()) -> None:
        """A chunk of photos (``key``, ``group``, ``time``, ``time_source``, ``status``,
        ``reason``; ``event_id`` once linked); ``gallery``: keys whose ``path``,
        ``detections`` and ``class_prob`` the gallery shows (:func:`gallery_keys`)."""
        if not len(chunk):
            return
        is_ok = (chunk["status"] == PhotoStatus.OK).to_numpy()
        has_time = chunk["time"].notna().to_numpy()
        # A photo whose camera clock a reviewer set is dated, not guessed.
        not_exif = (~chunk["time_source"].isin(DATED_TIME_SOURCES)).to_numpy()
        self.photos += len(chunk)
        self.ok += int(is_ok.sum())
        self.untimed += int((is_ok & ~has_time).sum())
        self.guessed += int((is_ok & chunk["time_source"].isin(["mtime", "filename"]).to_numpy())
                            .sum())
        self.without_exif += int(not_exif.sum())
        if not is_ok.all():
            self.failed.append(chunk.loc[~is_ok, ["key", "status", "reason"]])
        timed = chunk.loc[is_ok & has_time, ["group", "time"]]
        stats = timed.groupby("group")["time"].agg(["min", "max"])
        counts = chunk["group"][is_ok].value_counts()
        for cam, n in counts.items():
            first, last = stats.loc[cam] if cam in stats.index else (None, None)
            seen = self.cameras.setdefault(cam, [first, last, 0])
            if first is not None:
                seen[0] = first if seen[0] is None else min(seen[0], first)
                seen[1] = last if seen[1] is None else max(seen[1], last)
            seen[2] += int(n)
        self.jumps.update(clock_jumps(chunk))
        if "event_id" in chunk:
            guessed = chunk.loc[not_exif & chunk["event_id"].notna().to_numpy()]
            self.guessed_events.update(guessed["event_id"])
            self.guessed_cameras.update(guessed["group"].astype(str))
        wanted = set(gallery)
        if wanted and "path" in chunk:
            shown = ["key", "path", "detections", "class_prob"]
            self.best.append(chunk.loc[chunk["key"].isin(wanted),
                                       shown + (["frame_index"] if "frame_index" in chunk else [])])

    def failed_rows(self) -> pd.DataFrame:
        return (pd.concat(self.failed, ignore_index=True) if self.failed
                else pd.DataFrame(columns=["key", "status", "reason"]))

    def best_rows(self) -> pd.DataFrame:
        rows = (pd.concat(self.best) if self.best
                else pd.DataFrame(columns=["key", "path", "detections", "class_prob"]))
        return rows.drop_duplicates("key").set_index("key")

    def file_dated_warning(self) -> list[str]:
        """A warning naming registrations dated by a file's name or modification time (no
        EXIF time): a copied or checked-out photo carries the day it was copied."""
        if not self.guessed_events:
            return []
        cams = sorted(self.guessed_cameras)
        return [f"{len(self.guessed_events)} registration(s) on {', '.join(cams[:5])}"
                f"{' ...' if len(cams) > 5 else ''} are dated by file name or modification "
                "time (no EXIF time): check those dates, or shift the camera clock in "
                "`kadr traps review`"]


def render_report(table: pd.DataFrame, regs: pd.DataFrame, settings,
                  warnings: list[str] = (), agreement: dict | None = None,
                  learning: dict | None = None) -> str:
    """The report page of a whole per-photo table (see :func:`report_context`)."""
    tally = PhotoTally()
    tally.add(table, gallery_keys(regs))
    return render("traps_report.html",
                  **report_context(tally, regs, settings, warnings, agreement, learning))


def write_report(path, tally: PhotoTally, regs: pd.DataFrame, settings, warnings: list[str] = (),
                 agreement: dict | None = None, learning: dict | None = None) -> None:
    """The report page, written a camera at a time (see :func:`report_context`)."""
    write_page(path, "traps_report.html",
               **report_context(tally, regs, settings, warnings, agreement, learning))


def report_context(tally: PhotoTally, regs: pd.DataFrame, settings, warnings: list[str] = (),
                   agreement: dict | None = None, learning: dict | None = None) -> dict:
    """What the report page shows, from a :class:`PhotoTally` of the photos and every
    registration; ``agreement``: machine versus human on reviewed registrations;
    ``learning``: the cross-validated figures of ``traps learn``. The cameras' sections
    are made one at a time, as the page reaches them."""
    failed = tally.failed_rows()
    return dict(
        title="Camera-trap registrations", thumb=THUMB,
        n_photos=tally.photos, n_ok=tally.ok, n_regs=len(regs), failed_count=len(failed),
        failed=failed.head(MAX_FAILED_ROWS).to_dict("records") if len(failed) else [],
        method=settings.method, gap=str(settings.gap), detector=settings.detector,
        classifier=", ".join(classifiers(settings)) or "none: detector labels",
        disputed=disputed(regs),
        warnings=list(warnings),
        cameras=_camera_sections(tally, regs), max_gallery=MAX_GALLERY,
        jumps=dict(sorted(tally.jumps.items())), guessed=tally.guessed, untimed=tally.untimed,
        agreement=agreement, learning=learning)


def _disagreement(r: dict) -> str | None:
    """What an ensemble's classifiers said of a registration they disagree on."""
    agree = r.get("models_agree")
    if agree is None or pd.isna(agree) or bool(agree) or r.get("reviewed"):
        return None
    return "; ".join(f"{m}: {c}" for m, c in json.loads(r["model_classes"]).items())


def _camera_sections(tally: PhotoTally, regs: pd.DataFrame) -> Iterator[dict]:
    best = tally.best_rows()
    classes = sorted(regs["class"].unique()) if len(regs) else []
    shown = 0
    for cam, cam_regs in regs.groupby("name_folder", sort=True):
        timeline = None
        first, last, n_ok = tally.cameras.get(cam, (None, None, 0))
        if first is not None:
            timeline = _timeline(cam_regs, first, last, classes)
        cards = []
        for r in cam_regs.head(MAX_CARDS).to_dict("records"):
            start, end = r["date_registration_start"], r["date_registration_end"]
            card = {"cls": r["class"], "count": r["count"], "start": start, "end": end,
                    "duration": "no time" if pd.isna(start)
                    else duration_text(pd.Timestamp(end) - pd.Timestamp(start)),
                    "src": None, "guessed_time": r.get("eventID") in tally.guessed_events,
                    "reviewer": r.get("classified_by") if r.get("reviewed") else None,
                    "disagree": _disagreement(r)}
            key = r.get("best_key")
            if shown < MAX_GALLERY and isinstance(key, str) and key in best.index:
                p = best.loc[key]
                frame = p.get("frame_index")
                card["src"] = thumbnail(p["path"], THUMB, boxes=_boxes(p.get("detections")),
                                        quality=80, frame=None if pd.isna(frame) else int(frame))
                prob = p.get("class_prob")
                card.update(best=key, name=key.rsplit("/", 1)[-1],
                            prob_text="" if prob is None or pd.isna(prob) else f", p={prob:.2f}")
                shown += card["src"] is not None
            cards.append(card)
        yield {"name": cam, "photos": n_ok, "regs": len(cam_regs), "timeline": timeline,
               "cards": cards, "more": len(cam_regs) - len(cards)}
