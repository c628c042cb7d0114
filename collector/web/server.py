"""The production server: gunicorn processes running uvicorn's event loop, which holds every
connection while it is slow, and hands a request to one of a few app threads only when the
request is whole.

A WSGI app on plain threads (gunicorn's gthread) gives each connection a thread from its first
byte to its last: 16 clients that send an upload at 1 byte every 2 s hold 16 threads and the
service stops for everyone. Here, per gunicorn process:

- the headers must arrive within ``HEADER_TIMEOUT`` seconds (``Protocol``), and
- ``BufferedWSGI`` asks ``security.gate`` about the headers alone (size cap, log-in, rate
  limits) in an app thread for a few milliseconds, refuses with ``Connection: close`` without
  reading the body, or else reads the body on the event loop into a spooled temporary file
  (memory up to 256 KiB, then an unlinked file), capped at the route's limit, within
  ``BODY_TIMEOUT`` seconds and never 30 s without a byte;
- only then an app thread (``--threads`` of them) runs the Flask app, and the response is
  collected the same way, so a slow reader holds no thread either;
- beyond ``--worker-connections`` connections the server answers 503 at once.

Started by ``gunicorn -c gunicorn.conf.py 'app:create_app()'`` (``make run``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn_worker import UvicornWorker

log = logging.getLogger(__name__)

SPOOL_IN_MEMORY = 256 * 1024  # per connection: 1,000 connections hold at most 256 MiB of memory
IDLE_TIMEOUT = 30.0  # seconds without a byte of body
SEND_TIMEOUT = 60.0  # seconds a client may take to accept one 64 KiB chunk of the response
DRAIN_LIMIT = 256 * 1024  # a refused body this small is read and dropped, so the answer arrives intact
DRAIN_TIMEOUT = 2.0
CHUNK = 64 * 1024
SMALL_BODY = 1024 * 1024  # the most a GET may carry


class Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers.

    uvicorn resets its keep-alive timer on every byte, so on its own a client sending one header
    byte a second holds a connection for ever. The deadline is armed when the connection opens
    and after each response, and fires only if no new request has started since.
    """

    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # before super(), which may start a pipelined request
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        handle = getattr(self, "_header_deadline", None)
        if handle is not None:
            handle.cancel()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        previous = getattr(self, "_header_deadline", None)
        if previous is not None:
            previous.cancel()
        cycle = self.cycle

        def expire() -> None:
            if self.cycle is cycle and not self.transport.is_closing():
                log.info("closed a connection from %s: no request headers within %s s", self.client, self.header_timeout)
                self.transport.close()

        self._header_deadline = self.loop.call_later(self.header_timeout, expire)


def _environ(scope: dict[str, Any]) -> dict[str, Any]:
    """A WSGI environ from an ASGI HTTP scope (PEP 3333 strings: latin-1 for bytes)."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf8").decode("latin1"),
        "PATH_INFO": scope["path"].encode("utf8").decode("latin1"),
        "QUERY_STRING": scope["query_string"].decode("latin1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] or 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin1").upper().replace("-", "_")
        value = raw_value.decode("latin1")
        if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[name] = value
            continue
        key = "HTTP_" + name
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _run_wsgi(app, environ: dict[str, Any]):
    """Call a WSGI app (or a finished response object) and collect its whole answer."""
    started: dict[str, Any] = {}

    def start_response(status, headers, exc_info=None):
        started["status"], started["headers"] = status, headers
        return out.write

    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    result = app(environ, start_response)
    try:
        for chunk in result:
            out.write(chunk)
    finally:
        if hasattr(result, "close"):
            result.close()
    out.seek(0)
    return int(started["status"].split(" ", 1)[0]), started["headers"], out


class BufferedWSGI:
    """ASGI in front, the Flask (WSGI) app behind, on a bounded pool of threads."""

    def __init__(self, wsgi_app, threads: int = 8, body_timeout: float = 300.0):
        self.app = wsgi_app
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="app")
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        loop = asyncio.get_running_loop()
        environ = _environ(scope)
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            refusal, limit = None, SMALL_BODY  # nothing to refuse from the headers: no thread hop
        else:
            refusal, limit = await loop.run_in_executor(self.pool, self._gate, environ)
        environ["collector.gated"] = True  # the app's own guard need not count this request again
        if refusal is not None:
            declared = int(environ.get("CONTENT_LENGTH") or 0)
            if 0 < declared <= DRAIN_LIMIT:
                await self._drain(receive)
            await self._send(send, *(await loop.run_in_executor(self.pool, _run_wsgi, refusal, environ)), close=True)
            return
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        try:
            size = await self._read_body(receive, body, limit, loop)
            if size is None:  # gone
                return
            if size < 0:  # too slow: a short answer, and the connection closes
                message = b"The request body did not arrive in time; the connection is closed.\n"
                await send({"type": "http.response.start", "status": 408, "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(message)).encode()),
                    (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": message})
                return
            if size > limit:  # only a chunked body gets here: a declared length was checked by the gate
                environ["CONTENT_LENGTH"] = str(size)
                refusal, _ = await loop.run_in_executor(self.pool, self._gate, environ)
                if refusal is not None:
                    await self._send(send, *(await loop.run_in_executor(self.pool, _run_wsgi, refusal, environ)), close=True)
                    return
            body.seek(0)
            environ["wsgi.input"] = body
            environ["CONTENT_LENGTH"] = str(size)
            answer = await loop.run_in_executor(self.pool, _run_wsgi, self.app, environ)
        finally:
            body.close()
        await self._send(send, *answer)

    def _gate(self, environ):
        from collector.web.security import gate

        return gate(self.app, environ)

    async def _read_body(self, receive, body, limit: int, loop) -> int | None:
        """The body's size (more than ``limit``: stopped there), -1 when too slow, None when gone."""
        deadline = loop.time() + self.body_timeout
        size = 0
        while True:
            left = deadline - loop.time()
            try:
                message = await asyncio.wait_for(receive(), timeout=min(IDLE_TIMEOUT, left)) if left > 0 else None
            except TimeoutError:
                message = None
            if message is None:
                log.info("refused a request whose body was too slow (%d bytes received)", size)
                return -1
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return size
            body.write(chunk)
            if not message.get("more_body", False):
                return size

    async def _drain(self, receive) -> None:
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                while True:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        return
        except TimeoutError:
            return

    async def _send(self, send, status: int, headers, out, close: bool = False) -> None:
        try:
            raw = [(k.lower().encode("latin1"), v.encode("latin1")) for k, v in headers]
            if close and not any(k == b"connection" for k, _ in raw):
                raw.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": status, "headers": raw})
            while True:
                chunk = out.read(CHUNK)
                more = len(chunk) == CHUNK
                await asyncio.wait_for(send({"type": "http.response.body", "body": chunk, "more_body": more}), SEND_TIMEOUT)
                if not more:
                    return
        except TimeoutError:
            log.info("dropped a response the client did not read")
        finally:
            out.close()


class Worker(UvicornWorker):
    """gunicorn worker class: ``-k collector.web.server.Worker`` (see gunicorn.conf.py)."""

    # proxy_headers off: whether X-Forwarded-For is believed is COLLECTOR_TRUSTED_PROXIES's call alone
    # (uvicorn would otherwise believe it from any connection off 127.0.0.1).
    CONFIG_KWARGS = {"loop": "asyncio", "http": Protocol, "interface": "asgi3", "lifespan": "off",
                     "proxy_headers": False, "server_header": False}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.limit_concurrency = self.cfg.worker_connections

    async def _serve(self) -> None:
        settings = self.wsgi.extensions["collector"].settings
        Protocol.header_timeout = float(settings["HEADER_TIMEOUT"])
        self.wsgi = BufferedWSGI(self.wsgi, threads=max(1, self.cfg.threads), body_timeout=float(settings["BODY_TIMEOUT"]))
        await super()._serve()  # serves self.wsgi
