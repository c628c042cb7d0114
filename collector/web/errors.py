"""One error policy: roll back first, then JSON for the API and a page for people. No tracebacks."""

from __future__ import annotations

import logging

from flask import Flask, g, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, InternalServerError

from collector.intake.checks import reject
from collector.intake.credits import progress_of
from collector.platform.db import CommitUnconfirmed
from collector.platform.services import login_manager, services
from collector.web.api import api_error, request_user
from collector.web.limits import RateLimited

# What a database fault means for the person, and how long to wait before trying again.
DB_LOCKED = (5, "The database is busy with other uploads right now. What you just sent was not recorded; "
                "it is sent again by itself, or try again in a few seconds.")
DB_DOWN = (30, "The database cannot be reached right now. What you just sent was not recorded; "
               "try again in half a minute.")
DB_UNCONFIRMED = (5, "The database stopped answering just as it saved your photo, so we cannot say whether it "
                     "was kept. Send it again: if it was, it shows as already uploaded, and it never counts twice.")

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _rollback() -> None:
    try:
        services().db.session.rollback()
    except Exception:  # the database itself may be what failed
        log.exception("rollback failed")


def _answer(status: int, code: str, title: str, message: str, headers: dict | None = None, **extra):
    """The API's JSON error or the error page for people: the same status, sentence and headers."""
    headers = headers or {}
    if _wants_json():
        response = api_error(status, code, message, **extra)
        response.headers.update(headers)
        return response
    return render_template("error.html", status=status, title=title, message=message), status, headers


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, csrf_error)
    app.register_error_handler(RateLimited, rate_limited)
    for database_fault in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, CommitUnconfirmed):
        app.register_error_handler(database_fault, database_unavailable)
    app.register_error_handler(413, too_large)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)


def csrf_error(exc: CSRFError):
    _rollback()
    message = "The page's security token is missing or expired. Reload the page and try again."
    return _answer(400, "csrf_failed", "Please reload the page", message)


def rate_limited(exc: RateLimited):
    _rollback()
    return _answer(429, exc.code, "Please wait", exc.message, {"Retry-After": str(exc.retry_after)},
                   retry_after=exc.retry_after)


def database_unavailable(exc: Exception):
    """A locked SQLite file or an unreachable PostgreSQL: 503 with Retry-After, said plainly."""
    _rollback()
    text = str(exc).lower()  # SQLite: "database is locked"; PostgreSQL: "... due to lock timeout"
    locked = any(word in text for word in ("locked", "lock timeout", "busy"))
    retry_after, message = DB_UNCONFIRMED if isinstance(exc, CommitUnconfirmed) else DB_LOCKED if locked else DB_DOWN
    log.warning("database unavailable on %s %s: %s", request.method, request.path, str(exc).splitlines()[0][:200])
    g._login_user = login_manager.anonymous_user()  # the page must not ask the database who you are
    return _answer(503, "service_unavailable", "Try again shortly", message, {"Retry-After": str(retry_after)},
                   retry_after=retry_after)


def too_large(exc):
    _rollback()
    length, limit = request.content_length, request.max_content_length
    if length is not None and limit is not None and length <= limit:
        # Werkzeug says 413 also for a form of too many parts or an oversized text field.
        message = ("The form has too many parts (at most 1,000) or a text field over 1 MB. "
                   "Send at most 30 photos per form, or one per API request.")
        return _answer(400, "bad_request", "Bad request", message)
    rejection = reject("too_large", max_mb=services().settings["MAX_UPLOAD_MB"])
    if _wants_json():
        return _too_large_verdict(rejection), 413
    return render_template("error.html", status=413, title="Too large", message=rejection.message), 413


def _too_large_verdict(rejection) -> dict:
    """The API's verdict on an upload over the size limit, recorded as a refusal when it was a
    photo upload by a known contributor, as every other refusal is."""
    body = {"status": "rejected", "code": rejection.code, "message": rejection.message, "photo": None}
    user = request_user() if request.endpoint == "api.upload_photo" else None
    if user is not None:
        svc = services()
        svc.intake.record_rejection(user.id, rejection.code, rejection.message, "(unknown)", None, request.content_length)
        body["progress"] = progress_of(svc.db.session, user.id, svc.settings["QUOTA"]).as_dict()
    return body


def http_error(exc: HTTPException):
    _rollback()
    code = (exc.name or "error").lower().replace(" ", "_").replace("'", "")
    return _answer(exc.code or 500, code, exc.name, exc.description or exc.name)


def unexpected(exc: Exception):
    _rollback()
    log.exception("unhandled error on %s %s", request.method, request.path)
    message = ("Something went wrong on our side and this request was not completed. "
               "Check your photos page to see what was recorded, then try again.")
    return _answer(500, "internal_error", InternalServerError.name, message)
