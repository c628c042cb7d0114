"""One error policy: roll back first, then JSON for the API and a page for people. No tracebacks."""

from __future__ import annotations

import logging

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

from . import services
from .api import api_error, request_user
from .checks import reject
from .credits import progress_of

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def init_app(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        services().db.session.rollback()
        message = "The page's security token is missing or expired. Reload the page and try again."
        if _wants_json():
            return api_error(400, "csrf_failed", message)
        return render_template("error.html", status=400, title="Please reload the page", message=message), 400

    @app.errorhandler(413)
    def too_large(exc):
        svc = services()
        svc.db.session.rollback()
        rejection = reject("too_large", max_mb=svc.settings["MAX_UPLOAD_MB"])
        if _wants_json():
            body = {"status": "rejected", "code": rejection.code, "message": rejection.message, "photo": None}
            user = request_user()
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
        try:
            services().db.session.rollback()
        except Exception:  # the database itself may be what failed
            log.exception("rollback failed")
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = "Something went wrong on our side. Nothing you sent was lost; please try again."
        if _wants_json():
            return api_error(500, "internal_error", message)
        return render_template("error.html", status=500, title=InternalServerError.name, message=message), 500
