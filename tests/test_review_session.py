"""A reviewer's session in Chromium, by keyboard only, from the first page load to the
export: every key and every dialog, at 1366x800 and 1920x1080, on the demo's photos run
with a classifier (so that "more like this" has embeddings). Also: boxes sit on the
photo's own pixels at every window size."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import TINY_CLIP, shared_path
from tests.test_review_browser import review_page, serve_copy

SIZES = [(1366, 800), (1920, 1080)]


@pytest.fixture(scope="module")
def classified_demo(tmp_path_factory) -> Path:
    """The demo's manifest (real photos, real YOLOX) with a small random CLIP classifier."""
    from kadr.demo import demo_manifest
    from kadr.traps.pipeline import TrapSettings, run_traps

    shared = shared_path("models", "yolox_nano.onnx").parents[1]
    root = tmp_path_factory.mktemp("classified")
    manifest = demo_manifest(shared, root)
    run_traps(str(manifest), str(root / "traps"), TrapSettings(
        detector=f"yolox:{shared / 'models' / 'yolox_nano.onnx'}", classifier=TINY_CLIP,
        group_column="camera", progress=False))
    return root / "traps"


class Keyboard:
    """The page's keyboard, counting every key a reviewer presses."""

    def __init__(self, page):
        self.page, self.keys = page, 0

    def press(self, key: str, wait: int = 0) -> None:
        self.keys += 1
        self.page.keyboard.press(key)
        if wait:
            self.page.wait_for_timeout(wait)

    def type(self, text: str) -> None:
        self.keys += len(text)
        self.page.keyboard.type(text)

    def decide(self, key: str) -> str:
        """A key that stores a decision: returns the status once the page says it is saved."""
        before = self.page.inner_text("#status")
        self.press(key)
        try:
            self.page.wait_for_function(
                "(b) => { const s = document.getElementById('status').textContent;"
                " return s !== b && /^(saved|undid)/.test(s); }", arg=before, timeout=10000)
        except Exception as e:
            raise AssertionError(f"{key}: not saved; the page says "
                                 f"{self.page.inner_text('#status')!r}") from e
        return self.page.inner_text("#status")

    def tab_to(self, selector: str, back: bool = True) -> None:
        for _ in range(40):
            if self.page.evaluate(f"document.activeElement.matches({selector!r})"):
                return
            self.press("Shift+Tab" if back else "Tab")
        raise AssertionError(f"Tab never reached {selector}")


def unit_text(page) -> dict:
    return {"cls": page.inner_text("#u-class"), "count": page.inner_text("#u-count"),
            "when": page.inner_text("#u-when"), "state": page.inner_text("#u-state"),
            "flags": page.inner_text("#u-flags")}


def progress(page) -> tuple[int, int]:
    m = re.match(r"(\d+) reviewed, (\d+) left", page.inner_text("#progress"))
    return int(m[1]), int(m[2])


def wait_unit(page, text: str) -> None:
    page.wait_for_function("(t) => document.getElementById('u-when').textContent.includes(t)",
                           arg=text)


def choose_filter(kb: Keyboard, name: str, letter: str) -> None:
    """A filter set by keyboard: Shift+Tab to it, type-select an option; the review keys
    work again at once (focus is handed back)."""
    page = kb.page
    kb.press("Escape")
    kb.tab_to(f"#filters select[name={name}]")
    kb.press(letter)
    page.wait_for_function("document.activeElement.id === 'unit'")
    page.wait_for_timeout(300)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_a_reviewers_session_by_keyboard_only(classified_demo, tmp_path, size):
    from playwright.sync_api import sync_playwright

    out, server = serve_copy(classified_demo, tmp_path)
    url = server.url
    shots = Path(os.environ.get("KADR_SCREENSHOTS", tmp_path))
    width, height = size
    try:
        with sync_playwright() as p:
            browser, page, errors = review_page(p, url, width, height)
            kb = Keyboard(page)
            done0, left0 = progress(page)
            assert done0 == 0 and left0 > 20
            # The numbered species list is in view without scrolling.
            box = page.locator("#choices li").nth(8).bounding_box()
            assert box and box["y"] + box["height"] <= height, "species 1-9 above the fold"
            assert page.locator("#choices li").count() > 9, "the list goes on past nine"
            kb.press("?")
            assert page.is_visible("#help")
            kb.press("Escape")
            assert not page.is_visible("#help")
            # Enter accepts; the status says what was saved; progress moves.
            first = unit_text(page)
            said = kb.decide("Enter")
            assert "accepted" in said and first["cls"] in said
            page.wait_for_function("document.getElementById('progress').textContent"
                                   ".startsWith('1 reviewed')")
            # A number key: the third choice.
            third = page.locator("#choices li").nth(2).inner_text().split(". ", 1)[1]
            assert third.split(" (")[0] in kb.decide("3")
            # Type-ahead: a prefix and ArrowDown Enter take the suggestion, not the prefix.
            tenth = page.locator("#choices li").nth(10).inner_text()[2:].split(" (")[0]
            kb.press("s")
            kb.type(tenth[:3])
            kb.press("ArrowDown")
            said = kb.decide("Enter")
            assert f"relabelled {tenth} " in said, said
            # A new name needs Enter twice, and is offered at once afterwards.
            kb.press("s")
            kb.type("serval")
            kb.press("Enter")
            assert "new species" in page.inner_text("#species-note")
            assert "relabelled serval" in kb.decide("Enter")
            assert "serval" in page.inner_text("#choices")
            kb.press("s")
            kb.type("serv")
            assert page.locator("#suggest li").first.inner_text() == "serval"
            kb.press("Escape")
            # Counts: + + - then c 5 Enter, on the same registration.
            start = int(unit_text(page)["count"])
            kb.decide("+")
            kb.decide("+")
            kb.decide("-")
            assert int(unit_text(page)["count"]) == start + 1
            kb.press("c")
            kb.press("5")
            kb.decide("Enter")
            assert unit_text(page)["count"] == "5"
            # Empty by e and by 0.
            assert "marked empty" in kb.decide("e")
            assert "marked empty" in kb.decide("0")
            # Moving around.
            here = unit_text(page)
            kb.press("j", 300)
            kb.press("k", 300)
            assert unit_text(page) == here
            kb.press("ArrowDown", 300)
            kb.press("ArrowUp", 300)
            assert unit_text(page) == here
            # Filters by keyboard: the Serengeti camera, in time order; the keys work at once.
            choose_filter(kb, "camera", "s")
            choose_filter(kb, "sort", "c")
            for _ in range(12):
                if "3 photo(s)" in unit_text(page)["when"]:
                    break
                kb.press("j", 250)
            assert "3 photo(s)" in unit_text(page)["when"], "the 0020-0022 burst"
            # Split at the second photo, label the first part, merge the second into it.
            kb.press("ArrowRight", 200)
            kb.press("ArrowLeft", 200)
            kb.press("ArrowRight", 200)
            assert "split" in kb.decide("x")
            assert "1 photo(s)" in unit_text(page)["when"]
            kb.decide("1")
            wait_unit(page, "2 photo(s)")
            said = kb.decide("m")
            assert "merged" in said and "onflict" not in page.inner_text("#status")
            merged = unit_text(page)
            assert "3 photo(s)" in merged["when"] and "reviewed by ana" in merged["state"], \
                "the merge keeps the first part's label"
            assert "undid" in kb.decide("u")
            assert "undid" in kb.decide("Control+z")
            # The clock of a camera dated by mtime: a wrong time is refused in the dialog, a
            # right one from this photo on moves it and clears the warning.
            choose_filter(kb, "camera", "l")
            choose_filter(kb, "reviewed", "a")  # reviewed or not
            page.wait_for_function("document.getElementById('u-when').textContent"
                                   ".startsWith('lila_test_images')")
            texts = page.locator("#queue li").all_inner_texts()
            for _ in range(next(i for i, t in enumerate(texts) if "⚠" in t)):
                kb.press("j", 60)
            page.wait_for_timeout(400)
            assert "not from EXIF" in unit_text(page)["flags"], page.locator("#queue li").all_inner_texts()
            kb.press("t")
            assert page.is_visible("#clock-dialog")
            kb.type("yesterday")
            kb.press("Enter", 400)
            assert "not a time" in page.inner_text("#clock-error")
            assert page.is_visible("#clock-dialog"), "the dialog stays open to correct it"
            kb.press("Escape", 200)
            assert not page.is_visible("#clock-dialog")
            kb.press("t")
            assert page.input_value("#clock-form input[name=true_time]") != "yesterday", \
                "each opening starts afresh"
            kb.press("Control+a")
            kb.type("2012-10-20 07:36:53")
            kb.tab_to("#clock-form input[name=from_photo_on]", back=False)
            kb.press("Space")
            kb.tab_to("#clock-form button[value=ok]", back=False)
            said = kb.decide("Enter")
            assert "shifted the clock of lila_test_images by -" in said, said
            page.wait_for_function("!document.getElementById('clock-dialog').open")
            assert "not from EXIF" not in unit_text(page)["flags"]
            kb.press("t")
            checked = page.is_checked("#clock-form input[name=from_photo_on]")
            assert not checked, "no leftover tick from the last shift"
            kb.press("Escape", 200)
            # Bulk: space, shift+A, Esc; more like this, then one Enter for all of them.
            choose_filter(kb, "camera", "a")  # all cameras again
            choose_filter(kb, "reviewed", "n")  # not yet
            kb.press(" ")
            assert page.inner_text("#selected-count") == "1 selected"
            kb.press("Shift+A")
            assert int(page.inner_text("#selected-count").split()[0]) > 1
            kb.press("Escape")
            assert page.inner_text("#selected-count") == "0 selected"
            kb.press("l", 500)
            alike = int(page.inner_text("#selected-count").split()[0])
            assert alike > 2 and "look alike" in page.inner_text("#status")
            before, _ = progress(page)
            said = kb.decide("Enter")
            assert re.match(rf"saved {alike} decisions #\d+–#\d+: accepted ", said), said
            page.wait_for_function(f"!document.getElementById('progress').textContent"
                                   f".startsWith('{before} reviewed')")
            # Enter on a focused button presses that button, not "accept".
            status = page.inner_text("#status")
            kb.tab_to("#btn-select-all")
            kb.press("Enter", 300)
            assert int(page.inner_text("#selected-count").split()[0]) > 1
            assert page.inner_text("#status") == status, "nothing was accepted"
            kb.press("Escape")
            # Progress and the time left at this reviewer's pace.
            done, left = progress(page)
            assert "at your pace" in page.inner_text("#progress")
            page.screenshot(path=str(shots / f"review-{width}x{height}.png"))
            # Export by keyboard.
            kb.tab_to("#btn-export")
            kb.press("Enter")
            page.wait_for_function("document.getElementById('status').textContent"
                                   ".startsWith('exported')")
            assert not errors, errors
            browser.close()
        record = {"viewport": f"{width}x{height}", "keys": kb.keys, "reviewed": done,
                  "keys_per_registration": round(kb.keys / done, 2)}
        if os.environ.get("KADR_SESSION_LOG"):
            with open(os.environ["KADR_SESSION_LOG"], "a") as f:
                f.write(json.dumps(record) + "\n")
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(60)
    regs = pd.read_parquet(out / "registrations.parquet")
    assert int(regs["reviewed"].sum()) >= 5 and "serval" in set(regs["class"])
    photos = pd.read_parquet(out / "photos.parquet")
    assert (photos["time"].astype(str).str.startswith("2012-10-20")).any()


BOX_SIZES = [(1366, 800), (1920, 1080), (700, 1000)]


@pytest.mark.parametrize("size", BOX_SIZES, ids=[f"{w}x{h}" for w, h in BOX_SIZES])
def test_boxes_sit_on_the_photos_own_pixels(classified_demo, tmp_path, size):
    from playwright.sync_api import sync_playwright

    out, server = serve_copy(classified_demo, tmp_path)
    url = server.url
    try:
        with sync_playwright() as p:
            browser, page, _ = review_page(p, url, *size)
            checked = 0
            for _ in range(page.locator("#queue li").count()):
                page.wait_for_function("document.getElementById('big').complete")
                page.wait_for_timeout(150)
                found = page.evaluate("""() => {
                  const img = document.getElementById('big'), r = img.getBoundingClientRect();
                  const rects = [...document.querySelectorAll('#boxes rect')];
                  if (!rects.length || !img.naturalWidth) return null;
                  const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
                  const w = img.naturalWidth * s, h = img.naturalHeight * s;
                  const x0 = r.left + (r.width - w) / 2, y0 = r.top + (r.height - h) / 2;
                  const boxes = JSON.parse(JSON.stringify(rects.map((e) => {
                    const b = e.getBoundingClientRect();
                    return [b.left, b.top, b.width, b.height]; })));
                  const want = rects.map((e) => [x0 + e.x.baseVal.value / img.naturalWidth * w,
                    y0 + e.y.baseVal.value / img.naturalHeight * h,
                    e.width.baseVal.value / img.naturalWidth * w,
                    e.height.baseVal.value / img.naturalHeight * h]);
                  return {boxes, want, content: [x0, y0, w, h], element: [r.width, r.height]};
                }""")
                if found:
                    for got, want in zip(found["boxes"], found["want"], strict=True):
                        assert got == pytest.approx(want, abs=1.5), found
                        cx, cy, cw, ch = found["content"]
                        assert cx - 1 <= got[0] and got[0] + got[2] <= cx + cw + 1, found
                        assert cy - 1 <= got[1] and got[1] + got[3] <= cy + ch + 1, found
                    checked += 1
                page.keyboard.press("j")
            assert checked >= 3
            browser.close()
    finally:
        server.stop()
