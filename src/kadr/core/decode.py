"""The one place where photo bytes become pixels.

Every model in kadr sees photos through :func:`decode_photo`: it never raises
on bad input, applies EXIF orientation, normalises odd modes (CMYK, 16-bit,
palette, alpha) to 8-bit RGB, refuses decompression bombs, and can decode a
JPEG at a reduced scale (libjpeg DCT scaling) when the model needs far fewer
pixels than the file holds.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from kadr.core.status import PhotoStatus

try:  # HEIC/HEIF support is optional at import time, present once installed.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
    pass

# Pillow's own bomb check is global state; kadr checks the pixel count itself
# so that the limit is per call and a refusal is a status, not an exception.
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_PIXELS = 200_000_000

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"}
)


class DecodeError(Exception):
    """A photo could not be decoded; ``status`` is a short machine-readable code."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class DecodedPhoto:
    image: Image.Image  # 8-bit RGB, upright
    width: int  # original size, upright
    height: int
    format: str
    mode: str  # original colour mode
    exif: Image.Exif | None


def read_bytes(path: str) -> bytes:
    """Read a local file, or a URL through fsspec/urllib; raise DecodeError on failure."""
    try:
        if "://" in path:
            return _read_url(path)
        with open(path, "rb") as f:
            return f.read()
    except PermissionError as e:
        raise DecodeError(PhotoStatus.UNREADABLE, f"permission denied: {e.filename or path}") from e
    except FileNotFoundError as e:
        raise DecodeError(PhotoStatus.MISSING, f"file not found: {path}") from e
    except IsADirectoryError as e:
        raise DecodeError(PhotoStatus.UNREADABLE, f"is a directory: {path}") from e
    except OSError as e:
        raise DecodeError(PhotoStatus.UNREADABLE, f"{type(e).__name__}: {e}") from e


def _read_url(url: str, timeout: float = 30.0) -> bytes:
    if url.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - user's URL
            return r.read()
    import fsspec  # s3://, gs://, memory:// ... when the matching fsspec driver is installed

    with fsspec.open(url, "rb") as f:
        return f.read()


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode; transparent areas become white, 16-bit is rescaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


_strict_lock = threading.Lock()
_strict_users = 0
_their_setting = False


@contextmanager
def truncated_images_refused() -> Iterator[None]:
    """PIL's truncated-image loading off while kadr decodes, whatever the process set.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is one global: MegaDetector's visualisation
    module (which its detector loader imports) turns it on, and a half-copied photo then
    decodes "ok", grey below the cut, and is never looked at again. Decode threads
    share the override (a count, not a lock held while decoding); the setting found is
    put back when the last of them is done."""
    global _strict_users, _their_setting
    with _strict_lock:
        if _strict_users == 0:
            _their_setting = ImageFile.LOAD_TRUNCATED_IMAGES
        _strict_users += 1
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        with _strict_lock:
            _strict_users -= 1
            if _strict_users == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _their_setting


def decode_photo(
    data: bytes,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedPhoto:
    """Decode ``data`` to upright 8-bit RGB.

    ``min_side``: the smallest side the caller needs after decoding. JPEGs are
    then decoded at the coarsest DCT scale (1/2, 1/4, 1/8) that still keeps
    both sides at least this large, which is several times faster than a full
    decode followed by a resize and visually the same.
    """
    if not data:
        raise DecodeError(PhotoStatus.EMPTY_FILE, "file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise DecodeError(PhotoStatus.NOT_AN_IMAGE, "not a recognised image format") from e
    except Exception as e:  # noqa: BLE001 - any decoder failure is a per-photo status
        raise DecodeError(PhotoStatus.DECODE_ERROR, f"{type(e).__name__}: {e}") from e

    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError(
            "too_large",
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(raise it with --max-pixels if the file is trusted)",
        )
    fmt = img.format or "unknown"
    mode = img.mode
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF must not lose the photo
        exif = None
    orientation = exif.get(0x0112, 1) if exif else 1
    try:
        if min_side and fmt == "JPEG":
            # draft() keeps both sides >= the request; orientation does not matter
            # because the request is square.
            img.draft("RGB", (min_side, min_side))
        if getattr(img, "is_animated", False):
            img.seek(0)
        with warnings.catch_warnings(), truncated_images_refused():
            warnings.simplefilter("ignore")
            img.load()
    except OSError as e:
        msg = str(e)
        status = (PhotoStatus.TRUNCATED if "truncated" in msg or "premature" in msg.lower()
                  else PhotoStatus.DECODE_ERROR)
        raise DecodeError(status, f"{msg}") from e
    except Exception as e:  # noqa: BLE001
        raise DecodeError(PhotoStatus.DECODE_ERROR, f"{type(e).__name__}: {e}") from e

    try:
        if orientation and orientation != 1:
            img = ImageOps.exif_transpose(img)
            if orientation in (5, 6, 7, 8):
                width, height = height, width
        img = _to_rgb(img)
    except Exception as e:  # noqa: BLE001
        raise DecodeError(PhotoStatus.DECODE_ERROR, f"{type(e).__name__}: {e}") from e
    return DecodedPhoto(img, width, height, fmt, mode, exif)
