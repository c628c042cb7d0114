"""Plate Collector: crowdsourced number-plate photos, turned into a clean dataset."""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask, g
from flask.globals import app_ctx
from werkzeug.exceptions import ServiceUnavailable

from collector import cli
from collector.intake.pipeline import Intake
from collector.organisers import dashboard
from collector.platform.config import PROJECT_ROOT, SETTINGS, Settings, load_settings
from collector.platform.db import Database, head_revision
from collector.platform.services import Collector, csrf, login_manager
from collector.platform.storage import open_storage
from collector.web import api, auth, errors, pages, resumable, security

log = logging.getLogger(__name__)
NOT_MIGRATED = "the database is not at the latest migration: run `make flask ARGS='db upgrade'`"


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The one place where wiring happens: defaults, then environment, then ``test_config``.

    ``test_config`` may hold collector settings (names without the ``COLLECTOR_`` prefix) and
    plain Flask configuration keys. Building the app touches nothing outside it: no migration
    (``flask --app app db upgrade``), no process-wide Pillow or warnings state.
    """
    test_config = dict(test_config or {})
    names = {s.name for s in SETTINGS}
    settings = load_settings(overrides={k: v for k, v in test_config.items() if k in names})
    app = Flask(__name__, static_folder=str(PROJECT_ROOT / "static"), template_folder=str(PROJECT_ROOT / "templates"))
    app.config.update(_flask_config(settings))
    app.config.update({k: v for k, v in test_config.items() if k not in names})
    _attach_services(app, settings)
    _register_web(app)

    @app.context_processor
    def _inject():
        return {"settings": settings}

    if not app.debug and not app.testing:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return app


def _flask_config(settings: Settings) -> dict[str, Any]:
    return {
        "SECRET_KEY": settings.SECRET_KEY,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": settings.COOKIE_SECURE,
        "SESSION_COOKIE_NAME": "collector_session",
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": settings.COOKIE_SECURE,
        # Pages stay open for a long time on phones at a meetup; the token lives with the session.
        "WTF_CSRF_TIME_LIMIT": None,
        "WTF_CSRF_SSL_STRICT": settings.COOKIE_SECURE,
        # One file per API request; the plain upload form may carry many (pages.upload).
        "MAX_CONTENT_LENGTH": settings.MAX_UPLOAD_MB * 1024 * 1024 + 256 * 1024,
        "MAX_FORM_MEMORY_SIZE": 1024 * 1024,
    }


def _attach_services(app: Flask, settings: Settings) -> None:
    """The database (not connected yet), the photo store and intake, in app.extensions."""
    db = Database(settings.DATABASE_URL, scopefunc=lambda: id(app_ctx._get_current_object()), pool_size=settings.DB_POOL_SIZE)
    storage = open_storage(settings.STORAGE_URL, settings.S3_ENDPOINT_URL)
    app.extensions["collector"] = Collector(settings, db, storage, Intake(db, storage, settings))
    app.teardown_appcontext(lambda exc: db.session.remove())
    _check_schema_once(app, db)


def _check_schema_once(app: Flask, db: Database) -> None:
    """Before the first request, one read: a database behind the code's migrations fails every
    request with a message that says what to run, rather than with a missing column somewhere."""
    checked = False
    lock = threading.Lock()  # the first requests arrive together on several threads

    @app.before_request
    def _schema_is_current() -> None:
        nonlocal checked
        if checked:
            return
        with lock:
            if not checked:
                at, head = db.revision(), head_revision()
                if at != head:
                    log.error("%s (it is at %s, the code needs %s)", NOT_MIGRATED, at, head)
                    g._login_user = login_manager.anonymous_user()  # the error page must not look up users
                    raise ServiceUnavailable(f"The service is not ready: {NOT_MIGRATED}.")
                checked = True


def _register_web(app: Flask) -> None:
    security.init_app(app)  # its guard runs before CSRFProtect reads a form
    csrf.init_app(app)
    login_manager.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp)
    csrf.exempt(api.bp)  # the API checks CSRF itself when a session (not a token) authenticates
    resumable.init_app(app)  # tus uploads; checks CSRF itself like the API
    errors.init_app(app)
    cli.init_app(app)
