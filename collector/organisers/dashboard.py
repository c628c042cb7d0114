"""Organisers: dashboard, contributors, review, and the door check-in. Thin views."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from collector.intake import credits
from collector.organisers import reports, review
from collector.plates import jobs
from collector.platform.models import Photo, User
from collector.platform.services import services
from collector.web.auth import EmptyForm

bp = Blueprint("dashboard", __name__)


def organiser_required(view):
    """Anonymous visitors go to the log-in page; attendees get 403."""

    @wraps(view)
    @login_required
    def wrapper(*args, **kwargs):
        if not current_user.is_organiser:
            abort(403)
        return view(*args, **kwargs)

    return wrapper


def _int_arg(name: str, default: int = 1) -> int:
    try:
        return max(int(request.args.get(name, default)), 1)
    except ValueError:
        return default


def _contributor_query() -> reports.ContributorQuery:
    state = request.args.get("state", "")
    sort = request.args.get("sort", "accepted")
    return reports.ContributorQuery(
        q=request.args.get("q", "")[:100],
        state=state if state in reports.STATES else "",
        sort=sort if sort in reports.SORTS else "accepted",
        page=_int_arg("page"),
    )


@bp.route("/dashboard")
@organiser_required
def index():
    svc = services()
    session = svc.db.session
    quota = svc.settings["QUOTA"]
    cq = _contributor_query()
    users, total = reports.contributors(session, quota, cq)
    return render_template(
        "dashboard.html", stats=reports.stats(session, quota), users=users, total=total, cq=cq,
        pages=max((total + cq.per_page - 1) // cq.per_page, 1), chart=reports.recent_chart(session),
        states=reports.STATES, sorts=reports.SORTS, quota=quota,
    )


@bp.route("/dashboard/contributors.csv")
@organiser_required
def contributors_csv():
    svc = services()
    body = reports.contributors_csv(svc.db.session, svc.settings["QUOTA"], _contributor_query())
    return Response(body, mimetype="text/csv", headers={"Content-Disposition": "attachment; filename=contributors.csv"})


@bp.route("/dashboard/contributors/<int:user_id>")
@organiser_required
def contributor(user_id: int):
    svc = services()
    session = svc.db.session
    user = session.get(User, user_id)
    if user is None:
        abort(404)
    listed = reports.contributor_photos(session, user_id)
    check = credits.check_pass(session, user.id, svc.settings["QUOTA"])
    token = credits.pass_token(svc.settings["SECRET_KEY"], user.id)
    distinct, repeats = jobs.distinct_plates(session, user.id)
    return render_template("contributor.html", person=user, photos=listed.photos, rejected=listed.rejected, check=check, token=token,
                           distinct_plates=distinct, repeat_plates=repeats,
                           code=credits.short_code(svc.settings["SECRET_KEY"], user.id), form=EmptyForm(), reasons=review.REASONS)


@bp.route("/dashboard/review")
@organiser_required
def review_grid():
    svc = services()
    filters = review.filters(svc.settings["NEAR_DUPLICATE_DISTANCE"])
    name = request.args.get("filter", "")
    name = name if name in filters else ""
    page = _int_arg("page")
    session = svc.db.session
    photos, total = review.review_page(session, name, page)
    ids = [p.id for p in photos]
    return render_template("review.html", photos=photos, total=total, page=page, pages=max((total + 47) // 48, 1),
                           filter=name, filters=filters, reasons=review.REASONS, form=EmptyForm(),
                           plates=jobs.plates_of(session, ids), reads=jobs.reads_of(session, ids))


def _photo_or_404(photo_id: int) -> Photo:
    photo = services().db.session.get(Photo, photo_id)
    if photo is None:
        abort(404)
    return photo


@bp.route("/dashboard/photos/<int:photo_id>")
@organiser_required
def photo(photo_id: int):
    session = services().db.session
    p = _photo_or_404(photo_id)
    return render_template("photo.html", photo=p, reasons=review.REASONS, form=EmptyForm(),
                           plates=jobs.plates_of(session, [p.id])[p.id], read=jobs.reads_of(session, [p.id]).get(p.id))


def _back(photo_id: int):
    target = request.form.get("next", "")
    if target.startswith("/dashboard") and not target.startswith("//"):
        return redirect(target)
    return redirect(url_for("dashboard.photo", photo_id=photo_id))


# The review buttons: what each runs, and what the organiser is told when it changed the photo
# and when it did not.
REVIEW_ACTIONS = {
    "reject": (review.reject, "Photo rejected: the contributor's count went down by one. Press Restore on the photo to undo.",
               "That photo was already rejected."),
    "restore": (review.restore, "Done: the photo counts as accepted.", "That photo was neither rejected nor flagged."),
    "flag": (review.flag, "Photo flagged: it still counts, and the export leaves it out unless asked.",
             "Only an accepted photo can be flagged."),
}


def _act(photo_id: int, run, say):
    """Run ``run(services)`` on an existing photo, flash ``say(its answer)`` or the refusal,
    and go back where the organiser came from."""
    _photo_or_404(photo_id)
    try:
        answer = run(services())
    except (review.ReviewError, jobs.PlateError) as exc:
        flash(str(exc), "error")
    else:
        flash(say(answer), "info")
    return _back(photo_id)


@bp.route("/dashboard/photos/<int:photo_id>/<any(reject, restore, flag):action>", methods=["POST"])
@organiser_required
def review_action(photo_id: int, action: str):
    run, done, unchanged = REVIEW_ACTIONS[action]
    extra = {"reason": request.form.get("reason", "")} if action == "reject" else {}
    return _act(photo_id, lambda svc: run(svc.db, photo_id, current_user.id, note=request.form.get("note"), **extra),
                lambda changed: done if changed else unchanged)


@bp.route("/dashboard/photos/<int:photo_id>/plate", methods=["POST"])
@organiser_required
def plate_text(photo_id: int):
    """An organiser's plate text: kept, audited, and it wins over the machine's."""
    text = request.form.get("text", "")
    return _act(photo_id, lambda svc: jobs.correct(svc.db, photo_id, current_user.id, text, svc.settings),
                lambda kept: f"Plate text set to {kept}.")


@bp.route("/dashboard/photos/<int:photo_id>/plate/approve", methods=["POST"])
@organiser_required
def plate_approve(photo_id: int):
    """A photo without a readable plate is fine after all: a credit held for it comes back."""
    return _act(photo_id, lambda svc: jobs.approve(svc.db, photo_id, current_user.id, svc.settings),
                lambda done: "Approved: the photo counts." if done else "That photo's plate has not been read yet.")


# -- the door ---------------------------------------------------------------------------------

@bp.route("/checkin")
@organiser_required
def lookup():
    svc = services()
    q = request.args.get("q", "").strip()[:100]
    people = reports.find(svc.db.session, q) if q else []
    secret = svc.settings["SECRET_KEY"]
    return render_template("lookup.html", q=q, people=[(p, credits.pass_token(secret, p.id)) for p in people])


@bp.route("/checkin/<token>", methods=["GET", "POST"])
@login_required
def checkin(token: str):
    svc = services()
    quota = svc.settings["QUOTA"]
    user_id = credits.user_id_from_token(svc.settings["SECRET_KEY"], token)
    if not current_user.is_organiser:
        # An attendee who opened their own QR link: tell them what it is for, not "Forbidden".
        if user_id == current_user.id and request.method == "GET":
            return render_template("own_pass.html")
        abort(403, "This is someone else's meetup pass. Only organisers at the door can check passes.")
    just_now = False
    if request.method == "POST" and user_id is not None:
        form = EmptyForm()
        if form.validate_on_submit():
            just_now = credits.check_in(svc.db, user_id, current_user.id, quota)
            svc.db.session.expire_all()
    check = credits.check_pass(svc.db.session, user_id, quota)
    return render_template("checkin.html", check=check, token=token, just_now=just_now, form=EmptyForm(), quota=quota)
