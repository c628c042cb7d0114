"""gunicorn's settings for `make run` and the tests that start real workers (read from the
working directory by gunicorn itself). See collector/server.py for why this worker class."""

worker_class = "collector.server.Worker"
workers = 2
threads = 8  # app threads per process; connections wait on the event loop
worker_connections = 1000  # open connections per process; beyond it, an immediate 503
keepalive = 5  # seconds an idle kept-alive connection stays open
timeout = 120  # a process whose event loop is stuck this long is restarted
graceful_timeout = 30
