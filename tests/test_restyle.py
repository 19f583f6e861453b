import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kadr.core.masks import MaskOps
from kadr.hotels.restyle import (
    PromptWriter,
    RestyleSettings,
    Rule,
    generate_images,
    load_audience,
    run_restyle,
)
from tests.helpers import shared_path

TINY_SD = "diffusers:kadr/tiny-sd@random"


@pytest.fixture(scope="module")
def room_photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("rooms")
    for kind in ("bedroom", "living_room"):
        for p in sorted(shared_path("data", "interiors", kind).glob("*"))[:2]:
            (root / f"{kind}_{p.name}").write_bytes(p.read_bytes())
    (root / "broken.jpg").write_bytes(b"not a photo")
    return root


def yolox_boxes() -> str:
    return f"boxes:yolox:{shared_path('models', 'yolox_nano.onnx')}"


def assert_only_masked_pixels_changed(row: dict, settings: RestyleSettings) -> None:
    from scipy import ndimage

    original = np.asarray(Image.open(row["path"]).convert("RGB"), dtype=np.int16)
    union = np.zeros(original.shape[:2], bool)
    for p in json.loads(row["prompts"]).values():
        union |= np.asarray(Image.open(p["mask"])) > 0
    assert union.any()
    feathered = ndimage.binary_dilation(union, iterations=settings.mask_ops.feather * 2)
    for o in json.loads(row["outputs"]):
        after = np.asarray(Image.open(o["edited"]).convert("RGB"), dtype=np.int16)
        assert after.shape == original.shape, "the result is at the photo's own size"
        assert o["edited"].endswith(".png"), "edits are saved losslessly"
        assert (after == original)[~feathered].all(), "outside the masks the saved edit is the input"
        assert np.abs(after - original)[union].mean() > 5, "inside the mask it changed"


def test_restyle_end_to_end_changes_only_masked_pixels(room_photos, tmp_path):
    out = tmp_path / "out"
    settings = RestyleSettings(pipeline=TINY_SD, segmenter=yolox_boxes(), steps=2, variants=2,
                               progress=False)
    result = run_restyle(str(room_photos), str(out), settings)
    summary, table = result.summary, result.frame()
    assert summary.ok == 4 and len(summary.failures) == 1
    edited_any = False
    for r in table[table["status"] == "ok"].to_dict("records"):
        found = json.loads(r["found"])
        assert set(found) | set(json.loads(r["not_found"])) == {
            rule.find for rule in load_audience("aliens").rules}
        outputs = json.loads(r["outputs"])
        assert len(outputs) == (2 if found else 0)
        if not found:
            continue
        edited_any = True
        assert_only_masked_pixels_changed(r, settings)
        assert Path(outputs[0]["before_after"]).exists()
    assert edited_any, "YOLOX finds a bed or a couch in at least one room"
    html = (out / "gallery.html").read_text()
    assert "Not found in this photo" in html and "<script src=" not in html
    # Resume: nothing is redone.
    s2 = run_restyle(str(room_photos), str(out), settings).summary
    assert s2.processed == 0


def test_outside_the_mask_pixels_are_exactly_the_input():
    from kadr.core.models.diffusion import paste_inside

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8))
    edit = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    prob = np.zeros((50, 60), np.float32)
    prob[10:30, 20:40] = 0.9
    binary, soft = MaskOps(dilate=2, feather=4, min_area=0.01).apply(prob)
    out = np.asarray(paste_inside(photo, edit, soft))
    zero = soft == 0
    assert zero.sum() > 1000
    assert np.array_equal(out[zero], np.asarray(photo)[zero])
    assert not np.array_equal(out[binary], np.asarray(photo)[binary])


def test_sam_refines_a_box_into_an_outline_inside_it(room_photos, tmp_path):
    from kadr.core.models import load_model

    refiner = load_model("sam:kadr/tiny-sam@random", kind="mask-refiner")
    image = Image.open(sorted(room_photos.glob("bedroom_*"))[0]).convert("RGB")
    coarse = np.zeros(image.size[::-1], np.float32)
    coarse[40:120, 60:200] = 1.0
    outline = refiner.refine(image, coarse)
    assert outline.shape == coarse.shape and set(np.unique(outline)) <= {0.0, 1.0}
    assert outline.any() and not outline[coarse == 0].any(), "the outline stays inside the box"
    assert refiner.refine(image, np.zeros_like(coarse)).sum() == 0
    # In the restyle pipeline: refined masks, and pixels far outside them untouched.
    settings = RestyleSettings(pipeline=TINY_SD, segmenter=yolox_boxes(), progress=False, steps=2,
                               refine_masks="sam:kadr/tiny-sam@random")
    result = run_restyle(str(room_photos), str(tmp_path / "out"), settings)
    summary, table = result.summary, result.frame()
    assert summary.ok == 4
    edited = [r for r in table[table["status"] == "ok"].to_dict("records") if json.loads(r["found"])]
    assert edited, "YOLOX finds a bed or a couch in at least one room"
    for r in edited:
        assert_only_masked_pixels_changed(r, settings)


def test_mask_ops_drop_small_blobs_and_report_nothing_found():
    prob = np.zeros((100, 100), np.float32)
    prob[0:2, 0:2] = 1.0  # 4 px: noise
    assert MaskOps(min_area=0.01).apply(prob) is None
    prob[40:70, 40:70] = 0.8
    binary, soft = MaskOps(min_area=0.01, dilate=0, feather=0).apply(prob)
    assert binary.sum() == 900 and not binary[0, 0]


class _FakeLLM(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["messages"][0]["role"] == "user"
        answer = {"choices": [{"message": {"content": "an alien painting, glowing"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_prompt_writer_uses_a_local_llm_and_falls_back():
    server = HTTPServer(("127.0.0.1", 0), _FakeLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        audience = load_audience("aliens")
        rule = Rule("painting on the wall", "a painting of the home world")
        url = f"http://127.0.0.1:{server.server_port}/v1"
        text, source = PromptWriter(url, timeout=5).write(rule, audience, "a bedroom")
        assert (text, source) == ("an alien painting, glowing", "llm")
    finally:
        server.shutdown()
    text, source = PromptWriter(url, timeout=1).write(rule, audience, "a bedroom")
    assert source.startswith("template (LLM failed") and "home world" in text
    text, source = PromptWriter(None).write(rule, audience, "a bedroom")
    assert source == "template" and "in a bedroom" in text


def test_audience_profile_errors(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("name: x\nrules:\n  - find: bed\n")
    with pytest.raises(ValueError, match="needs 'find' and 'replace'"):
        load_audience(str(p))
    p.write_text("name: x\nstyel: y\nrules: []\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_audience(str(p))


def test_composite_refine_and_generate(room_photos, tmp_path):
    settings = RestyleSettings(pipeline=TINY_SD, segmenter=yolox_boxes(), steps=2, variants=1,
                               composite=True, refine=0.3, scheduler="euler", progress=False)
    summary = run_restyle(str(room_photos), str(tmp_path / "c"), settings).summary
    assert summary.ok == 4
    paths = generate_images("a friendly alien guest", str(tmp_path / "g"), TINY_SD, variants=2,
                            steps=2)
    assert len(paths) == 2 and all(Image.open(p).size == (64, 64) for p in paths)
    a, b = (np.asarray(Image.open(p)) for p in paths)
    assert not np.array_equal(a, b), "variants differ by seed"
    again = generate_images("a friendly alien guest", str(tmp_path / "g2"), TINY_SD, steps=2)
    assert np.array_equal(np.asarray(Image.open(again[0])), a), "fixed seeds repeat"
    assert pd  # pandas used by the module under test


def test_whole_photo_img2img_mode(room_photos, tmp_path):
    settings = RestyleSettings(pipeline=TINY_SD, segmenter=yolox_boxes(), steps=2, variants=1,
                               whole_photo=True, strength=0.6, progress=False)
    table = run_restyle(str(room_photos), str(tmp_path / "w"), settings).frame()
    ok = table[table["status"] == "ok"]
    assert len(ok) == 4
    assert all(json.loads(r)["whole photo"]["mask"] is None for r in ok["prompts"])
    assert all(len(json.loads(o)) == 1 for o in ok["outputs"])


def test_resume_with_other_whole_photo_or_prompt_writer_is_refused(room_photos, tmp_path):
    from kadr.core.store import StoreMismatchError
    from kadr.hotels.restyle import PromptWriter

    one = tmp_path / "one"
    one.mkdir()
    first = sorted(room_photos.glob("*.jpg"))[0]
    (one / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "out"
    base = dict(pipeline=TINY_SD, segmenter=yolox_boxes(), steps=1, progress=False)
    run_restyle(str(one), str(out), RestyleSettings(**base))
    with pytest.raises(StoreMismatchError):
        run_restyle(str(one), str(out), RestyleSettings(**base, whole_photo=True))
    with pytest.raises(StoreMismatchError):
        run_restyle(str(one), str(out), RestyleSettings(
            **base, prompt_writer=PromptWriter(base_url="http://127.0.0.1:9/v1")))
