"""gunicorn's settings for `make run` and the tests that start real workers (read from the
working directory by gunicorn itself). See collector/web/server.py for why this worker class."""

worker_class = "collector.web.server.Worker"
workers = 2
threads = 8  # app threads per process; connections wait on the event loop
worker_connections = 1000  # open connections per process; beyond it, an immediate 503
keepalive = 5  # seconds an idle kept-alive connection stays open
timeout = 120  # a process whose event loop is stuck this long is restarted
graceful_timeout = 30


def on_starting(server):
    """Migrations, once, in the master before any worker builds the app (`gunicorn app:app`
    needs no other step; `make run` has already run `flask --app app db upgrade`)."""
    from collector.platform.config import load_settings
    from collector.platform.db import upgrade

    upgrade(load_settings().DATABASE_URL)
