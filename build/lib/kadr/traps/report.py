"""A self-contained HTML report of a camera-trap run (no CDN, images inlined)."""

from __future__ import annotations

import base64
import html
import io
import json

import pandas as pd
from PIL import Image, ImageDraw

from kadr.core.decode import DecodeError, decode_photo, read_bytes

MAX_GALLERY = 400  # registrations shown with a photo; the table lists them all
THUMB = 360

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin-top:0} table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
.cam{margin:1.5em 0} .tl{background:#f6f6f6;border:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;padding:6px;width:""" + str(THUMB) + """px;font-size:13px}
.card img{width:100%} .bad{color:#b00} .card{overflow-wrap:anywhere}
"""


def _thumb_with_boxes(path: str, top_bbox: str | None, detections: str | None) -> str | None:
    try:
        photo = decode_photo(read_bytes(path), min_side=THUMB)
    except DecodeError:
        return None
    img = photo.image.copy()
    img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for d in json.loads(detections or "[]"):
        if d["category"] != "animal" or d["conf"] < 0.1:
            continue
        x, y, bw, bh = d["bbox"]
        color = "#ff3030" if d["conf"] >= 0.3 else "#ffd000"
        draw.rectangle([x * w, y * h, (x + bw) * w, (y + bh) * h], outline=color, width=2)
        draw.text((x * w + 2, y * h + 2), f"{d['label']} {d['conf']:.2f}", fill=color)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _duration(delta: pd.Timedelta) -> str:
    """'12 s', '4 min 05 s', '2 h 10 min'."""
    s = int(delta.total_seconds())
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _timeline(regs: pd.DataFrame, photos: pd.DataFrame) -> str:
    """An SVG strip: photo ticks in grey, registrations as coloured bars."""
    t = photos["time"].dropna()
    if t.empty:
        return "<p>No timed photos.</p>"
    t0, t1 = t.min(), t.max()
    span = max((t1 - t0).total_seconds(), 1.0)
    width, height = 900, 46

    def x(v) -> float:
        return 10 + (pd.Timestamp(v) - t0).total_seconds() / span * (width - 20)

    parts = [f'<svg class="tl" width="{width}" height="{height}">']
    parts += [f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="30" y2="42" stroke="#999"/>' for v in t]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    classes = sorted(regs["class"].unique()) if len(regs) else []
    for r in regs[regs["date_registration_start"].notna()].to_dict("records"):
        a, b = x(r["date_registration_start"]), x(r["date_registration_end"])
        color = palette[classes.index(r["class"]) % len(palette)]
        label = html.escape(f"{r['class']} x{r['count']}: {r['date_registration_start']} - "
                            f"{r['date_registration_end']}")
        parts.append(f'<rect x="{a:.1f}" y="6" width="{max(b - a, 3):.1f}" height="20" '
                     f'fill="{color}"><title>{label}</title></rect>')
    parts.append(f'<text x="10" y="45" font-size="9">{t0:%Y-%m-%d %H:%M:%S}</text>')
    parts.append(f'<text x="{width - 10}" y="45" font-size="9" text-anchor="end">'
                 f'{t1:%Y-%m-%d %H:%M:%S}</text>')
    return "".join(parts) + "</svg>"


def render(table: pd.DataFrame, regs: pd.DataFrame, summary, settings) -> str:
    esc = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>kadr camera-trap report"
           f"</title><style>{CSS}</style></head><body><h1>Camera-trap registrations</h1>"]
    ok = table[table["status"] == "ok"] if len(table) else table
    failed = table[table["status"] != "ok"] if len(table) else table
    out.append(
        f"<p>{len(table)} photos, {len(ok)} processed, {len(failed)} failed; "
        f"{len(regs)} registrations (method <b>{esc(settings.method)}</b>, gap "
        f"{esc(str(settings.gap))}). Detector <code>{esc(settings.detector)}</code>, classifier "
        f"<code>{esc(str(settings.classifier or 'none: detector labels'))}</code>.</p>")
    by_key = table.set_index("key") if len(table) else table
    shown = 0
    for cam, cam_regs in regs.groupby("name_folder", sort=True):
        photos = ok[ok["group"] == cam]
        out.append(f"<div class='cam'><h2>Camera {esc(str(cam))}</h2>"
                   f"<p>{len(photos)} photos, {len(cam_regs)} registrations</p>")
        out.append(_timeline(cam_regs, photos))
        out.append("<div class='cards'>")
        for r in cam_regs.to_dict("records"):
            start, end = r["date_registration_start"], r["date_registration_end"]
            duration = "no time" if pd.isna(start) else _duration(pd.Timestamp(end) - pd.Timestamp(start))
            img = ""
            best = r.get("best_key")
            if shown < MAX_GALLERY and isinstance(best, str) and best in by_key.index:
                p = by_key.loc[best]
                p = p.iloc[0] if isinstance(p, pd.DataFrame) else p
                src = _thumb_with_boxes(p["path"], p.get("top_bbox"), p.get("detections"))
                prob = p.get("class_prob")
                prob_text = "" if prob is None or pd.isna(prob) else f", p={prob:.2f}"
                if src:
                    name = best.rsplit("/", 1)[-1]
                    img = (f"<img src='{src}' alt='{esc(best)}' title='{esc(best)}'><br>"
                           f"{esc(name)}{prob_text}<br>")
                    shown += 1
            out.append(f"<div class='card'>{img}<b>{esc(r['class'])}</b> &times; {r['count']}<br>"
                       f"{esc(str(start))} &rarr; {esc(str(end))} ({esc(duration)})</div>")
        out.append("</div></div>")
    if len(regs) > MAX_GALLERY:
        out.append(f"<p>Photos shown for the first {MAX_GALLERY} registrations; all are in "
                   "registrations.csv.</p>")
    out.append("<h2>Photos that failed</h2>")
    if len(failed):
        out.append("<table><tr><th>photo</th><th>status</th><th>reason</th></tr>")
        out += [f"<tr><td>{esc(str(r['key']))}</td><td class='bad'>{esc(str(r['status']))}</td>"
                f"<td>{esc(str(r['reason']))}</td></tr>" for r in failed.to_dict("records")]
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    from kadr.traps.pipeline import clock_jumps

    jumps = clock_jumps(table) if len(table) else {}
    if jumps:
        out.append("<p class='bad'>Camera clocks that go backwards in file order: "
                   + ", ".join(f"{esc(c)} ({n}x)" for c, n in jumps.items()) + "</p>")
    guessed = ok[ok["time_source"].isin(["mtime", "filename"])] if len(ok) else ok
    if len(guessed):
        out.append(f"<p class='bad'>{len(guessed)} photos have no EXIF time; their time comes "
                   "from the file name or the file's modification time (column time_source).</p>")
    untimed = ok[ok["time"].isna()] if len(ok) else ok
    if len(untimed):
        out.append(f"<p class='bad'>{len(untimed)} photos have no time; each forms its own "
                   "registration.</p>")
    out.append("</body></html>")
    return "".join(out)
