"""The smaller fixes of issue 10 that need no browser: landing pages, the chart, the door."""

from __future__ import annotations

import datetime as dt
import io

from collector.intake import credits

from .conftest import csrf_from
from .phone_photos import phone_photo


def log_in(client, email, password="correct horse battery", next_=None):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    url = "/login" + (f"?next={next_}" if next_ else "")
    return client.post(url, data={"csrf_token": token, "email": email, "password": password})


def test_organisers_land_on_the_dashboard_attendees_on_upload(app, make_user):
    make_user("org@example.com", "Olu", organiser=True)
    make_user("ann@example.com", "Ann")
    assert log_in(app.test_client(), "org@example.com").headers["Location"].endswith("/dashboard")
    assert log_in(app.test_client(), "ann@example.com").headers["Location"].endswith("/upload")
    # an explicit next still wins
    assert log_in(app.test_client(), "org@example.com", next_="/checkin").headers["Location"].endswith("/checkin")


def test_dashboard_chart_starts_at_the_first_hour_with_photos(app, svc, make_user):
    org = make_user("org@example.com", "Olu", organiser=True)
    svc.intake.submit(org.id, io.BytesIO(phone_photo(301, size=(800, 600))), "a.jpg")
    client = app.test_client()
    log_in(client, "org@example.com")
    html = client.get("/dashboard").get_data(as_text=True)
    bars = html.count('class="bar"')
    assert 1 <= bars <= 6, bars  # not 48 hours of which 47 are empty
    assert "total 1" in html


def test_door_page_has_a_heading(app, svc, make_user):
    make_user("org@example.com", "Olu", organiser=True)
    ann = make_user("ann@example.com", "Ann")
    token = credits.pass_token(svc.settings["SECRET_KEY"], ann.id)
    client = app.test_client()
    log_in(client, "org@example.com")
    html = client.get(f"/checkin/{token}").get_data(as_text=True)
    assert '<h1 class="verdict-big">NOT VALID</h1>' in html


def test_someone_elses_pass_link_says_why_it_is_refused(app, svc, make_user):
    ann = make_user("ann@example.com", "Ann")
    make_user("bob@example.com", "Bob")
    token = credits.pass_token(svc.settings["SECRET_KEY"], ann.id)
    client = app.test_client()
    log_in(client, "bob@example.com")
    r = client.get(f"/checkin/{token}")
    assert r.status_code == 403 and "Only organisers at the door" in r.get_data(as_text=True)


def test_chart_keeps_the_last_48_hours_once_photos_are_older(app, svc, make_user):
    from collector.organisers import reports

    with svc.db.write_transaction(lock=False) as tx:
        reports.bump_hour(tx, dt.datetime.now(dt.UTC) - dt.timedelta(hours=30), +1)
    make_user("org@example.com", "Olu", organiser=True)
    client = app.test_client()
    log_in(client, "org@example.com")
    html = client.get("/dashboard").get_data(as_text=True)
    assert 30 <= html.count('class="bar"') <= 31
