"""Video clips: sampled frames a second through ``kadr traps run`` against a plain loop.

Clips: H.264 MP4s made from the real D04 frames (1280x720, 15 frames a second, a
keyframe every ``--gop`` seconds: 1 as many trail cameras write them, 10 as x264's
default does at 25 frames a second), ``--seconds`` long each.

- plain: PyAV decodes every frame of each clip in order, keeps one a second (and the
  last), and runs the same YOLOX-Nano on each kept frame, one at a time;
- kadr: ``traps run --video-fps 1`` with the same detector and no classifier (clips
  listed, frames decoded in runs with seeks in decode threads, the store, registrations
  and every export).

Rounds interleave the two and each keeps its best (the machine's speed drifts).

    python bench/video.py [--clips 6] [--seconds 20] [--rounds 3] [--gop 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
YOLOX = SHARED / "models" / "yolox_nano.onnx"
D04 = SHARED / "data" / "camera_traps" / "cameratraps_repo" / "api" / "synchronous" / "sample_input"


def make_clips(folder: Path, n: int, seconds: int, fps: int = 15, size=(1280, 720),
               gop_s: float = 1.0) -> None:
    import av

    photos = sorted(D04.rglob("*.JPG"))
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(n):
        base = np.asarray(Image.open(photos[c % len(photos)]).convert("RGB").resize(size))
        with av.open(str(folder / f"clip{c:02d}.mp4"), "w") as out:
            out.metadata["creation_time"] = f"2024-06-{c + 1:02d}T10:00:00Z"
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            stream.options = {"g": str(round(gop_s * fps)), "preset": "veryfast"}
            for i in range(seconds * fps):
                frame = np.roll(base, 4 * i, axis=1)  # the scene pans: every frame differs
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def plain_loop(folder: Path, detector) -> tuple[float, int]:
    """Decode everything, keep a frame a second and the last, detect each: frames/s."""
    import av

    from kadr.core.decode import DecodedPhoto

    n = 0
    start = time.perf_counter()
    for clip in sorted(folder.glob("*.mp4")):
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            fps, last = float(stream.average_rate), stream.frames - 1
            for i, frame in enumerate(container.decode(stream)):
                if i % round(fps) and i != last:
                    continue
                img = frame.to_image()
                detector.detect([detector.prepare(DecodedPhoto(img, img.width, img.height,
                                                               "VIDEO", "RGB", None))])
                n += 1
    return n / (time.perf_counter() - start), n


def kadr_run(folder: Path, out: Path) -> tuple[float, int]:
    from kadr.traps.pipeline import TrapSettings, run_traps

    settings = TrapSettings(detector=f"yolox:{YOLOX}", classifier=None, progress=False,
                            video_fps=1.0)
    start = time.perf_counter()
    summary = run_traps(str(folder.parent), str(out), settings).summary
    return summary.ok / (time.perf_counter() - start), summary.ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gop", type=float, default=1.0, help="seconds between keyframes")
    args = ap.parse_args()

    from kadr.core.models import load_model

    detector = load_model(f"yolox:{YOLOX}", kind="detector")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "cards" / "cam1"
        make_clips(folder, args.clips, args.seconds, gop_s=args.gop)
        plain = fast = 0.0
        for i in range(args.rounds):
            rate, n_plain = plain_loop(folder, detector)
            plain = max(plain, rate)
            rate, n_kadr = kadr_run(folder, tmp / f"out-{i}")
            fast = max(fast, rate)
            print(f"round {i + 1}: plain {plain:.1f}, kadr {fast:.1f} frames/s", flush=True)
    print(json.dumps({"clips": args.clips, "seconds_each": args.seconds, "keyframe_every_s": args.gop,
                      "sampled_frames": {"plain": n_plain, "kadr": n_kadr},
                      "plain_frames_per_s": round(plain, 1), "kadr_frames_per_s": round(fast, 1),
                      "kadr_vs_plain": round(fast / plain, 2)}, indent=2))


if __name__ == "__main__":
    main()
