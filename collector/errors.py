"""One error policy: roll back first, then JSON for the API and a page for people. No tracebacks."""

from __future__ import annotations

import logging

from flask import Flask, g, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, InternalServerError

from .api import api_error, request_user
from .checks import reject
from .credits import progress_of
from .limits import RateLimited
from .services import login_manager, services

# What a database fault means for the person, and how long to wait before trying again.
DB_LOCKED = (5, "The database is busy with other uploads right now. What you just sent was not recorded; "
                "it is sent again by itself, or try again in a few seconds.")
DB_DOWN = (30, "The database cannot be reached right now. What you just sent was not recorded; "
               "try again in half a minute.")

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _rollback() -> None:
    try:
        services().db.session.rollback()
    except Exception:  # the database itself may be what failed
        log.exception("rollback failed")


def init_app(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        services().db.session.rollback()
        message = "The page's security token is missing or expired. Reload the page and try again."
        if _wants_json():
            return api_error(400, "csrf_failed", message)
        return render_template("error.html", status=400, title="Please reload the page", message=message), 400

    @app.errorhandler(RateLimited)
    def rate_limited(exc: RateLimited):
        _rollback()
        headers = {"Retry-After": str(exc.retry_after)}
        if _wants_json():
            response = api_error(429, exc.code, exc.message, retry_after=exc.retry_after)
            response.headers.update(headers)
            return response
        return render_template("error.html", status=429, title="Please wait", message=exc.message), 429, headers

    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.InterfaceError)
    @app.errorhandler(sa_exc.TimeoutError)
    def database_unavailable(exc: Exception):
        """A locked SQLite file or an unreachable PostgreSQL: 503 with Retry-After, said plainly."""
        _rollback()
        text = str(exc).lower()  # SQLite: "database is locked"; PostgreSQL: "... due to lock timeout"
        locked = any(word in text for word in ("locked", "lock timeout", "busy"))
        retry_after, message = DB_LOCKED if locked else DB_DOWN
        log.warning("database unavailable on %s %s: %s", request.method, request.path, str(exc).splitlines()[0][:200])
        g._login_user = login_manager.anonymous_user()  # the page must not ask the database who you are
        headers = {"Retry-After": str(retry_after)}
        if _wants_json():
            response = api_error(503, "service_unavailable", message, retry_after=retry_after)
            response.headers.update(headers)
            return response
        return render_template("error.html", status=503, title="Try again shortly", message=message), 503, headers

    @app.errorhandler(413)
    def too_large(exc):
        svc = services()
        svc.db.session.rollback()
        length, limit = request.content_length, request.max_content_length
        if length is not None and limit is not None and length <= limit:
            # Werkzeug says 413 also for a form of too many parts or an oversized text field.
            message = ("The form has too many parts (at most 1,000) or a text field over 1 MB. "
                       "Send at most 30 photos per form, or one per API request.")
            if _wants_json():
                return api_error(400, "bad_request", message)
            return render_template("error.html", status=400, title="Bad request", message=message), 400
        rejection = reject("too_large", max_mb=svc.settings["MAX_UPLOAD_MB"])
        if _wants_json():
            body = {"status": "rejected", "code": rejection.code, "message": rejection.message, "photo": None}
            user = request_user() if request.endpoint == "api.upload_photo" else None
            if user is not None:
                svc.intake.record_rejection(user.id, rejection.code, rejection.message, "(unknown)", None, request.content_length)
                body["progress"] = progress_of(svc.db.session, user.id, svc.settings["QUOTA"]).as_dict()
            return body, 413
        return render_template("error.html", status=413, title="Too large", message=rejection.message), 413

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        services().db.session.rollback()
        if _wants_json():
            code = (exc.name or "error").lower().replace(" ", "_").replace("'", "")
            return api_error(exc.code or 500, code, exc.description or exc.name)
        return render_template("error.html", status=exc.code, title=exc.name, message=exc.description), exc.code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        _rollback()
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = ("Something went wrong on our side and this request was not completed. "
                   "Check your photos page to see what was recorded, then try again.")
        if _wants_json():
            return api_error(500, "internal_error", message)
        return render_template("error.html", status=500, title=InternalServerError.name, message=message), 500
