"""The command line: users, tokens and the bulk import through the same intake."""

from __future__ import annotations

import json

from sqlalchemy import select

from collector.platform.models import User

from . import hostile, photos


def test_users_create_and_token(runner, svc):
    r = runner.invoke(args=["users", "create", "org@example.com", "--name", "Org", "--organiser", "--password-stdin"],
                      input="a long enough password\n")
    assert r.exit_code == 0, r.output
    with svc.db.Session() as s:
        assert s.scalars(select(User)).one().is_organiser
    r = runner.invoke(args=["users", "token", "org@example.com"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pc_")


def test_users_create_refuses_bad_input(runner):
    r = runner.invoke(args=["users", "create", "not-an-email", "--name", "X", "--password-stdin"], input="a long enough password\n")
    assert r.exit_code != 0 and "valid email" in r.output
    r = runner.invoke(args=["users", "token", "nobody@example.com"])
    assert r.exit_code != 0 and "no account" in r.output


def test_import_json_lines_for_every_file(runner, make_user, tmp_path):
    make_user()
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "car.jpg").write_bytes(photos.named("iphone"))
    (folder / "notes.txt").write_text("hello")
    (folder / "again.jpg").write_bytes(photos.named("iphone"))
    (folder / "truncated.jpg").write_bytes(hostile.truncated_jpeg())
    (folder / ".hidden.jpg").write_bytes(photos.named("eu"))
    us7 = tmp_path / "us7.jpg"
    us7.write_bytes(photos.named("canon"))
    r = runner.invoke(args=["import", str(folder), str(us7), "--as", "ann@example.com", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    by_name = {row["file"].rsplit("/", 1)[-1]: row for row in rows}
    assert set(by_name) == {"again.jpg", "notes.txt", "car.jpg", "truncated.jpg", "us7.jpg"}
    assert by_name["again.jpg"]["status"] == "accepted"
    assert by_name["car.jpg"]["status"] == "already_uploaded"
    assert by_name["notes.txt"]["code"] == "not_an_image"
    assert by_name["truncated.jpg"]["code"] == "corrupt"
    meta = by_name["again.jpg"]["metadata"]
    assert set(meta) == {"captured_at", "camera_make", "camera_model", "orientation", "gps_lat", "gps_lon", "width", "height", "format"}
    assert meta["captured_at"].startswith("20") and meta["format"] == "JPEG" and meta["gps_lat"] < 0
    assert by_name["us7.jpg"]["photo_id"] and len(by_name["us7.jpg"]["sha256"]) == 64
    assert "2/25 accepted" in r.stderr


def test_import_unknown_user(runner):
    r = runner.invoke(args=["import", "x", "--as", "nobody@example.com"])
    assert r.exit_code != 0 and "no account" in r.output
