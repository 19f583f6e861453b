"""The Ray engine: the runner's per-batch functions as Ray Data ``map_batches`` actor pools.

Each actor builds the job once (one model load per actor) from a picklable
factory, then for every batch of photo references runs the very functions
the local engine runs (:func:`~kadr.core.runner.load_refs` in decode threads,
:func:`~kadr.core.runner.apply_batch`). Rows travel back pickled, so times,
vectors and statuses arrive exactly as computed; the driver writes the result
store, which keeps resume and atomic shards identical across engines.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from kadr.core.collection import PhotoRef


def model_settings() -> dict[str, str]:
    """The driver's settings that decide how models compute (``kadr --precision``,
    ``KADR_DEVICE``), for each actor to take before it builds its models: a cluster
    started earlier, or elsewhere, does not see the driver's environment."""
    from kadr.core.models.device import DEVICE_ENV
    from kadr.core.models.spec import PRECISION_ENV

    return {name: os.environ.get(name, "auto") for name in (PRECISION_ENV, DEVICE_ENV)}


class _JobActor:
    def __init__(self, job_factory: Callable, workers: int, max_pixels: int,
                 time_pattern: str | None, extra_columns: bool, settings: dict[str, str]):
        from kadr.core.runner import load_refs

        os.environ.update(settings)  # before any model is built: the driver's precision
        self.job = job_factory()
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.load = functools.partial(load_refs, job=self.job, max_pixels=max_pixels,
                                      time_pattern=time_pattern, extra_columns=extra_columns)

    def __call__(self, batch: dict) -> dict:
        from kadr.core.runner import apply_batch, load_tasks

        refs: list[PhotoRef] = [pickle.loads(b) for b in batch["ref"]]  # noqa: S301 - kadr's own
        # A clip's frames are decoded a run at a time here too (one open and seek per run).
        loaded = [one for task in self.pool.map(self.load, load_tasks(refs)) for one in task]
        rows = apply_batch(self.job, [r for r, _ in loaded], [x for _, x in loaded])
        return {"row": [pickle.dumps(r) for r in rows]}


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Each actor takes the driver's model settings itself (model_settings), run by run.
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def run_batches_on_ray(refs: Iterable[PhotoRef], job_factory: Callable, batch_size: int, engine,
                       workers: int, max_pixels: int, time_pattern: str | None,
                       extra_columns: bool) -> Iterator[list[dict]]:
    """Yield lists of finished rows as the actor pool produces them.

    The references go into Ray's object store as Arrow blocks of
    ``engine.block_rows`` photos, built one at a time, so the driver's memory stays
    bounded however large the collection; then one dataset over all blocks
    runs on one actor pool (one model load per actor for the whole run).
    """
    import pyarrow as pa
    import ray
    import ray.data

    init_ray(engine.ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    blocks = []
    for chunk in _chunks(refs, max(1, engine.block_rows or 2 * batch_size)):
        # Whole references (a clip's frame, a listing failure, manifest extras), pickled.
        blocks.append(ray.put(pa.table({"ref": pa.array([pickle.dumps(r) for r in chunk],
                                                        pa.binary())})))
    if not blocks:
        return
    ds = ray.data.from_arrow_refs(blocks).map_batches(
        _JobActor,
        fn_constructor_kwargs={"job_factory": job_factory, "workers": workers,
                               "max_pixels": max_pixels, "time_pattern": time_pattern,
                               "extra_columns": extra_columns,
                               "settings": model_settings()},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=max(1, engine.actors)),
        num_cpus=engine.cpus_per_actor,
        num_gpus=engine.gpus_per_actor or None,
    )
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield [pickle.loads(b) for b in batch["row"]]


def _chunks(refs: Iterable[PhotoRef], size: int) -> Iterator[list[PhotoRef]]:
    chunk: list[PhotoRef] = []
    for ref in refs:
        chunk.append(ref)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
