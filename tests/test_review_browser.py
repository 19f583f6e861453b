"""The review app in a real browser (Debian's chromium driven by Playwright) on the demo's
real output: every action by keyboard, kill -9 of the server, restart, exports."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import shared_path, skip_outside_ci

CHROMIUM = os.environ.get("KADR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
KADR = str(Path(sys.executable).with_name("kadr"))
TOKEN = "test-token-123"


def chromium() -> str:
    if not Path(CHROMIUM).exists():
        skip_outside_ci(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)",
                        ".ci/run installs it")
    return CHROMIUM


def review_page(p, url: str, width: int = 1366, height: int = 800):
    """Debian's Chromium on the review page at ``url``, its queue drawn: (browser, page,
    the page's script errors as they happen)."""
    browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#queue li")
    return browser, page, errors


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """`kadr demo`'s camera-trap output: real photos, the real YOLOX detector."""
    from kadr.demo import run_demo

    shared = shared_path("models", "yolox_nano.onnx").parents[1]
    out = tmp_path_factory.mktemp("demo")
    run_demo(str(shared), str(out), progress=False)
    return out / "traps"


class Server:
    """`kadr traps review` as a user starts it, in its own process."""

    def __init__(self, out: Path, reviewer: str = "ana"):
        self.out, self.reviewer = out, reviewer

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [KADR, "traps", "review", str(self.out), "--no-browser", "--token", TOKEN,
             "--reviewer", self.reviewer], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"})
        for line in self.proc.stdout:
            m = re.search(r"(http://\S+/t/\S+/)", line)
            if m:
                self.url = m.group(1)
                return self.url
        raise AssertionError("the review server printed no address")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)


def serve_copy(run: Path, tmp_path: Path, reviewer: str = "ana") -> tuple[Path, Server]:
    """A copy of a run folder (tests change it) and a review server started on it."""
    out = tmp_path / "traps"
    shutil.copytree(run, out, symlinks=True)
    server = Server(out, reviewer)
    server.start()
    return out, server


def acknowledged(page) -> list[int]:
    """Ids of the decisions the page was told are stored by the last action."""
    ids = page.get_attribute("#status", "data-saved") or ""
    return [int(x) for x in ids.split(",") if x]


def wait_saved(page, before: str) -> list[int]:
    page.wait_for_function(
        "(b) => { const s = document.getElementById('status').textContent;"
        " return s !== b && /^(saved|undid)/.test(s); }", arg=before)
    return acknowledged(page)


def press(page, key: str) -> list[int]:
    before = page.inner_text("#status")
    page.keyboard.press(key)
    return wait_saved(page, before)


def current(page) -> dict:
    return {"cls": page.inner_text("#u-class"), "count": page.inner_text("#u-count"),
            "when": page.inner_text("#u-when")}


def test_review_the_demo_by_keyboard_survive_kill9_and_export(demo_run, tmp_path):
    from playwright.sync_api import sync_playwright

    out, server = serve_copy(demo_run, tmp_path)
    url = server.url
    saved: list[int] = []
    try:
        with sync_playwright() as p:
            browser, page, errors = review_page(p, url, 1400, 900)
            total = int(page.inner_text("#total").split()[0])
            assert total > 11, "registrations and the blank stretches to check for misses"
            # Accept the least certain registration: it leaves the "not yet" queue.
            page.wait_for_function("document.getElementById('u-class').textContent !== ''")
            first = page.get_attribute("#queue li.here", "data-id")
            saved += press(page, "Enter")
            page.wait_for_function("document.getElementById('progress').textContent"
                                   ".startsWith('1 reviewed')")
            assert int(page.inner_text("#total").split()[0]) == total - 1, "the count follows"
            assert page.locator("#queue li").count() == total - 1
            assert page.get_attribute("#queue li.here", "data-id") != first, "moved on"
            assert first not in page.locator("#queue li").evaluate_all(
                "(lis) => lis.map((li) => li.dataset.id)"), "the accepted one left the list"
            # Relabel by number key: the third choice.
            third = page.locator("#choices li").nth(2).inner_text().split(". ", 1)[1]
            third = third.split(" (")[0]
            saved += press(page, "3")
            # Type-ahead with a new name.
            page.keyboard.press("s")
            page.keyboard.type("serval")
            page.keyboard.press("Enter")  # a new name: the page asks, Enter again adds it
            assert "new species" in page.inner_text("#species-note")
            saved += press(page, "Enter")
            # Count: + twice on the same registration, then c 5 Enter.
            start = int(current(page)["count"])
            cls_counted = current(page)["cls"]
            saved += press(page, "+")
            saved += press(page, "+")
            assert current(page)["count"] == str(start + 2)
            page.keyboard.press("c")
            page.keyboard.press("5")
            saved += press(page, "Enter")
            assert current(page) == {**current(page), "cls": cls_counted, "count": "5"}
            # Split the Serengeti burst (3 photos) at its second photo, merge it back, undo.
            page.select_option("#filters select[name=camera]", "serengeti_D04")
            page.wait_for_function("document.querySelectorAll('#queue li').length <= 10")
            for _ in range(10):
                if "3 photo(s)" in current(page)["when"]:
                    break
                page.keyboard.press("j")
                page.wait_for_timeout(150)
            assert "3 photo(s)" in current(page)["when"]
            page.keyboard.press("ArrowRight")
            saved += press(page, "x")
            assert "1 photo(s)" in current(page)["when"]
            page.keyboard.press("j")
            page.wait_for_function(
                "document.getElementById('u-when').textContent.includes('2 photo(s)')")
            saved += press(page, "m")
            assert "3 photo(s)" in current(page)["when"]
            before = page.inner_text("#status")
            page.keyboard.press("u")
            wait_saved(page, before)
            assert "undid" in page.inner_text("#status")
            # Bulk: select everything the LILA filter shows and accept it.
            page.select_option("#filters select[name=camera]", "lila_test_images")
            page.wait_for_timeout(500)
            lila = page.locator("#queue li").count()
            page.keyboard.press("Shift+A")
            assert page.inner_text("#selected-count") == f"{lila} selected"
            bulk = press(page, "Enter")
            assert len(bulk) == lila
            saved += bulk
            # The help overlay.
            page.keyboard.press("?")
            assert page.is_visible("#help")
            page.keyboard.press("Escape")
            page.screenshot(path=str(os.environ.get("KADR_SCREENSHOT", tmp_path / "review.png")))
            assert not errors, errors
            browser.close()
        # kill -9: every decision the browser was told about is on disk.
        server.kill9()
        with sqlite3.connect(out / "decisions.sqlite") as db:
            stored = {r[0] for r in db.execute("SELECT id FROM decisions")}
        assert set(saved) <= stored
        # Restart: the decisions are there; the queue shows them as reviewed.
        server = Server(out, reviewer="ben")
        url = server.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#queue li")
            page.select_option("#filters select[name=reviewed]", "yes")
            page.wait_for_function("document.querySelector('#queue li') &&"
                                   " document.querySelector('#queue li').textContent"
                                   ".includes('✓ ana')")
            texts = page.locator("#queue li").all_inner_texts()
            assert any("serval" in t for t in texts) and any(third in t for t in texts)
            browser.close()
    finally:
        server.stop()
    # Stopping the server exported; `traps export` again gives the same.
    subprocess.run([KADR, "traps", "export", str(out)], check=True, capture_output=True)
    regs = pd.read_csv(out / "registrations.csv")
    assert "serval" in set(regs["class"]) and cls_counted in set(regs["class"])
    assert 5 in set(regs["count"])
    obs = pd.read_csv(out / "camtrap-dp" / "observations.csv")
    human = obs[obs["classificationMethod"] == "human"]
    from kadr.traps.review import load_state

    reviewed = [u for u in load_state(out).units.values() if u.reviewed and not u.blank]
    assert len(reviewed) >= 5 and len(human) == len(reviewed)
    assert set(human["classifiedBy"]) == {"ana"}
    from kadr.traps.exports import validate_camtrap_dp

    assert validate_camtrap_dp(out / "camtrap-dp", shared_path("data", "camtrap-dp-1.0.2")) == []


def test_token_and_paths(demo_run, tmp_path):
    """Without the token nothing is served; photos only by id, only of this run."""
    import urllib.error
    import urllib.request

    out, server = serve_copy(demo_run, tmp_path)
    url = server.url
    base = url.split("/t/")[0]

    def status(u: str) -> int:
        try:
            return urllib.request.urlopen(u, timeout=10).status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert status(url) == 200 and status(url + "api/queue") == 200
        assert status(base + "/t/wrong/api/queue") == 404
        assert status(base + "/") == 404
        assert status(url + "photo/display/..%2F..%2F..%2Fetc%2Fpasswd") == 404
        assert status(url + "photo/display/" + "0" * 32) == 404
        pid = pd.read_parquet(out / "photos.parquet")["photo_id"].iloc[0]
        assert status(url + f"photo/thumb/{pid}") == 200
        assert (out / "review-cache" / "thumb" / f"{pid}.jpg").exists(), "cached on disk"
    finally:
        server.stop()



def test_two_tabs_get_a_conflict_to_resolve(demo_run, tmp_path):
    from playwright.sync_api import sync_playwright

    out, server = serve_copy(demo_run, tmp_path)
    url = server.url
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            first, second = browser.new_page(), browser.new_page()
            for page in (first, second):
                page.goto(url)
                page.wait_for_selector("#queue li")
            stale = current(second)
            press(first, "e")  # the first tab marks the registration empty
            second.keyboard.press("Enter")  # the second, still showing it, accepts it
            second.wait_for_selector("#conflict:not([hidden])")
            said = second.inner_text("#conflict")
            assert "you, in another tab or window, marked empty it" in said, said
            assert "conflict" in second.inner_text("#status")
            # A slow server must not let the prompt go before the current state is drawn.
            second.route("**/api/queue*", lambda route: (time.sleep(0.7), route.continue_()))
            second.click("#conflict button")  # show the current state
            second.wait_for_selector("#conflict", state="hidden")
            assert current(second) != stale
            browser.close()
        with sqlite3.connect(out / "decisions.sqlite") as db:
            kinds = [r[0] for r in db.execute("SELECT kind FROM decisions")]
        assert kinds == ["empty"], "the stale accept stored nothing"
    finally:
        server.stop()
