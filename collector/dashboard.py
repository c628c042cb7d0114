"""Organisers: dashboard, contributors, review, and the door check-in. Thin views."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import func, or_, select

from . import credits, jobs, reports, review
from .auth import EmptyForm
from .models import Photo, UploadRejection, User
from .services import services

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
    series, before = reports.accepted_per_hour(session)
    if before == 0:  # start at the first hour with photos (keeping six hours at least), not 40 empty ones
        first = next((i for i, (_, n) in enumerate(series) if n), len(series))
        series = series[max(min(first, len(series) - 6), 0):]
    return render_template(
        "dashboard.html", stats=reports.stats(session, quota), users=users, total=total, cq=cq,
        pages=max((total + cq.per_page - 1) // cq.per_page, 1), chart=reports.chart_svg(series, before),
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
    photos = session.scalars(select(Photo).where(Photo.user_id == user_id).order_by(Photo.id.desc())).all()
    rejected = session.scalars(
        select(UploadRejection).where(UploadRejection.user_id == user_id).order_by(UploadRejection.id.desc()).limit(500)
    ).all()
    check = credits.check_pass(session, user.id, svc.settings["QUOTA"])
    token = credits.pass_token(svc.settings["SECRET_KEY"], user.id)
    distinct, repeats = jobs.distinct_plates(session, user.id)
    return render_template("contributor.html", person=user, photos=photos, rejected=rejected, check=check, token=token,
                           distinct_plates=distinct, repeat_plates=repeats,
                           code=credits.short_code(svc.settings["SECRET_KEY"], user.id), form=EmptyForm(), reasons=review.REASONS)


@bp.route("/dashboard/review")
@organiser_required
def review_grid():
    name = request.args.get("filter", "")
    name = name if name in review.FILTERS else ""
    page = _int_arg("page")
    session = services().db.session
    photos, total = review.review_page(session, name, page)
    ids = [p.id for p in photos]
    return render_template("review.html", photos=photos, total=total, page=page, pages=max((total + 47) // 48, 1),
                           filter=name, filters=review.FILTERS, reasons=review.REASONS, form=EmptyForm(),
                           plates=jobs.plates_of(session, ids), reads=jobs.reads_of(session, ids))


@bp.route("/dashboard/photos/<int:photo_id>")
@organiser_required
def photo(photo_id: int):
    session = services().db.session
    p = session.get(Photo, photo_id)
    if p is None:
        abort(404)
    return render_template("photo.html", photo=p, reasons=review.REASONS, form=EmptyForm(),
                           plates=jobs.plates_of(session, [p.id])[p.id], read=jobs.reads_of(session, [p.id]).get(p.id))


def _back(photo_id: int):
    target = request.form.get("next", "")
    if target.startswith("/dashboard") and not target.startswith("//"):
        return redirect(target)
    return redirect(url_for("dashboard.photo", photo_id=photo_id))


def _review_action(photo_id: int, action, done: str, unchanged: str, **kwargs):
    """Run one review action on an existing photo, say what happened, and go back."""
    if services().db.session.get(Photo, photo_id) is None:
        abort(404)
    try:
        changed = action(services().db, photo_id, current_user.id, note=request.form.get("note"), **kwargs)
    except review.ReviewError as exc:
        flash(str(exc), "error")
    else:
        flash(done if changed else unchanged, "info")
    return _back(photo_id)


@bp.route("/dashboard/photos/<int:photo_id>/reject", methods=["POST"])
@organiser_required
def reject(photo_id: int):
    return _review_action(photo_id, review.reject, "Photo rejected: the contributor's count went down by one. "
                          "Press Restore on the photo to undo.",
                          "That photo was already rejected.", reason=request.form.get("reason", ""))


@bp.route("/dashboard/photos/<int:photo_id>/restore", methods=["POST"])
@organiser_required
def restore(photo_id: int):
    return _review_action(photo_id, review.restore, "Done: the photo counts as accepted.",
                          "That photo was neither rejected nor flagged.")


@bp.route("/dashboard/photos/<int:photo_id>/flag", methods=["POST"])
@organiser_required
def flag(photo_id: int):
    return _review_action(photo_id, review.flag, "Photo flagged: it still counts, and the export leaves it out unless asked.",
                          "Only an accepted photo can be flagged.")


@bp.route("/dashboard/photos/<int:photo_id>/plate", methods=["POST"])
@organiser_required
def plate_text(photo_id: int):
    """An organiser's plate text: kept, audited, and it wins over the machine's."""
    svc = services()
    if svc.db.session.get(Photo, photo_id) is None:
        abort(404)
    try:
        text = jobs.correct(svc.db, photo_id, current_user.id, request.form.get("text", ""), svc.settings)
    except jobs.PlateError as exc:
        flash(str(exc), "error")
    else:
        flash(f"Plate text set to {text}.", "info")
    return _back(photo_id)


@bp.route("/dashboard/photos/<int:photo_id>/plate/approve", methods=["POST"])
@organiser_required
def plate_approve(photo_id: int):
    """A photo without a readable plate is fine after all: a credit held for it comes back."""
    svc = services()
    if svc.db.session.get(Photo, photo_id) is None:
        abort(404)
    done = jobs.approve(svc.db, photo_id, current_user.id, svc.settings)
    flash("Approved: the photo counts." if done else "That photo's plate has not been read yet.", "info")
    return _back(photo_id)


# -- the door ---------------------------------------------------------------------------------

@bp.route("/checkin")
@organiser_required
def lookup():
    svc = services()
    q = request.args.get("q", "").strip()[:100]
    people = []
    if q:
        like = f"%{q.lower()}%"
        people = svc.db.session.scalars(
            select(User).where(User.is_organiser.is_(False), or_(
                func.lower(User.name).like(like), User.email.like(like), User.pass_code == q.upper().replace(" ", ""),
            )).order_by(User.name).limit(20)
        ).all()
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
