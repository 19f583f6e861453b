"""Where models run: the first GPU when torch sees one, else the CPU; ``KADR_DEVICE`` overrides.

One setting for every backend, read when a model loads, so that a Ray actor
given a GPU (``--gpus-per-actor 1``) runs its models there without any flag,
and ``KADR_DEVICE=cpu`` keeps everything on the CPU on a machine with GPUs.
"""

from __future__ import annotations

import os

from kadr.core.lazy import torch
from kadr.core.models.spec import SpecError

DEVICE_ENV = "KADR_DEVICE"


def torch_device() -> torch.device:
    """The device named by ``KADR_DEVICE`` (auto, cpu, cuda, cuda:N, mps); auto by default."""
    want = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if want == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(want)
    except RuntimeError as e:
        raise SpecError(f"{DEVICE_ENV}={want!r} is not a device: auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise SpecError(f"{DEVICE_ENV}={want} but torch sees no GPU (torch {torch.__version__}, "
                            f"{build}); unset it or use {DEVICE_ENV}=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpecError(f"{DEVICE_ENV}={want} but only {torch.cuda.device_count()} GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SpecError(f"{DEVICE_ENV}=mps but this torch has no MPS device")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's weights are: inputs are moved there before each call."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def onnx_providers() -> list[str]:
    """ONNX Runtime execution providers for :func:`torch_device`: CUDA when asked for and installed."""
    import onnxruntime as ort

    if torch_device().type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
