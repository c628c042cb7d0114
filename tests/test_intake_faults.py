"""Intake's stages under faults and races: the verdict a person sees is the right one, and
nothing stored is left without its row (issue 8: findings 7, 16, 17 and the import)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from collector.intake import imaging
from collector.platform.models import Photo, User
from collector.platform.storage import photo_key, thumb_key
from tests.synthetic import plate_photo

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ann(make_user):
    return make_user("ann@example.com", "Ann")


@pytest.fixture
def bob(make_user):
    return make_user("bob@example.com", "Bob")


def objects(svc) -> list[str]:
    return sorted(o.key for o in svc.storage.list())


def short_exif_jpeg() -> bytes:
    """A valid photo whose EXIF block is a TIFF header cut to 4 bytes (Pillow's
    truncated_exif_dpi.jpg has the same shape)."""
    data = plate_photo(99, size=(800, 600))
    app1 = b"Exif\x00\x00II*\x00"
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


# -- finding 7: one order of questions, before and under the lock ---------------------------


def test_decide_answers_exact_before_near(svc, submit, ann, bob):
    data = plate_photo(1, size=(1200, 900))
    first = submit(ann, data)
    assert first.status == "accepted"
    ins = __import__("collector.intake.inspection", fromlist=["inspect"])
    path = Path(svc.intake.spool_dir) / "probe.jpg"
    path.write_bytes(data)
    inspected = ins.inspect(path, data[:64], svc.settings)
    with svc.db.Session() as session:
        mine = svc.intake.decide(session, ann.id, first.sha256, inspected.fingerprint.variants)
        theirs = svc.intake.decide(session, bob.id, first.sha256, inspected.fingerprint.variants)
    # distance 0 to the stored photo, but the exact answers come first
    assert mine.verdict.status == "already_uploaded" and mine.exact
    assert theirs.verdict.code == "duplicate" and theirs.exact


def test_racing_copies_get_already_uploaded_or_duplicate_never_near_duplicate(svc, ann, bob):
    verdicts = []
    for seed in range(4):
        data = plate_photo(100 + seed, size=(1200, 900))
        senders = [ann, ann, bob, bob]
        barrier = threading.Barrier(len(senders))

        def go(user, data=data, barrier=barrier):
            barrier.wait()
            verdicts.append((user.id, svc.intake.submit(user.id, io.BytesIO(data), "same.jpg")))

        threads = [threading.Thread(target=go, args=(u,)) for u in senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    codes = [v.code or v.status for _, v in verdicts]
    assert "near_duplicate" not in codes
    assert codes.count("accepted") == 4
    winners = {v.sha256: uid for uid, v in verdicts if v.status == "accepted"}
    for uid, v in verdicts:
        if v.status != "accepted":
            expected = "already_uploaded" if winners[v.sha256] == uid else "duplicate"
            assert v.code == expected
    with svc.db.Session() as s:
        assert s.scalar(select(func.sum(User.accepted_count))) == 4
        assert s.scalar(select(func.count()).select_from(Photo)) == 4
    assert len(objects(svc)) == 8  # an original and a thumbnail each, nothing else


# -- a refused bomb is cheap to refuse again --------------------------------------------------


def test_a_file_refused_for_its_bytes_is_refused_again_without_decoding(svc, submit, ann, bob, monkeypatch):
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    bomb += chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")
    first = submit(ann, bomb, "bomb.png")
    assert first.code == "too_many_pixels"

    decodes = []
    real_decode = imaging.decode
    monkeypatch.setattr(imaging, "decode", lambda *a, **k: decodes.append(a) or real_decode(*a, **k))
    again = submit(bob, bomb, "bomb-again.png")
    assert again.code == "too_many_pixels" and again.message == first.message
    assert decodes == []
    # a photo refused for something that may change (its size) is inspected again
    small = plate_photo(5, size=(400, 300))
    assert submit(ann, small, "small.jpg").code == "too_small"
    assert submit(ann, small, "small.jpg").code == "too_small"
    assert len(decodes) == 2


# -- findings 16, 17: leftovers of killed workers and failed writes ---------------------------


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_disk_failure_between_original_and_thumbnail_keeps_nothing(svc, submit, ann, runner):
    data = plate_photo(7, size=(1200, 900))
    folder_key = thumb_key(hashlib.sha256(data).hexdigest()).rpartition("/")[0]
    blocker = Path(svc.settings["STORAGE_URL"]) / folder_key
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the thumbnail's folder should be")  # its thumbnail write fails
    v = submit(ann, data)
    assert v.code == "storage_unavailable" and "Nothing was kept" in v.message
    assert [k for k in objects(svc) if k != folder_key] == []  # the original written first was taken back
    blocker.unlink()
    r = runner.invoke(args=["storage-check", "--json", "--grace-minutes", "0"])
    report = json.loads(r.stdout)
    assert r.exit_code == 0 and report["orphans"] == [] and report["healthy"]
    assert submit(ann, data).status == "accepted"


def test_storage_check_reports_and_clears_half_written_objects(svc, runner):
    folder_key = photo_key("abcd" * 16, "jpg").rpartition("/")[0]  # where that photo's original would go
    folder = Path(svc.settings["STORAGE_URL"]) / folder_key
    folder.mkdir(parents=True)
    tmp = folder / ".tmp-killed"
    tmp.write_bytes(b"half a photo")
    r = runner.invoke(args=["storage-check"])
    assert r.exit_code == 0 and "temp" not in r.stdout  # young: a write may be under way
    _age(tmp, 2 * 3600)
    r = runner.invoke(args=["storage-check"])
    assert r.exit_code == 1 and f"temp     {folder_key}/.tmp-killed" in r.stdout and "NOT CLEAN" in r.stdout
    r = runner.invoke(args=["storage-check", "--fix"])
    assert r.exit_code == 0 and f"removed  {folder_key}/.tmp-killed" in r.stdout
    assert not tmp.exists()


def test_a_worker_killed_mid_upload_leaves_a_spool_file_that_is_cleared(app, svc, ann, submit, runner, tmp_path):
    """A real process, killed with SIGKILL while it reads an upload: its spool file (a whole
    original, GPS included) stays behind; storage-check reports it, --fix and the next process's
    first upload remove it."""
    fifo = tmp_path / "slow-upload.jpg"
    os.mkfifo(fifo)
    env = dict(os.environ, COLLECTOR_DATA_DIR=svc.settings["DATA_DIR"].as_posix(),
               COLLECTOR_DATABASE_URL=svc.settings["DATABASE_URL"], COLLECTOR_STORAGE_URL=svc.settings["STORAGE_URL"],
               COLLECTOR_SECRET_KEY="test-secret")
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "import", str(fifo), "--as", ann.email],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spool_dir = Path(svc.intake.spool_dir)
    try:
        with open(fifo, "wb") as writer:  # opens once the importer opens the file
            writer.write(plate_photo(3, size=(1200, 900))[:50_000])
            writer.flush()
            deadline = time.monotonic() + 60
            while not list(spool_dir.glob("upload-*")) and time.monotonic() < deadline:
                time.sleep(0.05)
            spooled = list(spool_dir.glob("upload-*"))
            assert spooled, "the importer never started spooling"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert spooled[0].exists()  # what a killed worker leaves
    _age(spooled[0], 2 * 3600)
    r = runner.invoke(args=["storage-check"])
    assert r.exit_code == 1 and f"spool    {spooled[0]}" in r.stdout
    # the next process's first upload sweeps it (this app has not taken an upload yet)
    assert submit(ann, plate_photo(4, size=(1200, 900))).status == "accepted"
    assert not spooled[0].exists()


# -- the bulk import gives every file a verdict -----------------------------------------------


def test_import_gives_every_file_a_line_whatever_one_of_them_does(runner, svc, ann, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(plate_photo(11, size=(1200, 900)))
    (folder / "b-short-exif.jpg").write_bytes(short_exif_jpeg())
    (folder / "d.jpg").write_bytes(plate_photo(12, size=(1200, 900)))
    gone = tmp_path / "c-gone.jpg"  # named on the command line, but not there
    r = runner.invoke(args=["import", str(folder), str(gone), str(folder / "d.jpg"), "--as", ann.email, "--json"])
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [Path(x["file"]).name for x in lines] == ["a.jpg", "b-short-exif.jpg", "d.jpg", "c-gone.jpg", "d.jpg"]
    by_name = {Path(x["file"]).name: x for x in lines}
    assert lines[0]["status"] == lines[2]["status"] == "accepted" and lines[4]["code"] == "already_uploaded"
    assert by_name["c-gone.jpg"]["code"] == "unreadable"
    assert by_name["b-short-exif.jpg"]["status"] in ("rejected", "accepted")  # a verdict, not a crash
    assert r.exit_code == 1  # one file could not be read



# -- finding 15: the database locked or gone while an upload commits ---------------------------


@contextlib.contextmanager
def write_lock_held(svc):
    """Another writer holding the intake write lock (SQLite's, or PostgreSQL's advisory lock)."""
    from sqlalchemy import create_engine, text

    from collector.platform.db import INTAKE_LOCK

    engine = create_engine(svc.settings["DATABASE_URL"], poolclass=__import__("sqlalchemy.pool", fromlist=["NullPool"]).NullPool)
    conn = engine.connect()
    if svc.db.is_sqlite:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": INTAKE_LOCK})
    try:
        yield
    finally:
        conn.rollback()
        conn.close()
        engine.dispose()


def test_a_locked_database_is_a_503_and_keeps_nothing(client, svc, ann):
    from collector.web import accounts
    from tests.conftest import multipart

    token = accounts.create_token(svc.db, ann.id).token
    with write_lock_held(svc):
        r = client.post("/api/v1/photos", **multipart(plate_photo(21, size=(1200, 900))),
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 503 and r.headers.get("Retry-After")
    assert r.json["code"] == "service_unavailable" and "not recorded" in r.json["message"]
    assert objects(svc) == []  # the original and thumbnail it stored were taken back
    assert list(Path(svc.intake.spool_dir).glob("upload-*")) == []
    with svc.db.Session() as session:
        assert session.scalar(select(func.count()).select_from(Photo)) == 0
    r = client.post("/api/v1/photos", **multipart(plate_photo(21, size=(1200, 900))),
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201 and len(objects(svc)) == 2  # sent again once the lock is free


def test_a_commit_the_database_did_not_confirm_keeps_its_objects_and_a_retry_finds_it(client, svc, ann, monkeypatch):
    """The locked commit went through, then the database failed before saying it was on disk
    (PostgreSQL: the flush after the asynchronous commit; the same handling on SQLite): the
    photo's objects stay with its row, the client hears "send it again", and the retry is
    "already uploaded", counted once."""
    from collector.platform.db import CommitUnconfirmed, Database
    from collector.web import accounts
    from tests.conftest import multipart

    def fails(self, conn):
        raise CommitUnconfirmed("server closed the connection unexpectedly")

    token = accounts.create_token(svc.db, ann.id).token
    data = plate_photo(22, size=(1200, 900))
    with monkeypatch.context() as m:
        m.setattr(Database, "_after_locked", fails)
        r = client.post("/api/v1/photos", **multipart(data), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 503 and r.json["code"] == "service_unavailable"
    assert "cannot say whether it was kept" in r.json["message"]
    sha = hashlib.sha256(data).hexdigest()
    assert objects(svc) == sorted([photo_key(sha, "jpg"), thumb_key(sha)])  # nothing taken back
    r = client.post("/api/v1/photos", **multipart(data), headers={"Authorization": f"Bearer {token}"})
    assert r.json["status"] == "already_uploaded" and r.json["progress"]["accepted"] == 1


def test_the_intake_lock_is_released_before_the_commit_reaches_the_disk_and_submit_waits_for_it(svc, submit, ann):
    """PostgreSQL: the locked transaction commits without waiting for its WAL flush (the lock
    is held for the work, not for the disk), and a synchronous commit follows on the same
    connection before submit returns, flushing the WAL through the photo's commit. SQLite:
    the write transaction skips the WAL checkpoint, which runs after the lock is released."""
    from sqlalchemy import event

    seen: list[str] = []

    def statement(conn, cursor, sql, *args):
        seen.append(" ".join(sql.split()))

    def commit(conn):
        seen.append("COMMIT")

    event.listen(svc.db.engine, "before_cursor_execute", statement)
    event.listen(svc.db.engine, "commit", commit)
    try:
        assert submit(ann, plate_photo(23, size=(1200, 900))).status == "accepted"
    finally:
        event.remove(svc.db.engine, "before_cursor_execute", statement)
        event.remove(svc.db.engine, "commit", commit)
    insert = next(i for i, s in enumerate(seen) if "INSERT INTO photos " in s)
    if svc.db.is_sqlite:
        for fails in (False, True):  # committed, and rolled back: either way checkpoints come back
            with contextlib.suppress(RuntimeError), svc.db.write_transaction() as tx:
                raw = tx.connection().connection.driver_connection
                assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
                if fails:
                    raise RuntimeError("the block failed")
            assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
            assert tx.info.get("lock_seconds", 0) > 0 or fails
        return
    lock = max(i for i, s in enumerate(seen[:insert]) if "pg_advisory_xact_lock" in s)
    assert "set_config('synchronous_commit', 'off', true)" in seen[lock]
    after = seen[insert:]
    first_commit = after.index("COMMIT")
    assert after[first_commit + 1:first_commit + 3] == ["SELECT txid_current()", "COMMIT"]
