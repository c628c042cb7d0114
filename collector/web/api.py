"""JSON API v1: ``POST /api/v1/photos`` (one file per request) and ``GET /api/v1/me``.

A bearer token authenticates scripts; a browser session authenticates the upload page, and
then the CSRF token must come in the ``X-CSRFToken`` header.
"""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, g, jsonify, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms import ValidationError

from collector.intake.credits import progress_of
from collector.intake.pipeline import describe_photo
from collector.organisers import reports
from collector.platform.services import services
from collector.web import accounts

bp = Blueprint("api", __name__, url_prefix="/api/v1")

STATUS_FOR = {
    "accepted": 201,
    "already_uploaded": 200,
    "duplicate": 409,
    "near_duplicate": 409,
    "too_large": 413,
    "quota_cap": 422,
    "storage_unavailable": 503,
}


def api_error(status: int, code: str, message: str, **extra):
    return _answer({"status": "error", "code": code, "message": message, **extra}, status)


def _answer(body: dict, status: int):
    """``body`` as JSON with ``status``, and the header that status calls for."""
    response = jsonify(body)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="plate-collector"'
    if status == 503:
        response.headers["Retry-After"] = "30"
    return response


def token_user():
    """The user named by the request's bearer token; None without a valid one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return accounts.user_for_token(services().db.session, token.strip())


def request_user():
    """Who sent this request, by token or by session, without the CSRF check."""
    if request.headers.get("Authorization"):
        return token_user()
    return current_user._get_current_object() if current_user.is_authenticated else None


def authenticated(view):
    """Sets ``g.api_user`` from a bearer token or, with a valid CSRF header, the session."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if request.headers.get("Authorization"):
            user = token_user()
            if user is None:
                return api_error(401, "unauthorized", "The API token is missing, wrong or revoked.")
        elif current_user.is_authenticated:
            user = current_user._get_current_object()
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                try:
                    validate_csrf(request.headers.get("X-CSRFToken", ""))
                except ValidationError as exc:
                    raise CSRFError(str(exc)) from None
        else:
            return api_error(401, "unauthorized", "Log in, or send an API token as 'Authorization: Bearer TOKEN'.")
        g.api_user = user
        # The user is loaded: the request session's connection goes back to the pool, so
        # the view (intake's own transactions) holds at most one connection at a time.
        services().db.release()
        return view(*args, **kwargs)

    return wrapper


@bp.route("/photos", methods=["POST"])
@authenticated
def upload_photo():
    files = request.files.getlist("photo")
    if len(files) != 1:
        return api_error(400, "bad_request", "Send exactly one file in the multipart field 'photo'.")
    upload = files[0]
    verdict = services().intake.submit(g.api_user.id, upload.stream, upload.filename)
    return _answer(verdict.as_dict(), STATUS_FOR.get(verdict.status if verdict.status != "rejected" else verdict.code, 422))


@bp.route("/me", methods=["GET"])
@authenticated
def me():
    svc = services()
    user = g.api_user
    session = svc.db.session
    mine = reports.contributor_photos(session, user.id)
    return jsonify(
        {
            "user": {"id": user.id, "name": user.name, "email": user.email, "organiser": user.is_organiser},
            "progress": progress_of(session, user.id, svc.settings["QUOTA"]).as_dict(),
            "photos": [
                {
                    "id": p.id,
                    "sha256": p.sha256,
                    "status": p.status,
                    "review_reason": p.review_reason,
                    "review_note": p.review_note,
                    "filename": p.original_filename,
                    "uploaded_at": p.created_at.isoformat(),
                    "metadata": describe_photo(p),
                }
                for p in mine.photos
            ],
            "rejected": [
                {"code": r.code, "message": r.message, "filename": r.filename, "at": r.created_at.isoformat()}
                for r in mine.rejected
            ],
        }
    )


@bp.route("/stats", methods=["GET"])
@authenticated
def stats():
    if not g.api_user.is_organiser:
        return api_error(403, "forbidden", "Only organisers can see the statistics.")
    svc = services()
    return jsonify(reports.stats(svc.db.session, svc.settings["QUOTA"]))
