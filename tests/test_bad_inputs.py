"""Every command against the inputs a new user gets wrong: one sentence and exit code 2,
never a traceback. Each row is a command line; ``{empty}``, ``{file}``, ``{photos}`` and
``{missing}`` are filled in per test."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from kadr.cli import app
from tests.helpers import TINY_CLIP, jpeg_bytes

TRAPS = ["--detector", "none", "--classifier", TINY_CLIP, "-q"]
CAPTIONER = "coca:kadr-tiny-coca@random"

COMMANDS = {
    "embed": ["embed", "{src}", "-o", "{out}", "--model", TINY_CLIP, "-q"],
    "traps run": ["traps", "run", "{src}", "-o", "{out}", *TRAPS],
    "hotels profile": ["hotels", "profile", "{src}", "-o", "{out}", "-q"],
    "hotels caption": ["hotels", "caption", "{src}", "-o", "{out}", "--captioner", CAPTIONER,
                       "--clip", TINY_CLIP, "-q"],
}


@pytest.fixture
def places(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder\n")
    photos = tmp_path / "photos" / "cam1"
    photos.mkdir(parents=True)
    (photos / "1.jpg").write_bytes(jpeg_bytes(seed=1))
    return tmp_path


def invoke(args: list[str], cwd) -> object:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, args)
    finally:
        os.chdir(old)


def refused(result, *words: str) -> str:
    """A command refused its input: exit code 2, a sentence naming it, no traceback."""
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert isinstance(result.exception, SystemExit), f"raised {result.exception!r}: {text}"
    assert "Traceback" not in text and "error:" in text, text
    for w in words:
        assert w in " ".join(text.split()), (w, text)
    return text


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_empty_folder_is_one_sentence(places, name):
    args = [a.format(src="empty", out="out") for a in COMMANDS[name]]
    refused(invoke(args, places), "no photo", "empty")


@pytest.mark.parametrize("name", ["embed", "traps run", "hotels caption"])
def test_an_empty_folder_is_said_before_any_model_loads(places, name):
    # A model that cannot load: the empty folder is what the user needs to hear, at once
    # (a real model takes seconds to minutes to load before it would have been said).
    unloadable = "open_clip:kadr-tiny-clip@missing-weights.safetensors"
    args = [unloadable if a == TINY_CLIP else a.format(src="empty", out="out")
            for a in COMMANDS[name]]
    refused(invoke(args, places), "no photo", "empty")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_output_that_is_a_file_is_refused(places, name):
    args = [a.format(src="photos", out="a-file") for a in COMMANDS[name]]
    refused(invoke(args, places), "a-file", "not a folder")
    assert (places / "a-file").read_text() == "not a folder\n", "the file is left alone"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_missing_source_is_refused(places, name):
    args = [a.format(src="nowhere", out="out") for a in COMMANDS[name]]
    refused(invoke(args, places), "nowhere")


def test_outputs_under_a_file_and_other_commands_with_file_outputs(places):
    (places / "photos.csv").write_text("path,time\nphotos/cam1/1.jpg,2024-01-01 10:00:00\n")
    refused(invoke(["traps", "events", "photos.csv", "-o", "a-file/regs.csv"], places),
            "a-file", "not a folder")
    refused(invoke(["generate", "a cat", "-o", "a-file", "--pipeline",
                    "diffusers:kadr/tiny-sd@random", "--steps", "1"], places),
            "a-file", "not a folder")
    refused(invoke(["embed", "photos", "-o", "a-file/sub", "--model", TINY_CLIP, "-q"], places),
            "a-file", "not a folder")


def test_a_folder_where_a_table_is_wanted_is_refused(places):
    for args in (["traps", "events", "empty", "-o", "regs.csv"],
                 ["traps", "events", "photos", "-o", "regs.csv"]):
        refused(invoke(args, places), "folder without result-store shards")
    assert not (places / "regs.csv").exists()


def test_an_empty_camera_trap_run_still_writes_valid_empty_outputs(places):
    from kadr.traps.exports import validate_camtrap_dp
    from tests.helpers import shared_path

    refused(invoke(["traps", "run", "empty", "-o", "out", *TRAPS], places), "no photo")
    out = places / "out"
    regs = pd.read_csv(out / "registrations.csv")
    assert len(regs) == 0 and list(regs.columns)[:2] == ["name_folder", "class"]
    assert json.loads((out / "megadetector.json").read_text())["images"] == []
    clips = pd.read_parquet(out / "clips.parquet")
    assert len(clips) == 0 and "media_key" in clips.columns
    assert validate_camtrap_dp(out / "camtrap-dp", shared_path("data", "camtrap-dp-1.0.2")) == []


@pytest.mark.parametrize("command", ["traps run", "hotels profile"])
def test_max_pixels_is_an_option_of_every_batch_command(places, command):
    # A photo over the limit is refused with a reason that names --max-pixels: the option
    # must exist on the command that said so, and raising it lets the photo through.
    args = [a.format(src="photos", out="out") for a in COMMANDS[command]]
    result = invoke([*args, "--max-pixels", "1000"], places)
    assert result.exit_code in (0, 1), (result.exit_code, result.output)
    photos = pd.read_parquet(next((places / "out").glob("photos.parquet")))
    row = photos.iloc[0]
    assert row["status"] == "too_large" and "--max-pixels" in row["reason"]
    result = invoke([*args[:-1], "--retry-failed", "-q"], places)
    assert result.exit_code == 0, result.output
    assert (pd.read_parquet(places / "out" / "photos.parquet")["status"] == "ok").all()


@pytest.mark.parametrize("option, value, words", [
    ("--method", "session", ["unknown method 'session'", "sessions, window, simple"]),
    ("--count-rule", "maximum", ["unknown count rule 'maximum'", "max, confirmed"]),
    ("--gap", "half an hour", ["half an hour"]),
])
def test_registration_options_are_checked_before_any_photo(places, option, value, words):
    """A wrong rule is said at once, not after the models looked at every photo."""
    args = [a.format(src="photos", out="out") for a in COMMANDS["traps run"]]
    refused(invoke([*args, option, value], places), *words)
    assert not (places / "out" / "photos.store").exists()
