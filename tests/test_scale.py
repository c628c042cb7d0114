"""Beyond one process: S3 storage end to end, and four gunicorn workers sharing one database
and one object store, racing on the same photos."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import func, select

from collector.platform.models import Photo, User
from collector.platform.storage import photo_key, thumb_key
from collector.web import accounts

from . import images, photos
from .conftest import free_port, gunicorn, multipart
from .synthetic import plate_photo


def test_s3_backend_end_to_end(s3_settings, s3_env, request):
    import boto3

    svc, client = request.getfixturevalue("svc"), request.getfixturevalue("client")  # on s3_settings
    token = accounts.create_token(svc.db, request.getfixturevalue("make_user")().id).token
    data = photos.named("iphone")
    r = client.post("/api/v1/photos", **multipart(data, "a.jpg"), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.json
    sha = r.json["photo"]["sha256"]
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_env["endpoint"]).list_objects_v2(Bucket=s3_env["bucket"])["Contents"]}
    assert keys == {f"plates/{photo_key(sha, 'jpg')}", f"plates/{thumb_key(sha)}"}
    with svc.storage.open(photo_key(sha, "jpg")) as fh:
        assert fh.read() == data


def test_unreachable_store_refuses_upload_with_retry_later(settings, monkeypatch, request):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings["STORAGE_URL"] = "s3://bucket/p"
    settings["S3_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    svc, client = request.getfixturevalue("svc"), request.getfixturevalue("client")  # on the settings above
    user = request.getfixturevalue("make_user")()
    token = accounts.create_token(svc.db, user.id).token
    r = client.post("/api/v1/photos", **multipart(photos.named("canon")), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 503 and r.json["code"] == "storage_unavailable" and r.headers["Retry-After"]
    assert "try again" in r.json["message"]
    with svc.db.Session() as s:
        assert s.scalar(select(func.count()).select_from(Photo)) == 0
        assert s.get(User, user.id).accepted_count == 0


@pytest.fixture
def workers(s3_settings, tmp_path, request):
    """gunicorn with 4 worker processes on loopback, sharing the test's database and bucket,
    loaded the way a deployment loads it (`gunicorn app:app`, settings from the environment)."""
    with gunicorn(s3_settings, tmp_path / "gunicorn.log", workers=4, threads=4) as port:
        yield f"http://127.0.0.1:{port}", request.getfixturevalue("svc")  # for users and reading back the truth


def tokens_for(svc, n):
    out = []
    for i in range(n):
        user = accounts.create_user(svc.db, f"p{i}@example.com", f"P{i}", "correct horse battery", "CC BY 4.0")
        out.append((user, accounts.create_token(svc.db, user.id).token))
    return out


def post_all(base, jobs, parallel):
    """Send every (token, bytes, name) at once through a barrier; return the JSON answers."""
    barrier = threading.Barrier(min(parallel, len(jobs)))

    def send(job):
        token, data, name = job
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        r = requests.post(f"{base}/api/v1/photos", files={"photo": (name, data)}, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        assert r.headers["Content-Type"].startswith("application/json"), r.text[:300]
        return r.status_code, r.json()

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(send, jobs))


def test_twelve_uploads_of_one_photo_by_three_people_across_four_workers(workers):
    base, svc = workers
    people = tokens_for(svc, 3)
    data = photos.named("large")
    answers = post_all(base, [(tok, data, "same.jpg") for _, tok in people for _ in range(4)], 12)
    statuses = [a["status"] for _, a in answers]
    assert statuses.count("accepted") == 1
    assert all(code != 500 for code, _ in answers)
    with svc.db.Session() as s:
        assert s.scalar(select(func.count()).select_from(Photo)) == 1
        assert s.scalar(select(func.sum(User.accepted_count))) == 1
    winner = next(a for _, a in answers if a["status"] == "accepted")
    # the winner's own retries are already_uploaded, everyone else's a duplicate
    assert statuses.count("already_uploaded") == 3
    assert sum(1 for _, a in answers if a["code"] == "duplicate") == 8
    assert winner["progress"]["accepted"] == 1


def test_eight_near_identical_reencodes_at_once_accept_at_most_one(workers):
    base, svc = workers
    people = tokens_for(svc, 8)
    variants = [images.reencode(photos.named("large"), q) for q in (55, 60, 65, 70, 75, 80, 85, 90)]
    answers = post_all(base, [(tok, data, f"v{i}.jpg") for i, ((_, tok), data) in enumerate(zip(people, variants, strict=True))], 8)
    assert sum(1 for _, a in answers if a["status"] == "accepted") <= 1
    assert all(a["code"] in (None, "near_duplicate") for _, a in answers)
    with svc.db.Session() as s:
        assert s.scalar(select(func.count()).select_from(Photo)) <= 1


def test_a_few_hundred_uploads_through_four_workers_credit_exactly(workers):
    """A small version of bench/load.py: credits and stored objects must match the answers."""
    base, svc = workers
    people = tokens_for(svc, 8)
    jobs = []
    for i, (_, tok) in enumerate(people):
        for j in range(20):
            jobs.append((tok, plate_photo(1000 + i * 100 + j, size=(1008, 756)), f"{i}-{j}.jpg"))
    # deliberate duplicates: a retry of one's own photo, another person's exact copy, a re-encode
    jobs += [(people[0][1], jobs[5][1], "retry.jpg"), (people[1][1], jobs[6][1], "copy.jpg")]
    jobs += [(people[2][1], images.encode(images.load_bytes(jobs[7][1]), quality=70), "reencode.jpg")]
    answers = post_all(base, jobs, 16)
    assert all(code in (200, 201, 409) for code, _ in answers), [a for c, a in answers if c not in (200, 201, 409)]
    accepted = [a for _, a in answers if a["status"] == "accepted"]
    assert len(accepted) == 160
    assert sorted(a["code"] for _, a in answers if a["status"] != "accepted") == ["already_uploaded", "duplicate", "near_duplicate"]
    with svc.db.Session() as s:
        rows = s.execute(select(Photo.sha256, Photo.storage_key, Photo.thumb_key)).all()
        assert {r.sha256 for r in rows} == {a["photo"]["sha256"] for a in accepted}
        assert [u.accepted_count for u in s.scalars(select(User).order_by(User.id))] == [20] * 8
    keys = {o.key for o in svc.storage.list()}
    assert {r.storage_key for r in rows} | {r.thumb_key for r in rows} == keys
