"""Where models run: the first GPU when torch sees one, else the CPU; ``KADR_DEVICE`` overrides.

One setting for every backend, read when a model loads, so that a Ray actor
given a GPU (``--gpus-per-actor 1``) runs its models there without any flag,
and ``KADR_DEVICE=cpu`` keeps everything on the CPU on a machine with GPUs.
"""

from __future__ import annotations

import os

from kadr.core.lazy import torch
from kadr.core.models.precision import resolved_precision
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


def torch_dtype(device: torch.device | None = None, family: str = "transformer") -> torch.dtype:
    """The weights' dtype for a model of ``family`` on ``device`` (see
    :mod:`kadr.core.models.precision`)."""
    device = device or torch_device()
    name = resolved_precision(family, device.type)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def place(module, family: str = "transformer"):
    """Move a model to the device and precision the settings name (in place; returned)."""
    device = torch_device()
    return module.to(device=device, dtype=torch_dtype(device, family))


def run_in(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A model whose caller feeds and reads float32 (an upstream package's own batch call)
    run with ``dtype`` weights: its floating inputs are cast to ``dtype`` on the way in and
    its floating outputs back to float32 on the way out (in place; returned)."""
    if dtype == torch.float32:
        return module
    module.to(dtype)

    def cast(value, to):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(to)
        if isinstance(value, tuple | list):
            return type(value)(cast(v, to) for v in value)
        return value

    module.register_forward_pre_hook(
        lambda _, args, kwargs: (cast(args, dtype), {k: cast(v, dtype) for k, v in kwargs.items()}),
        with_kwargs=True)
    module.register_forward_hook(lambda _, args, output: cast(output, torch.float32))
    return module


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a module's floating weights: inputs are cast to it before each call."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def inputs_for(module: torch.nn.Module, inputs):
    """A processor's output (a dict of tensors) on the module's device; floating tensors
    (pixels) in its dtype, integer ones (token ids, sizes) as they are."""
    device, dtype = module_device(module), module_dtype(module)
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            inputs[key] = value.to(device=device, dtype=dtype if value.is_floating_point()
                                   else value.dtype)
    return inputs


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's weights are: inputs are moved there before each call."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def computes_on_cpu(*models) -> bool:
    """Whether the given models (None for a model not used) all compute on the CPU: each
    one's ``device`` where it has one, else the device kadr places models on. No model:
    False (nothing heavy to take turns with)."""
    devices = [getattr(m, "device", None) or torch_device() for m in models if m is not None]
    return bool(devices) and all(torch.device(d).type == "cpu" for d in devices)


def onnx_providers() -> list[str]:
    """ONNX Runtime execution providers for :func:`torch_device`: CUDA when asked for and installed."""
    import onnxruntime as ort

    if torch_device().type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
