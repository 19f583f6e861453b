"""Self-contained HTML pages for the hotel workflow (plotly inlined, thumbnails as data URLs)."""

from __future__ import annotations

import base64
import html
import io
import json

import pandas as pd
import plotly.express as px
from PIL import Image

from kadr.core.decode import DecodeError, decode_photo, read_bytes

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid figure{margin:0;width:160px;font-size:11px}
.grid img{width:160px;height:120px;object-fit:cover}"""


def script_json(value) -> str:
    """JSON that is safe inside a <script> element, whatever strings it holds (photo keys, captions).

    ``<``, ``>`` and ``&`` become ``\\u`` escapes: the same data to JavaScript, but no
    ``</script>`` or ``<!--`` can end the element early and inject markup.
    """
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(title: str, body: str, with_plotly: bool = True) -> str:
    script = ""
    if with_plotly:
        from plotly.offline import get_plotlyjs

        script = f"<script>{get_plotlyjs()}</script>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style>{script}</head><body><h1>{html.escape(title)}</h1>{body}"
            "</body></html>")


def thumbnail(path: str, side: int = 160, rotate: int = 0) -> str | None:
    try:
        img = decode_photo(read_bytes(path), min_side=side).image
    except DecodeError:
        return None
    if rotate:
        img = img.rotate(rotate, expand=True)
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def gallery(rows: list[dict], caption, limit: int = 48) -> str:
    items = []
    for r in rows[:limit]:
        src = thumbnail(r["path"])
        if src:
            items.append(f"<figure><img src='{src}'><figcaption>{html.escape(caption(r))}"
                         "</figcaption></figure>")
    more = f"<p>... and {len(rows) - limit} more (see the tables)</p>" if len(rows) > limit else ""
    return f"<div class='grid'>{''.join(items)}</div>{more}"


def fig_html(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False)


def render_profile(photos: pd.DataFrame, dups: pd.DataFrame, summary: dict, settings) -> str:
    from kadr.hotels.profile import group_columns

    ok = photos[photos["status"] == "ok"]
    shown = {k: v for k, v in summary.items() if not k.startswith("_")}
    parts = [f"<pre>{html.escape(json.dumps(shown, indent=1, default=str))}</pre>"]
    for what, col in group_columns(photos).items():
        counts = photos.groupby(col).size()
        parts.append(f"<h2>Photos per {what}</h2>")
        parts.append(fig_html(px.histogram(counts, nbins=50, log_y=True,
                                           labels={"value": f"photos per {what}"})))
    if len(ok):
        parts.append("<h2>Sizes</h2>")
        sample = ok.sample(min(len(ok), 20000), random_state=0)
        parts.append(fig_html(px.scatter(sample, x="width", y="height", opacity=0.4)))
        parts.append(fig_html(px.histogram(sample["width"] / sample["height"], nbins=60,
                                           labels={"value": "aspect ratio (w/h)"})))
        parts.append(fig_html(px.bar(ok["format"].value_counts(), labels={"value": "photos"})))
    if "rotation_needed" in ok and ok["rotation_needed"].notna().any():
        rot = ok[(ok["rotation_needed"] != 0)
                 & (ok["rotation_confidence"] >= settings.rotation_threshold)]
        parts.append(f"<h2>Looks rotated ({len(rot)})</h2>")
        parts.append(gallery(rot.sort_values("rotation_confidence", ascending=False)
                             .to_dict("records"),
                             lambda r: f"turn {r['rotation_needed']}° ccw, "
                                       f"p={r['rotation_confidence']:.2f}"))
        off = ok[ok["offtopic_prob"] >= settings.offtopic_threshold]
        parts.append(f"<h2>Off-topic ({len(off)})</h2>")
        parts.append(gallery(off.sort_values("offtopic_prob", ascending=False).to_dict("records"),
                             lambda r: f"{r['scene']} p={r['offtopic_prob']:.2f}"))
    else:
        parts.append(f"<p><b>Model-based checks:</b> {html.escape(summary['model_checks'])}</p>")
    parts.append(f"<h2>Duplicates ({len(dups)} photos)</h2>")
    if len(dups):
        merged = dups.merge(photos[["key", "path"]], on="key")
        parts.append(gallery(merged.sort_values("group").to_dict("records"),
                             lambda r: f"{r['kind']} {r['group'][:8]}"))
    failed = photos[photos["status"] != "ok"]
    parts.append(f"<h2>Unreadable or missing ({len(failed)})</h2>")
    if len(failed):
        parts.append(failed[["key", "status", "reason"]].head(500).to_html(index=False))
    return page("Hotel photo collection profile", "".join(parts))
