"""A self-contained HTML report of a camera-trap run (no CDN, images inlined).

One pass over the registrations grouped by camera; the timeline draws one
element per registration (not per photo), so a camera with a season of
photos costs what its registrations cost.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from kadr.core.html import render, thumbnail

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
    ok = table.loc[(table["status"] == "ok") & table["time"].notna(), ["group", "key", "time"]]
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


def render_report(table: pd.DataFrame, regs: pd.DataFrame, settings,
                  warnings: list[str] = (), agreement: dict | None = None,
                  learning: dict | None = None, best: pd.DataFrame | None = None,
                  jumps: dict[str, int] | None = None) -> str:
    """The report page; ``agreement``: machine versus human on reviewed registrations;
    ``learning``: the cross-validated figures of ``traps learn``. ``best``: the rows of
    :func:`gallery_keys` (path, detections, class_prob) by key; taken from ``table``
    when it has those columns. ``jumps``: :func:`clock_jumps` of ``table``, when the
    caller has it already."""
    # Masks and the few columns each figure needs: no copy of the whole table.
    is_ok = (table["status"] == "ok").to_numpy() if len(table) else np.zeros(0, bool)
    n_ok = int(is_ok.sum())
    failed = table.loc[~is_ok, ["key", "status", "reason"]] if len(table) else table
    timed = table.loc[is_ok & table["time"].notna().to_numpy(), ["group", "time"]] \
        if n_ok else pd.DataFrame(columns=["group", "time"])
    per_cam = (timed.groupby("group")["time"].agg(["min", "max"]) if len(timed)
               else pd.DataFrame(columns=["min", "max"]))
    photos_per_cam = table["group"][is_ok].value_counts() if n_ok else pd.Series(dtype=int)
    if best is None:
        rows = table[table["key"].isin(gallery_keys(regs))] if len(table) else table
        best = rows.drop_duplicates("key").set_index("key")
    classes = sorted(regs["class"].unique()) if len(regs) else []
    guessed_events = set(table.loc[(table["time_source"] != "exif") & table["event_id"].notna(),
                                   "event_id"]) if "event_id" in table and len(table) else set()
    cameras, shown = [], 0
    for cam, cam_regs in regs.groupby("name_folder", sort=True):
        timeline = None
        if cam in per_cam.index:
            timeline = _timeline(cam_regs, per_cam.at[cam, "min"], per_cam.at[cam, "max"], classes)
        cards = []
        for r in cam_regs.head(MAX_CARDS).to_dict("records"):
            start, end = r["date_registration_start"], r["date_registration_end"]
            card = {"cls": r["class"], "count": r["count"], "start": start, "end": end,
                    "duration": "no time" if pd.isna(start)
                    else duration_text(pd.Timestamp(end) - pd.Timestamp(start)),
                    "src": None, "guessed_time": r.get("eventID") in guessed_events,
                    "reviewer": r.get("classified_by") if r.get("reviewed") else None}
            key = r.get("best_key")
            if shown < MAX_GALLERY and isinstance(key, str) and key in best.index:
                p = best.loc[key]
                card["src"] = thumbnail(p["path"], THUMB, boxes=_boxes(p.get("detections")),
                                        quality=80)
                prob = p.get("class_prob")
                card.update(best=key, name=key.rsplit("/", 1)[-1],
                            prob_text="" if prob is None or pd.isna(prob) else f", p={prob:.2f}")
                shown += card["src"] is not None
            cards.append(card)
        cameras.append({"name": cam, "photos": int(photos_per_cam.get(cam, 0)),
                        "regs": len(cam_regs), "timeline": timeline, "cards": cards,
                        "more": len(cam_regs) - len(cards)})
    return render(
        "traps_report.html", title="Camera-trap registrations", thumb=THUMB,
        n_photos=len(table), n_ok=n_ok, n_regs=len(regs), failed_count=len(failed),
        failed=failed.head(MAX_FAILED_ROWS).to_dict("records") if len(failed) else [],
        method=settings.method, gap=str(settings.gap), detector=settings.detector,
        classifier=str(settings.classifier or "none: detector labels"), warnings=list(warnings),
        cameras=cameras, max_gallery=MAX_GALLERY,
        jumps=jumps if jumps is not None else clock_jumps(table) if len(table) else {},
        guessed=int((table["time_source"].isin(["mtime", "filename"]).to_numpy()
                     & is_ok).sum()) if n_ok else 0,
        untimed=int((table["time"].isna().to_numpy() & is_ok).sum()) if n_ok else 0,
        agreement=agreement, learning=learning,
    )
