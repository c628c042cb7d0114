"""Dataset export: loads in Hugging Face datasets, private metadata gone, pixels untouched,
grouped splits, incremental and safe."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct

import exifread
import pytest
from PIL import Image
from sqlalchemy import select, update

from collector.dataset import privacy
from collector.intake import dedup
from collector.platform.models import Photo

from . import images, photos

SECRET_TAGS = ("EXIF MakerNote", "Image ImageDescription", "EXIF BodySerialNumber")
SECRET_BYTES = (b"MakerNoteBytes", b"SN-0042-XYZ", b"my neighbour", b"ann@example.com", b"adobe:ns:meta")


def talkative_camera(seed: int) -> bytes:
    """A JPEG carrying what a camera leaks: GPS, a serial number, maker notes, a description,
    a comment and XMP (the export must drop all of them)."""
    import datetime as dt

    exif = photos.make_exif(make="Canon", model="Canon EOS 5D", taken=dt.datetime(2024, 5, 6, 7, 8, 9), gps=(51.5, -0.12))
    exif[0x010E] = "Number plate of my neighbour"
    exif.get_ifd(0x8769)[0xA431] = "SN-0042-XYZ"
    exif.get_ifd(0x8769)[0x927C] = b"MakerNoteBytes" * 8
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'
    return images.encode(photos.scene(seed, (1024, 768)), exif=exif, quality=90, comment=b"shot by ann@example.com", xmp=xmp)


def second_iphone() -> bytes:
    import datetime as dt

    return photos.jpeg(210, (1296, 968), make="Apple", model="iPhone 5", taken=dt.datetime(2016, 3, 12, 10, 45),
                       gps=(-12.93649, -38.39423))


# Each person's photos: a tests/photos.py CAMERAS name, or a seed of photos.jpeg. Two are
# iPhone 5 photos with GPS in the southern hemisphere; one is a PNG; one talks too much.
PEOPLE = {
    "ann@example.com": ["iphone", second_iphone, "canon", "large"],
    "bob@example.com": ["motorola", "portrait", "png", "us"],
    "cat@example.com": ["no-orientation", lambda: talkative_camera(211), "eu"],
    "dev@example.com": ["plain", "br", 212],
    "eve@example.com": [213, 214],
    "fay@example.com": [215],
}


def photo_bytes(spec) -> bytes:
    if isinstance(spec, str):
        return photos.named(spec)
    if isinstance(spec, int):
        return photos.jpeg(spec, (960, 720))
    return spec()


@pytest.fixture
def collection(svc, make_user, submit):
    users = {}
    for email, specs in PEOPLE.items():
        users[email] = make_user(email, email.split("@")[0].title())
        for spec in specs:
            v = submit(users[email], photo_bytes(spec))
            assert v.accepted, (spec, v.message)
    heic = submit(users["fay@example.com"], photos.named("heic"), "IMG_0001.HEIC")
    assert heic.accepted, heic.message
    rotated = submit(users["eve@example.com"], images.exif_rotated(photos.jpeg(216, (960, 720)), 6), "rot.jpg")
    assert rotated.accepted
    return users


def run_export(runner, out, *args):
    r = runner.invoke(args=["export", str(out), *args])
    assert r.exit_code == 0, r.output
    return r


def csv_rows(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def manifest_rows(out):
    rows = []
    for split in ("train", "validation", "test"):
        path = out / split / "metadata.jsonl"
        if path.exists():
            rows += [json.loads(line) | {"_dir": split} for line in path.read_text().splitlines()]
    return rows


def test_imagefolder_loads_in_datasets_with_every_field(runner, collection, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "ds"
    r = run_export(runner, out)
    assert "19 photos" in r.stderr and "written: 19" in r.stderr
    ds = load_dataset("imagefolder", data_dir=str(out))
    assert sum(len(ds[s]) for s in ds) == 19
    expected = ["image", "sha256", "source_sha256", "width", "height", "captured_at", "camera_make", "camera_model",
                "contributor", "licence", "perceptual_hash", "split", "plates"]
    for split in ds:
        assert list(ds[split].features) == expected
        row = ds[split][0]
        assert row["image"].size == (row["width"], row["height"]) or row["image"].size == (row["height"], row["width"])
    first_line = next((out / s / "metadata.jsonl") for s in ("train", "validation", "test") if (out / s / "metadata.jsonl").exists()).read_text().splitlines()[0]
    assert first_line.startswith('{"file_name": ')
    card = (out / "README.md").read_text()
    assert "CC BY 4.0" in card and "| train |" in card


def test_checksums_privacy_and_untouched_pixels(svc, runner, collection, tmp_path):
    out = tmp_path / "ds"
    run_export(runner, out)
    sums = dict(reversed(line.split("  ", 1)) for line in (out / "SHA256SUMS").read_text().splitlines())
    rows = manifest_rows(out)
    assert len(rows) == 19 and "README.md" in sums
    for rel, digest in sums.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel
    emails = set(PEOPLE)
    jpegs = 0
    talkative = talkative_camera(211)  # what the checks below look for is there before the export
    assert all(secret in talkative for secret in SECRET_BYTES)
    assert {"Image ImageDescription", "EXIF BodySerialNumber", "GPS GPSLatitude"} <= set(exifread.process_file(io.BytesIO(talkative), details=False))
    for row in rows:
        path = out / row["_dir"] / row["file_name"]
        data = path.read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["contributor"] not in emails and "@" not in json.dumps(row)
        assert row["captured_at"] == "" or len(row["captured_at"]) == 19
        tags = exifread.process_file(io.BytesIO(data), details=False)
        assert not any(k.startswith("GPS") for k in tags), row["file_name"]
        assert not any(k in tags for k in (*SECRET_TAGS, "JPEGThumbnail"))
        assert not any(secret in data for secret in SECRET_BYTES), row["file_name"]
        with Image.open(io.BytesIO(data)) as im:
            assert "xmp" not in im.info and "comment" not in im.info
        with svc.db.Session() as session:
            source = session.scalars(select(Photo).where(Photo.sha256 == row["source_sha256"])).one()
        if source.format == "JPEG":  # JPEGs are not re-encoded: byte-identical scans
            with svc.storage.open(source.storage_key) as fh:
                assert privacy.scan_data(data) == privacy.scan_data(fh.read()), row["file_name"]
            jpegs += 1
    assert jpegs >= 15


def test_gps_kept_only_when_asked(runner, collection, tmp_path):
    out = tmp_path / "private"
    run_export(runner, out, "--keep-gps", "--format", "csv")
    rows = csv_rows(out / "manifest.csv")
    jst = next(r for r in rows if r["camera_model"] == "iPhone 5")
    tags = exifread.process_file(io.BytesIO((out / jst["file_name"]).read_bytes()), details=False)
    assert str(tags["GPS GPSLatitudeRef"]) == "S"


def test_orientation_and_heic(runner, collection, tmp_path):
    out = tmp_path / "ds"
    run_export(runner, out, "--format", "csv")
    rows = csv_rows(out / "manifest.csv")
    rot = next(r for r in rows if r["source_sha256"] and (out / r["file_name"]).exists() and
               exifread.process_file(io.BytesIO((out / r["file_name"]).read_bytes()), details=False).get("Image Orientation") is not None)
    with Image.open(out / rot["file_name"]) as im:
        from PIL import ImageOps

        shown = ImageOps.exif_transpose(im)
        assert shown.size == (int(rot["width"]), int(rot["height"]))
    heic = next(r for r in rows if r["camera_model"] == "iPhone 11 Pro Max")
    assert heic["file_name"].endswith(".jpg")
    with Image.open(out / heic["file_name"]) as im:
        assert im.format == "JPEG" and im.size == (int(heic["width"]), int(heic["height"]))


@pytest.mark.settings(NEAR_DUPLICATE_DISTANCE=0)  # let near-copies in, to see them grouped
def test_splits_keep_contributors_and_near_duplicates_together(svc, make_user, submit, runner, tmp_path):
    people = [make_user(f"p{i}@example.com", f"P{i}") for i in range(12)]
    from .synthetic import plate_photo

    for i, person in enumerate(people):
        for j in range(3):
            assert submit(person, plate_photo(i * 10 + j, (960, 720))).accepted
    # person 11 sends a re-encode of person 0's first photo: a near-duplicate pair across people
    from PIL import ImageEnhance

    copy = images.encode(ImageEnhance.Brightness(images.load_bytes(plate_photo(0, (960, 720)))).enhance(1.3), quality=60)
    v = submit(people[11], copy)
    assert v.accepted, v.message
    out = tmp_path / "ds"
    run_export(runner, out, "--split", "50/25/25")
    rows = manifest_rows(out)
    by_person: dict[str, set] = {}
    for r in rows:
        by_person.setdefault(r["contributor"], set()).add(r["_dir"])
        assert r["split"] == r["_dir"]
    assert all(len(s) == 1 for s in by_person.values())
    assert {r["_dir"] for r in rows} == {"train", "validation", "test"}
    close = [(a, b) for a in rows for b in rows if a is not b and dedup.distance(a["perceptual_hash"], b["perceptual_hash"]) <= 31]
    assert close and all(a["_dir"] == b["_dir"] for a, b in close)
    # deterministic: the same data gives the same splits
    run_export(runner, tmp_path / "again", "--split", "50/25/25")
    assert sorted((r["file_name"], r["_dir"]) for r in manifest_rows(tmp_path / "again")) == sorted((r["file_name"], r["_dir"]) for r in rows)


def test_incremental_rerun_and_review_rejection(svc, runner, collection, submit, tmp_path):
    out = tmp_path / "ds"
    run_export(runner, out)
    r = run_export(runner, out)
    assert "written: 0, unchanged: 19, removed: 0" in r.stderr
    victim = manifest_rows(out)[0]
    with svc.db.write_transaction(lock=False) as tx:
        tx.execute(update(Photo).where(Photo.sha256 == victim["source_sha256"]).values(status="rejected"))
    assert submit(collection["dev@example.com"], photos.jpeg(217, (960, 720))).accepted
    r = run_export(runner, out)
    assert "written: 1, unchanged: 18, removed: 1" in r.stderr
    assert not (out / victim["_dir"] / victim["file_name"]).exists()
    assert victim["source_sha256"] not in (out / "SHA256SUMS").read_text()
    assert len(manifest_rows(out)) == 19


def test_flagged_only_with_the_flag(svc, runner, collection, tmp_path):
    with svc.db.write_transaction(lock=False) as tx:
        tx.execute(update(Photo).where(Photo.camera_model == "iPhone 5").values(status="flagged"))
    assert len(manifest_rows(run_export(runner, tmp_path / "a") and tmp_path / "a")) == 17
    run_export(runner, tmp_path / "b", "--include-flagged")
    assert len(manifest_rows(tmp_path / "b")) == 19


def test_interrupted_run_leaves_the_previous_export_readable(svc, runner, collection, submit, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    run_export(runner, out)
    before = (out / "SHA256SUMS").read_text()
    assert submit(collection["dev@example.com"], photos.jpeg(217, (960, 720))).accepted
    real_open = svc.storage.open
    calls = {"n": 0}

    def failing_open(key):
        calls["n"] += 1
        raise OSError("disk unplugged")

    monkeypatch.setattr(svc.storage, "open", failing_open)
    r = runner.invoke(args=["export", str(out)])
    assert r.exit_code != 0 and calls["n"] == 1
    monkeypatch.setattr(svc.storage, "open", real_open)
    assert (out / "SHA256SUMS").read_text() == before
    for line in before.splitlines():
        digest, rel = line.split("  ", 1)
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    assert not list(out.rglob(".tmp-*"))


def test_since_writes_a_delta(svc, runner, collection, tmp_path):
    import datetime as dt

    with svc.db.write_transaction(lock=False) as tx:
        tx.execute(update(Photo).values(created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
        tx.execute(update(Photo).where(Photo.camera_model == "iPhone 5").values(created_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC)))
    run_export(runner, tmp_path / "delta", "--since", "2026-02-01", "--format", "csv")
    assert len(csv_rows(tmp_path / "delta" / "manifest.csv")) == 2


def test_coco_format(runner, collection, tmp_path):
    out = tmp_path / "coco"
    run_export(runner, out, "--format", "coco")
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "plate", "supercategory": "vehicle"}]
    assert coco["annotations"] == [] and len(coco["images"]) == 19
    img = coco["images"][0]
    assert {"id", "file_name", "width", "height", "date_captured"} <= set(img)
    assert (out / img["file_name"]).is_file()


def test_dry_run_writes_nothing_and_bad_split_is_refused(runner, collection, tmp_path):
    r = runner.invoke(args=["export", str(tmp_path / "x"), "--dry-run"])
    assert r.exit_code == 0 and "DRY RUN" in r.stderr and not (tmp_path / "x").exists()
    r = runner.invoke(args=["export", str(tmp_path / "x"), "--split", "80/30/10"])
    assert r.exit_code != 0 and "adding up to 100" in r.output


def _jpeg_files():
    from .conftest import CORPUS

    if not CORPUS.is_dir():
        pytest.skip(f"needs ../shared/corpus ({CORPUS} is absent)")
    return [p for p in sorted(CORPUS.rglob("*")) if p.is_file() and p.read_bytes()[:2] == b"\xff\xd8"]


def test_end_of_image_from_the_structure_is_where_a_full_scan_finds_it():
    """The export finds the first image's EOI from the segments (no pass over 3 MB of scan
    data) only where that is the scan's answer: every JPEG and MPO of the corpus agrees."""
    checked = 0
    for path in _jpeg_files():
        data = path.read_bytes()
        try:
            *_, (marker, sos, eoi) = privacy.jpeg_segments(data)
        except (ValueError, struct.error):
            continue
        assert marker == "SOS"
        assert eoi == privacy._scan_for_eoi(data, sos), path.name
        checked += 1
    assert checked >= 60


def test_what_follows_the_first_image_is_left_out():
    first = _plain_jpeg()
    second = _plain_jpeg(colour=(0, 200, 0))
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><Container:Directory/></x:xmpmeta>"
    app1 = b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp
    declared = first[:2] + app1 + first[2:] + second  # a motion/depth photo: declared in XMP
    out = privacy.clean_jpeg(declared, privacy.minimal_exif(1, None, None, None))
    assert out.endswith(privacy.scan_data(first)) and second not in out
    trailer = first + b"VIDEO" * 100  # an undeclared trailer that is not an image
    out = privacy.clean_jpeg(trailer, privacy.minimal_exif(1, None, None, None))
    assert out.endswith(privacy.scan_data(first)) and b"VIDEO" not in out


def _plain_jpeg(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def hostile_settings(settings):
    """Settings the card must state or quote: a non-default near-duplicate distance and a
    licence written to end the YAML front matter and add keys of its own."""
    settings["NEAR_DUPLICATE_DISTANCE"] = 12
    settings["LICENCE"] = 'CC BY 4.0"\n---\nlicense: mit # \\\npretty_name: [pwned]'
    return settings


def front_matter(card: str) -> tuple[dict, str]:
    import yaml

    assert card.startswith("---\n")
    head, sep, body = card[4:].partition("\n---\n")
    assert sep, card
    return yaml.safe_load(head), body


def test_card_states_the_distance_and_no_value_breaks_its_front_matter(hostile_settings, runner, make_user, submit, tmp_path):
    import datetime as dt

    # a contributor's camera says what it likes: it must not reach the card's header either
    hostile = photos.jpeg(220, (960, 720), make="Evil\n---\nlicense: mit", model="x: [y]\n# ---",
                          taken=dt.datetime(2024, 5, 6, 7, 8, 9))
    assert submit(make_user(), hostile).accepted
    out = tmp_path / "ds"
    run_export(runner, out, "--format", "csv")
    card = (out / "README.md").read_text()
    header, body = front_matter(card)
    assert header == {"license": hostile_settings["LICENCE"].lower().replace(" ", "-"),
                      "task_categories": ["object-detection"], "pretty_name": "Plate Collector number plates"}
    assert body.startswith("# Plate Collector: number-plate photos\n")
    assert "Hamming distance of 12 bits or less out of 256" in body and "31 bits or less" not in body
    assert "photos within 31 bits of each\nother" in body  # the split grouping radius is the index's, not the setting
    assert "\n## Plates\n" in body and "\n## Loading\n" in body and "| train |" in body


@pytest.mark.parametrize("text", ["cc-by-4.0", "yes", "No", "null", "1.0", "a: b", "#x", "---", "- item", "[a]", "{a: b}",
                                  "!tag", "&a", "*a", "|", ">", "%x", "@x", "", " lead", "trail ", "it's", 'say "hi"',
                                  "back\\slash", "new\nline", "tab\there", "\x00\x7f", "é", "\u2028", "😀"])
def test_yaml_scalar_round_trips(text):
    import yaml

    from collector.dataset.export import yaml_scalar

    scalar = yaml_scalar(text)
    assert "\n" not in scalar
    assert yaml.safe_load(f"key: {scalar}\nother: 1\n") == {"key": text, "other": 1}
