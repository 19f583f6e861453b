"""``hotels caption --vocab generic`` against clip-interrogator 0.6 itself.

The same caption model (a BLIP of the real family, random weights, in a hub
cache under its real id), the same CLIP (ViT-B-32 at random weights under the
``openai`` tag, QuickGELU as kadr and open_clip advise for it), the same
tables (small ones written here) and the same photos: every mode must give
clip-interrogator's prompt exactly. Its chunk size and intermediate count are
set small on both sides (as its low-memory settings do), so the chunked
ranking is used and the chains stay quick on a CPU.
"""

import shutil

import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from kadr.hotels.caption import CaptionSettings, run_caption
from tests.helpers import shared_path
from tests.hubcache import save_pretrained_to_hub_cache
from tests.test_parity_captioners import MAX_TOKENS, blip
from tests.test_parity_open_clip import cached_random_tag

CAPTIONER = "Salesforce/blip-image-captioning-large"
CHUNK, CANDIDATES = 128, 16
ADJECTIVES = ("warm cold bright dim cosy vast narrow elegant rustic modern vintage ornate plain "
              "glossy matte golden silver wooden marble velvet").split()
NOUNS = ("light shadow texture colour pattern surface detail reflection mood atmosphere "
         "composition perspective symmetry contrast palette grain haze glow tone frame").split()


def write_tables(folder):
    folder.mkdir()
    flavors = [f"{a} {n}" for a in ADJECTIVES for n in NOUNS]
    assert len(flavors) > CHUNK, "the flavour table is ranked chunk by chunk"
    (folder / "flavors.txt").write_text("\n".join(flavors))
    (folder / "artists.txt").write_text("\n".join(f"Artist {c}" for c in "ABCDEFGHIJ"))
    (folder / "mediums.txt").write_text("a photograph\na painting\na render\na sketch\na poster")
    (folder / "movements.txt").write_text("modernism\nart deco\nminimalism\nbaroque\nbauhaus")
    (folder / "negative.txt").write_text("blurry\nugly\nnoisy\ntext\nwatermark\ncropped")


@pytest.mark.slow
def test_every_mode_gives_clip_interrogators_prompt(offline_hub, tmp_path, monkeypatch):
    import open_clip as oc
    from clip_interrogator import Config, Interrogator
    from transformers import AutoProcessor, BlipForConditionalGeneration

    data = tmp_path / "ci-data"
    write_tables(data)
    monkeypatch.setenv("KADR_CLIP_INTERROGATOR_DATA", str(data))
    save_pretrained_to_hub_cache(offline_hub, CAPTIONER, *blip(tmp_path))
    cached_random_tag(offline_hub, oc, "ViT-B-32-quickgelu", "ViT-B-32", "openai", tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(shared_path("data", "interiors", "bedroom").glob("*.jpg"))[:2]:
        shutil.copy(p, photos / p.name)  # 256 px: decoded as they are, no reduced-scale JPEG

    clip, _, transform = oc.create_model_and_transforms(
        "ViT-B-32-quickgelu", pretrained="openai", cache_dir=str(offline_hub))
    kwargs = {"cache_dir": str(offline_hub), "local_files_only": True}
    config = Config(caption_model_name="blip-large", caption_max_length=MAX_TOKENS,
                    clip_model_name="ViT-B-32-quickgelu/openai", data_path=str(data),
                    cache_path=str(tmp_path / "ci-cache"), download_cache=False, device="cpu",
                    chunk_size=CHUNK, flavor_intermediate_count=CANDIDATES, quiet=True)
    # Models passed in directly (class attributes of its Config, not constructor fields).
    config.caption_model = BlipForConditionalGeneration.from_pretrained(CAPTIONER, **kwargs).eval()
    config.caption_processor = AutoProcessor.from_pretrained(CAPTIONER, **kwargs)
    config.clip_model, config.clip_preprocess = clip.eval(), transform
    ci = Interrogator(config)
    reference = {"fast": ci.interrogate_fast, "classic": ci.interrogate_classic,
                 "best": ci.interrogate, "negative": ci.interrogate_negative}
    images = {p.name: ImageOps.exif_transpose(Image.open(p)).convert("RGB")
              for p in sorted(photos.iterdir())}
    for mode, interrogate in reference.items():
        with torch.no_grad():
            want = {name: interrogate(image) for name, image in images.items()}
        captions = run_caption(str(photos), str(tmp_path / f"out-{mode}"), CaptionSettings(
            captioner=f"hf-caption:{CAPTIONER}", clip="open_clip:ViT-B-32@openai",
            vocab="generic", mode=mode, rank_chunk=CHUNK, candidates=CANDIDATES,
            progress=False)).table
        table = pd.read_parquet(captions)
        got = dict(zip(table["key"], table["prompt"], strict=True))
        assert got == want, mode
        assert pd.Series(list(want.values())).str.len().min() > 10
