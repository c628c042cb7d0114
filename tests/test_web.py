"""Pages and the JSON API through the Flask test client: accounts, CSRF, uploads, visibility."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select

from collector.platform.models import User
from collector.web import accounts

from . import images, photos
from .conftest import Auth, csrf_from, multipart

US7 = photos.named("canon")  # 900x600, Canon EOS 5D


def test_landing_page_explains_the_fee(client):
    html = client.get("/").get_data(as_text=True)
    assert "25 photos" in html and "Register" in html


def test_register_records_consent_then_log_in(client, auth, svc):
    r = auth.register()
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    with svc.db.Session() as s:
        user = s.scalars(select(User)).one()
        assert user.licence == "CC BY 4.0" and user.consented_at is not None
        assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "0</span> / 25" in client.get("/upload").get_data(as_text=True)


def test_register_requires_consent_and_valid_fields(client, auth):
    r = auth.register(consent=False)
    assert r.status_code == 400 and "agree to the licence" in r.get_data(as_text=True)
    r = auth.register(password="short")
    assert r.status_code == 400
    auth.register()
    auth.client.post("/logout", data={"csrf_token": auth.csrf()})
    r = auth.register()  # the same answer as for a new email (see test_security)
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")


def test_forms_refuse_a_post_without_csrf(client, make_user):
    make_user()
    r = client.post("/login", data={"email": "ann@example.com", "password": "correct horse battery"})
    assert r.status_code == 400 and "reload the page" in r.get_data(as_text=True).lower()


def test_login_logout_and_next(client, auth, make_user):
    make_user()
    assert client.get("/photos").status_code == 302
    token = csrf_from(client.get("/login?next=/photos").get_data(as_text=True))
    r = client.post("/login?next=/photos", data={"csrf_token": token, "email": "ANN@example.com", "password": "correct horse battery"})
    assert r.status_code == 302 and r.headers["Location"] == "/photos"
    assert client.get("/photos").status_code == 200
    client.post("/logout", data={"csrf_token": auth.csrf()})
    assert client.get("/photos").status_code == 302


def test_login_refuses_open_redirect(client, make_user):
    make_user()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    r = client.post("/login?next=//evil.example/x", data={"csrf_token": token, "email": "ann@example.com", "password": "correct horse battery"})
    assert r.headers["Location"] == "/upload"


def test_session_cookie_flags(client, auth):
    r = auth.register()
    cookie = r.headers.get("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_a_running_apps_settings_cannot_change(svc, app):
    assert svc.settings.QUOTA == svc.settings["QUOTA"] == 25
    with pytest.raises(dataclasses.FrozenInstanceError):
        svc.settings.MAX_UPLOAD_MB = 1
    with pytest.raises(TypeError):
        svc.settings["MAX_UPLOAD_MB"] = 1  # which would disagree with MAX_CONTENT_LENGTH
    assert app.config["MAX_CONTENT_LENGTH"] == 25 * 1024 * 1024 + 256 * 1024


@pytest.mark.settings(COOKIE_SECURE=True)
def test_secure_cookie_setting(app, client):
    assert app.config["SESSION_COOKIE_SECURE"] and app.config["REMEMBER_COOKIE_SECURE"]
    r = Auth(client).register()
    assert r.status_code == 302 and "Secure" in r.headers["Set-Cookie"]


def test_login_rate_limit(client, auth, make_user, svc):
    make_user()
    limit = svc.settings["LOGIN_MAX_FAILURES"]
    for _ in range(limit):
        assert auth.login(password="wrong password!").status_code == 401
    r = auth.login()  # even the right password waits now
    assert r.status_code == 429 and "Too many failed log-ins" in r.get_data(as_text=True)


def test_api_requires_credentials(client):
    r = client.post("/api/v1/photos", **multipart(b"x"))
    assert r.status_code == 401 and r.json["code"] == "unauthorized"
    r = client.get("/api/v1/me", headers={"Authorization": "Bearer pc_nope"})
    assert r.status_code == 401


@pytest.fixture
def token(svc, make_user):
    user = make_user()
    return accounts.create_token(svc.db, user.id).token


def test_api_upload_statuses(client, token, make_user, svc):
    h = {"Authorization": f"Bearer {token}"}
    data = US7
    r = client.post("/api/v1/photos", **multipart(data), headers=h)
    assert r.status_code == 201
    body = r.json
    assert body["status"] == "accepted" and body["code"] is None
    assert body["photo"]["sha256"] and body["photo"]["metadata"]["camera_model"] == "Canon EOS 5D"
    assert body["progress"] == {"accepted": 1, "quota": 25, "complete": False}

    r = client.post("/api/v1/photos", **multipart(data), headers=h)
    assert r.status_code == 200 and r.json["status"] == "already_uploaded" and r.json["progress"]["accepted"] == 1

    r = client.post("/api/v1/photos", **multipart(images.reencode(US7, 60)), headers=h)
    assert r.status_code == 409 and r.json["code"] == "near_duplicate"

    other = accounts.create_token(svc.db, make_user("bob@example.com", "Bob").id).token
    r = client.post("/api/v1/photos", **multipart(data), headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 409 and r.json["code"] == "duplicate"

    r = client.post("/api/v1/photos", **multipart(b"not an image"), headers=h)
    assert r.status_code == 422 and r.json["code"] == "not_an_image" and r.json["photo"] is None

    r = client.post("/api/v1/photos", data={}, headers=h)
    assert r.status_code == 400 and r.json["code"] == "bad_request"


@pytest.mark.settings(MAX_UPLOAD_MB=1)
def test_api_too_large_is_413(client, token):
    r = client.post("/api/v1/photos", **multipart(photos.named("png")), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 413 and r.json["code"] == "too_large"


def test_request_over_the_size_limit_is_413_json(app, client, token):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    r = client.post("/api/v1/photos", **multipart(b"x" * 5000), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 413 and r.json["code"] == "too_large"
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json
    assert me["rejected"][0]["code"] == "too_large"


def test_api_with_session_needs_csrf_header(client, auth):
    auth.register()
    data = US7
    r = client.post("/api/v1/photos", **multipart(data))
    assert r.status_code == 400 and r.json["code"] == "csrf_failed"
    r = client.post("/api/v1/photos", **multipart(data), headers={"X-CSRFToken": auth.csrf()})
    assert r.status_code == 201


def test_api_me_lists_photos_and_rejections(client, token):
    h = {"Authorization": f"Bearer {token}"}
    client.post("/api/v1/photos", **multipart(US7, "mine.jpg"), headers=h)
    client.post("/api/v1/photos", **multipart(b"", "empty.jpg"), headers=h)
    me = client.get("/api/v1/me", headers=h).json
    assert me["progress"]["accepted"] == 1
    assert [p["filename"] for p in me["photos"]] == ["mine.jpg"]
    assert me["rejected"][0]["code"] == "empty_file" and me["rejected"][0]["filename"] == "empty.jpg"


def test_revoked_token_stops_working(client, auth, svc):
    auth.register()
    r = client.post("/account/tokens", data={"csrf_token": auth.csrf()})
    assert r.status_code == 303 and r.headers["Location"].endswith("/account")  # post-redirect-get
    page = client.get("/account")
    html = page.get_data(as_text=True)
    tok = csrf_from_token_page(html)
    assert page.headers["Cache-Control"] == "no-store"
    assert html.count("active</td>") == 1  # the new token is in the list
    h = {"Authorization": f"Bearer {tok}"}
    assert client.get("/api/v1/me", headers=h).status_code == 200
    again = client.get("/account").get_data(as_text=True)  # a reload: shown once, nothing created
    assert tok not in again and again.count("active</td>") == 1
    with svc.db.Session() as s:
        from collector.platform.models import ApiToken

        token_id = s.scalars(select(ApiToken.id)).one()
    client.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": auth.csrf()})
    assert client.get("/api/v1/me", headers=h).status_code == 401


def csrf_from_token_page(html: str) -> str:
    import re

    return re.search(r'id="new-token" class="token">([^<]+)<', html).group(1)


def test_plain_form_upload_without_javascript(client, auth):
    auth.register()
    files = [(US7, "a.jpg"), (b"nope", "b.txt"), (photos.named("large"), "c.jpg")]
    r = client.post("/upload", **multipart(files, csrf_token=auth.csrf()))
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert html.count("verdict-accepted") == 2 and "not an image" in html
    assert "2</span> / 25" in html


def test_my_photos_shows_thumbnails_and_reasons(client, auth):
    auth.register()
    h = {"X-CSRFToken": auth.csrf()}
    r = client.post("/api/v1/photos", **multipart(US7, "car.jpg"), headers=h)
    client.post("/api/v1/photos", **multipart(images.solid(1000, 800), "grey.jpg"), headers=h)
    html = client.get("/photos").get_data(as_text=True)
    pid = r.json["photo"]["id"]
    assert f"/photos/{pid}/thumb" in html and "car.jpg" in html
    assert "grey.jpg" in html and "low_quality" in html
    with client.get(f"/photos/{pid}/thumb") as thumb:
        assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg" and "private" in thumb.headers["Cache-Control"]
    with client.get(f"/photos/{pid}/file") as original:
        assert original.data == US7


def test_photos_are_visible_only_to_their_owner(app, client, auth):
    auth.register()
    r = client.post("/api/v1/photos", **multipart(US7), headers={"X-CSRFToken": auth.csrf()})
    pid = r.json["photo"]["id"]
    other = app.test_client()
    Auth(other).register("bob@example.com", "Bob")
    assert other.get(f"/photos/{pid}/thumb").status_code == 404
    assert other.get(f"/photos/{pid}/file").status_code == 404
    assert app.test_client().get(f"/photos/{pid}/thumb").status_code == 302  # anonymous: log in


@pytest.mark.settings(QUOTA=2)
def test_reaching_the_quota_says_so(client, auth):
    auth.register()
    h = {"X-CSRFToken": auth.csrf()}
    for data in (US7, photos.named("large")):
        r = client.post("/api/v1/photos", **multipart(data), headers=h)
    assert r.json["progress"]["complete"] is True
    assert "Fee paid" in client.get("/upload").get_data(as_text=True)


def test_unknown_pages_and_methods_never_500(client, auth):
    assert client.get("/nope").status_code == 404
    assert client.get("/api/v1/nope").json["code"] == "not_found"
    assert client.get("/api/v1/photos").status_code == 405
    auth.register()
    assert client.get("/photos/999999/thumb").status_code == 404
