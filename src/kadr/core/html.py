"""The one HTML layer: Jinja2 templates with autoescape and one thumbnail helper.

Every page kadr writes (traps report, hotel profile, theme map, restyle
gallery) is a template in ``kadr/templates`` rendered here, so every string a
user controls (photo keys, captions, class names, reasons) is escaped by the
template engine, not by hand. Pages are self-contained: thumbnails are data
URLs and plotly's script is inlined when a page has charts.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
from collections.abc import Iterable
from typing import Any

from markupsafe import Markup
from PIL import Image, ImageDraw

from kadr.core.decode import DecodeError, decode_photo, read_bytes
from kadr.core.video import frame_image


def script_json(value: Any) -> Markup:
    """JSON that is safe inside a <script> element, whatever strings it holds.

    ``<``, ``>`` and ``&`` become ``\\u`` escapes: the same data to JavaScript,
    but no ``</script>`` or ``<!--`` can end the element early and inject markup.
    """
    text = json.dumps(value, default=str)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def thumbnail_jpeg(source: str | Image.Image, side: int = 160, rotate: int = 0,
                   boxes: Iterable[dict] = (), quality: int = 75,
                   frame: int | None = None) -> bytes | None:
    """JPEG bytes of a photo (path, URL or image) no larger than ``side``; with
    ``frame``, that frame of the video clip at ``source``.

    ``rotate``: degrees counter-clockwise. ``boxes``: dicts with a normalised
    ``bbox`` [x, y, w, h], an outline ``color`` and an optional ``text``.
    None when the photo cannot be read (the page shows its status instead).
    """
    if isinstance(source, Image.Image):
        img = source.copy()
    else:
        try:
            img = (frame_image(source, frame) if frame is not None
                   else decode_photo(read_bytes(source), min_side=side).image)
        except (DecodeError, OSError):
            return None
    if rotate:
        img = img.rotate(rotate, expand=True)
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    if img.mode != "RGB":
        img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for box in boxes:
        x, y, bw, bh = box["bbox"]
        draw.rectangle([x * w, y * h, (x + bw) * w, (y + bh) * h], outline=box["color"], width=2)
        if box.get("text"):
            draw.text((x * w + 2, y * h + 2), box["text"], fill=box["color"])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def thumbnail(source: str | Image.Image, side: int = 160, rotate: int = 0,
              boxes: Iterable[dict] = (), quality: int = 75,
              frame: int | None = None) -> str | None:
    """:func:`thumbnail_jpeg` as a data URL, for self-contained pages."""
    data = thumbnail_jpeg(source, side, rotate, boxes, quality, frame)
    return None if data is None else "data:image/jpeg;base64," + base64.b64encode(data).decode()


def figure(fig, div_id: str | None = None) -> Markup:
    """A plotly figure as a <div> (the page inlines plotly's script once)."""
    return Markup(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id))


@functools.cache
def plotly_js() -> Markup:
    from plotly.offline import get_plotlyjs

    return Markup(get_plotlyjs())


@functools.cache
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kadr", "templates"),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["script_json"] = script_json
    return env


def render(template: str, **context: Any) -> str:
    """Render ``kadr/templates/<template>``; ``with_plotly=True`` inlines plotly's script."""
    if context.get("with_plotly"):
        context["plotly_js"] = plotly_js()
    return environment().get_template(template).render(**context)


def write_page(path: str | os.PathLike, template: str, **context: Any) -> None:
    """:func:`render` into a file, a piece at a time (atomically): a page of many elements
    is never held whole, and a context value may be a generator that makes its items as
    the page reaches them."""
    from kadr.core.store import atomic_open

    if context.get("with_plotly"):
        context["plotly_js"] = plotly_js()
    with atomic_open(path) as f:
        for piece in environment().get_template(template).generate(**context):
            f.write(piece)
