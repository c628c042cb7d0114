"""Extra coverage from the real files of ../shared/corpus (plate photos, camera EXIF samples,
Pillow's hostile files), when the corpus sits beside the clone.

Every test here skips, naming the reason, where the corpus is absent; the rest of the suite
asks the same questions of photos the tests make (tests/photos.py, tests/hostile.py). CI sets
COLLECTOR_REQUIRE_CORPUS when ../shared exists, which turns the skips into failures. The
corpus files are never copied into the repository (plates: AGPL-3.0; exif: CC BY-SA).
"""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from sqlalchemy import select

from collector.intake import dedup
from collector.platform.models import Photo

from .conftest import CORPUS, corpus, plate
from .test_intake import TRANSFORMS


@pytest.fixture
def ann(make_user):
    return make_user()


@pytest.fixture
def bob(make_user):
    return make_user("bob@example.com", "Bob")


def test_all_distinct_real_plate_photos_are_accepted_and_none_collide(svc, submit, ann, bob):
    """Different cars, including frames from the same places, are not near-duplicates."""
    paths = sorted(p for p in corpus("plates").rglob("*") if p.suffix in (".jpg", ".png"))
    # the known duplicate pair and the known re-encode (car14.jpg) are checked at the end
    paths = [p for p in paths if p.name not in {"car-04.png", "car-4.png", "car14.jpg"} and "seg_and_ocr" not in p.parts]
    verdicts = [submit(ann if i % 2 else bob, p) for i, p in enumerate(paths)]
    codes = {p.name: v.code for p, v in zip(paths, verdicts, strict=True)}
    assert not [n for n, c in codes.items() if c in ("near_duplicate", "duplicate")], codes
    assert all(c in (None, "too_small") for c in codes.values()), codes
    with svc.db.Session() as s:
        hashes = s.scalars(select(Photo.pdq)).all()
    closest = min(dedup.distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:])
    assert closest > 2 * svc.settings["NEAR_DUPLICATE_DISTANCE"]
    # and the pair that exists upstream: the same bytes twice, and the same photo re-encoded
    assert submit(ann, corpus("plates", "openalpr", "endtoend", "usimages", "car-04.png")).status == "accepted"
    assert submit(bob, corpus("plates", "openalpr", "speed", "usimages", "car-4.png")).code == "duplicate"
    assert submit(bob, plate("us/car14.jpg")).code == "near_duplicate"


def test_near_duplicates_of_real_photos(svc, make_user, submit):
    first, other = make_user("first@example.com", "First"), make_user("other@example.com", "Other")
    for rel in ("eu/eu7.jpg", "br/JST2699.jpg"):
        path = plate(rel)
        assert submit(first, path).status == "accepted"
        for name, transform in TRANSFORMS.items():
            v = submit(other, transform(path), f"{name}.jpg")
            assert v.code == "near_duplicate", (rel, name, v.code, v.message)


def test_real_photo_metadata_heic_and_mpo(submit, ann):
    m = submit(ann, plate("br/JST2699.jpg")).metadata
    assert (m["camera_make"], m["camera_model"]) == ("Apple", "iPhone 5")
    assert m["gps_lat"] == pytest.approx(-12.93648, abs=1e-4) and m["gps_lon"] == pytest.approx(-38.39415, abs=1e-4)
    m = submit(ann, plate("us/us5.jpg")).metadata
    assert m["orientation"] == 1 and m["camera_model"] == "iPhone 4S"
    v = submit(ann, plate("eu/test_018.jpg"))
    assert v.code == "too_small" and "326x249" in v.message
    v = submit(ann, corpus("exif", "heic", "IMG_5195.HEIC"))
    assert v.status == "accepted", v.message
    assert v.metadata["format"] == "HEIF" and v.metadata["camera_model"] == "iPhone 11 Pro Max"
    assert v.metadata["gps_lon"] == pytest.approx(-94.28877, abs=1e-4)
    v = submit(ann, corpus("pillow-bad", "sugarshack.mpo"))
    assert v.status == "accepted" and v.metadata["format"] == "JPEG"


@pytest.mark.settings(MIN_SIDE=1)
def test_metadata_agrees_with_exiftool(submit, ann, svc):
    """Every file under exif/ that we accept reports what exiftool reads from EXIF proper."""
    truth = json.loads(corpus("exif-truth.json").read_text())["files"]
    checked = 0
    for rel, t in truth.items():
        v = submit(ann, corpus("exif", *rel.split("/")))
        if v.status != "accepted" and v.code not in ("near_duplicate", "low_quality"):
            assert rel.endswith(".tiff"), (rel, v.code)
            continue
        m = v.metadata
        exif_groups = {"IFD0", "ExifIFD", "GPS"}
        groups = t.get("groups", {})
        if "DateTimeOriginal" in groups and exif_groups & set(groups["DateTimeOriginal"]):
            assert m["captured_at"] == dt.datetime.strptime(t["DateTimeOriginal"], "%Y:%m:%d %H:%M:%S").isoformat(), rel
        for key, field in (("Make", "camera_make"), ("Model", "camera_model")):
            if key in groups and exif_groups & set(groups[key]):
                assert m[field] == t[key].strip(), (rel, key)
        if "Orientation" in groups and "IFD0" in groups["Orientation"]:
            assert m["orientation"] == t["Orientation"], rel
        if t["GPSLatitude"] is not None:
            assert m["gps_lat"] == pytest.approx(t["GPSLatitude"], abs=1e-5), rel
            assert m["gps_lon"] == pytest.approx(t["GPSLongitude"], abs=1e-5), rel
        else:
            assert m["gps_lat"] is None and m["gps_lon"] is None, rel
        checked += 1
    assert checked >= 20


HOSTILE_CODES = {
    "test-ole-file.doc": "not_an_image",
    "pngtest_bad.png.bin": "not_an_image",
    "dispose_bgnd.gif": "unsupported_format",
    "decompression_bomb.gif": "unsupported_format",
    "bmp/b/badwidth.bmp": "unsupported_format",
    "truncated_jpeg.jpg": "corrupt",
    "truncated_image.png": "corrupt",
    "truncated_end_chunk.png": "corrupt",
    "broken_data_stream.png": "corrupt",
    "png_decompression_dos.png": "corrupt",
    "unknown_compression_method.png": "corrupt",
    "broken.png": "corrupt",
}


def test_every_hostile_file_gets_a_verdict_and_none_is_accepted_unless_valid(svc, submit, ann, bob, make_app):
    # EXIF first (on tiny images, so with no minimum size): damaged blocks are refused, odd but
    # sound ones are read
    for name, why in (("exif_gps_typeerror.jpg", "GPS pointer in IFD0 is not a pointer"),
                      ("hopper_bad_exif.jpg", "IFD0 directory is truncated")):
        v = submit(ann, corpus("pillow-bad", name))
        assert v.code == "corrupt" and "EXIF" in v.message and why in v.message, name
    tiny = make_app(MIN_SIDE=1).extensions["collector"].intake

    def submit_tiny(path):
        return tiny.submit(ann.id, io.BytesIO(path.read_bytes()), path.name)

    v = submit_tiny(corpus("exif", "jpg", "tests", "45-gps_ifd.jpg"))  # an empty GPS directory
    assert v.status == "accepted" and v.metadata["camera_model"] == "Gran Turismo 5"
    for name in ("invalid-exif.jpg", "exif-dpi-zerodivision.jpg", "empty_gps_ifd.jpg", "exif_gps.jpg"):
        v = submit_tiny(corpus("pillow-bad", name))
        assert v.code in (None, "near_duplicate", "low_quality"), (name, v.message)  # tiny test images

    # then every file, from someone else: a verdict for each, the bad ones all refused
    bad = corpus("pillow-bad")
    cases = {}
    for line in (CORPUS / "CASES.tsv").read_text().splitlines()[1:]:
        path, case = line.split("\t")[:2]
        cases[path] = case
    for path in sorted(bad.rglob("*")):
        if not path.is_file():
            continue
        v = submit(bob, path)
        rel = str(path.relative_to(bad))
        case = cases.get(str(path.relative_to(CORPUS)), "")
        assert v.status in ("accepted", "rejected")
        if case.startswith("bad:"):
            assert v.status == "rejected", (rel, case)
        if rel in HOSTILE_CODES:
            assert v.code == HOSTILE_CODES[rel], (rel, v.code, v.message)
    assert submit(bob, corpus("exif", "tiff", "Arbitro.tiff")).code == "unsupported_format"


def test_import_whole_corpus_gives_every_file_a_verdict(runner, make_user):
    make_user()
    root = corpus()
    r = runner.invoke(args=["import", str(root), "--as", "ann@example.com", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == sum(1 for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert all(row["status"] in ("accepted", "already_uploaded", "rejected") for row in rows)
    assert all(row["code"] for row in rows if row["status"] == "rejected")


def test_real_photo_keeps_its_pixels_through_export(svc, runner, make_user, submit, tmp_path):
    """A real camera JPEG (EXIF with maker notes, GPS) comes out of the export with the same
    compressed scans and without GPS."""
    import hashlib

    import exifread

    from collector.dataset import privacy

    ann = make_user()
    path = plate("br/JST2699.jpg")
    assert submit(ann, path).accepted
    r = runner.invoke(args=["export", str(tmp_path / "ds"), "--format", "csv"])
    assert r.exit_code == 0, r.output
    out = next((tmp_path / "ds").rglob("*.jpg"))
    data = out.read_bytes()
    assert privacy.scan_data(data) == privacy.scan_data(path.read_bytes())
    assert not any(k.startswith("GPS") for k in exifread.process_file(io.BytesIO(data), details=False))
    assert hashlib.sha256(data).hexdigest() != hashlib.sha256(path.read_bytes()).hexdigest()

