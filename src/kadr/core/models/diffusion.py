"""Diffusion pipelines: ``diffusers:ID_OR_FOLDER[@random]``, with any scheduler.

Models, schedulers and pipelines stay separate layers, as in diffusers: the
backend builds the components (UNet, VAE, text encoder, tokenizer), any
scheduler from :data:`SCHEDULERS` plugs in, and :class:`Painter` offers the
three operations kadr needs (inpaint, img2img-style refine, text-to-image).

Real checkpoints load through ``AutoPipelineForInpainting`` (SDXL inpaint,
SD 1.5/2 inpaint, and any pipeline AutoPipeline knows). ``@random`` builds
``kadr/tiny-sd`` (tests) or the SD-1.5 inpainting architecture (benchmarks:
the real compute cost) at seeded random weights, offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from kadr.core.lazy import inference_mode, torch
from kadr.core.models.device import torch_device, torch_dtype
from kadr.core.models.factory import KnownModel, register_backend
from kadr.core.models.spec import ModelSpec, SpecError
from kadr.core.models.weights import hf_cache_dir, hf_source, hub_known

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "lcm": "LCMScheduler",
}
RANDOM_ARCHS = {
    # name: (unet blocks, layers per block, cross-attention dim, text layers/width/heads, vae blocks)
    "kadr/tiny-sd": ((32, 64), 1, 32, (2, 32, 2), (32, 64), 64),
    "stable-diffusion-v1-5/stable-diffusion-inpainting": (
        (320, 640, 1280, 1280), 2, 768, (12, 768, 12), (128, 256, 512, 512), 512),
}


def _random_components(spec: ModelSpec) -> tuple[dict, int]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from kadr.core.models.tokenizers import offline_clip_tokenizer

    if spec.name not in RANDOM_ARCHS:
        raise SpecError(f"diffusers: @random is available for {', '.join(RANDOM_ARCHS)}")
    blocks, layers, cross, (t_layers, t_width, t_heads), vae_blocks, res = RANDOM_ARCHS[spec.name]
    torch.manual_seed(spec.seed())
    n = len(blocks)
    unet = UNet2DConditionModel(
        sample_size=res // 2 ** (len(vae_blocks) - 1), in_channels=9, out_channels=4, layers_per_block=layers,
        block_out_channels=blocks, cross_attention_dim=cross,
        attention_head_dim=8 if cross > 64 else 2,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        norm_num_groups=32 if blocks[0] >= 32 else blocks[0])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_blocks,
        down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
        layers_per_block=1 if len(vae_blocks) < 4 else 2, sample_size=res,
        norm_num_groups=32 if vae_blocks[0] >= 32 else vae_blocks[0])
    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=t_width, intermediate_size=t_width * 4, num_hidden_layers=t_layers,
        num_attention_heads=t_heads, projection_dim=cross, vocab_size=49408,
        max_position_embeddings=77))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text.eval(),
                tokenizer=offline_clip_tokenizer(), scheduler=scheduler), res


@dataclass
class Painter:
    """Inpainting (and refine/generate built on it) with one set of components."""

    spec: ModelSpec
    pipe: object
    resolution: int

    def __post_init__(self):
        device = torch_device()
        self.pipe.to(device, torch_dtype(device, DiffusersBackend.family))

    def set_scheduler(self, name: str) -> None:
        import diffusers

        if name not in SCHEDULERS:
            raise SpecError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
        cls = getattr(diffusers, SCHEDULERS[name])
        self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config)

    def model_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The model's native resolution for a photo: long side = resolution, multiples of 8."""
        w, h = size
        r = self.resolution / max(w, h)
        return max(8, round(w * r / 8) * 8), max(8, round(h * r / 8) * 8)

    @inference_mode
    def inpaint(self, image: Image.Image, mask: Image.Image, prompt: str, negative: str = "",
                steps: int = 25, strength: float = 1.0, guidance: float = 7.5, seed: int = 0
                ) -> Image.Image:
        """Edit ``image`` inside ``mask`` (L, white = change) at the model's resolution;
        returns the edited image at the model's resolution."""
        w, h = self.model_size(image.size)
        # A low strength runs only strength x steps denoising steps; keep at least one.
        steps = max(steps, int(np.ceil(1 / max(strength, 1e-3))))
        gen = torch.Generator("cpu").manual_seed(seed)  # the same noise on any device
        out = self.pipe(prompt=prompt, negative_prompt=negative or None,
                        image=image.resize((w, h), Image.Resampling.LANCZOS),
                        mask_image=mask.resize((w, h), Image.Resampling.BILINEAR),
                        width=w, height=h, num_inference_steps=steps, strength=strength,
                        guidance_scale=guidance, generator=gen, output_type="pil")
        return out.images[0]

    def generate(self, prompt: str, negative: str = "", size: tuple[int, int] | None = None,
                 steps: int = 25, guidance: float = 7.5, seed: int = 0) -> Image.Image:
        """Text to image: an inpaint of a blank canvas with the whole frame masked."""
        w, h = size or (self.resolution, self.resolution)
        canvas = Image.new("RGB", (w, h), (127, 127, 127))
        mask = Image.new("L", (w, h), 255)
        return self.inpaint(canvas, mask, prompt, negative, steps, 1.0, guidance, seed)


def native_resolution(pipe) -> int:
    """The side the pipeline draws by default: its UNet's sample size in pixels."""
    sample = pipe.unet.config.sample_size
    sample = sample if isinstance(sample, int) else max(sample)
    return int(sample) * int(pipe.vae_scale_factor)


class DiffusersBackend:
    name = "diffusers"
    kind = "diffusion"
    family: str | None = "conv"
    help = "diffusers inpainting pipelines (SDXL/SD inpaint, AutoPipeline); @random for tests"

    def known(self) -> list[KnownModel]:
        out = []
        for name in ("diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                     "stable-diffusion-v1-5/stable-diffusion-inpainting"):
            out.append(hub_known("diffusers", self.kind, name, ("model_index.json",)))
        for name in RANDOM_ARCHS:
            out.append(KnownModel(f"diffusers:{name}@random", self.kind,
                                  "random weights (tests/benchmarks)", "built from config", True))
        return out

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> Painter:
        from diffusers import StableDiffusionInpaintPipeline

        if spec.is_random:
            components, res = _random_components(spec)
            pipe = StableDiffusionInpaintPipeline(**components, safety_checker=None,
                                                  feature_extractor=None,
                                                  requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            return Painter(spec, pipe, res)
        from diffusers import AutoPipelineForInpainting

        source, offline = hf_source("diffusers", spec, ("model_index.json",))
        # Half precision on a GPU, as the checkpoints are published; on the CPU what `auto`
        # measured (kadr.core.models.precision).
        dtype = torch_dtype(family=self.family)
        pipe = AutoPipelineForInpainting.from_pretrained(
            source, local_files_only=offline, torch_dtype=dtype, cache_dir=str(hf_cache_dir()),
            use_safetensors=None if trust_checkpoint else True)
        pipe.set_progress_bar_config(disable=True)
        return Painter(spec, pipe, native_resolution(pipe))


def paste_inside(original: Image.Image, edited: Image.Image, soft_mask: np.ndarray) -> Image.Image:
    """Blend the edit into the photo at its own size; where the mask is 0, pixels are the input's."""
    edited = edited.resize(original.size, Image.Resampling.LANCZOS)
    a = soft_mask.astype(np.float32)[..., None]
    o = np.asarray(original, dtype=np.float32)
    e = np.asarray(edited, dtype=np.float32)
    out = np.where(a > 0, o * (1 - a) + e * a, o)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


register_backend(DiffusersBackend())
