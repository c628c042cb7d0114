"""The tus server (collector/web/resumable.py) through Flask's test client, on a real database and a
real storage folder (and the S3 server for the part objects)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io

import pytest
from sqlalchemy import select, update

from collector.platform.models import Photo, ResumableUpload, UploadRejection
from collector.web.resumable import PART_PREFIX

from .synthetic import plate_photo
from .test_scale import workers  # noqa: F401  (the four-worker fixture)

TUS = {"Tus-Resumable": "1.0.0"}


def scalars(svc, query):
    with svc.db.Session() as session:
        return session.scalars(query).all()


def meta(**values) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


class Tus:
    """A tiny tus client over the test client, with a session's CSRF header or a token."""

    def __init__(self, client, headers):
        self.client, self.headers = client, {**TUS, **headers}

    def create(self, length: int, filename="plate.jpg", **extra):
        return self.client.post("/api/v1/uploads", headers={**self.headers, "Upload-Length": str(length),
                                "Upload-Metadata": meta(filename=filename), **extra})

    def head(self, url):
        return self.client.head(url, headers=self.headers)

    def patch(self, url, offset: int, data: bytes, **extra):
        return self.client.patch(url, data=data, headers={**self.headers, "Upload-Offset": str(offset),
                                 "Content-Type": "application/offset+octet-stream", **extra})


@pytest.fixture
def tus(client, auth):
    auth.register()
    return Tus(client, {"X-CSRFToken": auth.csrf()})


def test_options_announce_version_extensions_and_limit(client, svc):
    r = client.options("/api/v1/uploads")
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    assert set(r.headers["Tus-Extension"].split(",")) >= {"creation", "termination", "expiration", "checksum"}
    assert int(r.headers["Tus-Max-Size"]) == svc.settings["MAX_UPLOAD_MB"] * 1024 * 1024


def test_upload_in_three_patches_gets_the_intake_verdict(tus, svc):
    data = plate_photo(1, size=(1024, 768))
    r = tus.create(len(data), "one.jpg")
    assert r.status_code == 201, r.get_data(as_text=True)
    url = r.headers["Location"]
    assert r.headers["Tus-Resumable"] == "1.0.0" and "Upload-Expires" in r.headers
    assert tus.head(url).headers["Upload-Offset"] == "0"
    third = len(data) // 3
    assert tus.patch(url, 0, data[:third]).status_code == 204
    r = tus.patch(url, third, data[third:2 * third])
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(2 * third)
    assert tus.head(url).headers["Upload-Offset"] == str(2 * third)
    r = tus.patch(url, 2 * third, data[2 * third:])
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "accepted" and body["photo"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["progress"]["accepted"] == 1
    (photo,) = scalars(svc, select(Photo))
    assert photo.original_filename == "one.jpg" and photo.size_bytes == len(data)
    # the parts are gone; the verdict is kept for a reply that was lost
    assert not list(svc.storage.list(PART_PREFIX))
    again = tus.client.get(url, headers=tus.headers)
    assert again.status_code == 200 and again.get_json()["status"] == "accepted"
    # the final PATCH replayed: the same verdict, no second photo
    replay = tus.patch(url, len(data), b"")
    assert replay.status_code == 200 and replay.get_json()["status"] == "accepted"
    assert len(scalars(svc, select(Photo))) == 1


def test_offset_mismatch_is_409_with_the_servers_offset(tus):
    data = plate_photo(2, size=(800, 600))
    url = tus.create(len(data)).headers["Location"]
    tus.patch(url, 0, data[:1000])
    r = tus.patch(url, 0, data[:1000])
    assert r.status_code == 409 and r.headers["Upload-Offset"] == "1000"
    r = tus.patch(url, 5000, data[5000:6000])
    assert r.status_code == 409
    assert tus.patch(url, 1000, data[1000:]).get_json()["status"] == "accepted"


def test_resume_after_a_cut_off_patch_keeps_the_bytes_that_arrived(tus, svc):
    """A body that ends early (the phone lost the network) keeps what arrived."""
    data = plate_photo(3, size=(1024, 768))
    url = tus.create(len(data)).headers["Location"]
    half = len(data) // 2

    class Cut(io.BytesIO):
        pass

    # Content-Length says the whole file, the body stops at half: what a dropped connection looks like.
    env = {"CONTENT_LENGTH": str(len(data))}
    r = tus.client.patch(url, input_stream=Cut(data[:half]), environ_overrides=env,
                         headers={**tus.headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert r.status_code in (204, 400)
    offset = int(tus.head(url).headers["Upload-Offset"])
    assert offset == half
    assert tus.patch(url, offset, data[offset:]).get_json()["status"] == "accepted"


def test_someone_elses_upload_is_not_found(client, auth, tus):
    data = plate_photo(4, size=(800, 600))
    url = tus.create(len(data)).headers["Location"]
    client.post("/logout", data={"csrf_token": auth.csrf()})
    auth.register(email="bob@example.com", name="Bob")
    other = Tus(client, {"X-CSRFToken": auth.csrf()})
    assert other.head(url).status_code == 404
    assert other.patch(url, 0, data).status_code == 404
    assert client.delete(url, headers=other.headers).status_code == 404
    assert client.get(url, headers=other.headers).status_code == 404


def test_anonymous_and_missing_csrf_are_refused(client, auth):
    assert client.post("/api/v1/uploads", headers={**TUS, "Upload-Length": "10"}).status_code == 401
    auth.register()
    r = client.post("/api/v1/uploads", headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 400 and r.get_json()["code"] == "csrf_failed"


def test_bearer_token_works_without_csrf(client, svc, make_user):
    from collector.web import accounts

    user = make_user()
    token = accounts.create_token(svc.db, user.id).token
    t = Tus(client, {"Authorization": f"Bearer {token}"})
    data = plate_photo(5, size=(800, 600))
    url = t.create(len(data)).headers["Location"]
    assert t.patch(url, 0, data).get_json()["status"] == "accepted"


def test_size_limit_is_the_same_as_whole_uploads(tus, svc):
    limit = svc.settings["MAX_UPLOAD_MB"] * 1024 * 1024
    r = tus.create(limit + 1, "huge.jpg")
    assert r.status_code == 413
    assert r.get_json()["code"] == "too_large"
    assert scalars(svc, select(UploadRejection.code)) == ["too_large"]
    # more bytes than declared
    url = tus.create(10).headers["Location"]
    assert tus.patch(url, 0, b"x" * 11).status_code == 413
    assert tus.head(url).headers["Upload-Offset"] == "0"


def test_protocol_errors_have_codes(tus):
    assert tus.client.post("/api/v1/uploads", headers={"Upload-Length": "10", **{k: v for k, v in tus.headers.items() if k != "Tus-Resumable"}}).status_code == 412
    assert tus.client.post("/api/v1/uploads", headers=tus.headers).get_json()["code"] == "bad_request"
    url = tus.create(10).headers["Location"]
    r = tus.client.patch(url, data=b"x", headers={**tus.headers, "Upload-Offset": "0", "Content-Type": "text/plain"})
    assert r.status_code == 415
    r = tus.patch(url, 0, b"0123456789", **{"Upload-Checksum": "sha1 " + base64.b64encode(b"wrong digest 20 byte").decode()})
    assert r.status_code == 460
    good = base64.b64encode(hashlib.sha1(b"01234").digest()).decode()
    assert tus.patch(url, 0, b"01234", **{"Upload-Checksum": f"sha1 {good}"}).status_code == 204
    assert tus.patch(url, 0, b"x", **{"Upload-Checksum": "crc99 AAAA"}).status_code == 400


def test_a_rejected_photo_is_a_verdict_not_an_error(tus):
    data = b"this is not a photo at all" * 10
    url = tus.create(len(data), "notes.txt").headers["Location"]
    r = tus.patch(url, 0, data)
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "rejected" and body["code"] == "not_an_image"


def test_termination_removes_parts_and_row(tus, svc):
    data = plate_photo(6, size=(800, 600))
    url = tus.create(len(data)).headers["Location"]
    tus.patch(url, 0, data[:500])
    assert list(svc.storage.list(PART_PREFIX))
    assert tus.client.delete(url, headers=tus.headers).status_code == 204
    assert not list(svc.storage.list(PART_PREFIX))
    assert tus.head(url).status_code == 404


def test_expired_uploads_are_refused_and_cleaned(tus, svc, runner):
    data = plate_photo(7, size=(800, 600))
    url = tus.create(len(data)).headers["Location"]
    tus.patch(url, 0, data[:700])
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    with svc.db.write_transaction(lock=False) as tx:
        tx.execute(update(ResumableUpload).values(expires_at=past))
    assert tus.head(url).status_code == 410
    assert tus.patch(url, 700, data[700:]).status_code == 410
    result = runner.invoke(args=["uploads", "clean"])
    assert result.exit_code == 0 and "removed 1 expired" in result.output
    assert not list(svc.storage.list(PART_PREFIX))
    assert scalars(svc, select(ResumableUpload)) == []


def test_storage_check_leaves_parts_in_progress_alone(tus, svc, runner):
    url = tus.create(5000).headers["Location"]
    tus.patch(url, 0, b"y" * 100)
    result = runner.invoke(args=["storage-check", "--json"])
    assert PART_PREFIX not in result.output


@pytest.mark.settings(MAX_OPEN_UPLOADS=2)
def test_open_uploads_per_account_are_capped(tus):
    assert tus.create(10).status_code == 201
    assert tus.create(10).status_code == 201
    r = tus.create(10)
    assert r.status_code == 429 and r.get_json()["code"] == "too_many_uploads"


def test_by_sha256_answers_from_the_hash_alone(client, auth, tus, submit, make_user):
    data = plate_photo(8, size=(800, 600))
    sha = hashlib.sha256(data).hexdigest()
    assert tus.client.get(f"/api/v1/photos/by-sha256/{sha}").status_code == 404
    url = tus.create(len(data)).headers["Location"]
    tus.patch(url, 0, data)
    r = tus.client.get(f"/api/v1/photos/by-sha256/{sha}")
    assert r.status_code == 200 and r.get_json()["status"] == "already_uploaded"
    assert tus.client.get("/api/v1/photos/by-sha256/nothex").status_code == 400
    client.post("/logout", data={"csrf_token": auth.csrf()})
    auth.register(email="bob@example.com", name="Bob")
    r = client.get(f"/api/v1/photos/by-sha256/{sha}")
    assert r.status_code == 200 and r.get_json()["code"] == "duplicate"


def test_parts_on_s3(s3_settings, request):
    """The same protocol with the parts as objects in the loopback S3 server."""
    from collector.web import accounts

    svc, client = request.getfixturevalue("svc"), request.getfixturevalue("client")  # on s3_settings
    user = request.getfixturevalue("make_user")("s3@example.com", "S")
    t = Tus(client, {"Authorization": f"Bearer {accounts.create_token(svc.db, user.id).token}"})
    data = plate_photo(9, size=(1024, 768))
    url = t.create(len(data)).headers["Location"]
    t.patch(url, 0, data[:4000])
    assert [o.size for o in svc.storage.list(PART_PREFIX)] == [4000]
    assert t.patch(url, 4000, data[4000:]).get_json()["status"] == "accepted"
    assert not list(svc.storage.list(PART_PREFIX))


def test_uploads_across_four_gunicorn_workers(workers):  # noqa: F811  (the fixture imported above)
    """Every request of an upload may land on another worker process: the state is in the
    database and the parts on the shared store (here the S3 server), so they add up; two PATCHes
    racing for the same range cannot both win."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from .test_scale import tokens_for

    base, svc = workers
    ((user, token),) = tokens_for(svc, 1)
    h = {**TUS, "Authorization": f"Bearer {token}"}

    def upload(seed):
        data = plate_photo(seed, size=(1024, 768))
        r = requests.post(f"{base}/api/v1/uploads", headers={**h, "Upload-Length": str(len(data)),
                          "Upload-Metadata": meta(filename=f"w{seed}.jpg")}, timeout=60)
        url = base + r.headers["Location"]
        step, last = len(data) // 4 + 1, None
        for start in range(0, len(data), step):
            offset = int(requests.head(url, headers=h, timeout=60).headers["Upload-Offset"])
            assert offset == start
            last = requests.patch(url, data=data[start:start + step], timeout=120, headers={
                **h, "Upload-Offset": str(start), "Content-Type": "application/offset+octet-stream"})
        return last.json()["status"]

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(upload, [201, 202, 203, 204])) == ["accepted"] * 4

    data = plate_photo(205, size=(1024, 768))
    url = base + requests.post(f"{base}/api/v1/uploads", headers={**h, "Upload-Length": str(len(data))}, timeout=60).headers["Location"]

    def race(_):
        return requests.patch(url, data=data[:5000], timeout=60, headers={
            **h, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}).status_code

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(race, range(2)))
    assert statuses == [204, 409]
    assert requests.head(url, headers=h, timeout=60).headers["Upload-Offset"] == "5000"


def test_an_upload_in_too_many_pieces_is_refused_with_a_code(tus, monkeypatch):
    from collector.web import resumable

    monkeypatch.setattr(resumable, "MAX_PARTS", 3)
    url = tus.create(100).headers["Location"]
    for i in range(3):
        assert tus.patch(url, i, b"x").status_code == 204
    r = tus.patch(url, 3, b"y")
    assert r.status_code == 400 and r.get_json()["code"] == "too_many_parts"
    assert tus.head(url).headers["Upload-Offset"] == "3"
