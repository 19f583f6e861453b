"""The local runner's scheduling: decoding and the model take turns on the CPU."""

import threading
import time

from kadr.core.collection import PhotoCollection
from kadr.core.runner import Job, run_job
from kadr.core.store import ShardStore, read_shards
from tests.helpers import TINY_CLIP, jpeg_bytes


def _timed_job(decode_between_batches: bool) -> tuple[Job, list, list]:
    prepared, processed = [], []
    lock = threading.Lock()

    def prepare(photo):
        start = time.perf_counter()
        time.sleep(0.004)  # a decode's length, with the GIL released as PIL releases it
        with lock:
            prepared.append((start, time.perf_counter()))
        return photo.width

    def process(inputs, rows):
        start = time.perf_counter()
        time.sleep(0.03)  # the model on a batch
        processed.append((start, time.perf_counter()))
        return [{"w": w} for w in inputs]

    job = Job("timed", prepare, process, batch_size=4, empty_result={"w": None},
              decode_between_batches=decode_between_batches)
    return job, prepared, processed


def test_on_the_cpu_no_photo_is_decoded_while_a_batch_computes(tmp_path):
    # A model computing on the CPU uses every core; a decode thread beside it stalls all
    # of the model's threads at each of its operations, which cost more than the decode.
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        (folder / f"p{i:02d}.jpg").write_bytes(jpeg_bytes((32 + i, 24)))
    job, prepared, processed = _timed_job(decode_between_batches=True)
    with ShardStore(tmp_path / "out", {"t": 1}) as store:
        summary = run_job(PhotoCollection(folder), job, store, workers=2, progress=False)
    assert summary.ok == 40 and len(prepared) == 40 and len(processed) == 10
    overlaps = [(p, b) for p in prepared for b in processed if p[0] < b[1] and b[0] < p[1]]
    assert overlaps == [], f"{len(overlaps)} decodes ran while a batch computed"
    widths = sorted(read_shards(tmp_path / "out").column("w").to_pylist())
    assert widths == list(range(32, 72)), "every photo once, none lost at a turn"


def test_jobs_decode_between_batches_only_when_their_models_run_on_the_cpu(monkeypatch):
    import torch

    from kadr.core.models import load_model
    from kadr.embed import image_embedding_job

    model = load_model(TINY_CLIP)
    assert image_embedding_job(model).decode_between_batches is True
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    assert image_embedding_job(model).decode_between_batches is False


def test_a_clips_frames_are_read_in_runs_and_photos_one_at_a_time():
    from kadr.core.collection import PhotoRef
    from kadr.core.runner import FRAME_RUN, load_tasks
    from kadr.core.video import VideoFrame

    def frame(clip: str, i: int) -> PhotoRef:
        return PhotoRef(f"{clip}/frame{i:06d}.jpg", clip, "cam",
                        frame=VideoFrame(clip, i, float(i), None, "none", "video/mp4"))

    refs = ([frame("a.mp4", i) for i in range(FRAME_RUN * 2 + 5)]
            + [PhotoRef("p.jpg", "p.jpg", "cam")] + [frame("b.mp4", i) for i in range(3)])
    tasks = list(load_tasks(refs))
    assert [len(t) for t in tasks] == [FRAME_RUN, FRAME_RUN, 5, 1, 3]
    assert [r for t in tasks for r in t] == refs, "every frame once, in order"
