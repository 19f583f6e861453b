"""``kadr hotels restyle`` and ``kadr generate``: change only the chosen parts of a room.

For each photo and each rule of an audience profile: find the thing from text
(a segmenter spec: detector boxes, CLIPSeg, optionally refined by SAM), clean
the mask (threshold, minimum area, dilate, feather), build a prompt from the
photo's caption, the rule and the audience style, inpaint at the model's
native resolution and blend the result back at the photo's own size. Outside
the feathered mask the output pixels are exactly the input's. Several
variants (seeds) per photo; optional refine pass (a low-strength second
inpaint over all edited areas) and ``--composite`` (generate the object on its
own, paste it into the mask's box, harmonise the seam with a low-strength
inpaint).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from kadr.core.decode import DecodedPhoto
from kadr.core.masks import MaskOps
from kadr.core.models import load_model
from kadr.core.models.diffusion import paste_inside
from kadr.core.models.factory import model_fingerprint
from kadr.core.remote import staged
from kadr.core.runner import Job, RunOptions, WorkflowResult, run_workflow
from kadr.core.status import PhotoStatus
from kadr.core.store import atomic_write_bytes, atomic_write_text, output_folder, read_shards

AUDIENCES = Path(__file__).parent / "audiences"


@dataclass
class Rule:
    find: str
    replace: str


@dataclass
class Audience:
    name: str
    preferences: list[str]
    style: str
    negative: str
    rules: list[Rule]


def load_audience(path: str) -> Audience:
    p = Path(path)
    if not p.exists() and (AUDIENCES / f"{path}.yaml").exists():
        p = AUDIENCES / f"{path}.yaml"  # a shipped profile by name: --audience aliens
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{p}: an audience profile is a YAML mapping")
    unknown = set(data) - {"name", "preferences", "style", "negative", "rules"}
    if unknown:
        raise ValueError(f"{p}: unknown key(s) {sorted(unknown)}")
    rules = []
    for i, r in enumerate(data.get("rules") or []):
        if not isinstance(r, dict) or not r.get("find") or not r.get("replace"):
            raise ValueError(f"{p}: rule {i + 1} needs 'find' and 'replace'")
        rules.append(Rule(str(r["find"]), str(r["replace"])))
    if not rules:
        raise ValueError(f"{p}: no rules: say what to find and what to put there")
    return Audience(str(data.get("name", p.stem)), list(data.get("preferences") or []),
                    str(data.get("style", "")), str(data.get("negative", "")), rules)


def template_prompt(rule: Rule, audience: Audience, caption: str | None) -> str:
    scene = f" in {caption.strip().rstrip('.')}" if caption else ""
    return f"{rule.replace}{scene}, {audience.style}".strip(", ")


@dataclass
class PromptWriter:
    """Optional: an OpenAI-compatible chat endpoint writes each edit prompt; templates otherwise."""

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    timeout: float = 20.0

    def write(self, rule: Rule, audience: Audience, caption: str | None) -> tuple[str, str]:
        fallback = template_prompt(rule, audience, caption)
        if not self.base_url:
            return fallback, "template"
        ask = (f"Write one prompt for an image inpainting model (at most 60 words). The photo "
               f"shows: {caption or 'a hotel room'}. Replace '{rule.find}' with: {rule.replace}. "
               f"The guests like: {'; '.join(audience.preferences)}. Style: {audience.style}. "
               "Answer with the prompt only.")
        body = json.dumps({"model": self.model, "temperature": 0.7,
                           "messages": [{"role": "user", "content": ask}]}).encode()
        req = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self.api_key or ''}"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310
                text = json.loads(r.read())["choices"][0]["message"]["content"].strip()
            return (text, "llm") if text else (fallback, "template (empty LLM answer)")
        except Exception as e:  # noqa: BLE001 - any failure falls back to the template
            return fallback, f"template (LLM failed: {type(e).__name__})"


@dataclass(kw_only=True)
class RestyleSettings(RunOptions):
    audience: str = "aliens"
    pipeline: str = "diffusers:diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    segmenter: str = "clipseg:CIDAS/clipseg-rd64-refined"
    refine_masks: str | None = None  # sam:ID
    scheduler: str | None = None
    variants: int = 2
    seed: int = 0
    strength: float = 0.99
    steps: int = 25
    guidance: float = 7.5
    refine: float = 0.0  # strength of the cascade's second pass; 0 = off
    composite: bool = False
    whole_photo: bool = False  # img2img: one edit of the whole photo at ``strength``
    captions: str | None = None  # captions.parquet from `kadr hotels caption`
    mask_ops: MaskOps = field(default_factory=MaskOps)
    prompt_writer: PromptWriter = field(default_factory=PromptWriter)
    batch_size: int = 1  # a photo at a time: each is several diffusion passes
    workers: int = 1


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def _save_jpeg(path: Path, img: Image.Image) -> None:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    atomic_write_bytes(path, buf.getvalue())


def _save_png(path: Path, img: Image.Image) -> None:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    atomic_write_bytes(path, buf.getvalue())


def side_by_side(before: Image.Image, after: Image.Image) -> Image.Image:
    w, h = before.size
    pair = Image.new("RGB", (2 * w + 8, h), (255, 255, 255))
    pair.paste(before, (0, 0))
    pair.paste(after.resize((w, h)), (w + 8, 0))
    return pair


def restyle_fingerprint(settings: RestyleSettings, audience: Audience) -> dict:
    """Everything that changes the edits, from the settings alone (no pipeline is loaded)."""
    s = settings
    return {"job": "restyle", "pipeline": model_fingerprint(s.pipeline), "scheduler": s.scheduler,
            "segmenter": model_fingerprint(s.segmenter),
            "refine_masks": model_fingerprint(s.refine_masks),
            "audience": json.dumps(audience.__dict__, default=str),
            "variants": s.variants, "seed": s.seed, "strength": s.strength, "steps": s.steps,
            "guidance": s.guidance, "refine": s.refine, "composite": s.composite,
            "mask": s.mask_ops.__dict__, "whole_photo": s.whole_photo,
            # Prompts written by an LLM differ from the templates (the key is not stored).
            "prompt_writer": {"base_url": s.prompt_writer.base_url,
                              "model": s.prompt_writer.model if s.prompt_writer.base_url else None}}


class Restyler:
    def __init__(self, settings: RestyleSettings, out_dir: Path):
        self.s = settings
        self.out = out_dir
        self.audience = load_audience(settings.audience)
        self.painter = load_model(settings.pipeline, kind="diffusion")
        if settings.scheduler:
            self.painter.set_scheduler(settings.scheduler)
        self.segmenter = load_model(settings.segmenter, kind="segmenter")
        self.refiner = load_model(settings.refine_masks, kind="mask-refiner") \
            if settings.refine_masks else None
        self.captions: dict[str, str] = {}
        if settings.captions:
            t = pd.read_parquet(settings.captions)
            self.captions = dict(zip(t["key"], t["caption"].fillna(""), strict=True))
            self.captions.update(zip(t["path"], t["caption"].fillna(""), strict=True))

    def prepare(self, photo: DecodedPhoto) -> Image.Image:
        return photo.image

    def process(self, inputs: list[Image.Image], rows: list[dict]) -> list[dict]:
        results = []
        for img, row in zip(inputs, rows, strict=True):
            try:
                results.append(self.restyle_one(img, row))
            except (ValueError, RuntimeError) as e:  # a model failure on one photo is its status
                results.append({"status": "edit_error", "reason": f"{type(e).__name__}: {e}"})
        return results

    def _mask(self, image: Image.Image, query: str, prob: np.ndarray | None):
        if prob is None:
            return None
        if self.refiner is not None:
            prob = self.refiner.refine(image, prob)
        return self.s.mask_ops.apply(prob)

    def restyle_one(self, image: Image.Image, row: dict) -> dict:
        s, a = self.s, self.audience
        stem = _slug(Path(row["key"]).stem) + "-" + (row["photo_id"] or "")[:8]
        caption = self.captions.get(row["key"]) or self.captions.get(row["path"])
        found, missing, prompts, masks = [], [], {}, []
        if s.whole_photo:
            # img2img, the seed's own approach: the whole photo is the mask.
            full = np.ones(image.size[::-1], bool)
            rule = Rule("whole photo", a.style)
            text, source = s.prompt_writer.write(rule, a, caption)
            prompts["whole photo"] = {"prompt": text, "source": source, "mask": None}
            masks.append((rule, full, full.astype(np.float32), text))
        probs = [] if s.whole_photo else self.segmenter.segment(image, [r.find for r in a.rules])
        for rule, prob in zip([] if s.whole_photo else a.rules, probs, strict=True):
            m = self._mask(image, rule.find, prob)
            if m is None:
                missing.append(rule.find)
                continue
            binary, soft = m
            found.append(rule.find)
            mask_path = self.out / "masks" / f"{stem}__{_slug(rule.find)}.png"
            _save_png(mask_path, Image.fromarray((binary * 255).astype(np.uint8), "L"))
            text, source = s.prompt_writer.write(rule, a, caption)
            prompts[rule.find] = {"prompt": text, "source": source, "mask": str(mask_path)}
            masks.append((rule, binary, soft, text))
        outputs = []
        for v in range(s.variants if masks else 0):
            seed = s.seed + v
            current = image
            for rule, binary, soft, text in masks:
                current = self._edit(current, rule, binary, soft, text, seed)
            if s.refine > 0:
                union = np.maximum.reduce([soft for _, _, soft, _ in masks])
                mask_img = Image.fromarray(((union > 0) * 255).astype(np.uint8), "L")
                refined = self.painter.inpaint(current, mask_img, a.style, a.negative, s.steps,
                                               s.refine, s.guidance, seed)
                current = paste_inside(current, refined, union)
            # Lossless, so that outside the masks the saved edit is exactly the input photo.
            edit_path = self.out / "edits" / f"{stem}__v{v + 1}.png"
            pair_path = self.out / "pairs" / f"{stem}__v{v + 1}.jpg"
            _save_png(edit_path, current)
            _save_jpeg(pair_path, side_by_side(image, current))
            outputs.append({"variant": v + 1, "seed": seed, "edited": str(edit_path),
                            "before_after": str(pair_path)})
        status_note = None if masks else "no rule's object was found in this photo"
        return {"caption_used": caption, "found": json.dumps(found),
                "not_found": json.dumps(missing), "prompts": json.dumps(prompts),
                "outputs": json.dumps(outputs), "note": status_note}

    def _edit(self, current: Image.Image, rule: Rule, binary: np.ndarray, soft: np.ndarray,
              text: str, seed: int) -> Image.Image:
        s, a = self.s, self.audience
        mask_img = Image.fromarray((binary * 255).astype(np.uint8), "L")
        if s.composite:
            ys, xs = np.nonzero(binary)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            obj = self.painter.generate(f"{rule.replace}, isolated object, {a.style}", a.negative,
                                        steps=s.steps, guidance=s.guidance, seed=seed)
            pasted = current.copy()
            pasted.paste(obj.resize((box[2] - box[0], box[3] - box[1])), box[:2])
            current = paste_inside(current, pasted, soft)
            edited = self.painter.inpaint(current, mask_img, text, a.negative, s.steps, 0.35,
                                          s.guidance, seed)
        else:
            edited = self.painter.inpaint(current, mask_img, text, a.negative, s.steps,
                                          s.strength, s.guidance, seed)
        return paste_inside(current, edited, soft)


def restyle_job(restyler: Restyler) -> Job:
    empty = {"caption_used": None, "found": None, "not_found": None, "prompts": None,
             "outputs": None, "note": None}
    return Job("restyle", restyler.prepare, restyler.process, min_side=None, batch_size=1,
               empty_result=empty)


def make_restyle_job(settings: RestyleSettings, out_dir: Path) -> Job:
    return restyle_job(Restyler(settings, out_dir))


@staged
def run_restyle(source: str, out: str, settings: RestyleSettings) -> WorkflowResult:
    from kadr.hotels.sources import hotel_collection

    out_dir = Path(out)
    output_folder(out_dir)
    audience = load_audience(settings.audience)
    collection, _ = hotel_collection(source, out_dir, settings.path_column,
                                     settings.group_column)
    summary = run_workflow(collection, out_dir / "restyle.store",
                           functools.partial(make_restyle_job, settings, out_dir), settings,
                           name="restyle", fingerprint=restyle_fingerprint(settings, audience))
    table = read_shards(out_dir / "restyle.store").to_pandas()
    atomic_write_text(out_dir / "restyle.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "gallery.html", render_gallery(table, audience))
    return WorkflowResult(summary, out_dir, out_dir / "restyle.store")


def render_gallery(table: pd.DataFrame, audience: Audience) -> str:
    from kadr.core.html import render, thumbnail

    rows = []
    for r in table.to_dict("records"):
        row = {"key": r["key"], "status": r["status"], "reason": r["reason"]}
        if r["status"] == PhotoStatus.OK:
            row.update(
                prompts=json.loads(r["prompts"] or "{}"),
                missing=json.loads(r["not_found"] or "[]"),
                outputs=[{**o, "src": thumbnail(o["before_after"], 1600, quality=85)}
                         for o in json.loads(r["outputs"] or "[]")
                         if os.path.exists(o["before_after"])])
        rows.append(row)
    return render("hotels_restyle.html", title=f"Restyled for {audience.name}",
                  audience=audience, rows=rows)


def generate_images(prompt: str, out: str, pipeline: str, variants: int = 1, seed: int = 0,
                    steps: int = 25, guidance: float = 7.5, negative: str = "",
                    scheduler: str | None = None) -> list[Path]:
    """Plain text to image (the seed drew the guests themselves)."""
    painter = load_model(pipeline, kind="diffusion")
    if scheduler:
        painter.set_scheduler(scheduler)
    paths = []
    for v in range(variants):
        img = painter.generate(prompt, negative, steps=steps, guidance=guidance, seed=seed + v)
        path = Path(out) / f"{_slug(prompt)}__{seed + v}.png"
        _save_png(path, img)
        paths.append(path)
    return paths
