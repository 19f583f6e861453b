"""One factory for every model kadr runs: ``load_model("BACKEND:NAME[@WEIGHTS]")``.

Backends register themselves by name (like open_clip's config registry);
callers never branch on backends. A backend knows how to list its models,
where their weights would be, and how to build one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from kadr.core.models.spec import ModelSpec, SpecError


@dataclass
class KnownModel:
    spec: str
    kind: str  # image-text, detector, ...
    note: str  # what it is
    location: str  # where its weights are or would be looked for
    present: bool  # weights available here without a download


class Backend(Protocol):
    name: str
    kind: str
    family: str | None  # what `--precision auto` measures (precision.FAMILIES); None: fp32
    help: str

    def known(self) -> list[KnownModel]: ...

    def load(self, spec: ModelSpec, trust_checkpoint: bool = False) -> Any: ...


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    return backend


def backends() -> dict[str, Backend]:
    _ensure_builtin()
    return dict(_BACKENDS)


def _ensure_builtin() -> None:
    # Imported lazily so that `import kadr` stays light; each module registers itself
    # (importing one that is already loaded costs nothing).
    from kadr.core.models import (  # noqa: F401
        captioners,
        detectors,
        diffusion,
        hf_backend,
        openclip_backend,
        segmenters,
        speciesnet_backend,
    )


def load_model(spec: str | ModelSpec, *, kind: str | None = None, trust_checkpoint: bool = False):
    """Build the model a spec names. ``kind`` checks it is the sort of model the caller needs."""
    parsed = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    table = backends()
    backend = table.get(parsed.backend)
    if backend is None:
        raise SpecError(
            f"unknown model backend {parsed.backend!r} in {str(parsed)!r}; "
            f"known: {', '.join(sorted(table))} (see `kadr models`)"
        )
    if kind and backend.kind != kind:
        raise SpecError(f"{parsed} is a {backend.kind} model; a {kind} model is needed here")
    return backend.load(parsed, trust_checkpoint=trust_checkpoint)


def known_models() -> list[KnownModel]:
    return [m for b in backends().values() for m in b.known()]


def model_fingerprint(spec: str | ModelSpec | None) -> dict | None:
    """What identifies a model's numbers without loading it (a Ray driver never loads one).

    The spec names the architecture, weights and, through them, the preprocessing
    the model's own configuration states. The precision its weights run in here (what
    ``--precision`` resolves to on this machine's device and CPU) changes the numbers
    too. A local checkpoint or folder adds its size and modification time: a file
    replaced at the same path is another model.
    """
    if spec is None:
        return None
    parsed = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    backend = backends().get(parsed.backend)
    family = getattr(backend, "family", None)
    out: dict = {"spec": str(parsed), "precision": _precision_here(family)}
    for candidate in (parsed.weights, parsed.name):
        path = os.path.expanduser(candidate) if candidate else ""
        if path and os.path.exists(path):
            st = os.stat(path)
            out["file"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            break
    return out


def _precision_here(family: str | None) -> str:
    from kadr.core.models.precision import precision_setting, resolved_precision

    if family is None or precision_setting() != "auto":
        return resolved_precision(family, "cpu")  # as asked, or fp32: no device needed
    from kadr.core.models.device import torch_device

    return resolved_precision(family, torch_device().type)
