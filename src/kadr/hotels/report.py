"""The hotel collection profile as a page: key figures first, then charts and galleries."""

from __future__ import annotations

import pandas as pd

from kadr.core.html import figure, render, thumbnail
from kadr.core.status import PhotoStatus
from kadr.hotels.statistics import group_columns

GALLERY_LIMIT = 48
MAX_FAILED_ROWS = 500


def _gallery(rows: pd.DataFrame, caption, rotate=lambda r: 0, total: int | None = None
             ) -> dict:
    """Thumbnails of the first rows a gallery shows; the rest are counted only (``total``:
    how many there are, when ``rows`` holds only the first)."""
    items = [{"key": r["key"], "caption": caption(r),
              "src": thumbnail(r["path"], 160, rotate=rotate(r))}
             for r in rows.head(GALLERY_LIMIT).to_dict("records")]
    return {"items": items, "total": len(rows) if total is None else total}


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else ""


def key_figures(summary: dict) -> list[dict]:
    """What a person reads first: counts, what is wrong, and how uneven the collection is."""
    rows = summary["rows"]
    figures = [
        {"name": "rows", "value": rows, "detail": f"{summary['unique_paths']} distinct paths"
         + (f", {summary['unique_image_ids']} distinct image ids"
            if summary.get("unique_image_ids") is not None else "")},
        {"name": "unique photos (by content)", "value": summary["unique_contents"],
         "detail": f"{summary['readable']} rows readable"},
        {"name": "missing", "value": summary["missing"], "link": "failed",
         "detail": _pct(summary["missing"], rows)},
        {"name": "unreadable", "value": summary["unreadable"], "link": "failed",
         "detail": _pct(summary["unreadable"], rows)},
    ]
    dups = summary.get("duplicates", {})
    figures.append({"name": "in duplicate families", "value": sum(dups.values()),
                    "link": "duplicates",
                    "detail": ", ".join(f"{n} {kind}" for kind, n in sorted(dups.items()))
                    or "none"})
    if "rotated" in summary:
        by = summary["rotated"]["by_angle"]
        figures.append({"name": "look rotated", "value": summary["rotated"]["flagged"],
                        "link": "rotated",
                        "detail": ", ".join(f"{n} need {int(float(a))}°"
                                             for a, n in sorted(by.items()))})
        figures.append({"name": "off-topic", "value": summary["off_topic"]["flagged"],
                        "link": "offtopic", "detail": "not a hotel photo, by the CLIP check"})
    else:
        figures.append({"name": "rotation and off-topic checks", "value": "skipped",
                        "detail": summary["model_checks"]})
    for what in ("hotel", "chain", "source"):
        im = summary.get(f"per_{what}")
        if im:
            figures.append({
                "name": f"per {what} ({im['column']})", "value": im["groups"],
                "link": f"per-{what}",
                "detail": f"{im['groups']} {what}s; photos per {what}: min {im['min']}, "
                          f"median {im['median']:g}, max {im['max']}; Gini {im['gini']:.2f}; "
                          f"top 1% of {what}s hold {100 * im['top_1pct_share']:.0f}%"})
    return figures


def render_profile(photos: pd.DataFrame, dups: pd.DataFrame, summary: dict, settings) -> str:
    import plotly.express as px

    ok = photos[photos["status"] == PhotoStatus.OK]
    group_charts = [
        {"what": what, "figure": figure(px.histogram(
            photos.groupby(col).size(), nbins=50, log_y=True,
            labels={"value": f"photos per {what}"}))}
        for what, col in group_columns(photos).items()]
    size_charts = []
    if len(ok):
        sample = ok.sample(min(len(ok), 20000), random_state=0)
        size_charts = [
            figure(px.scatter(sample, x="width", y="height", opacity=0.4)),
            figure(px.histogram(sample["width"] / sample["height"], nbins=60,
                                labels={"value": "aspect ratio (w/h)"}).update_layout(
                showlegend=False)),
            figure(px.bar(ok["format"].value_counts(), labels={"value": "photos"}).update_layout(
                showlegend=False)),
        ]
    model_checks = "rotation_needed" in ok and ok["rotation_needed"].notna().any()
    rotated = offtopic = duplicates = _gallery(photos[:0], str)
    if model_checks:
        rot = ok[(ok["rotation_needed"] != 0)
                 & (ok["rotation_confidence"] >= settings.rotation_threshold)]
        rotated = _gallery(rot.sort_values("rotation_confidence", ascending=False),
                           lambda r: f"turn {r['rotation_needed']}° ccw, "
                                     f"p={r['rotation_confidence']:.2f}")
        off = ok[ok["offtopic_prob"] >= settings.offtopic_threshold]
        offtopic = _gallery(off.sort_values("offtopic_prob", ascending=False),
                            lambda r: f"{r['scene']} p={r['offtopic_prob']:.2f}")
    if len(dups):
        # The first families' rows, with their paths: the page shows no more than those.
        order = dups[["group", "kind"]].reset_index(drop=True).sort_values(["group", "kind"])
        first = dups.iloc[order.index[:GALLERY_LIMIT]]
        paths = photos.loc[photos["key"].isin(first["key"]), ["key", "path"]]
        shown = first.merge(paths.drop_duplicates("key"), on="key")
        duplicates = _gallery(shown, lambda r: f"{r['kind']}" + (
            f" (turn {r['rotation']}°)" if r["rotation"] else "")
            + f", family {str(r['group'])[:8]}", total=len(dups))
    failed = photos[photos["status"] != PhotoStatus.OK]
    return render(
        "hotels_profile.html", title="Hotel photo collection profile", with_plotly=True,
        figures=key_figures(summary), group_charts=group_charts, size_charts=size_charts,
        model_checks=model_checks, model_note=summary["model_checks"], rotated=rotated,
        offtopic=offtopic, duplicates=duplicates,
        failed=failed[["key", "status", "reason"]].head(MAX_FAILED_ROWS).to_dict("records"),
        failed_count=len(failed),
    )
