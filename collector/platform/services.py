"""The per-app services and the unbound Flask extensions, for the modules that serve requests.

``create_app`` builds one ``Collector`` and keeps it in ``app.extensions["collector"]``;
blueprints, the CLI and the error handlers reach it with ``services()``. This module imports
nothing from the package's ``__init__``, so no module inside ``collector/`` needs to.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

from collector.intake.pipeline import Intake
from collector.platform.config import Settings
from collector.platform.db import Database
from collector.platform.models import User
from collector.platform.storage import Storage

csrf = CSRFProtect()
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Log in to continue."
login_manager.session_protection = "basic"


@dataclass
class Collector:
    """The per-app services, kept in ``app.extensions["collector"]``."""

    settings: Settings
    db: Database
    storage: Storage
    intake: Intake


def services() -> Collector:
    return current_app.extensions["collector"]


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    # "id:session_version" (User.get_id): a cookie from before the last log-out or password
    # change names an older version and no longer loads anyone.
    uid, _, version = (user_id or "").partition(":")
    try:
        user = services().db.session.get(User, int(uid))
        return user if user is not None and version == str(user.session_version) else None
    except ValueError:
        return None
