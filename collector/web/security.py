"""Request guards and response headers: the web's first line, in one module.

``guard`` runs before anything reads a request body (before CSRFProtect parses a form): it
sets the body cap of the route, refuses a body over it (413), refuses a body sent to a route
that needs a log-in when the headers carry no valid session or API token (401), and counts
uploads per account (429). Every refusal here closes the connection, so an unread body can
never be mistaken for the next request on a kept-alive connection. The production server
(``collector.web.server``) calls the same guard from the headers alone, before it reads any body.

``secure_headers`` puts the security headers on every response.
"""

from __future__ import annotations

from flask import Flask, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from collector.platform.services import login_manager, services
from collector.web import limits

MIB = 1024 * 1024
SMALL_BODY = MIB  # log-in, registration, dashboard buttons
MAX_FORM_FILES = 30  # the plain upload form (pages.upload)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PUBLIC_ENDPOINTS = frozenset({"auth.login", "auth.register", "auth.logout"})
UPLOAD_ENDPOINTS = frozenset({"pages.upload", "api.upload_photo", "resumable.create"})  # a tus upload counts at creation
SMALL_BLUEPRINTS = frozenset({"auth", "dashboard"})

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def body_limit(endpoint: str | None) -> int:
    """The largest request body the route takes, in bytes."""
    per_file = current_app.config["MAX_CONTENT_LENGTH"]  # one file and its form: MAX_UPLOAD_MB + 256 KiB
    if endpoint == "pages.upload":
        return per_file * MAX_FORM_FILES
    if endpoint == "api.upload_photo":
        return per_file
    if endpoint is None or endpoint.partition(".")[0] in SMALL_BLUEPRINTS:
        return SMALL_BODY
    return per_file  # other routes (e.g. resumable upload chunks) take at most one file's worth


def close_connection() -> None:
    """Ask the server to close this connection after the response (see ``secure_headers``)."""
    g.close_connection = True


def guard():
    """Refuse what can be refused from the headers alone; None lets the request go on."""
    if request.method not in BODY_METHODS:
        return None
    limit = body_limit(request.endpoint)
    request.max_content_length = limit
    gated = request.environ.get("collector.gated")  # the server already asked all this
    if request.endpoint is not None and request.endpoint not in PUBLIC_ENDPOINTS and not gated:
        user = _request_user()
        if user is None:
            close_connection()
            return _unauthorised()
    length = request.content_length
    if length is not None and length > limit:
        close_connection()
        raise RequestEntityTooLarge()
    if request.endpoint in UPLOAD_ENDPOINTS and not gated:
        _count_upload(user.id)
    return None


def _count_upload(user_id: int) -> None:
    """One upload against the contributor's per-minute limit; over it, the connection closes."""
    svc = services()
    per_minute = svc.settings["UPLOADS_PER_MINUTE"]
    try:
        limits.enforce(svc.db, f"upload:user:{user_id}", limits.Limit(per_minute, 60),
                       f"You sent more than {per_minute} uploads in a minute. Wait {{wait}}, then send the rest.")
    except limits.RateLimited:
        close_connection()
        raise


def _request_user():
    from collector.web.api import request_user  # api imports this module's neighbours

    return request_user()


def _unauthorised():
    if request.path.startswith("/api/"):
        from collector.web.api import api_error

        if request.headers.get("Authorization"):
            return api_error(401, "unauthorized", "The API token is missing, wrong or revoked.")
        return api_error(401, "unauthorized", "Log in, or send an API token as 'Authorization: Bearer TOKEN'.")
    return login_manager.unauthorized()


def secure_headers(response):
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if services().settings["COOKIE_SECURE"]:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if g.get("close_connection"):
        response.headers["Connection"] = "close"
    return response


def init_app(app: Flask) -> None:
    app.before_request(guard)  # registered ahead of CSRFProtect, the first to read a form
    app.after_request(secure_headers)
    proxies = app.extensions["collector"].settings["TRUSTED_PROXIES"]
    if proxies:
        # Only behind proxies we run: X-Forwarded-For and -Proto are believed from that many hops.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)


def gate(app: Flask, environ: dict):
    """For the server: run ``guard`` on a request whose body has not been read.

    Returns ``(None, limit)`` to go on and read at most ``limit`` bytes of body, or
    ``(response, 0)`` with a finished refusal (a WSGI response) to send instead.
    """
    environ = dict(environ)
    proxies = app.extensions["collector"].settings["TRUSTED_PROXIES"]
    if proxies:  # the same view of the client as the app's own ProxyFix gives (it edits environ)
        ProxyFix(lambda env, start: None, x_for=proxies, x_proto=proxies)(environ, None)
    with app.request_context(environ):
        try:
            refusal = guard()
            if refusal is None:
                return None, request.max_content_length or body_limit(request.endpoint)
        except Exception as exc:  # a refusal raised as an exception (413, 429) gets its usual page
            try:
                refusal = app.handle_user_exception(exc)
            except Exception:
                app.logger.exception("guard failed; the request goes on to the app")
                return None, body_limit(request.endpoint)
        response = app.process_response(app.make_response(refusal))
        response.headers["Connection"] = "close"
        return response, 0
