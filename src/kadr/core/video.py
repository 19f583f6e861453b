"""Video clips as media items: probing, frame sampling and seeking decode, through PyAV
(FFmpeg bundled in its wheel).

A clip is listed as the frames sampled from it (:func:`sampled_frames`: ``fps`` frames
a second, always the first and the last), each its own item keyed as MegaDetector's
video tools name extracted frames (``CLIP/frame000012.jpg``), so every frame goes
through the same decode, detector and species path as a photo, resumes by its own key
and lands in the MegaDetector JSON as Timelapse reads it. Frames of one clip are read
a run at a time (:func:`read_frames`): one open, a seek to the keyframe before the run,
then forward decoding; no clip is ever held in memory.

A clip's start comes from its container's metadata (``creation_time``, or Apple's
``com.apple.quicktime.creationdate``), taken as the camera's wall-clock time as EXIF
times are; each frame's time is the start plus its offset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from PIL import Image

from kadr.core.decode import DecodeError
from kadr.core.status import PhotoStatus

MEDIA_TYPES = {  # extension -> the IANA media type Camtrap DP's fileMediatype takes
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime",
    ".avi": "video/x-msvideo", ".mts": "video/mp2t", ".m2ts": "video/mp2t",
    ".ts": "video/mp2t", ".mkv": "video/x-matroska", ".webm": "video/webm",
    ".3gp": "video/3gpp", ".wmv": "video/x-ms-wmv", ".mpg": "video/mpeg", ".mpeg": "video/mpeg",
}
VIDEO_EXTENSIONS = frozenset(MEDIA_TYPES)
MAX_CLIP_SECONDS = 6 * 3600  # longer is not a trail camera's clip (a broken header)
MAX_SAMPLED_FRAMES = 3600  # per clip; beyond, frames are spread evenly over the clip
TIME_TAGS = (("creation_time", "creation_time"),
             ("com.apple.quicktime.creationdate", "quicktime_creationdate"))


def is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def media_type(path: str) -> str:
    return MEDIA_TYPES.get(os.path.splitext(path)[1].lower(), "video/mp4")


def frame_key(clip_key: str, index: int) -> str:
    """A sampled frame's key: the clip's key and the frame file name MegaDetector's
    video tools give an extracted frame."""
    return f"{clip_key}/frame{index:06d}.jpg"


@dataclass(frozen=True)
class ClipInfo:
    duration_s: float
    fps: float
    frames: int
    width: int
    height: int
    codec: str
    start: datetime | None  # the camera's wall-clock time at the first frame
    start_source: str  # which tag gave it, or "none"


@dataclass(frozen=True)
class VideoFrame:
    """One sampled frame of a clip, as a collection lists it."""

    clip_key: str
    index: int  # the frame number in the clip (0-based)
    offset_s: float  # seconds from the clip's first frame
    start: datetime | None
    start_source: str
    media_type: str


def _open(path: str):
    import av

    try:
        return av.open(path, metadata_errors="ignore")
    except FileNotFoundError as e:
        raise DecodeError(PhotoStatus.MISSING, f"file not found: {path}") from e
    except PermissionError as e:
        raise DecodeError(PhotoStatus.UNREADABLE, f"permission denied: {path}") from e
    except av.error.InvalidDataError as e:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size == 0:
            raise DecodeError(PhotoStatus.EMPTY_FILE, "file is empty (0 bytes)") from e
        raise DecodeError(PhotoStatus.TRUNCATED if _looks_like_video(path) else
                          PhotoStatus.NOT_AN_IMAGE,
                          f"FFmpeg cannot read the container ({e.strerror or e}): truncated "
                          "or not a video") from e
    except Exception as e:  # noqa: BLE001 - any container failure is a per-clip status
        raise DecodeError(PhotoStatus.DECODE_ERROR, f"{type(e).__name__}: {e}") from e


def _looks_like_video(path: str) -> bool:
    """A container signature at the start (MP4/MOV, AVI, Matroska, MPEG-TS)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free") or head[:4] == b"RIFF"
            or head[:4] == b"\x1aE\xdf\xa3" or head[:1] == b"\x47")


def _start_time(container) -> tuple[datetime | None, str]:
    stream = container.streams.video[0]
    for tags in (container.metadata, stream.metadata):
        for tag, source in TIME_TAGS:
            text = (tags or {}).get(tag)
            if not text:
                continue
            try:
                t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
            except ValueError:
                continue
            if t.year > 1970:  # 1904/1970 are the zero of an unset clock
                return t.replace(tzinfo=None), source
    return None, "none"


def probe_clip(path: str, max_pixels: int) -> ClipInfo:
    """A clip's length, rate, size, codec and start; a clear status when it has none."""
    with _open(path) as container:
        if not container.streams.video:
            raise DecodeError(PhotoStatus.NOT_AN_IMAGE, "no video stream in the container")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width * height > max_pixels:
            raise DecodeError(PhotoStatus.TOO_LARGE, f"{width}x{height} frames exceed the limit "
                                                     f"of {max_pixels:,} pixels")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        frames = int(stream.frames or 0) or (round(duration * fps) if fps else 0)
        if fps <= 0 or frames <= 0 or width <= 0:
            raise DecodeError(PhotoStatus.DECODE_ERROR, "the video stream states no frame rate, "
                                                        "frames or size")
        if duration > MAX_CLIP_SECONDS:
            raise DecodeError(PhotoStatus.TOO_LARGE, f"{duration:,.0f} s is not a trail camera's "
                                                     "clip (a broken header?)")
        start, source = _start_time(container)
        return ClipInfo(duration, fps, frames, width, height, ctx.name, start, source)


def sampled_frames(info: ClipInfo, fps: float) -> list[tuple[int, float]]:
    """(frame number, offset in seconds) of the frames to look at: ``fps`` a second from
    the first frame, and always the last (where an animal leaving is)."""
    last = info.frames - 1
    step = max(1.0, info.fps / fps) if fps > 0 else float(info.frames)
    count = min(MAX_SAMPLED_FRAMES, math.floor(last / step) + 1)
    if count < math.floor(last / step) + 1:  # too many: spread evenly instead
        step = last / max(1, count - 1)
    indices = sorted({min(last, round(i * step)) for i in range(count)} | {0, last})
    return [(i, i / info.fps) for i in indices]


def clip_frames(clip_key: str, path: str, fps: float, max_pixels: int) -> list[VideoFrame]:
    """The frames a collection lists for a clip (raises DecodeError for a clip that
    cannot be read at all: it is then one item with that status)."""
    info = probe_clip(path, max_pixels)
    kind = media_type(path)
    return [VideoFrame(clip_key, i, round(t, 6), info.start, info.start_source, kind)
            for i, t in sampled_frames(info, fps)]


def read_frames(path: str, frames: list[VideoFrame]) -> Iterator[tuple[VideoFrame, Image.Image |
                                                                        DecodeError]]:
    """The images of ``frames`` (one clip's, in order), decoded forward from a seek to
    the keyframe before the first: each frame or the DecodeError that stands for it."""
    import av

    try:
        container = _open(path)
    except DecodeError as e:
        for f in frames:
            yield f, e
        return
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        base = stream.time_base
        fps = float(stream.average_rate or stream.guessed_rate or 1)
        first_pts = stream.start_time or 0
        pending = list(frames)
        try:
            def pts_of(index: int) -> int:  # rounded: a truncated pts is the frame before
                return first_pts + round(index / fps / base)

            if pending[0].index > 0:
                container.seek(pts_of(pending[0].index), stream=stream, backward=True,
                               any_frame=False)
            last_key, gop = None, None  # the keyframe interval, learnt as it is decoded
            sought = pending[0].index  # one seek per frame wanted: decoding always ends
            for decoded in container.decode(stream):
                if decoded.pts is None:
                    continue
                at = round(float((decoded.pts - first_pts) * base) * fps)  # its frame number
                if decoded.key_frame:
                    if last_key is not None and at > last_key:
                        gop = at - last_key if gop is None else min(gop, at - last_key)
                    last_key = at
                while pending and pending[0].index <= at:
                    want = pending.pop(0)
                    yield want, decoded.to_image()
                if not pending:
                    return
                # A keyframe lies after this one and up to the next frame wanted: seek to
                # it instead of decoding every frame up to there.
                if (gop is not None and pending[0].index >= last_key + gop
                        and sought != pending[0].index):
                    sought = pending[0].index
                    container.seek(pts_of(sought), stream=stream, backward=True, any_frame=False)
        except (av.error.FFmpegError, ValueError) as e:
            reason = f"the clip breaks off before this frame ({type(e).__name__}: {e})"
            for f in pending:
                yield f, DecodeError(PhotoStatus.TRUNCATED, reason)
            return
        for f in pending:
            yield f, DecodeError(PhotoStatus.TRUNCATED, f"no frame {f.index} ({f.index / fps:.1f} "
                                                        "s): the clip ends early (truncated?)")


def frame_image(path: str, index: int) -> Image.Image:
    """One frame of a clip (for thumbnails and the review page); DecodeError if absent."""
    # read_frames seeks by frame number and knows the clip's rate: no probe (an open) first.
    frame = VideoFrame("", index, 0.0, None, "none", media_type(path))
    ((_, image),) = read_frames(path, [frame])
    if isinstance(image, DecodeError):
        raise image
    return image.convert("RGB")
