"""Camera-trap video clips: real H.264 clips made here from the real D04 frames, through
the same detector, counting, registrations and exports as photos."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kadr.core import video
from kadr.core.video import ClipInfo, sampled_frames
from kadr.traps.exports import validate_camtrap_dp
from kadr.traps.pipeline import TrapSettings, run_traps
from tests.helpers import megadetector_validation, need_module, shared_path

D04 = ("data", "camera_traps", "cameratraps_repo", "api", "synchronous", "sample_input")


def d04(name: str) -> Path:
    return next(shared_path(*D04).rglob(f"S1_D04_R6_PICT{name}.JPG"))


def make_clip(path: Path, frames: list[Path], seconds_each: float = 1.0, fps: int = 4,
              creation_time: str | None = "2013-05-01T10:00:00.000000Z",
              size=(1024, 768)) -> Path:
    """An H.264 MP4 showing each photo for ``seconds_each``, with a creation time."""
    av = need_module("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        if creation_time:
            out.metadata["creation_time"] = creation_time
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"g": str(fps)}  # a keyframe a second, as trail cameras write
        for p in frames:
            rgb = np.asarray(Image.open(p).convert("RGB").resize(size))
            for _ in range(round(seconds_each * fps)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def yolox_settings(**kw) -> TrapSettings:
    return TrapSettings(detector=f"yolox:{shared_path('models', 'yolox_nano.onnx')}",
                        classifier=None, progress=False, **kw)


def test_frames_are_sampled_at_the_rate_asked_with_the_first_and_last():
    info = ClipInfo(duration_s=10.0, fps=30.0, frames=300, width=64, height=48, codec="h264",
                    start=None, start_source="none")
    got = sampled_frames(info, 1.0)
    assert [i for i, _ in got] == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270, 299]
    assert got[1][1] == 1.0 and got[-1][1] == pytest.approx(299 / 30)
    assert [i for i, _ in sampled_frames(info, 100.0)] == list(range(300)), "at most every frame"


def test_an_elephant_clip_is_a_registration_at_its_creation_time(tmp_path):
    cam = tmp_path / "cards" / "D04"
    make_clip(cam / "elephant.mp4", [d04("0020"), d04("0021"), d04("0022")])
    make_clip(cam / "nothing.mp4", [d04("0275")] * 2, creation_time="2013-05-02T12:00:00Z")
    out = tmp_path / "out"
    result = run_traps(str(tmp_path / "cards"), str(out), yolox_settings())
    regs = result.frame()
    assert result.summary.failed == 0
    assert len(regs) == 1, regs
    reg = regs.iloc[0]
    stills = tmp_path / "stills" / "D04"  # the same frames as photos: the same answer
    stills.mkdir(parents=True)
    for name in ("0020", "0021", "0022"):
        shutil.copy(d04(name), stills)
    as_photos = run_traps(str(stills.parent), str(tmp_path / "out-stills"), yolox_settings())
    assert len(as_photos.frame()) == 1
    assert reg["class"] == as_photos.frame().iloc[0]["class"] and reg["count"] == 1
    assert str(reg["date_registration_start"]) == "2013-05-01 10:00:00"
    assert str(reg["date_registration_end"]) == "2013-05-01 10:00:02.750000"
    photos = pd.read_parquet(out / "photos.parquet")
    clip = photos[photos["media_key"] == "D04/elephant.mp4"]
    assert list(clip["frame_index"]) == [0, 4, 8, 11], "1 frame a second and the last"
    assert list(clip["frame_offset_s"]) == [0.0, 1.0, 2.0, 2.75]
    assert list(clip["key"])[1] == "D04/elephant.mp4/frame000004.jpg"
    assert (clip["time_source"] == "creation_time").all()
    md = json.loads((out / "megadetector.json").read_text())
    files = [im["file"] for im in md["images"]]
    assert "D04/elephant.mp4/frame000008.jpg" in files and len(files) == 4 + 3
    assert megadetector_validation(out / "megadetector.json") == ([], [])
    media = pd.read_csv(out / "camtrap-dp" / "media.csv")
    assert set(media["fileMediatype"]) == {"video/mp4"} and len(media) == 2, "a row per clip"
    clips = pd.read_parquet(out / "clips.parquet").set_index("media_key")
    assert list(clips.index) == ["D04/elephant.mp4", "D04/nothing.mp4"]
    elephant = clips.loc["D04/elephant.mp4"]
    assert (elephant["class"], elephant["count"]) == (reg["class"], 1), "max over its frames"
    assert (elephant["frames"], elephant["frames_failed"]) == (4, 0)
    assert str(elephant["start"]) == "2013-05-01 10:00:00"
    assert str(elephant["end"]) == "2013-05-01 10:00:02.750000"
    assert elephant["time_source"] == "creation_time"
    assert (clips.loc["D04/nothing.mp4", "class"], clips.loc["D04/nothing.mp4", "count"]) == (
        "empty", 0)
    assert validate_camtrap_dp(out / "camtrap-dp", shared_path("data", "camtrap-dp-1.0.2")) == []


def test_a_clip_and_photos_of_one_visit_form_one_registration(tmp_path):
    cam = tmp_path / "cards" / "D04"
    cam.mkdir(parents=True)
    for name in ("0020", "0021"):  # EXIF 2010-08-19 18:24:57 and :58
        shutil.copy(d04(name), cam)
    make_clip(cam / "after.mp4", [d04("0022")] * 2, creation_time="2010-08-19T18:25:30Z")
    regs = run_traps(str(tmp_path / "cards"), str(tmp_path / "out"), yolox_settings()).frame()
    assert len(regs) == 1, regs
    assert str(regs.iloc[0]["date_registration_start"]) == "2010-08-19 18:24:57"
    assert str(regs.iloc[0]["date_registration_end"]) == "2010-08-19 18:25:31.750000"


def test_broken_clips_get_a_status_and_the_run_goes_on(tmp_path):
    av = need_module("av")
    cam = tmp_path / "cards" / "D04"
    good = make_clip(cam / "good.mp4", [d04("0020")] * 2)
    data = good.read_bytes()
    (cam / "cut.mp4").write_bytes(data[: len(data) // 3])  # a copy that broke off
    (cam / "empty.mov").write_bytes(b"")
    (cam / "text.avi").write_text("not a video at all\n")
    with av.open(str(cam / "sound.mp4"), "w") as out:  # a container with no video stream
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    shutil.copy(d04("0021"), cam)
    out = tmp_path / "out"
    result = run_traps(str(tmp_path / "cards"), str(out), yolox_settings())
    photos = pd.read_parquet(out / "photos.parquet").set_index("key")
    status = photos["status"].to_dict()
    assert status["D04/cut.mp4"] in ("truncated", "decode_error")
    assert status["D04/empty.mov"] == "empty_file"
    assert status["D04/text.avi"] == "not_an_image"
    assert status["D04/sound.mp4"] == "not_an_image"
    assert "no video stream" in photos.loc["D04/sound.mp4", "reason"]
    assert status["D04/S1_D04_R6_PICT0021.JPG"] == "ok"
    assert (photos.loc[[k for k in status if k.startswith("D04/good.mp4/")], "status"]
            == "ok").all()
    assert result.summary.failed == 4
    failed = {k for k, _, _ in result.summary.failures}
    assert {"D04/cut.mp4", "D04/empty.mov", "D04/text.avi", "D04/sound.mp4"} <= failed
    assert megadetector_validation(out / "megadetector.json") == ([], [])


def test_a_killed_clip_run_resumes_without_redoing_frames(tmp_path):
    cam = tmp_path / "cards" / "D04"
    make_clip(cam / "a.mp4", [d04("0020")] * 3)
    make_clip(cam / "b.mp4", [d04("0021")] * 3, creation_time="2013-05-01T11:00:00Z")
    out = tmp_path / "out"
    first = run_traps(str(tmp_path / "cards"), str(out), yolox_settings())
    assert first.summary.ok == 8
    again = run_traps(str(tmp_path / "cards"), str(out), yolox_settings())
    assert again.summary.processed == 0 and again.summary.already_done == 8


def test_a_clip_without_a_creation_time_falls_back_as_photos_do(tmp_path):
    cam = tmp_path / "cards" / "D04"
    clip = make_clip(cam / "c.mp4", [d04("0020")] * 2, creation_time=None)
    stamp = datetime(2020, 1, 2, 3, 4, 5).timestamp()
    import os

    os.utime(clip, (stamp, stamp))
    out = tmp_path / "out"
    run_traps(str(tmp_path / "cards"), str(out), yolox_settings())
    photos = pd.read_parquet(out / "photos.parquet")
    assert (photos["time_source"] == "mtime").all()
    assert str(photos["time"].min()) == "2020-01-02 03:04:05"
    assert str(photos["time"].max()) == "2020-01-02 03:04:06.750000"


def read_frame_directly(path: Path, index: int) -> Image.Image:
    """Frame ``index`` of a clip by decoding from the start: the reference for seeks."""
    av = need_module("av")
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i == index:
                return frame.to_image().convert("RGB")
    raise AssertionError(f"{path} has no frame {index}")


def test_the_report_and_the_review_show_a_clips_frame(tmp_path, monkeypatch):
    from kadr.traps.review_app import Review

    cam = tmp_path / "cards" / "D04"
    make_clip(cam / "e.mp4", [d04("0020"), d04("0021")])
    out = tmp_path / "out"
    run_traps(str(tmp_path / "cards"), str(out), yolox_settings())
    html = (out / "report.html").read_text()
    assert "data:image/jpeg;base64" in html and "frame00000" in html, "the best frame is shown"
    photos = pd.read_parquet(out / "photos.parquet")
    app = Review(out, reviewer="ana")
    opened = []
    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda path: opened.append(path) or real_open(path))
    data = app.photo(photos["photo_id"].iloc[-1], "thumb")
    assert data and data[:2] == b"\xff\xd8", "a frame served as a JPEG"
    assert len(opened) == 1, "the clip is opened once for a frame"
    expected = np.asarray(read_frame_directly(cam / "e.mp4", int(photos["frame_index"].iloc[-1])))
    got = np.asarray(video.frame_image(str(cam / "e.mp4"), int(photos["frame_index"].iloc[-1])))
    assert np.array_equal(got, expected), "the frame asked for"


def test_the_review_page_plays_the_clip_behind_the_token(tmp_path):
    import urllib.error
    import urllib.request

    from playwright.sync_api import sync_playwright

    from tests.test_review_browser import Server, chromium

    cam = tmp_path / "cards" / "D04"
    make_clip(cam / "e.mp4", [d04("0020"), d04("0021")])
    out = tmp_path / "out"
    run_traps(str(tmp_path / "cards"), str(out), yolox_settings())
    pid = pd.read_parquet(out / "photos.parquet")["photo_id"].iloc[1]
    server = Server(out)
    url = server.start()
    try:
        ranged = urllib.request.urlopen(urllib.request.Request(
            url + f"clip/{pid}", headers={"Range": "bytes=0-99"}), timeout=10)
        assert ranged.status == 206 and len(ranged.read()) == 100
        assert ranged.headers["Content-Type"] == "video/mp4"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url.replace("/t/", "/t/x") + f"clip/{pid}", timeout=10)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1366, "height": 800})
            page.goto(url)
            page.wait_for_selector("#queue li")
            page.wait_for_selector("#clip:not([hidden])")
            assert page.get_attribute("#clip", "src").endswith("/clip/" + page.evaluate(
                "state.current.photo_list[0].id"))
            page.wait_for_function("document.getElementById('clip').readyState >= 1")
            assert page.evaluate("document.getElementById('clip').duration") == pytest.approx(
                2.0, abs=0.3)
            page.keyboard.press("ArrowRight")  # the next sampled frame: the clip seeks there
            page.wait_for_function("Math.abs(document.getElementById('clip').currentTime - "
                                   "state.current.photo_list[state.photo].offset) < 0.05 && "
                                   "state.photo === 1")
            page.screenshot(path=str(tmp_path / "clip.png"))
            browser.close()
    finally:
        server.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("gop,rate", [(1, 10), (1, 30), (5, 25), (40, 10)])
def test_seeking_decodes_the_frames_asked_for(tmp_path, gop, rate):
    """Each sampled frame is the right picture, whatever the keyframe interval and frame
    rate (a seek to a truncated timestamp lands a frame early: it must not loop)."""
    av = need_module("av")
    from kadr.core.video import VideoFrame, read_frames

    path = tmp_path / "ramp.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": str(gop), "crf": "10"}
        for i in range(60):  # frame i is grey level 4 * i
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 4 * i, np.uint8), "rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    wanted = [0, 7, 8, 30, 52, 59]
    frames = [VideoFrame("ramp.mp4", i, i / rate, None, "none", "video/mp4") for i in wanted]
    got = [(f.index, img) for f, img in read_frames(str(path), frames)]
    assert [i for i, _ in got] == wanted
    for i, img in got:
        assert abs(np.asarray(img).mean() - 4 * i) < 3, (i, np.asarray(img).mean())


def test_a_clip_registration_is_reviewed_by_keyboard_as_photos_are(tmp_path):
    # Split a clip's registration at a frame and merge it back, count it, name its species,
    # shift its camera's clock: each key acts on clip frames as on photos, and the export
    # carries the decisions.
    from playwright.sync_api import sync_playwright

    from tests.test_review_browser import Server, current, press, review_page

    cam = tmp_path / "cards" / "D04"
    make_clip(cam / "e.mp4", [d04("0020"), d04("0021"), d04("0022")])
    out = tmp_path / "out"
    run_traps(str(tmp_path / "cards"), str(out), yolox_settings())
    server = Server(out)
    url = server.start()
    try:
        with sync_playwright() as p:
            browser, page, errors = review_page(p, url)
            page.wait_for_function("document.getElementById('u-class').textContent !== ''")
            # Three sampled frames see the elephant (the last frame, at 2.75 s, does not).
            assert "3 photo(s)" in current(page)["when"]
            page.keyboard.press("ArrowRight")
            press(page, "x")  # split before the second frame
            assert "1 photo(s)" in current(page)["when"]
            page.keyboard.press("j")
            page.wait_for_function(
                "document.getElementById('u-when').textContent.includes('2 photo(s)')")
            press(page, "m")  # and merge it back
            assert "3 photo(s)" in current(page)["when"]
            page.keyboard.press("c")
            page.keyboard.press("3")
            press(page, "Enter")
            assert current(page)["count"] == "3"
            page.keyboard.press("t")  # the camera's clock was an hour slow
            page.wait_for_selector("#clock-dialog[open]")
            page.fill("#clock-form [name=true_time]", "2013-05-01 11:00:00")
            before = page.inner_text("#status")
            page.keyboard.press("Enter")
            page.wait_for_function("(b) => document.getElementById('status').textContent !== b",
                                   arg=before)
            assert "shifted the clock of D04 by +01:00:00" in page.inner_text("#status")
            page.keyboard.press("Escape")
            # The status is said before the queue is read again: wait for the reload's end.
            page.wait_for_function(
                "!document.getElementById('empty-queue').hidden || "
                "document.getElementById('u-when').textContent.includes('11:00:00')")
            if page.is_visible("#empty-queue"):  # the counted one is reviewed: list them all
                page.select_option("#filters select[name=reviewed]", "yes")
                page.wait_for_selector("#queue li")
            page.wait_for_function(
                "document.getElementById('u-when').textContent.includes('11:00:00')")
            page.keyboard.press("s")  # last: naming it decides it, and the queue moves on
            page.keyboard.type("elephant")
            before = page.inner_text("#status")
            page.keyboard.press("Enter")
            if "new species" in page.inner_text("#species-note"):
                press(page, "Enter")
            else:
                page.wait_for_function(
                    "(b) => document.getElementById('status').textContent !== b", arg=before)
            assert not errors, errors
            browser.close()
    finally:
        server.stop()
    regs = pd.read_csv(out / "registrations.csv")
    assert len(regs) == 1, regs
    reg = regs.iloc[0]
    assert (reg["class"], reg["count"]) == ("elephant", 3)
    assert reg["date_registration_start"].startswith("2013-05-01 11:00:00")
    assert validate_camtrap_dp(out / "camtrap-dp", shared_path("data", "camtrap-dp-1.0.2")) == []
    assert megadetector_validation(out / "megadetector.json") == ([], [])
