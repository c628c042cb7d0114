"""Entry point: `gunicorn app:app`, `flask --app app run`, or `gunicorn 'app:create_app()'`.

`app` is built on first access (PEP 562 module ``__getattr__``), not at import: building it
reads the COLLECTOR_* environment, applies migrations and may create the secret key file, and
``from app import create_app`` (tests, benchmarks, a custom WSGI file) should do none of that.
gunicorn and `flask` look the attribute up by name, so they get the app built once per process
(each gunicorn worker builds its own after the fork, unless `--preload`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector import create_app

if TYPE_CHECKING:
    from flask import Flask

    app: Flask

__all__ = ["app", "create_app"]

_app = None


def __getattr__(name: str):
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
