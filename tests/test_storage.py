"""One storage contract, run against the local folder and a real S3-compatible server."""

from __future__ import annotations

import hashlib
import io

import pytest

from collector.platform.integrity import QUARANTINE
from collector.platform.storage import LocalStorage, S3Storage, StorageUnavailable, open_storage, photo_key, thumb_key


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    env = request.getfixturevalue("s3_env")
    return open_storage(f"s3://{env['bucket']}/some/prefix", env["endpoint"])


def put(store, key, data: bytes, tmp_path):
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    store.put_file(key, path, hashlib.sha256(data).hexdigest())


def test_put_then_read_streamed(store, tmp_path):
    data = b"\xff\xd8\xff" + bytes(range(256)) * 5000
    key = photo_key(hashlib.sha256(data).hexdigest(), "jpg")
    assert not store.exists(key)
    put(store, key, data, tmp_path)
    assert store.exists(key)
    with store.open(key) as fh:
        first = fh.read(1000)
        rest = fh.read()
    assert first + rest == data


def test_put_never_overwrites(store, tmp_path):
    key = "originals/aa/bb/thing.jpg"
    put(store, key, b"first", tmp_path)
    put(store, key, b"second", tmp_path)
    with store.open(key) as fh:
        assert fh.read() == b"first"


def test_put_bytes_and_list(store):
    store.put_bytes("thumbs/aa/bb/a.jpg", b"one")
    store.put_bytes("thumbs/aa/cc/b.jpg", b"two!")
    store.put_bytes("originals/aa/bb/c.jpg", b"three")
    listed = {o.key: o.size for o in store.list("thumbs/")}
    assert listed == {"thumbs/aa/bb/a.jpg": 3, "thumbs/aa/cc/b.jpg": 4}
    assert len(list(store.list())) == 3
    assert all(o.modified.tzinfo is not None for o in store.list())


def test_missing_key_is_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.open("originals/00/00/missing.jpg")
    with pytest.raises(FileNotFoundError):
        store.delete("originals/00/00/missing.jpg")


def test_delete(store):
    store.put_bytes("thumbs/x.jpg", b"x")
    store.delete("thumbs/x.jpg")
    assert not store.exists("thumbs/x.jpg")


def test_s3_upload_carries_a_sha256_checksum(s3_env, tmp_path):
    import boto3

    store = open_storage(f"s3://{s3_env['bucket']}/p", s3_env["endpoint"])
    data = b"photo bytes" * 1000
    put(store, "originals/ab/cd/x.jpg", data, tmp_path)
    client = boto3.client("s3", endpoint_url=s3_env["endpoint"])
    head = client.head_object(Bucket=s3_env["bucket"], Key="p/originals/ab/cd/x.jpg", ChecksumMode="ENABLED")
    import base64

    assert base64.b64decode(head["ChecksumSHA256"]) == hashlib.sha256(data).digest()


def test_unreachable_store_is_a_clear_error(tmp_path):
    from collector.platform.storage import S3Storage

    store = S3Storage("bucket", "", "http://127.0.0.1:9")  # nothing listens on port 9
    assert store.client.meta.config.retries["mode"] == "standard"
    with pytest.raises(StorageUnavailable):
        store.put_bytes("thumbs/x.jpg", b"x")
    with pytest.raises(StorageUnavailable):
        store.open("thumbs/x.jpg")


def test_storage_url_parsing(tmp_path):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    s3 = open_storage("s3://bucket/a/b/", "http://127.0.0.1:1")
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bucket", "a/b/")
    with pytest.raises(SystemExit):
        open_storage("ftp://x/y")


@pytest.fixture(params=["local", "s3"])
def backend_settings(request, settings):
    return request.getfixturevalue("s3_settings") if request.param == "s3" else settings


def test_storage_check_clean_then_reports_a_deleted_object(backend_settings, request):
    import json

    svc, runner = request.getfixturevalue("svc"), request.getfixturevalue("runner")  # on backend_settings
    from . import photos

    v = svc.intake.submit(request.getfixturevalue("make_user")().id, io.BytesIO(photos.named("canon")), "a.jpg")
    r = runner.invoke(args=["storage-check", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["missing"] == [] and json.loads(r.stdout)["orphans"] == []

    # an orphan, as a crash between store and commit would leave it
    orphan = photo_key("f" * 64, "jpg")
    svc.storage.put_bytes(orphan, b"left behind")
    r = runner.invoke(args=["storage-check", "--fix"])  # too young to touch
    assert r.exit_code == 0 and f"orphan   {orphan}" in r.stdout and "moved" not in r.stdout
    r = runner.invoke(args=["storage-check", "--fix", "--grace-minutes", "0"])
    assert f"moved    {orphan}" in r.stdout
    assert not svc.storage.exists(orphan) and svc.storage.exists(QUARANTINE + orphan)

    # an object deleted behind the app's back is an error
    key = photo_key(v.sha256, "jpg")
    svc.storage.delete(key)
    r = runner.invoke(args=["storage-check", "--fix", "--grace-minutes", "0"])
    assert r.exit_code == 1 and f"MISSING  photo {v.photo_id}: {key}" in r.stdout
    assert svc.storage.exists(thumb_key(v.sha256))  # referenced: untouched
