"""``open_clip:ARCH[@TAG|@PATH|@random]``: any open_clip architecture.

A pretrained tag loads through open_clip's own ``create_model(arch,
pretrained=tag)``, so the tag's configuration applies exactly as upstream:
its preprocessing (resize mode, interpolation, mean/std) and, for OpenAI's
weights, QuickGELU (what open_clip's ``ARCH-quickgelu`` variants do). Found in
the cache or just downloaded, the same spec gives the same model and the same
fingerprint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kadr.core.lazy import torch
from kadr.core.models.device import module_device, place
from kadr.core.models.factory import KnownModel, register_backend
from kadr.core.models.image_text import ImageTextModel
from kadr.core.models.preprocess import from_open_clip
from kadr.core.models.spec import ModelSpec, SpecError
from kadr.core.models.weights import (
    WeightsNotFoundError,
    hf_cache_dir,
    hf_cached_file,
    hub_offline,
    hub_reachable,
    hub_repo_folder,
    load_state_dict,
    missing_weights_message,
)

CONFIG_DIR = Path(__file__).parent / "configs"
# Small architectures shipped with kadr so anyone can run every command end to
# end at random weights (the test suite uses them).
TEST_MODELS = {
    "kadr-tiny-clip": "2-layer 64-wide ViT/text towers, 64 px input, for tests",
    "kadr-tiny-coca": "a tiny CoCa (captioner + CLIP towers), 64 px input, for tests",
}
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_HUB_PREFIX = "hf-hub:"  # open_clip's own name for a model kept in a hub repo
HUB_REPOS = {  # repos in open_clip's layout that camera-trap users ask for (any such repo works)
    "imageomics/bioclip": "BioCLIP (ViT-B/16, TreeOfLife-10M; MIT)",
    "imageomics/bioclip-2": "BioCLIP 2 (ViT-L/14, TreeOfLife-200M; MIT)",
}


def _open_clip():
    import open_clip

    for name in TEST_MODELS:
        if name not in open_clip.list_models():
            open_clip.add_model_config(CONFIG_DIR / f"{name}.json")
    return open_clip


def _quiet_create(oc, arch: str, **kwargs):
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights" on purpose here
    try:
        return oc.create_model(arch, pretrained=None, **kwargs)
    finally:
        log.setLevel(level)


def quick_gelu_note(oc, arch: str, tag: str) -> str | None:
    """Why QuickGELU is switched on for a tag, or None when the architecture already matches it."""
    wants = bool((oc.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu"))
    has = bool((oc.get_model_config(arch) or {}).get("quick_gelu"))
    if wants and not has:
        return (f"QuickGELU on: the {tag} weights were trained with it (same as open_clip's "
                f"{arch}-quickgelu)")
    return None


def _weights_location(hub: str, url: str) -> str:
    """Where a tag's weights are looked for: its hub repository in the cache, else its URL."""
    return str(hub_repo_folder(hub)) if hub else url


def pretrained_listing() -> tuple[list[tuple[str, str, str, str, str | None]], int]:
    """open_clip's pretrained tags (arch, tag, hub id, url, QuickGELU note) and how many
    architectures it knows; kept in kadr's cache per open_clip version, because reading them
    means importing open_clip and torch (seconds) and `kadr models` should answer at once."""
    import json
    from importlib.metadata import version

    from kadr.core.cache import cache_dir

    path = cache_dir() / f"open_clip-{version('open_clip_torch')}-pretrained.json"
    try:
        cached = json.loads(path.read_text())
        return [tuple(t) for t in cached["tags"]], cached["architectures"]
    except (OSError, ValueError, KeyError):
        pass
    oc = _open_clip()
    tags = []
    for arch, tag in oc.list_pretrained():
        cfg = oc.get_pretrained_cfg(arch, tag) or {}
        tags.append((arch, tag, (cfg.get("hf_hub") or "").rstrip("/"), cfg.get("url", ""),
                     quick_gelu_note(oc, arch, tag)))
    n_archs = len(oc.list_models())
    from kadr.core.store import atomic_write_text

    atomic_write_text(path, json.dumps({"tags": tags, "architectures": n_archs}))
    return tags, n_archs


class OpenClipBackend:
    name = "open_clip"
    kind = "image-text"
    family: str | None = "transformer"
    help = "open_clip architectures; weights: a pretrained tag, a checkpoint path, or random"

    def _hub_location(self, arch: str, tag: str) -> tuple[str | None, str]:
        cfg = _open_clip().get_pretrained_cfg(arch, tag)
        hub = (cfg.get("hf_hub") or "").rstrip("/")
        return hub or None, _weights_location(hub, cfg.get("url", ""))

    def known(self) -> list[KnownModel]:
        tags, n_archs = pretrained_listing()
        out = [
            KnownModel(f"open_clip:{n}@random", self.kind, note, "built from config", True)
            for n, note in TEST_MODELS.items()
        ]
        for arch, tag, hub, url, note in tags:
            where = _weights_location(hub, url)
            present = bool(hub and hf_cached_file(hub, HUB_FILES))
            out.append(KnownModel(f"open_clip:{arch}@{tag}", self.kind,
                                  "pretrained" + (f"; {note}" if note else ""), where, present))
        for repo, note in HUB_REPOS.items():
            out.append(KnownModel(f"open_clip:{HF_HUB_PREFIX}{repo}", self.kind, note,
                                  str(hub_repo_folder(repo)),
                                  bool(hf_cached_file(repo, ("open_clip_config.json",)))))
        out.append(
            KnownModel("open_clip:ARCH@random", self.kind,
                       f"any of {n_archs} architectures at seeded random weights",
                       "built from config", True)
        )
        return out

    def build(self, spec: ModelSpec, trust_checkpoint: bool = False):
        """The open_clip module a spec names, weights loaded: (model, weights, preprocess, notes)."""
        oc = _open_clip()
        arch = spec.name
        if arch.startswith(HF_HUB_PREFIX) and spec.weights is None:
            model = self._load_hub_repo(oc, arch[len(HF_HUB_PREFIX):])
            preprocess = from_open_clip(model.visual.preprocess_cfg)
            return place(model.eval()), arch, preprocess, ()
        if arch not in oc.list_models():
            raise SpecError(f"unknown open_clip architecture {arch!r}; see `kadr models`")
        weights = spec.weights
        if weights is None:
            tags = oc.list_pretrained_tags_by_model(arch)
            if not tags:
                raise SpecError(f"{arch} has no pretrained tags; give @PATH or @random")
            weights = tags[0]
        notes: tuple[str, ...] = ()
        if weights == "random":
            torch.manual_seed(ModelSpec(spec.backend, arch, weights).seed())
            model = _quiet_create(oc, arch)
        elif os.path.exists(weights):
            model = _quiet_create(oc, arch)
            model.load_state_dict(load_state_dict(weights, trust_checkpoint))
        else:
            model, notes = self._load_tag(oc, arch, weights)
        preprocess = from_open_clip(getattr(model.visual, "preprocess_cfg", None) or {
            "size": model.visual.image_size})
        return place(model.eval()), weights, preprocess, notes

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> ImageTextModel:
        oc = _open_clip()
        model, weights, preprocess, notes = self.build(spec, trust_checkpoint)
        arch = spec.name
        if arch.startswith(HF_HUB_PREFIX):  # the repo's own config names its tokenizer
            with hub_offline(not hub_reachable()):
                tokenizer = oc.get_tokenizer(arch, cache_dir=str(hf_cache_dir()))
        else:
            tokenizer = oc.get_tokenizer(arch)
        context = int(getattr(tokenizer, "context_length", None) or model.context_length)

        def encode_text(texts: list[str]) -> torch.Tensor:
            return model.encode_text(tokenizer(texts).to(module_device(model)))

        def count_tokens(text: str) -> int:
            if hasattr(tokenizer, "encode"):  # open_clip's CLIP BPE: start and end added
                return len(tokenizer.encode(text)) + 2
            return len(tokenizer.tokenizer(text)["input_ids"])  # a transformers tokenizer

        return ImageTextModel(
            spec=ModelSpec(spec.backend, arch, weights),
            preprocess=preprocess,
            encode_image_fn=model.encode_image,
            encode_text_fn=encode_text,
            embed_dim=int(model.text_projection.shape[-1])
            if isinstance(getattr(model, "text_projection", None), torch.Tensor)
            else int(encode_text(["a"]).shape[-1]),
            modules=[model],
            logit_scale=float(model.logit_scale.detach().exp()),
            context_length=context,
            notes=notes,
            token_count_fn=count_tokens,
        )

    def _load_hub_repo(self, oc, repo: str):
        """A hub repository in open_clip's own layout (``open_clip_config.json`` beside its
        weights, as BioCLIP and BioCLIP 2 ship), through open_clip's hf-hub path: from the
        cache when the hub cannot be reached."""
        online = hub_reachable()
        if not hf_cached_file(repo, ("open_clip_config.json",)) and not online:
            raise WeightsNotFoundError(missing_weights_message(
                f"open_clip hf-hub:{repo}",
                [f"{hub_repo_folder(repo)} (open_clip_config.json and open_clip_model"
                 ".safetensors)", f"https://huggingface.co/{repo} (no network)"],
                f"run once on a machine with the internet (the files land in {hf_cache_dir()}; "
                f"set HF_HOME or HF_HUB_CACHE to use another cache), or copy {repo}'s files "
                "into that cache"))
        with hub_offline(not online):
            return oc.create_model(HF_HUB_PREFIX + repo, cache_dir=str(hf_cache_dir()),
                                   weights_only=True)

    def _load_tag(self, oc, arch: str, tag: str):
        if tag not in oc.list_pretrained_tags_by_model(arch):
            raise SpecError(
                f"{tag!r} is neither a file nor a pretrained tag of {arch}; tags: "
                f"{', '.join(oc.list_pretrained_tags_by_model(arch)) or 'none'}"
            )
        hub, where = self._hub_location(arch, tag)
        cached = hf_cached_file(hub, HUB_FILES) if hub else None
        online = hub_reachable()
        if not cached and not online:
            raise WeightsNotFoundError(
                missing_weights_message(
                    f"open_clip {arch}@{tag}",
                    [where, "the pretrained tag's download URL (no network)"],
                    f"run once on a machine with the internet (the files land in {hf_cache_dir()}; "
                    "set HF_HOME or HF_HUB_CACHE to use another cache), or download "
                    f"{hub or 'the checkpoint'} and pass its path: open_clip:{arch}@/path/to/"
                    "open_clip_model.safetensors",
                )
            )
        note = quick_gelu_note(oc, arch, tag)
        with hub_offline(not online):
            model = oc.create_model(arch, pretrained=tag, force_quick_gelu=bool(note),
                                    cache_dir=str(hf_cache_dir()), weights_only=True)
        return model, (note,) if note else ()


register_backend(OpenClipBackend())
