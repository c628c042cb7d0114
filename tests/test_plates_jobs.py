"""Plate reading off the upload path: the worker, its crash safety, policies, corrections, report.

Worker processes here are real ``flask plates run`` processes on the test's database (SQLite
file or PostgreSQL) and storage folder; one is killed with SIGKILL in the middle of a photo.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from collector.plates import jobs
from collector.platform.models import PhotoPlate, PlateRead, ReviewAction, User

from .conftest import ROOT
from .plate_images import no_plate_photo, plate_photo

SIZE = (800, 600)  # small photos: each reading costs about a second of CPU here


def _plate(text_lines, seed):
    return plate_photo(text_lines, seed=seed, size=SIZE, plate_width=240)[0]


def _accept(svc, user, data, name="p.jpg"):
    v = svc.intake.submit(user.id, io.BytesIO(data), name)
    assert v.status == "accepted", (v.code, v.message)
    return v.photo_id


def _count(svc, user_id):
    with svc.db.Session() as s:
        return s.get(User, user_id).accepted_count


def _read(svc, photo_id):
    with svc.db.Session() as s:
        return s.get(PlateRead, photo_id)


def _run(svc, **kw):
    return jobs.run(svc.db, svc.storage, svc.settings, until_idle=True, **kw)


def test_worker_reads_every_accepted_photo_once_and_report_says_so(svc, make_user, runner):
    ann = make_user()
    p1 = _accept(svc, ann, _plate(["KA01 AB1234"], 1))
    p2 = _accept(svc, ann, no_plate_photo(2, SIZE))
    r = runner.invoke(args=["plates", "report", "--json"])
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["pending", "pending"]
    assert _run(svc) == 2
    assert _run(svc) == 0  # idempotent: nothing left to read
    r = runner.invoke(args=["plates", "report", "--json"])
    rows = {row["photo_id"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert rows[p1]["status"] == "found" and rows[p1]["text"] == "KA01AB1234" and rows[p1]["score"] >= 0.7
    x, y, w, h = rows[p1]["box"]
    assert 200 < x < 400 and 300 < y < 400 and w > 2 * h
    assert rows[p2] | {"sha256": None} == {"photo_id": p2, "sha256": None, "status": "none", "text": None, "score": None,
                                          "box": None, "source": None, "plates": []}
    assert _count(svc, ann.id) == 2  # policy `review`: no plate keeps its credit
    text = runner.invoke(args=["plates", "report"]).stdout
    assert "KA01AB1234" in text and "none" in text


def test_photos_accepted_before_plates_existed_are_back_filled(svc, make_user):
    """Nothing is queued at upload: a photo without a reading is pending, whenever it came."""
    ann = make_user()
    pid = _accept(svc, ann, _plate(["AB-123-CD"], 3))
    with svc.db.Session() as s:
        assert s.get(PlateRead, pid) is None
    assert _run(svc) == 1 and _read(svc, pid).state == "found"


def test_a_photo_missing_from_storage_is_an_error_not_a_crash(svc, make_user):
    ann = make_user()
    pid = _accept(svc, ann, _plate(["AB-123-CD"], 4))
    with svc.db.Session() as s:
        from collector.platform.models import Photo
        key = s.get(Photo, pid).storage_key
    svc.storage.delete(key)
    assert _run(svc) == 1
    read = _read(svc, pid)
    assert read.state == "error" and "missing" in read.error


def test_a_photo_over_its_deadline_is_an_error(svc, make_user):
    ann = make_user()
    pid = _accept(svc, ann, _plate(["AB-123-CD"], 8))
    assert _run(svc, deadline_s=0.001) == 1
    read = _read(svc, pid)
    assert read.state == "error" and "longer than" in read.error


def test_an_expired_lease_is_claimed_again_and_the_old_holder_cannot_write(svc, make_user):
    ann = make_user()
    pid = _accept(svc, ann, _plate(["AB-123-CD"], 5))
    first = jobs.claim_next(svc.db, "dead-worker")
    assert first.photo_id == pid
    assert jobs.claim_next(svc.db, "other", lease=dt.timedelta(minutes=10)) is None  # leased
    second = jobs.claim_next(svc.db, "other", lease=dt.timedelta(0))
    assert second.photo_id == pid and second.token != first.token
    assert jobs.finish(svc.db, second, [], 1, svc.settings) is True
    assert jobs.finish(svc.db, first, [], 1, svc.settings) is False  # written once
    assert jobs.finish(svc.db, second, [], 1, svc.settings) is False
    assert _read(svc, pid).attempts == 2


def test_a_photo_that_kills_every_worker_ends_as_an_error(svc, make_user):
    ann = make_user()
    pid = _accept(svc, ann, _plate(["AB-123-CD"], 6))
    for _ in range(jobs.MAX_ATTEMPTS):
        assert jobs.claim_next(svc.db, "w", lease=dt.timedelta(0)).photo_id == pid
    assert jobs.claim_next(svc.db, "w", lease=dt.timedelta(0)) is None
    read = _read(svc, pid)
    assert read.state == "error" and "3 times" in read.error


# -- real worker processes ----------------------------------------------------------------------

def _worker(settings, *args):
    env = dict(os.environ, COLLECTOR_DATABASE_URL=settings["DATABASE_URL"], COLLECTOR_STORAGE_URL=settings["STORAGE_URL"],
               COLLECTOR_DATA_DIR=settings["DATA_DIR"], COLLECTOR_SECRET_KEY="test-secret")
    return subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "plates", "run", "--json", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _events(out: str):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_worker_killed_mid_photo_leaves_it_to_the_next_worker(svc, settings, make_user):
    ann = make_user()
    pid = _accept(svc, ann, _plate(["MH12 DE1433"], 7))
    proc = _worker(settings)
    try:
        line = proc.stdout.readline()  # the worker says "reading" once it holds the claim
        assert json.loads(line) == {"event": "reading", "photo_id": pid, "worker": json.loads(line)["worker"]}, line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    read = _read(svc, pid)
    assert read.state == "reading" and read.attempts == 1  # killed before it wrote anything
    with svc.db.Session() as s:
        assert s.scalars(select(PhotoPlate).where(PhotoPlate.photo_id == pid)).all() == []
    time.sleep(1.2)  # let the lease below expire
    second = _worker(settings, "--until-idle", "--lease-seconds", "1")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    assert [e["event"] for e in _events(out)] == ["reading", "found"]
    read = _read(svc, pid)
    assert read.state == "found" and read.attempts == 2
    with svc.db.Session() as s:
        assert s.scalars(select(PhotoPlate.text).where(PhotoPlate.photo_id == pid)).all() == ["MH12DE1433"]


def test_two_workers_never_read_one_photo_twice(svc, settings, make_user):
    ann = make_user()
    ids = [_accept(svc, ann, _plate([f"AB{i:02d} CD{i:03d}"], 10 + i), f"{i}.jpg") for i in range(6)]
    ids += [_accept(svc, ann, no_plate_photo(40 + i, (640, 480)), f"n{i}.jpg") for i in range(4)]
    procs = [_worker(settings, "--until-idle") for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    read_by = [[e["photo_id"] for e in _events(out) if e["event"] == "reading"] for out, _ in outs]
    assert sorted(read_by[0] + read_by[1]) == sorted(ids)  # every photo, and none twice
    assert all(read_by), "both workers should have had work"
    with svc.db.Session() as s:
        reads = s.scalars(select(PlateRead)).all()
        assert len(reads) == len(ids) and {r.attempts for r in reads} == {1}
        assert {r.state for r in reads} <= {"found", "none"}
        assert len({(p.photo_id, p.position) for p in s.scalars(select(PhotoPlate))}) == s.query(PhotoPlate).count()


# -- policies and corrections ---------------------------------------------------------------------

@pytest.mark.settings(PLATE_POLICY="hold")
def test_hold_policy_takes_the_credit_back_until_an_organiser_approves(app, svc, make_user):
    ann = make_user()
    org = make_user("org@example.com", "Org", organiser=True)
    _accept(svc, ann, _plate(["KA01 AB1234"], 20))
    flowers = _accept(svc, ann, no_plate_photo(21, SIZE))
    assert _count(svc, ann.id) == 2
    _run(svc)
    assert _count(svc, ann.id) == 1 and _read(svc, flowers).credit_held == "no_plate"
    assert jobs.approve(svc.db, flowers, org.id, svc.settings)
    assert _count(svc, ann.id) == 2 and _read(svc, flowers).credit_held is None


@pytest.mark.settings(PLATE_POLICY="hold")
def test_rejecting_a_held_photo_does_not_take_its_credit_twice(app, svc, make_user):
    from collector.organisers import review

    ann = make_user()
    org = make_user("org@example.com", "Org", organiser=True)
    flowers = _accept(svc, ann, no_plate_photo(22, SIZE))
    _run(svc)
    assert _count(svc, ann.id) == 0
    assert review.reject(svc.db, flowers, org.id, "not_a_plate")
    assert _count(svc, ann.id) == 0
    assert review.restore(svc.db, flowers, org.id)
    assert _count(svc, ann.id) == 1
    with svc.db.write_transaction(lock=False) as tx:  # settling again keeps the organiser's decision
        assert jobs.settle_user(tx, ann.id, svc.settings) == 0
    assert _count(svc, ann.id) == 1


@pytest.mark.settings(DISTINCT_PLATES=True)
def test_distinct_plates_count_once_and_a_correction_is_kept_audited_and_wins(svc, make_user):
    ann = make_user()
    org = make_user("org@example.com", "Org", organiser=True)
    a = _accept(svc, ann, _plate(["KA01 AB1234"], 30))
    b = _accept(svc, ann, _plate(["KA01 AB1234"], 31, ), "same-car.jpg")
    _run(svc)
    assert _count(svc, ann.id) == 1 and _read(svc, b).credit_held == "repeat_plate"
    with svc.db.Session() as s:
        assert jobs.distinct_plates(s, ann.id) == (1, [("KA01AB1234", 2)])
    # the organiser reads the second photo differently: it is a plate of its own and counts
    assert jobs.correct(svc.db, b, org.id, "ka-01 ab 1284", svc.settings) == "KA01AB1284"
    assert _count(svc, ann.id) == 2 and _read(svc, b).credit_held is None
    with svc.db.Session() as s:
        plate = s.scalars(select(PhotoPlate).where(PhotoPlate.photo_id == b)).one()
        assert (plate.text, plate.machine_text, plate.source) == ("KA01AB1284", "KA01AB1234", "organiser")
        action = s.scalars(select(ReviewAction).where(ReviewAction.photo_id == b)).one()
        assert action.action == "plate" and "KA01AB1234 -> KA01AB1284" in action.note
    with svc.db.Session() as s:
        rows = {r["photo_id"]: r for r in jobs.report_rows(s)}
    assert rows[b]["text"] == "KA01AB1284" and rows[b]["source"] == "organiser" and rows[a]["source"] == "machine"
    with pytest.raises(jobs.PlateError):
        jobs.correct(svc.db, b, org.id, " -- ", svc.settings)


def test_same_plate_from_another_contributor_is_flagged_as_a_possible_crop(svc, make_user):
    ann, bob = make_user(), make_user("bob@example.com", "Bob")
    a = _accept(svc, ann, _plate(["MH12 DE1433"], 50))
    b = _accept(svc, bob, plate_photo(["MH12 DE1433"], seed=51, size=(900, 700), plate_width=300)[0])
    _run(svc)
    assert _read(svc, b).similar_to_id == a and _read(svc, a).similar_to_id is None
    from collector.platform.models import Photo
    with svc.db.Session() as s:
        listed = s.scalars(select(Photo.id).where(jobs.filter_condition("possible_crop"))).all()
        same = s.scalars(select(Photo.id).where(jobs.filter_condition("same_plate"))).all()
    assert listed == [b] and sorted(same) == [a, b]


@pytest.mark.settings(PLATE_POLICY="off")
def test_policy_off_reads_nothing(svc, make_user, runner):
    ann = make_user()
    _accept(svc, ann, _plate(["AB-123-CD"], 60))
    r = runner.invoke(args=["plates", "run", "--until-idle"])
    assert r.exit_code == 0 and "off" in r.stderr
    with svc.db.Session() as s:
        assert [row["status"] for row in jobs.report_rows(s)] == ["pending"]


# -- pages ----------------------------------------------------------------------------------------

def test_pages_show_the_plate_the_box_and_take_a_correction(app, svc, make_user):
    import re

    from .conftest import Auth

    ann = make_user()
    org = make_user("org@example.com", "Org", organiser=True)
    car = _accept(svc, ann, _plate(["KA01 AB1234"], 70))
    flowers = _accept(svc, ann, no_plate_photo(71, SIZE))
    pending = None
    _run(svc)
    pending = _accept(svc, ann, _plate(["AB-123-CD"], 72))

    attendee = app.test_client()
    Auth(attendee).login(ann.email)
    mine = attendee.get("/photos").get_data(as_text=True)
    assert "plate read: <strong class=\"plate-text\">KA01AB1234</strong>" in mine
    assert "no plate found: an organiser will look at it" in mine
    assert "plate not read yet" in mine and pending
    assert attendee.post(f"/dashboard/photos/{flowers}/plate", data={"text": "X"}).status_code in (400, 403)

    c = app.test_client()
    Auth(c).login(org.email)
    page = c.get(f"/dashboard/photos/{car}").get_data(as_text=True)
    rect = re.search(r'<rect class="plate-box" x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)" data-text="KA01AB1234">', page)
    assert rect and int(rect.group(3)) > 2 * int(rect.group(4))
    assert "style=" not in page.split("<main", 1)[-1] and "<script>" not in page  # CSP-safe: no inline style or script
    grid = c.get("/dashboard/review?filter=no_plate").get_data(as_text=True)
    assert f'id="photo-{flowers}"' in grid and f'id="photo-{car}"' not in grid
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    r = c.post(f"/dashboard/photos/{flowers}/plate", data={"text": "mh 12 de 1433", "csrf_token": token})
    assert r.status_code == 302
    page = c.get(f"/dashboard/photos/{flowers}").get_data(as_text=True)
    assert "MH12DE1433" in page and "plate text (none) -&gt; MH12DE1433" in page
    assert f'id="photo-{flowers}"' not in c.get("/dashboard/review?filter=no_plate").get_data(as_text=True)
    dash = c.get("/dashboard").get_data(as_text=True)
    assert re.search(r'id="n-plates-found">2<', dash) and re.search(r'id="n-plates-pending">1<', dash)
    person = c.get(f"/dashboard/contributors/{ann.id}").get_data(as_text=True)
    assert re.search(r'id="distinct-plates">2\b', person)


def test_worker_stops_with_the_process_it_was_started_with(settings, svc):
    """`make run` starts the worker with --stop-with its own pid: the worker ends with it."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc = _worker(settings, "--stop-with", str(parent.pid))
    try:
        time.sleep(1)
        assert proc.poll() is None  # idle, waiting for photos
        parent.kill()
        parent.wait()
        proc.wait(timeout=120)
        assert proc.returncode == 0
    finally:
        parent.kill()
        proc.kill()
        proc.communicate()


# -- export ---------------------------------------------------------------------------------------

def test_export_carries_the_plates_into_coco_imagefolder_csv_and_the_card(svc, make_user, runner, tmp_path):
    import csv

    ann, bob = make_user(), make_user("bob@example.com", "Bob")
    org = make_user("org@example.com", "Org", organiser=True)
    car = _accept(svc, ann, _plate(["KA01", "AH3886"], 80))
    _accept(svc, bob, no_plate_photo(81, SIZE))
    typed = _accept(svc, bob, no_plate_photo(82, SIZE), "typed.jpg")
    _run(svc)
    jobs.correct(svc.db, typed, org.id, "XY12ZZ", svc.settings)

    out = tmp_path / "coco"
    assert runner.invoke(args=["export", str(out), "--format", "coco", "--split", "34/33/33"]).exit_code == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "plate", "supercategory": "vehicle"}]
    [a] = coco["annotations"]  # the typed plate has no box, so no annotation
    assert a["image_id"] == car and a["category_id"] == 1 and a["iscrowd"] == 0 and a["segmentation"] == []
    assert a["attributes"] == {"text": "KA01AH3886", "source": "machine", "occluded": False}
    x, y, w, h = a["bbox"]
    assert a["area"] == w * h and 0 <= x and x + w <= 800 and 0 <= y and y + h <= 600
    image = next(i for i in coco["images"] if i["id"] == car)
    assert (out / image["file_name"]).is_file() and (image["width"], image["height"]) == (800, 600)
    card = (out / "README.md").read_text()
    assert "RapidOCR" in card and "Plates: 2, of which 1 were typed or corrected by a person" in card

    out = tmp_path / "csv"
    assert runner.invoke(args=["export", str(out), "--format", "csv"]).exit_code == 0
    with open(out / "manifest.csv", newline="") as fh:
        rows = {r["plates"] for r in csv.DictReader(fh)}
    assert '[{"text":"XY12ZZ","box":null,"source":"organiser"}]' in rows and "[]" in rows

    from datasets import load_dataset

    out = tmp_path / "imagefolder"
    assert runner.invoke(args=["export", str(out), "--split", "34/33/33"]).exit_code == 0
    ds = load_dataset("imagefolder", data_dir=str(out))
    plates = [p for s in ds for row in ds[s] for p in json.loads(row["plates"])]
    assert sorted(p["text"] for p in plates) == ["KA01AH3886", "XY12ZZ"]
