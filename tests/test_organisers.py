"""Organisers: role boundaries, dashboard numbers, review that moves credit, pass and door."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from collector.intake import credits
from collector.web import accounts

from . import images, photos
from .conftest import Auth

PHOTOS = ["canon", "large", "iphone"]  # tests/photos.py CAMERAS, all with a capture date


@pytest.fixture
def settings(settings):
    return {**settings, "QUOTA": 3}


@pytest.fixture
def world(app, svc, make_user):
    """An organiser, an attendee at the quota (3) and another attendee with one photo."""
    org = make_user("org@example.com", "Olga", organiser=True)
    ann = make_user("ann@example.com", "Ann")
    bob = make_user("bob@example.com", "=HYPERLINK(\"http://x\")")
    verdicts = [svc.intake.submit(ann.id, io.BytesIO(photos.named(n)), photos.filename(n)) for n in PHOTOS]
    bob_photo = svc.intake.submit(bob.id, io.BytesIO(photos.named("motorola")), "bob.jpg")
    svc.intake.submit(bob.id, io.BytesIO(b"not a photo"), "notes.txt")
    assert all(p.accepted for p in verdicts) and bob_photo.accepted
    return {"org": org, "ann": ann, "bob": bob, "photo": verdicts[0].photo_id, "bob_photo": bob_photo.photo_id,
            "photos": [v.photo_id for v in verdicts]}


def client_as(app, who):
    c = app.test_client()
    if who is not None:
        Auth(c).login(who.email)
    return c


def csrf(c):
    return re.search(r'name="csrf-token" content="([^"]+)"', c.get("/").get_data(as_text=True)).group(1)


ROUTES = [
    ("GET", "/dashboard"),
    ("GET", "/dashboard/contributors.csv"),
    ("GET", "/dashboard/contributors/{ann}"),
    ("GET", "/dashboard/review"),
    ("GET", "/dashboard/review?filter=no_date"),
    ("GET", "/dashboard/photos/{photo}"),
    ("POST", "/dashboard/photos/{photo}/reject"),
    ("POST", "/dashboard/photos/{photo}/restore"),
    ("POST", "/dashboard/photos/{photo}/flag"),
    ("GET", "/checkin"),
    ("GET", "/checkin/{token}"),
    ("POST", "/checkin/{token}"),
]


@pytest.mark.parametrize("method, route", ROUTES)
@pytest.mark.parametrize("role", ["anonymous", "attendee", "other_attendee", "organiser"])
def test_role_matrix(app, svc, world, method, route, role):
    token = credits.pass_token(svc.settings["SECRET_KEY"], world["ann"].id)
    url = route.format(ann=world["ann"].id, photo=world["photo"], token=token)
    who = {"anonymous": None, "attendee": world["ann"], "other_attendee": world["bob"], "organiser": world["org"]}[role]
    c = client_as(app, who)
    data = {"csrf_token": csrf(c), "reason": "other", "note": "matrix"} if method == "POST" else None
    r = c.open(url, method=method, data=data)
    if role == "anonymous":
        assert r.status_code == 302 and "/login" in r.headers["Location"]
    elif role == "attendee" and method == "GET" and route == "/checkin/{token}":
        # her own QR link: what it is for, not a bare Forbidden; nothing is checked
        assert r.status_code == 200 and "This is your meetup pass" in r.get_data(as_text=True)
    elif role in ("attendee", "other_attendee"):
        assert r.status_code == 403
    else:  # the review actions go back where they came from; the door answers with its page
        assert r.status_code == (302 if method == "POST" and route.startswith("/dashboard") else 200)


@pytest.mark.parametrize("role, own, status", [
    ("anonymous", None, 302), ("attendee", True, 200), ("other_attendee", False, 404), ("organiser", False, 200),
])
def test_photo_files_visibility(app, world, role, own, status):
    who = {"anonymous": None, "attendee": world["ann"], "other_attendee": world["bob"], "organiser": world["org"]}[role]
    c = client_as(app, who)
    for kind in ("thumb", "file"):
        with c.get(f"/photos/{world['photo']}/{kind}") as r:
            assert r.status_code == status


def test_stats_api_needs_an_organiser_token(app, svc, world):
    c = app.test_client()
    attendee = accounts.create_token(svc.db, world["ann"].id).token
    assert c.get("/api/v1/stats", headers={"Authorization": f"Bearer {attendee}"}).status_code == 403
    assert c.get("/api/v1/stats").status_code == 401


def test_numbers_agree_everywhere(app, svc, world, runner):
    org_token = accounts.create_token(svc.db, world["org"].id).token
    api = app.test_client().get("/api/v1/stats", headers={"Authorization": f"Bearer {org_token}"}).json
    cli = json.loads(runner.invoke(args=["stats", "--json"]).stdout)
    assert api == cli
    assert (api["contributors"], api["paid"], api["in_progress"], api["not_started"]) == (2, 1, 1, 0)
    assert api["photos_accepted"] == 4 and api["rejected_attempts"] == 1 and api["rejected_by_code"] == {"not_an_image": 1}
    html = client_as(app, world["org"]).get("/dashboard").get_data(as_text=True)
    assert 'id="n-paid">1<' in html and 'id="n-accepted">4<' in html and 'id="n-rejected">1<' in html
    assert "<svg" in html and "<polyline" in html and "not_an_image" in html


def test_review_rejection_moves_credit_and_pass_then_restore(app, svc, world):
    org = client_as(app, world["org"])
    token = credits.pass_token(svc.settings["SECRET_KEY"], world["ann"].id)
    assert '<h1 class="verdict-big">VALID</h1>' in org.get(f"/checkin/{token}").get_data(as_text=True)

    r = org.post(f"/dashboard/photos/{world['photo']}/reject", data={"csrf_token": csrf(org), "reason": "not_a_plate", "note": "a cat"})
    assert r.status_code == 302
    ann = client_as(app, world["ann"])
    me = ann.get("/api/v1/me", headers={}).json
    assert me["progress"] == {"accepted": 2, "quota": 3, "complete": False}
    html = org.get(f"/checkin/{token}").get_data(as_text=True)
    assert "NOT VALID" in html and "only 2 of 3 photos are accepted; 1 rejected in review" in html and "Check in</button>" not in html
    assert "<strong>Rejected in review</strong>: Not a number plate (a cat)" in ann.get("/photos").get_data(as_text=True)
    log = org.get(f"/dashboard/photos/{world['photo']}").get_data(as_text=True)
    assert "<td>Olga</td><td>reject</td>" in log and "Not a number plate — a cat" in log
    assert shown(org.get("/dashboard/review?filter=rejected").get_data(as_text=True)) == {world["photo"]}
    stats = json.loads(app.test_cli_runner().invoke(args=["stats", "--json"]).stdout)
    assert stats["paid"] == 0 and stats["photos_accepted"] == 3 and stats["rejected_in_review"] == {"not_a_plate": 1}

    # its bytes stay blocked: neither the owner nor anyone else earns credit with them again
    data = photos.named(PHOTOS[0])
    assert svc.intake.submit(world["ann"].id, io.BytesIO(data), "again.jpg").code == "duplicate"
    assert svc.intake.submit(world["bob"].id, io.BytesIO(data), "again.jpg").code == "duplicate"

    # a second rejection does not take a second credit
    org.post(f"/dashboard/photos/{world['photo']}/reject", data={"csrf_token": csrf(org), "reason": "unreadable"})
    assert client_as(app, world["ann"]).get("/api/v1/me").json["progress"]["accepted"] == 2

    org.post(f"/dashboard/photos/{world['photo']}/restore", data={"csrf_token": csrf(org)})
    assert client_as(app, world["ann"]).get("/api/v1/me").json["progress"]["accepted"] == 3
    assert '<h1 class="verdict-big">VALID</h1>' in org.get(f"/checkin/{token}").get_data(as_text=True)
    assert shown(org.get("/dashboard/review?filter=rejected").get_data(as_text=True)) == set()


def test_other_reason_needs_a_note(app, world):
    org = client_as(app, world["org"])
    r = org.post(f"/dashboard/photos/{world['photo']}/reject", data={"csrf_token": csrf(org), "reason": "other"}, follow_redirects=True)
    assert "Say why" in r.get_data(as_text=True)
    assert client_as(app, world["ann"]).get("/api/v1/me").json["progress"]["accepted"] == 3


def test_pass_checks_in_once(app, svc, world):
    ann = client_as(app, world["ann"])
    page = ann.get("/pass").get_data(as_text=True)
    assert "<svg" in page
    code = re.search(r'class="pass-code">([A-Z0-9-]+)<', page).group(1)
    assert code == credits.short_code(svc.settings["SECRET_KEY"], world["ann"].id)
    bob = client_as(app, world["bob"]).get("/pass").get_data(as_text=True)
    assert "<svg" not in bob and "once 3 of your photos" in bob

    org = client_as(app, world["org"])
    found = org.get(f"/checkin?q={code.lower()}").get_data(as_text=True)
    token = re.search(r'href="/checkin/([^"]+)"', found).group(1)
    r = org.post(f"/checkin/{token}", data={"csrf_token": csrf(org)})
    assert "Checked in now" in r.get_data(as_text=True)
    again = org.get(f"/checkin/{token}").get_data(as_text=True)
    assert "Already checked in at" in again and "by Olga" in again
    assert org.post(f"/checkin/{token}", data={"csrf_token": csrf(org)}).get_data(as_text=True).count("Checked in now") == 0
    assert json.loads(app.test_cli_runner().invoke(args=["stats", "--json"]).stdout)["checked_in"] == 1


def test_forged_pass_is_not_valid(app, svc, world):
    org = client_as(app, world["org"])
    real = credits.pass_token(svc.settings["SECRET_KEY"], world["ann"].id)
    forged = credits.pass_token("another secret", world["ann"].id)
    for token in (forged, real[:-2] + "xx", "garbage"):
        html = org.get(f"/checkin/{token}").get_data(as_text=True)
        assert "NOT VALID" in html and "not one of ours" in html


def test_contributors_table_search_filter_sort_and_csv(app, world):
    org = client_as(app, world["org"])
    html = org.get("/dashboard?q=ann").get_data(as_text=True)
    assert "ann@example.com" in html and "bob@example.com" not in html
    html = org.get("/dashboard?state=in_progress").get_data(as_text=True)
    assert "bob@example.com" in html and "ann@example.com" not in html
    html = org.get("/dashboard?sort=accepted").get_data(as_text=True)
    assert html.index("ann@example.com") < html.index("bob@example.com")
    body = org.get("/dashboard/contributors.csv").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0][0] == "name" and {r[1] for r in rows[1:]} == {"ann@example.com", "bob@example.com"}
    bob = next(r for r in rows if r[1] == "bob@example.com")
    assert bob[0].startswith("'=")  # formula neutralised
    detail = org.get(f"/dashboard/contributors/{world['bob'].id}").get_data(as_text=True)
    assert "notes.txt" in detail and "not_an_image" in detail and "NOT VALID" in detail


def shown(html: str) -> set[int]:
    """The photo ids on a review page."""
    return {int(n) for n in re.findall(r'<li class="tile[^"]*" id="photo-(\d+)"', html)}


def test_review_filters(app, svc, world):
    from PIL import ImageEnhance

    undated = svc.intake.submit(world["bob"].id, io.BytesIO(photos.named("plain")), "undated.jpg")  # no EXIF
    dim = images.encode(ImageEnhance.Brightness(photos.scene(30)).enhance(0.2), quality=90)  # dark, flat: borderline
    dim = svc.intake.submit(world["bob"].id, io.BytesIO(dim), "dim.jpg")
    assert undated.accepted and dim.accepted, (undated.message, dim.message)
    everyone = set(world["photos"]) | {world["bob_photo"], undated.photo_id, dim.photo_id}

    org = client_as(app, world["org"])
    html = org.get("/dashboard/review").get_data(as_text=True)
    assert shown(html) == everyone and "6 photos, newest first" in html
    html = org.get("/dashboard/review?filter=no_date").get_data(as_text=True)
    assert shown(html) == {undated.photo_id, dim.photo_id} and "2 photos, newest first" in html
    html = org.get("/dashboard/review?filter=borderline_quality").get_data(as_text=True)
    assert shown(html) == {dim.photo_id} and "1 photo, newest first" in html
    html = org.get("/dashboard/review?filter=borderline_quality&page=2").get_data(as_text=True)
    assert shown(html) == set() and "1 photo, newest first" in html
    assert shown(org.get("/dashboard/review?filter=burst").get_data(as_text=True)) == set()


@pytest.mark.parametrize("near_duplicate_distance", [31, 4])
def test_close_to_another_photo_filter(settings, request, near_duplicate_distance):
    """Offered only when NEAR_DUPLICATE_DISTANCE leaves room below the index radius (31 bits),
    and then it lists exactly the photos let in within that radius of an earlier one."""
    from PIL import ImageEnhance

    settings["NEAR_DUPLICATE_DISTANCE"] = near_duplicate_distance
    app, svc, world = (request.getfixturevalue(f) for f in ("app", "svc", "world"))
    copy = images.encode(ImageEnhance.Brightness(images.load_bytes(photos.named(PHOTOS[0]))).enhance(1.3), quality=60)
    v = svc.intake.submit(world["bob"].id, io.BytesIO(copy), "brighter.jpg")
    org = client_as(app, world["org"])
    listed = org.get("/dashboard/review?filter=near_threshold").get_data(as_text=True)
    if near_duplicate_distance == 31:  # the default: such a copy is refused, and the filter is not offered
        assert v.code == "near_duplicate"
        assert 'href="/dashboard/review?filter=near_threshold"' not in listed and "Within 31 bits" not in listed
        assert shown(listed) == set(world["photos"]) | {world["bob_photo"]}  # an unknown filter lists all
        return
    assert v.accepted, v.message
    with svc.db.Session() as s:
        from collector.platform.models import Photo

        assert near_duplicate_distance < s.get(Photo, v.photo_id).nearest_distance <= 31
    assert 'aria-current=page>Within 31 bits of an earlier photo' in listed
    assert shown(listed) == {v.photo_id} and "1 photo, newest first" in listed


def test_burst_flag_and_hourly_chart_counts(app, svc, world):
    from PIL import Image

    from collector.organisers import reports

    def shot(seed, when):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = when
        return images.encode(photos.scene(seed), exif=exif, quality=90)

    a = svc.intake.submit(world["bob"].id, io.BytesIO(shot(31, "2026:11:20 10:00:00")), "a.jpg")
    b = svc.intake.submit(world["bob"].id, io.BytesIO(shot(32, "2026:11:20 10:00:01")), "b.jpg")
    c = svc.intake.submit(world["bob"].id, io.BytesIO(shot(33, "2026:11:20 10:05:00")), "c.jpg")
    assert a.accepted and b.accepted and c.accepted
    html = client_as(app, world["org"]).get("/dashboard/review?filter=burst").get_data(as_text=True)
    assert f'id="photo-{a.photo_id}"' in html and f'id="photo-{b.photo_id}"' in html and f'id="photo-{c.photo_id}"' not in html

    with svc.db.Session() as s:
        series, before = reports.accepted_per_hour(s)
        assert sum(n for _, n in series) + before == 7
    org = client_as(app, world["org"])
    org.post(f"/dashboard/photos/{a.photo_id}/reject", data={"csrf_token": csrf(org), "reason": "unreadable"})
    with svc.db.Session() as s:
        series, before = reports.accepted_per_hour(s)
        assert sum(n for _, n in series) + before == 6


def test_flag_keeps_credit_and_clear_flag(app, svc, world):
    org = client_as(app, world["org"])
    org.post(f"/dashboard/photos/{world['photo']}/flag", data={"csrf_token": csrf(org), "note": "check plate"})
    assert client_as(app, world["ann"]).get("/api/v1/me").json["progress"]["accepted"] == 3
    html = org.get("/dashboard/review?filter=flagged").get_data(as_text=True)
    assert shown(html) == {world["photo"]} and "Clear flag" in html
    assert "— check plate" in org.get(f"/dashboard/photos/{world['photo']}").get_data(as_text=True)
    org.post(f"/dashboard/photos/{world['photo']}/restore", data={"csrf_token": csrf(org)})
    assert shown(org.get("/dashboard/review?filter=flagged").get_data(as_text=True)) == set()
    assert client_as(app, world["ann"]).get("/api/v1/me").json["progress"]["accepted"] == 3


def test_contributor_photos_lists_one_persons_newest_first_up_to_the_limit(svc, world):
    from collector.organisers import reports

    for n in range(3):
        svc.intake.submit(world["ann"].id, io.BytesIO(b"not a photo %d" % n), f"junk{n}.txt")
    with svc.db.Session() as s:
        ann = reports.contributor_photos(s, world["ann"].id)
        assert [p.id for p in ann.photos] == sorted(world["photos"], reverse=True)
        assert [r.filename for r in ann.rejected] == ["junk2.txt", "junk1.txt", "junk0.txt"]
        few = reports.contributor_photos(s, world["ann"].id, refusals=2)
        assert [r.filename for r in few.rejected] == ["junk2.txt", "junk1.txt"] and few.photos == ann.photos
        bob = reports.contributor_photos(s, world["bob"].id)
        assert [p.id for p in bob.photos] == [world["bob_photo"]] and [r.filename for r in bob.rejected] == ["notes.txt"]
        assert reports.contributor_photos(s, world["org"].id) == reports.ContributorPhotos([], [])


def test_find_by_name_email_or_pass_code_never_an_organiser(svc, world, make_user):
    from collector.organisers import reports

    code = credits.ensure_pass_code(svc.db, svc.settings["SECRET_KEY"], world["ann"].id)
    make_user("anna@example.com", "Anna")
    with svc.db.Session() as s:
        def names(q, **kw):
            return [u.name for u in reports.find(s, q, **kw)]

        assert names("ann") == ["Ann", "Anna"] and names("ann", limit=1) == ["Ann"]
        assert names("ANNA@EXAMPLE") == ["Anna"] and names(code.lower().replace("-", " -")) == ["Ann"]
        assert names("olga") == [] and names("org@example.com") == [] and names("nobody") == []
