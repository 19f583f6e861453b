"""Finding and loading weights safely, and failing fast and clearly when they are absent."""

from __future__ import annotations

import os
import pickle
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path


class WeightsNotFoundError(RuntimeError):
    """Weights are not on this machine and cannot be downloaded now."""


class UnsafeCheckpointError(RuntimeError):
    """A pickled checkpoint that would run arbitrary code while loading."""


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return Path(home) / "hub"


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True when downloads may be attempted: not offline by setting, and the hub answers.

    The settings are read on every call; the network is probed once per
    process and host with a short timeout, so that a machine without the
    internet gets its error in seconds, never a hang.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("KADR_OFFLINE") == "1":
        return False
    return _host_answers(host, timeout)


@lru_cache(maxsize=8)
def _host_answers(host: str, timeout: float) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def hub_offline(active: bool = True) -> Iterator[None]:
    """huggingface_hub answers from its cache only while this is active (as with HF_HUB_OFFLINE=1).

    Used around an upstream library's own loader (open_clip's tag download) when
    the hub cannot be reached, so that a cached model loads at once instead of
    waiting on the network.
    """
    if not active:
        yield
        return
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def hub_repo_folder(repo_id: str) -> Path:
    """Where the Hugging Face cache keeps a repository: ``models--ORG--NAME``."""
    return hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"


def hf_cached_file(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    """Path of the first of ``filenames`` already in the Hugging Face cache, else None.

    Read from the cache's documented layout (``models--ORG--NAME/refs/main`` names a
    snapshot folder holding the files) rather than through huggingface_hub, whose import
    costs more than listing every model kadr knows.
    """
    parts = repo_id.strip("/").split("/")
    if len(parts) > 2:  # "org/repo/file.bin": a hub entry that names its file
        repo_id, filenames = "/".join(parts[:2]), ("/".join(parts[2:]),)
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
        return None  # not a repo id: nothing can be cached under it
    root = hub_repo_folder(repo_id)
    try:
        commit = (root / "refs" / "main").read_text().strip()
    except OSError:
        return None
    for name in filenames:
        path = root / "snapshots" / commit / name
        if path.exists():
            return str(path)
    return None


def missing_weights_message(what: str, looked: list[str], how: str) -> str:
    places = "\n".join(f"  - {p}" for p in looked)
    return (
        f"weights for {what} are not available on this machine and the model hub cannot be "
        f"reached.\nLooked in:\n{places}\nTo provide them: {how}\n"
        "To try a command end to end without weights, use a spec that `kadr models` lists with "
        "@random (same architecture, seeded random weights)."
    )


def hf_source(backend: str, spec, files: tuple[str, ...]) -> tuple[str, bool]:
    """Where a Hugging Face model comes from: (id or folder, load offline?).

    ``spec.weights`` (a folder) wins over ``spec.name``. Fails fast with
    :class:`WeightsNotFoundError` when the model is neither a folder, nor in
    the cache, nor downloadable now.
    """
    source = spec.weights or spec.name
    local = os.path.isdir(source)
    if not local and not hf_cached_file(source, files) and not hub_reachable():
        raise WeightsNotFoundError(missing_weights_message(
            f"{backend}:{source}",
            [str(hub_repo_folder(source)), "a local folder"],
            f"huggingface-cli download {source} on a machine with the internet and copy the "
            f"cache, or pass a local folder: {backend}:/path/to/model"))
    return source, local or not hub_reachable()


def hub_known(backend: str, kind: str, name: str, files: tuple[str, ...], note: str = "pretrained"):
    """A :class:`KnownModel` row for a hub model: where it would be cached, whether it is."""
    from kadr.core.models.factory import KnownModel

    return KnownModel(f"{backend}:{name}", kind, note, str(hub_repo_folder(name)),
                      bool(hf_cached_file(name, files)))


def load_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict:
    """A checkpoint's tensors: safetensors, or torch.load(weights_only=True).

    A checkpoint that needs arbitrary code to unpickle is refused unless the
    user says they trust it (``--trust-checkpoint``).
    """
    import torch

    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if not trust_pickle:
                raise UnsafeCheckpointError(
                    f"{path} is a pickled checkpoint that needs arbitrary code to load "
                    f"({str(e).splitlines()[0]}). Loading it could run anything it contains. "
                    "Convert it to safetensors, or pass --trust-checkpoint if you trust its source."
                ) from e
            state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict):
        for key in ("state_dict", "model", "module"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
