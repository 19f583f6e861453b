"""Every page kadr writes escapes what a user controls and opens with what matters."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd

from kadr.core.html import thumbnail
from tests.helpers import jpeg_bytes

EVIL = "</script><img src=x onerror=alert(1)>"


def _no_injection(page: str) -> None:
    assert "<img src=x onerror" not in page
    assert page.count("<script") == page.count("</script>"), "no element was ended early"


def test_thumbnail_fits_the_side_and_reports_unreadable_photos(tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(jpeg_bytes(size=(640, 480)))
    src = thumbnail(str(photo), 100, boxes=[{"bbox": [0.1, 0.1, 0.5, 0.5], "color": "#f00"}])
    assert src.startswith("data:image/jpeg;base64,")
    from base64 import b64decode
    from io import BytesIO

    from PIL import Image

    img = Image.open(BytesIO(b64decode(src.split(",", 1)[1])))
    assert img.size == (100, 75)
    r, g, b = img.getpixel((10, 30))  # on the box's left edge
    assert r > 150 and g < 100 and b < 100
    assert thumbnail(str(tmp_path / "missing.jpg")) is None


def test_traps_report_escapes_keys_classes_and_reasons(tmp_path):
    from kadr.traps.report import render_report

    photo = tmp_path / "p.jpg"
    photo.write_bytes(jpeg_bytes())
    t = pd.Timestamp("2024-05-01 10:00:00")
    table = pd.DataFrame({
        "key": [f"cam/{EVIL}.jpg", "cam/bad.jpg"], "path": [str(photo), "nowhere"],
        "group": ["cam", "cam"], "status": ["ok", "unreadable"], "reason": [None, EVIL],
        "time": [t, pd.NaT], "time_source": ["exif", "none"], "class": [EVIL, None],
        "class_prob": [0.9, None], "n_animals": [1, None],
        "detections": [json.dumps([{"label": EVIL, "category": "animal", "conf": 0.8,
                                    "bbox": [0.1, 0.1, 0.3, 0.3]}]), None]})
    regs = pd.DataFrame({"name_folder": ["cam"], "class": [EVIL], "count": [1],
                         "date_registration_start": [t], "date_registration_end": [t],
                         "best_key": [f"cam/{EVIL}.jpg"]})
    settings = SimpleNamespace(method="sessions", gap="30m", detector=EVIL, classifier=None)
    page = render_report(table, regs, settings, warnings=[EVIL])
    _no_injection(page)
    assert page.count("data:image/jpeg;base64") == 1
    assert page.count("<rect") == 1, "one timeline element per registration"
    assert "&lt;/script&gt;" in page


def test_traps_report_lists_a_bounded_number_of_registrations_per_camera():
    from kadr.traps.report import MAX_CARDS, render_report

    n = MAX_CARDS + 25
    t = pd.Timestamp("2024-05-01") + pd.to_timedelta(np.arange(n) * 3600, "s")
    table = pd.DataFrame({"key": [f"cam/{i}.jpg" for i in range(n)], "path": "nowhere",
                          "group": "cam", "status": "ok", "reason": None, "time": t,
                          "time_source": "exif", "class": "Bear", "class_prob": 0.9,
                          "n_animals": 1, "detections": None})
    regs = pd.DataFrame({"name_folder": "cam", "class": "Bear", "count": 1,
                         "date_registration_start": t, "date_registration_end": t,
                         "best_key": None})
    settings = SimpleNamespace(method="sessions", gap="30m", detector="d", classifier=None)
    page = render_report(table, regs, settings)
    assert page.count('<div class="card">') == MAX_CARDS
    assert "25 more registrations of this camera are in registrations.csv" in page
    assert page.count("<rect") == n, "the timeline still draws every registration"


def test_profile_page_opens_with_key_figures_linking_to_galleries(tmp_path):
    from kadr.hotels.profile import ProfileSettings, run_profile

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    (folder / "3copy.jpg").write_bytes((folder / "3.jpg").read_bytes())
    (folder / f"{EVIL.replace('/', '_')}.jpg").write_bytes(b"not a photo")
    out = tmp_path / "profile"
    run_profile(str(folder), str(out), ProfileSettings(clip=None, progress=False))
    page = (out / "profile.html").read_text()
    _no_injection(page)
    body = page[page.index("<body>"):]
    assert body.index("Key figures") < body.index("<script"), "figures before any chart"
    assert "<pre>" not in page, "no raw JSON dump"
    figures = re.search(r'<table class="figures">(.*?)</table>', page, re.S).group(1)
    rows = dict(re.findall(r"<td>(?:<a [^>]*>)?([^<]+)(?:</a>)?</td>\s*<td class=\"num\">"
                           r"([^<]+)</td>", figures))
    assert rows["rows"] == "6" and rows["unreadable"] == "1"
    assert rows["in duplicate families"] == "2"
    for anchor in re.findall(r'href="#([\w-]+)"', figures):
        assert f'id="{anchor}"' in page, f"the figure links to #{anchor}"


def test_restyle_gallery_escapes_prompts(tmp_path):
    from kadr.hotels.restyle import Audience, render_gallery

    table = pd.DataFrame({"key": [EVIL, "b"], "status": ["ok", "unreadable"],
                          "reason": [None, EVIL],
                          "prompts": [json.dumps({EVIL: {"prompt": EVIL, "source": EVIL}}), None],
                          "not_found": [json.dumps([EVIL]), None], "outputs": ["[]", None]})
    page = render_gallery(table, Audience(EVIL, [EVIL], "", "", []))
    _no_injection(page)
