"""Entry point: `gunicorn app:app`, `flask --app app run`, or `gunicorn 'app:create_app()'`.

`app` is built on first access (PEP 562 module ``__getattr__``), not at import: building it
reads the COLLECTOR_* environment and may create the secret key file, and
``from app import create_app`` (tests, benchmarks, a custom WSGI file) should do none of that.
gunicorn and `flask` look the attribute up by name, so they get the app built once per process
(each gunicorn worker builds its own after the fork, unless `--preload`). Neither applies
migrations: `flask --app app db upgrade` does (`make run` runs it, and gunicorn.conf.py before
the workers start).

As the entry point of the server and the command line, this module sets the process's warning
filters: Pillow's warnings about odd-but-readable files (corrupt EXIF, a large image under our
own pixel limit) are handled by intake and are not for the log.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from PIL import Image

from collector import create_app

if TYPE_CHECKING:
    from flask import Flask

    app: Flask

__all__ = ["app", "create_app"]

warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

_app = None


def __getattr__(name: str):
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
