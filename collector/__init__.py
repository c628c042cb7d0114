"""Plate Collector: crowdsourced number-plate photos, turned into a clean dataset."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from flask import Flask
from flask.globals import app_ctx
from PIL import Image

from . import api, auth, cli, dashboard, dedup, errors, pages, resumable, security
from .config import PROJECT_ROOT, SETTINGS, load_settings
from .db import Database
from .intake import Intake
from .services import Collector, csrf, login_manager
from .storage import open_storage


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The one place where wiring happens: defaults, then environment, then ``test_config``.

    ``test_config`` may hold collector settings (names without the ``COLLECTOR_`` prefix) and
    plain Flask configuration keys.
    """
    test_config = dict(test_config or {})
    names = {s.name for s in SETTINGS}
    settings = load_settings(overrides={k: v for k, v in test_config.items() if k in names})
    app = Flask(
        __name__,
        static_folder=str(PROJECT_ROOT / "static"),
        template_folder=str(PROJECT_ROOT / "templates"),
    )
    app.config.update(
        SECRET_KEY=settings["SECRET_KEY"],
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings["COOKIE_SECURE"],
        SESSION_COOKIE_NAME="collector_session",
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=settings["COOKIE_SECURE"],
        # Pages stay open for a long time on phones at a meetup; the token lives with the session.
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_SSL_STRICT=settings["COOKIE_SECURE"],
        # One file per API request; the plain upload form may carry many (pages.upload).
        MAX_CONTENT_LENGTH=settings["MAX_UPLOAD_MB"] * 1024 * 1024 + 256 * 1024,
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
    )
    app.config.update({k: v for k, v in test_config.items() if k not in names})

    # Our own pixel limit is checked before decoding (imaging.decode); Pillow's guard stays as a
    # second line at twice the setting, and its warnings about odd files are not for the log.
    Image.MAX_IMAGE_PIXELS = settings["MAX_PIXELS"]
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

    db = Database(settings["DATABASE_URL"], scopefunc=lambda: id(app_ctx._get_current_object()), pool_size=settings["DB_POOL_SIZE"])
    db.migrate()
    dedup.configure(db.engine, settings["NEAR_INDEX"])
    storage = open_storage(settings["STORAGE_URL"], settings["S3_ENDPOINT_URL"])
    intake = Intake(db, storage, settings)
    app.extensions["collector"] = Collector(settings, db, storage, intake)
    app.teardown_appcontext(lambda exc: db.session.remove())

    security.init_app(app)  # its guard runs before CSRFProtect reads a form
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to continue."
    login_manager.session_protection = "basic"

    app.register_blueprint(auth.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp)
    csrf.exempt(api.bp)  # the API checks CSRF itself when a session (not a token) authenticates
    resumable.init_app(app)  # tus uploads; checks CSRF itself like the API
    errors.init_app(app)
    cli.init_app(app)

    @app.context_processor
    def _inject():
        return {"settings": settings}

    if not app.debug and not app.testing:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return app
