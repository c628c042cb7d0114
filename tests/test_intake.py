"""The intake pipeline, with real files: every reason code, metadata, duplicates, races."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading

import pytest
from PIL import Image, ImageFilter
from sqlalchemy import func, select

from collector import dedup
from collector.models import HashBand, Photo, UploadRejection, User

from . import images
from .conftest import CORPUS, corpus, plate

US7 = "us/us7.jpg"  # 900x600 Canon EOS 5D
EU1 = "eu/eu1.jpg"  # 1000x750
EU7 = "eu/eu7.jpg"  # 2048x1536


@pytest.fixture
def ann(make_user):
    return make_user()


@pytest.fixture
def bob(make_user):
    return make_user("bob@example.com", "Bob")


def stored_count(svc, model=Photo):
    with svc.db.Session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_accepts_real_plate_photo_and_stores_it_by_hash(svc, submit, ann):
    path = plate(US7)
    v = submit(ann, path)
    assert (v.status, v.code) == ("accepted", None)
    assert v.progress.accepted == 1 and v.progress.quota == 25 and not v.progress.complete
    with svc.db.Session() as s:
        photo = s.get(Photo, v.photo_id)
        assert photo.sha256 == v.sha256
        assert photo.storage_key.endswith(f"{v.sha256}.jpg") and v.sha256[:2] in photo.storage_key
        assert (photo.width, photo.height) == (900, 600)
        assert s.scalar(select(func.count()).select_from(HashBand).where(HashBand.photo_id == photo.id)) == 16
        assert s.get(User, ann.id).accepted_count == 1
    with svc.storage.open(photo.storage_key) as fh:
        assert fh.read() == path.read_bytes()
    with svc.storage.open(photo.thumb_key) as fh:
        thumb = Image.open(io.BytesIO(fh.read()))
        assert thumb.format == "JPEG" and max(thumb.size) <= 320


@pytest.mark.parametrize(
    "rel",
    ["br/JST2699.jpg", "br/PAG5219.png", "eu/eu7.jpg", "us/car9-7.jpg", "us/0b86cecf-67d1-4fc0-87c9-b36b0ee228bb.jpg"],
)
def test_real_photos_at_or_above_minimum_are_accepted(submit, ann, rel):
    assert submit(ann, plate(rel)).status == "accepted"


def test_all_distinct_real_plate_photos_are_accepted_and_none_collide(svc, submit, ann, bob):
    """Different cars, including frames from the same places, are not near-duplicates."""
    paths = sorted(p for p in corpus("plates").rglob("*") if p.suffix in (".jpg", ".png"))
    # the known duplicate pair and the known re-encode are checked elsewhere
    paths = [p for p in paths if p.name not in {"car-04.png", "car-4.png"} and "seg_and_ocr" not in p.parts]
    verdicts = [submit(ann if i % 2 else bob, p) for i, p in enumerate(paths)]
    codes = {p.name: v.code for p, v in zip(paths, verdicts, strict=True)}
    assert not [n for n, c in codes.items() if c in ("near_duplicate", "duplicate")], codes
    assert all(c in (None, "too_small") for c in codes.values()), codes
    # and their pairwise distances keep a wide margin to the threshold
    with svc.db.Session() as s:
        hashes = s.scalars(select(Photo.pdq)).all()
    closest = min(dedup.distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:])
    assert closest > 2 * svc.settings["NEAR_DUPLICATE_DISTANCE"]


def test_small_real_photos_are_too_small(submit, ann):
    v = submit(ann, plate("eu/test_018.jpg"))  # 326x249
    assert (v.status, v.code) == ("rejected", "too_small")
    assert "326x249" in v.message and "480" in v.message


def test_min_side_counts_after_orientation(app, settings, submit, ann):
    # 600 px on its shorter side once turned: accepted at 600, refused at 601
    data = images.exif_rotated(plate(US7), 6)
    app.extensions["collector"].settings["MIN_SIDE"] = 601
    assert submit(ann, data).code == "too_small"
    app.extensions["collector"].settings["MIN_SIDE"] = 600
    v = submit(ann, data)
    assert v.status == "accepted" and (v.metadata["width"], v.metadata["height"]) == (900, 600)
    assert v.metadata["orientation"] == 6


@pytest.mark.parametrize(
    "data_factory, code",
    [
        (lambda: b"", "empty_file"),
        (lambda: b"hello, this is not a picture\n" * 10, "not_an_image"),
        (lambda: corpus("pillow-bad", "test-ole-file.doc").read_bytes(), "not_an_image"),
        (lambda: corpus("pillow-bad", "pngtest_bad.png.bin").read_bytes(), "not_an_image"),
        (lambda: corpus("pillow-bad", "dispose_bgnd.gif").read_bytes(), "unsupported_format"),
        (lambda: corpus("exif", "tiff", "Arbitro.tiff").read_bytes(), "unsupported_format"),
        (lambda: corpus("pillow-bad", "bmp", "b", "badwidth.bmp").read_bytes(), "unsupported_format"),
        (lambda: corpus("pillow-bad", "truncated_jpeg.jpg").read_bytes(), "corrupt"),
        (lambda: corpus("pillow-bad", "truncated_image.png").read_bytes(), "corrupt"),
        (lambda: corpus("pillow-bad", "truncated_end_chunk.png").read_bytes(), "corrupt"),
        (lambda: corpus("pillow-bad", "broken_data_stream.png").read_bytes(), "corrupt"),
        (lambda: corpus("pillow-bad", "png_decompression_dos.png").read_bytes(), "corrupt"),
        (lambda: corpus("pillow-bad", "unknown_compression_method.png").read_bytes(), "corrupt"),
        (lambda: corpus("pillow-bad", "broken.png").read_bytes(), "corrupt"),
        (lambda: plate(US7).read_bytes()[: len(plate(US7).read_bytes()) // 2], "corrupt"),
        (lambda: images.solid(1200, 900), "low_quality"),
        (lambda: images.solid(1200, 900, (3, 3, 3)), "low_quality"),
        (lambda: images.solid(1200, 900, (252, 252, 252), "PNG"), "low_quality"),
        (lambda: images.encode(images.load(plate(US7)).filter(ImageFilter.GaussianBlur(12))), "low_quality"),
    ],
)
def test_reason_codes(svc, submit, ann, data_factory, code):
    v = submit(ann, data_factory(), "upload.bin")
    assert (v.status, v.code) == ("rejected", code), v.message
    assert v.message and v.message[0].isupper() and v.message.endswith((".", "!"))
    assert stored_count(svc) == 0
    with svc.db.Session() as s:
        r = s.scalars(select(UploadRejection)).one()
        assert (r.code, r.filename, r.user_id) == (code, "upload.bin", ann.id)


def test_decompression_bomb_is_refused_before_decoding(svc, submit, ann):
    # a real 20000x20000 PNG header with almost no data: 400 megapixels declared
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")
    v = submit(ann, png, "bomb.png")
    assert v.code == "too_many_pixels" and "400,000,000" in v.message


def test_gif_decompression_bomb_from_corpus(submit, ann):
    assert submit(ann, corpus("pillow-bad", "decompression_bomb.gif")).code == "unsupported_format"


def test_pixel_limit_setting(svc, submit, ann):
    svc.settings["MAX_PIXELS"] = 500_000  # us7 is 540,000 pixels
    assert submit(ann, plate(US7)).code == "too_many_pixels"


def test_too_large(svc, submit, ann):
    svc.settings["MAX_UPLOAD_MB"] = 1
    v = submit(ann, plate("br/PAG5219.png"))  # 1.5 MB
    assert v.code == "too_large" and "1 MB" in v.message
    assert stored_count(svc) == 0


def test_every_hostile_file_gets_a_verdict_and_none_is_accepted_unless_valid(submit, ann):
    bad = corpus("pillow-bad")
    cases = {}
    for line in (CORPUS / "CASES.tsv").read_text().splitlines()[1:]:
        path, case = line.split("\t")[:2]
        cases[path] = case
    for path in sorted(bad.rglob("*")):
        if not path.is_file():
            continue
        v = submit(ann, path)
        case = cases.get(str(path.relative_to(CORPUS)), "")
        assert v.status in ("accepted", "rejected")
        if case.startswith("bad:"):
            assert v.status == "rejected", (path.name, case)


@pytest.mark.parametrize("rel", ["exif/heic/IMG_5195.HEIC"])
def test_heic_is_accepted_with_metadata(submit, ann, rel):
    v = submit(ann, corpus(*rel.split("/")))
    assert v.status == "accepted", v.message
    m = v.metadata
    assert m["format"] == "HEIF" and m["camera_model"] == "iPhone 11 Pro Max"
    assert m["gps_lon"] == pytest.approx(-94.28877, abs=1e-4)


def test_mpo_is_stored_as_jpeg(submit, ann):
    v = submit(ann, corpus("pillow-bad", "sugarshack.mpo"))
    assert v.status == "accepted" and v.metadata["format"] == "JPEG"


def test_webp_is_accepted(submit, ann):
    assert submit(ann, images.as_webp(plate(US7))).status == "accepted"


def test_metadata_agrees_with_exiftool(submit, ann, svc):
    """Every file under exif/ that we accept reports what exiftool reads from EXIF proper."""
    truth = json.loads(corpus("exif-truth.json").read_text())["files"]
    svc.settings["MIN_SIDE"] = 1
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


def test_plate_photo_metadata(submit, ann):
    m = submit(ann, plate("br/JST2699.jpg")).metadata
    assert (m["camera_make"], m["camera_model"]) == ("Apple", "iPhone 5")
    assert m["gps_lat"] == pytest.approx(-12.93648, abs=1e-4) and m["gps_lon"] == pytest.approx(-38.39415, abs=1e-4)
    m = submit(ann, plate("us/us5.jpg")).metadata
    assert m["orientation"] == 1 and m["camera_model"] == "iPhone 4S"


@pytest.mark.parametrize(
    "name, why",
    [("exif_gps_typeerror.jpg", "GPS pointer in IFD0 is not a pointer"), ("hopper_bad_exif.jpg", "IFD0 directory is truncated")],
)
def test_damaged_exif_is_corrupt(submit, ann, name, why):
    v = submit(ann, corpus("pillow-bad", name))
    assert v.code == "corrupt" and "EXIF" in v.message and why in v.message


def test_odd_but_sound_exif_is_read(svc, submit, ann):
    svc.settings["MIN_SIDE"] = 1
    v = submit(ann, corpus("exif", "jpg", "tests", "45-gps_ifd.jpg"))  # an empty GPS directory
    assert v.status == "accepted" and v.metadata["camera_model"] == "Gran Turismo 5"
    for name in ("invalid-exif.jpg", "exif-dpi-zerodivision.jpg", "empty_gps_ifd.jpg", "exif_gps.jpg"):
        v = submit(ann, corpus("pillow-bad", name))
        assert v.code in (None, "near_duplicate", "low_quality"), (name, v.message)  # tiny test images


def test_exact_duplicate_by_another_contributor(svc, submit, ann, bob):
    path = plate(US7)
    assert submit(ann, path).status == "accepted"
    v = submit(bob, path)
    assert (v.status, v.code) == ("rejected", "duplicate")
    assert v.progress.accepted == 0
    with svc.db.Session() as s:
        assert s.get(User, ann.id).accepted_count == 1  # the first uploader keeps the credit


def test_same_contributor_retry_is_idempotent(svc, submit, ann):
    first = submit(ann, plate(US7))
    again = submit(ann, plate(US7))
    assert (again.status, again.code) == ("already_uploaded", "already_uploaded")
    assert again.photo_id == first.photo_id and again.progress.accepted == 1
    assert stored_count(svc) == 1 and stored_count(svc, UploadRejection) == 0


def test_corpus_exact_duplicate_pair(submit, ann, bob):
    a = corpus("plates", "openalpr", "endtoend", "usimages", "car-04.png")
    b = corpus("plates", "openalpr", "speed", "usimages", "car-4.png")
    assert submit(ann, a).status == "accepted"
    assert submit(bob, b).code == "duplicate"


def test_corpus_real_near_duplicate(submit, ann, bob):
    assert submit(ann, corpus("plates", "openalpr", "endtoend", "usimages", "car-04.png")).status == "accepted"
    assert submit(bob, plate("us/car14.jpg")).code == "near_duplicate"


TRANSFORMS = {
    "re-encoded q70": lambda p: images.reencode(p, 70),
    "re-encoded q40": lambda p: images.reencode(p, 40),
    "resized 50%": lambda p: images.resized(p, 0.5),
    "resized 150%": lambda p: images.resized(p, 1.5),
    "recoloured": images.recoloured,
    "greyscale": images.greyscale,
    "PNG": images.as_png,
    "WebP": images.as_webp,
    "EXIF-rotated 6": lambda p: images.exif_rotated(p, 6),
    "EXIF-rotated 8": lambda p: images.exif_rotated(p, 8),
    "orientation tag changed": lambda p: images.tag_changed(p, 6),
    # 1% off each side stays within the threshold on most photos; 2% and more does not (README)
    "light crop 1%": lambda p: images.cropped(p, 0.01),
}


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("rel", [EU7, "br/JST2699.jpg"])
def test_near_duplicates_are_refused_whoever_sends_them(submit, ann, bob, svc, name, rel):
    path = plate(rel)
    assert submit(ann, path).status == "accepted"
    for who in (bob, ann):
        v = submit(who, TRANSFORMS[name](path), f"copy-{who.name}.jpg")
        assert (v.status, v.code) == ("rejected", "near_duplicate"), (name, v.code, v.message)
    assert "one of yours" in v.message
    assert stored_count(svc) == 1


def test_quota_and_cap(svc, submit, ann):
    svc.settings["QUOTA"] = 2
    svc.settings["MAX_PHOTOS"] = 3
    rels = [US7, EU1, "br/JST2699.jpg", "us/car9-2.jpg"]
    verdicts = [submit(ann, plate(r)) for r in rels]
    assert [v.status for v in verdicts] == ["accepted"] * 3 + ["rejected"]
    assert verdicts[1].progress.complete and not verdicts[0].progress.complete
    assert verdicts[3].code == "quota_cap" and "3" in verdicts[3].message


def test_metadata_policy(svc, submit, ann):
    svc.settings["REQUIRE_EXIF"] = True
    v = submit(ann, plate("us/0b86cecf-67d1-4fc0-87c9-b36b0ee228bb.jpg"))  # no camera EXIF
    assert v.code == "metadata_policy" and "capture date" in v.message
    assert submit(ann, plate("br/JST2699.jpg")).status == "accepted"  # taken 2016
    svc.settings["REQUIRE_EXIF"] = False
    svc.settings["CAPTURED_AFTER"] = dt.date(2020, 1, 1)
    v = submit(ann, plate("us/car9-2.jpg"))
    assert v.code == "metadata_policy" and "2020-01-01" in v.message
    assert submit(ann, corpus("exif", "heic", "IMG_5195.HEIC")).status == "accepted"  # 2021


def test_eight_threads_posting_the_same_new_photo_credit_once(svc, ann):
    data = plate(US7).read_bytes()
    barrier = threading.Barrier(8)
    verdicts = []

    def go():
        barrier.wait()
        verdicts.append(svc.intake.submit(ann.id, io.BytesIO(data), "same.jpg"))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(v.status for v in verdicts)
    assert statuses == ["accepted"] + ["already_uploaded"] * 7
    with svc.db.Session() as s:
        assert s.get(User, ann.id).accepted_count == 1
    assert stored_count(svc) == 1


def test_racing_near_duplicates_from_many_people_accept_at_most_one(svc, make_user):
    path = plate(EU7)
    variants = [images.reencode(path, q) for q in (60, 65, 70, 75, 80, 85)] + [images.as_png(path), images.resized(path, 0.6)]
    users = [make_user(f"u{i}@example.com", f"U{i}") for i in range(len(variants))]
    barrier = threading.Barrier(len(variants))
    verdicts = []

    def go(user, data):
        barrier.wait()
        verdicts.append(svc.intake.submit(user.id, io.BytesIO(data), "v.jpg"))

    threads = [threading.Thread(target=go, args=a) for a in zip(users, variants, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v.code or "accepted" for v in verdicts) == ["accepted"] + ["near_duplicate"] * 7
    with svc.db.Session() as s:
        assert s.scalar(select(func.sum(User.accepted_count))) == 1
    assert stored_count(svc) == 1


def test_storage_failure_is_a_retry_later_and_keeps_nothing(svc, submit, ann, tmp_path):
    from collector.storage import LocalStorage

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the photo folder should be")
    svc.intake.storage = LocalStorage.__new__(LocalStorage)
    svc.intake.storage.root = blocker
    v = submit(ann, plate(US7))
    assert v.code == "storage_unavailable" and "try again" in v.message
    assert stored_count(svc) == 0 and v.progress.accepted == 0
