import csv
import io
from datetime import datetime

import pandas as pd
from PIL import Image

from kadr.core.collection import PhotoCollection, csv_pieces
from kadr.core.phototime import exif_time, filename_time, photo_time


def test_folder_scan_groups_and_reports_non_images(photo_folder):
    (photo_folder / "camA" / "notes.txt").write_text("field notes")
    (photo_folder / "empty_cam").mkdir()
    col = PhotoCollection(photo_folder)
    refs = list(col)
    assert len(refs) == 10
    assert {r.group for r in refs} == {"camA", "camB"}
    assert refs == sorted(refs, key=lambda r: r.key), "stable, sorted order"
    assert col.report.skipped_files == ["camA/notes.txt"]
    assert col.report.empty_groups == ["empty_cam"]


def test_group_level(tmp_path):
    for d in ("site1/camA/day1", "site1/camA/day2"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "a.jpg").write_bytes(b"x")
    groups = {r.group for r in PhotoCollection(tmp_path, group_level=2)}
    assert groups == {"site1/camA"}


def test_manifest_with_extra_columns_and_repeats(photo_folder, tmp_path):
    rows = [
        {"path": "photos/camA/IMG_0000.JPG", "hotel_id": 7, "site": "x"},
        {"path": "photos/camA/IMG_0000.JPG", "hotel_id": 8, "site": "y"},
        {"path": "photos/camA/IMG_0001.JPG", "hotel_id": 9, "site": "y"},
        {"path": " photos/camA/IMG_0000.JPG", "hotel_id": 10, "site": "z"},
    ]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).rename(columns={"path": " path "}).to_csv(manifest, index=False)
    refs = list(PhotoCollection(manifest, group_column="site"))
    assert [r.key for r in refs] == ["photos/camA/IMG_0000.JPG", "photos/camA/IMG_0000.JPG#1",
                                     "photos/camA/IMG_0001.JPG", "photos/camA/IMG_0000.JPG#2"]
    # A CSV's columns are text as written, so an id like "007" keeps its zeros.
    assert refs[0].extra == {"hotel_id": "7", "site": "x"} and refs[1].group == "y"
    assert refs[0].path == str(photo_folder / "camA" / "IMG_0000.JPG")


def test_a_large_manifest_is_read_in_pieces_that_keep_quoted_fields_whole(tmp_path):
    # Names with commas, quotes and a line break; a piece must never end inside one.
    names = [f'cam{i % 3}/IMG "{i}", take\n2.jpg' if i % 5 == 0 else f"cam{i % 3}/IMG_{i}.jpg"
             for i in range(3000)]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(["path", "camera"])
        w.writerows([n, n.split("/")[0]] for n in names)
    data = (tmp_path / "m.csv").read_bytes()
    for block in (7, 64, 1000):  # blocks shorter and longer than a record
        pieces = list(csv_pieces(io.BytesIO(data), block))
        assert b"".join(pieces) == data and len(pieces) > 10
        rows = [r for p in pieces for r in csv.reader(io.StringIO(p.decode(), newline=""))]
        assert rows == [["path", "camera"], *([n, n.split("/")[0]] for n in names)]
    refs = list(PhotoCollection(str(tmp_path / "m.csv"), group_column="camera"))
    assert [r.key for r in refs] == names
    assert [r.group for r in refs] == [n.split("/")[0] for n in names]


def test_time_sources(photo_folder, tmp_path):
    img = Image.open(photo_folder / "camA" / "IMG_0002.JPG")
    assert exif_time(img.getexif()) == datetime(2024, 7, 1, 6, 2)
    assert filename_time("CAM1_20240712_061502.jpg", "%Y%m%d_%H%M%S") == datetime(
        2024, 7, 12, 6, 15, 2
    )
    p = tmp_path / "CAM1_20240712_061502.png"
    Image.new("RGB", (4, 4)).save(p)
    assert photo_time(str(p), None, "%Y%m%d_%H%M%S")[1] == "filename"
    assert photo_time(str(p), None, None)[1] == "mtime"


def test_subsec_and_offset():
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003] = "2024:01:02 03:04:05"
    ifd[0x9291] = "25"
    ifd[0x9011] = "+03:00"
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "JPEG", exif=exif.tobytes())
    t = exif_time(Image.open(buf).getexif())
    assert t.microsecond == 250000 and t.utcoffset().total_seconds() == 3 * 3600


def test_a_single_photo_is_a_collection_of_one(tmp_path):
    from kadr.core.collection import PhotoCollection
    from tests.helpers import jpeg_bytes

    photo = tmp_path / "room.JPG"
    photo.write_bytes(jpeg_bytes())
    refs = list(PhotoCollection(str(photo)))
    assert [(r.key, r.path, r.group) for r in refs] == [("room.JPG", str(photo), ".")]
