import io
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from kadr.core.decode import DecodeError, decode_photo, read_bytes
from kadr.core.models.preprocess import ImagePreprocess
from tests.helpers import jpeg_bytes


def status_of(path) -> str:
    try:
        decode_photo(read_bytes(str(path)), min_side=64)
        return "ok"
    except DecodeError as e:
        assert e.reason, "every failure carries a reason"
        return e.status


def test_every_broken_input_gets_its_status(broken_corpus):
    root, expected = broken_corpus
    got = {name: status_of(root / name) for name in expected}
    assert got == expected


def test_odd_modes_become_8bit_rgb(broken_corpus):
    root, expected = broken_corpus
    for name in ("cmyk.jpg", "gray16.png", "palette.png", "alpha.png", "anim.gif"):
        photo = decode_photo((root / name).read_bytes())
        assert photo.image.mode == "RGB"
        assert np.asarray(photo.image).dtype == np.uint8
    gray = np.asarray(decode_photo((root / "gray16.png").read_bytes()).image)
    assert gray.max() > 200, "16-bit values are rescaled, not clipped to black/white"
    alpha = decode_photo((root / "alpha.png").read_bytes())
    assert np.asarray(alpha.image).mean() > 100, "transparency is composited on white"


def test_pixel_limit_can_be_raised():
    data = jpeg_bytes(size=(1200, 1000))
    with pytest.raises(DecodeError) as refused:
        decode_photo(data, max_pixels=1_000_000)
    assert refused.value.status == "too_large" and "--max-pixels" in refused.value.reason
    assert decode_photo(data, max_pixels=2_000_000).width == 1200


def test_exif_orientation_is_applied():
    data = jpeg_bytes(size=(300, 200), orientation=6)  # rotate 90 CW on display
    photo = decode_photo(data)
    assert photo.image.size == (200, 300)
    assert (photo.width, photo.height) == (200, 300)


def test_draft_decoding_reduces_but_keeps_enough_pixels():
    data = jpeg_bytes(size=(2048, 1536))
    photo = decode_photo(data, min_side=224)
    assert min(photo.image.size) >= 224
    assert photo.image.size[0] <= 512, "a 2048 px JPEG is DCT-scaled for a 224 px model"
    assert (photo.width, photo.height) == (2048, 1536), "original size is still reported"
    assert ImagePreprocess((224, 224)).apply(photo.image).shape == (224, 224, 3)


def test_unreadable_and_missing(tmp_path, monkeypatch):
    with pytest.raises(DecodeError) as missing:
        read_bytes(str(tmp_path / "nope.jpg"))
    assert missing.value.status == "missing"
    locked = tmp_path / "x.jpg"
    locked.write_bytes(b"x")
    real_open = open

    def refusing_open(path, *args, **kwargs):  # what the OS says to a user without rights
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(DecodeError) as denied:
        read_bytes(str(locked))
    assert denied.value.status == "unreadable" and "permission" in denied.value.reason


def test_heic_and_webp_tiff_bmp_decode(tmp_path):
    img = Image.fromarray(np.full((30, 40, 3), 120, np.uint8))
    for fmt in ("WEBP", "TIFF", "BMP", "PNG", "HEIF"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        photo = decode_photo(buf.getvalue())
        assert photo.image.size == (40, 30), fmt
    assert datetime  # imported for symmetry with other tests


def test_a_truncated_photo_stays_truncated_whatever_another_library_set(monkeypatch):
    # MegaDetector's visualisation module (which its detector loader imports) turns on
    # PIL's loading of truncated images for the whole process: a half-copied photo
    # would then decode "ok", grey below the cut, and never be looked at again.
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = jpeg_bytes((640, 480), seed=3)
    with pytest.raises(DecodeError) as e:
        decode_photo(data[: len(data) // 2])
    assert e.value.status == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "the other library's setting is left alone"
