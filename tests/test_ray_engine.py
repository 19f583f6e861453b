"""Ray engine against the local engine: same photos, ids, statuses and numbers."""

import contextlib
import dataclasses
import importlib
import shutil

import numpy as np
import pandas as pd
import pytest

from kadr.core.runner import EngineOptions
from kadr.core.store import read_shards
from kadr.embed import embed_photos
from tests.helpers import TINY_CLIP, make_broken_corpus, need_module, shared_path

pytestmark = pytest.mark.ray
ray = need_module("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


RAY = EngineOptions("ray", actors=2, cpus_per_actor=1, block_rows=16)  # several blocks per run


@contextlib.contextmanager
def no_models_here():
    """The Ray driver must not load a model: every loader in this process fails meanwhile
    (the actors are other processes, so theirs work)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the Ray driver loaded a model")

    modules = ("kadr.core.models.factory", "kadr.core.models", "kadr.embed",
               "kadr.traps.pipeline", "kadr.hotels.caption", "kadr.hotels.restyle")
    for module in modules:  # imported first, so none binds the refusing loader for good
        importlib.import_module(module)
    with pytest.MonkeyPatch.context() as mp:
        for module in modules:
            mp.setattr(f"{module}.load_model", refuse)
        yield


def by_key(folder) -> pd.DataFrame:
    return read_shards(folder).to_pandas().set_index("key").sort_index()


def test_embed_ray_equals_local_and_resumes(tmp_path):
    photos = tmp_path / "photos"
    for p in sorted(shared_path("data", "interiors", "kitchen").glob("*"))[:24]:
        (photos / "kitchen").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, photos / "kitchen" / p.name)
    # A Ray run that stopped part-way: it saw only the kitchen photos.
    with no_models_here():
        partial = embed_photos(str(photos), str(tmp_path / "ray"), TINY_CLIP, batch_size=8,
                               progress=False, engine=RAY).summary
    assert partial.ok == 24
    make_broken_corpus(photos / "broken")
    local = embed_photos(str(photos), str(tmp_path / "local"), TINY_CLIP, batch_size=8,
                         progress=False).summary
    with no_models_here():
        on_ray = embed_photos(str(photos), str(tmp_path / "ray"), TINY_CLIP, batch_size=8,
                              progress=False, engine=RAY).summary
    assert on_ray.already_done == 24 and on_ray.processed == local.total - 24, \
        "the resumed run does only what the first left"
    a, b = by_key(tmp_path / "local"), by_key(tmp_path / "ray")
    assert list(a.index) == list(b.index), "no photo lost or duplicated"
    assert (a["status"] == b["status"]).all() and (a["photo_id"].fillna("") == b["photo_id"]
                                                   .fillna("")).all()
    for k in a.index[a["status"] == "ok"]:
        np.testing.assert_allclose(a.at[k, "embedding"], b.at[k, "embedding"], atol=1e-5)
    again = embed_photos(str(photos), str(tmp_path / "ray"), TINY_CLIP, progress=False,
                         engine=RAY).summary
    assert again.processed == 0 and again.already_done == len(a)


def traps_local_and_on_ray(photos, tmp_path, classifier) -> tuple[pd.DataFrame, ...]:
    """``traps run`` with YOLOX on the local engine and on Ray (no model in the driver):
    both runs' registrations and per-photo tables (by key)."""
    from kadr.traps.pipeline import TrapSettings, run_traps

    settings = TrapSettings(detector=f"yolox:{shared_path('models', 'yolox_nano.onnx')}",
                            classifier=classifier, progress=False, batch_size=4)
    local = run_traps(str(photos), str(tmp_path / "local"), settings).frame()
    with no_models_here():
        on_ray = run_traps(str(photos), str(tmp_path / "ray"),
                           dataclasses.replace(settings, engine=RAY)).frame()
    tables = [pd.read_parquet(tmp_path / run / "photos.parquet").set_index("key").sort_index()
              for run in ("local", "ray")]
    return local, on_ray, *tables


def test_traps_ray_equals_local(tmp_path):

    src = shared_path("data", "camera_traps", "cameratraps_repo", "api", "synchronous",
                      "sample_input")
    cam = tmp_path / "photos" / "D04"
    cam.mkdir(parents=True)
    for p in sorted(src.rglob("*.JPG")):
        shutil.copy(p, cam / p.name)
    regs_local, regs_ray, a, b = traps_local_and_on_ray(tmp_path / "photos", tmp_path,
                                                        classifier=TINY_CLIP)
    assert list(a["class"]) == list(b["class"]) and list(a["n_animals"]) == list(b["n_animals"])
    np.testing.assert_allclose(a.filter(regex="^p_").to_numpy(float),
                               b.filter(regex="^p_").to_numpy(float), atol=1e-3)
    pd.testing.assert_frame_equal(regs_local.drop(columns=["eventID", "best_key"]),
                                  regs_ray.drop(columns=["eventID", "best_key"]))


def test_one_model_load_per_actor_for_the_whole_run(tmp_path):
    from kadr.core.collection import PhotoCollection
    from kadr.core.runner import run_job
    from kadr.core.store import ShardStore
    from kadr.embed import make_embedding_job
    from tests.helpers import jpeg_bytes

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):  # 3 blocks of at most 16 references
        (photos / f"p{i:02d}.jpg").write_bytes(jpeg_bytes(seed=i))
    loads = tmp_path / "loads.txt"

    def factory():  # runs inside each Ray actor
        with open(loads, "a") as f:
            f.write("load\n")
        return make_embedding_job(TINY_CLIP, 8, False)

    job = make_embedding_job(TINY_CLIP, 8, False)
    with ShardStore(tmp_path / "out", {"t": 1}) as store:
        summary = run_job(PhotoCollection(photos), job, store, engine=RAY, job_factory=factory,
                          progress=False)
    assert summary.ok == 40
    assert 1 <= len(loads.read_text().splitlines()) <= RAY.actors


def test_clips_on_ray_equal_local(tmp_path):
    """Video clips run on the Ray actors like photos: the same frames, statuses and counts."""
    from tests.test_video import d04, make_clip

    cam = tmp_path / "cards" / "D04"
    make_clip(cam / "a.mp4", [d04("0020"), d04("0021")])
    (cam / "cut.mp4").write_bytes((cam / "a.mp4").read_bytes()[:2000])
    local, on_ray, a, b = traps_local_and_on_ray(tmp_path / "cards", tmp_path, classifier=None)
    assert list(a.index) == list(b.index) and len(a) == 4, "three frames and the broken clip"
    assert list(a["status"]) == list(b["status"])
    assert list(a["n_animals"].fillna(-1)) == list(b["n_animals"].fillna(-1))
    assert list(a["frame_index"].fillna(-1)) == list(b["frame_index"].fillna(-1))
    pd.testing.assert_frame_equal(local.drop(columns=["eventID", "best_key"]),
                                  on_ray.drop(columns=["eventID", "best_key"]))


def test_actors_build_their_models_at_the_drivers_precision_and_device(tmp_path, monkeypatch):
    # The cluster here was started before this test chose fp32 (as a remote cluster never
    # sees the driver's settings): the actors must still compute as the driver says, or a
    # run on Ray mixes precisions with the fingerprint the driver wrote.
    from kadr.core.collection import PhotoCollection
    from kadr.core.runner import run_job
    from kadr.core.store import ShardStore
    from kadr.embed import make_embedding_job
    from tests.helpers import jpeg_bytes

    monkeypatch.setenv("KADR_PRECISION", "fp32")
    monkeypatch.setenv("KADR_DEVICE", "cpu")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"p{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    seen = tmp_path / "seen.txt"

    def factory():  # runs inside each Ray actor
        import os

        with open(seen, "a") as f:
            f.write(f"{os.environ.get('KADR_PRECISION')} {os.environ.get('KADR_DEVICE')}\n")
        return make_embedding_job(TINY_CLIP, 8, False)

    with ShardStore(tmp_path / "out", {"t": 1}) as store:
        run_job(PhotoCollection(photos), make_embedding_job(TINY_CLIP, 8, False), store,
                engine=RAY, job_factory=factory, progress=False)
    assert set(seen.read_text().splitlines()) == {"fp32 cpu"}
