"""One factory for every model kadr runs: ``load_model("BACKEND:NAME[@WEIGHTS]")``.

Backends register themselves by name (like open_clip's config registry);
callers never branch on backends. A backend knows how to list its models,
where their weights would be, and how to build one.
"""

from __future__ import annotations

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
