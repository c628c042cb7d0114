"""The intake pipeline, with real files made by the tests (tests/photos.py, tests/hostile.py):
every reason code, metadata, duplicates, races. The same questions on the real photos and
hostile files of ../shared/corpus are in tests/test_corpus.py."""

from __future__ import annotations

import datetime as dt
import io
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageFilter
from sqlalchemy import func, select

from collector.intake import dedup
from collector.platform.models import Photo, PhotoHash, UploadRejection, User
from collector.platform.storage import photo_key, thumb_key

from . import hostile, images, photos

US7 = photos.named("canon")  # 900x600 Canon EOS 5D
EU1 = photos.named("eu")  # 1000x750
EU7 = photos.named("large")  # 2048x1536


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
    v = submit(ann, US7)
    assert (v.status, v.code) == ("accepted", None)
    assert v.progress.accepted == 1 and v.progress.quota == 25 and not v.progress.complete
    with svc.db.Session() as s:
        photo = s.get(Photo, v.photo_id)
        assert photo.sha256 == v.sha256
        assert (photo.storage_key, photo.thumb_key) == (photo_key(v.sha256, "jpg"), thumb_key(v.sha256))
        assert (photo.width, photo.height) == (900, 600)
        assert s.get(PhotoHash, photo.id).pdq == photo.pdq
        assert s.get(User, ann.id).accepted_count == 1
    with svc.storage.open(photo.storage_key) as fh:
        assert fh.read() == US7
    with svc.storage.open(photo.thumb_key) as fh:
        thumb = Image.open(io.BytesIO(fh.read()))
        assert thumb.format == "JPEG" and max(thumb.size) <= 320


@pytest.mark.parametrize("name", ["iphone", "png", "large", "portrait", "plain", "webp", "heic"])
def test_real_photos_at_or_above_minimum_are_accepted(submit, ann, name):
    v = submit(ann, photos.named(name), photos.filename(name))
    assert v.status == "accepted", v.message


def test_all_distinct_real_plate_photos_are_accepted_and_none_collide(svc, submit, ann, bob):
    """Different cars are not near-duplicates: every generated photo is accepted, and the
    closest two stay far from the threshold (the corpus version is in test_corpus.py)."""
    named = {n: photos.named(n) for n in photos.CAMERAS if n != "small"}
    files = list(named.items()) + [(f"distinct-{i}", data) for i, data in enumerate(photos.distinct(16))]
    verdicts = [submit(ann if i % 2 else bob, data, name) for i, (name, data) in enumerate(files)]
    codes = {name: v.code for (name, _), v in zip(files, verdicts, strict=True)}
    assert all(c is None for c in codes.values()), codes
    # and their pairwise distances keep a wide margin to the threshold
    with svc.db.Session() as s:
        hashes = s.scalars(select(Photo.pdq)).all()
    closest = min(dedup.distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:])
    assert closest > 2 * svc.settings["NEAR_DUPLICATE_DISTANCE"]


def test_small_real_photos_are_too_small(submit, ann):
    v = submit(ann, photos.named("small"))  # 326x249
    assert (v.status, v.code) == ("rejected", "too_small")
    assert "326x249" in v.message and "480" in v.message


def test_min_side_counts_after_orientation(make_app, ann):
    # 600 px on its shorter side once turned: accepted at 600, refused at 601
    data = images.exif_rotated(US7, 6)

    def submit(min_side):
        return make_app(MIN_SIDE=min_side).extensions["collector"].intake.submit(ann.id, io.BytesIO(data), "photo.jpg")

    assert submit(601).code == "too_small"
    v = submit(600)
    assert v.status == "accepted" and (v.metadata["width"], v.metadata["height"]) == (900, 600)
    assert v.metadata["orientation"] == 6


@pytest.mark.parametrize(
    "data_factory, code",
    [
        (lambda: b"", "empty_file"),
        (lambda: b"hello, this is not a picture\n" * 10, "not_an_image"),
        *[pytest.param(make, code, id=name) for name, (make, code) in hostile.REASONS.items()],
        (lambda: US7[: len(US7) // 2], "corrupt"),
        (lambda: images.solid(1200, 900), "low_quality"),
        (lambda: images.solid(1200, 900, (3, 3, 3)), "low_quality"),
        (lambda: images.solid(1200, 900, (252, 252, 252), "PNG"), "low_quality"),
        (lambda: images.encode(images.load(US7).filter(ImageFilter.GaussianBlur(12))), "low_quality"),
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


@pytest.mark.settings(MAX_PIXELS=500_000)  # us7 is 540,000 pixels
def test_pixel_limit_setting(svc, submit, ann):
    assert submit(ann, US7).code == "too_many_pixels"


@pytest.mark.settings(MAX_UPLOAD_MB=1)
def test_too_large(svc, submit, ann):
    data = photos.named("png")
    assert len(data) > 1024 * 1024
    v = submit(ann, data)
    assert v.code == "too_large" and "1 MB" in v.message
    assert stored_count(svc) == 0


def test_heic_is_accepted_with_metadata(submit, ann):
    v = submit(ann, photos.named("heic"), "IMG_0001.HEIC")
    assert v.status == "accepted", v.message
    m = v.metadata
    assert m["format"] == "HEIF" and m["camera_model"] == "iPhone 11 Pro Max"
    assert m["gps_lon"] == pytest.approx(-94.28877, abs=1e-4)
    assert m["captured_at"] == "2021-07-04T19:22:03"


def test_mpo_is_stored_as_jpeg(submit, ann):
    v = submit(ann, photos.mpo(70), "stereo.mpo")
    assert v.status == "accepted" and v.metadata["format"] == "JPEG"


def test_webp_is_accepted(submit, ann):
    assert submit(ann, images.as_webp(US7)).status == "accepted"
    v = submit(ann, photos.named("webp"))
    assert v.status == "accepted" and v.metadata["format"] == "WEBP" and v.metadata["camera_model"] == "Pixel 7"


def test_plate_photo_metadata(submit, ann):
    m = submit(ann, photos.named("iphone")).metadata
    assert (m["camera_make"], m["camera_model"]) == ("Apple", "iPhone 5")
    assert m["gps_lat"] == pytest.approx(-12.93648, abs=1e-4) and m["gps_lon"] == pytest.approx(-38.39415, abs=1e-4)
    assert m["captured_at"] == "2016-03-12T10:41:07" and (m["width"], m["height"]) == (1296, 968)
    m = submit(ann, photos.named("no-orientation")).metadata
    assert m["orientation"] == 1 and m["camera_model"] == "iPhone 4S"
    m = submit(ann, photos.named("plain")).metadata
    assert (m["captured_at"], m["camera_make"], m["gps_lat"]) == (None, None, None)


@pytest.mark.parametrize(
    "make, why",
    [(hostile.exif_gps_pointer_not_a_pointer, "GPS pointer in IFD0 is not a pointer"),
     (hostile.exif_truncated_ifd0, "IFD0 directory is truncated")],
)
def test_damaged_exif_is_corrupt(submit, ann, make, why):
    v = submit(ann, make())
    assert v.code == "corrupt" and "EXIF" in v.message and why in v.message


def test_odd_but_sound_exif_is_read(submit, ann):
    v = submit(ann, hostile.exif_empty_gps_directory())
    assert v.status == "accepted", v.message
    assert (v.metadata["camera_make"], v.metadata["orientation"], v.metadata["gps_lat"]) == ("Phone", 6, None)
    v = submit(ann, hostile.exif_zero_resolution())
    assert v.status == "accepted" and v.metadata["camera_make"] == "Cam", v.message
    v = submit(ann, hostile.exif_gps_zero_denominators())
    assert v.status == "accepted" and (v.metadata["gps_lat"], v.metadata["gps_lon"]) == (None, None), v.message


def test_exact_duplicate_by_another_contributor(svc, submit, ann, bob):
    assert submit(ann, US7).status == "accepted"
    v = submit(bob, US7)
    assert (v.status, v.code) == ("rejected", "duplicate")
    assert v.progress.accepted == 0
    with svc.db.Session() as s:
        assert s.get(User, ann.id).accepted_count == 1  # the first uploader keeps the credit


def test_same_contributor_retry_is_idempotent(svc, submit, ann):
    first = submit(ann, US7)
    again = submit(ann, US7)
    assert (again.status, again.code) == ("already_uploaded", "already_uploaded")
    assert again.photo_id == first.photo_id and again.progress.accepted == 1
    assert stored_count(svc) == 1 and stored_count(svc, UploadRejection) == 0


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
@pytest.mark.parametrize("photo", ["large", "iphone"])
def test_near_duplicates_are_refused_whoever_sends_them(submit, ann, bob, svc, name, photo):
    data = photos.named(photo)
    assert submit(ann, data).status == "accepted"
    for who in (bob, ann):
        v = submit(who, TRANSFORMS[name](data), f"copy-{who.name}.jpg")
        assert (v.status, v.code) == ("rejected", "near_duplicate"), (name, v.code, v.message)
    assert "one of yours" in v.message
    assert stored_count(svc) == 1


@pytest.mark.settings(QUOTA=2, MAX_PHOTOS=3)
def test_quota_and_cap(svc, submit, ann):
    verdicts = [submit(ann, data) for data in (US7, EU1, photos.named("iphone"), photos.named("motorola"))]
    assert [v.status for v in verdicts] == ["accepted"] * 3 + ["rejected"]
    assert verdicts[1].progress.complete and not verdicts[0].progress.complete
    assert verdicts[3].code == "quota_cap" and "3" in verdicts[3].message


def test_metadata_policy(make_app, ann):
    def submit(name, **settings):
        intake = make_app(**settings).extensions["collector"].intake
        return intake.submit(ann.id, io.BytesIO(photos.named(name)), photos.filename(name))

    v = submit("plain", REQUIRE_EXIF=True)  # no EXIF
    assert v.code == "metadata_policy" and "capture date" in v.message
    assert submit("iphone", REQUIRE_EXIF=True).status == "accepted"  # taken 2016
    v = submit("motorola", CAPTURED_AFTER=dt.date(2020, 1, 1))  # taken 2015
    assert v.code == "metadata_policy" and "2015-04-18" in v.message and "2020-01-01" in v.message
    assert submit("heic", CAPTURED_AFTER=dt.date(2020, 1, 1)).status == "accepted"  # 2021


def test_eight_threads_posting_the_same_new_photo_credit_once(svc, ann):
    data = US7
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
    variants = [images.reencode(EU7, q) for q in (60, 65, 70, 75, 80, 85)] + [images.as_png(EU7), images.resized(EU7, 0.6)]
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


def test_storage_failure_is_a_retry_later_and_keeps_nothing(svc, settings, submit, ann):
    folder = Path(settings["STORAGE_URL"])  # the app's photo folder, replaced by a file under it
    shutil.rmtree(folder)
    folder.write_text("a file where the photo folder should be")
    v = submit(ann, US7)
    assert v.code == "storage_unavailable" and "try again" in v.message
    assert stored_count(svc) == 0 and v.progress.accepted == 0


def test_an_accepted_photo_writes_its_row_hash_credit_and_hour(svc, submit, ann):
    """``record_photo``'s writes, whichever way the database takes them (separate statements
    on SQLite, one statement of CTEs on PostgreSQL): the photo with its defaults and burst
    flag, its hash, the credit with the time of the last upload, the hour."""
    from collector.organisers import reports

    v = submit(ann, photos.jpeg(41))
    assert v.accepted and v.progress.accepted == 1
    with svc.db.Session() as s:
        photo = s.get(Photo, v.photo_id)
        assert (photo.status, photo.burst, photo.user_id, photo.sha256) == ("accepted", False, ann.id, v.sha256)
        assert s.get(PhotoHash, v.photo_id).user_id == ann.id and s.get(PhotoHash, v.photo_id).pdq == photo.pdq
        user = s.get(User, ann.id)
        assert user.accepted_count == 1 and user.last_upload_at == photo.created_at
        series, before = reports.accepted_per_hour(s)
        assert dict(series)[reports.hour_of(photo.created_at)] == 1 and before == 0
