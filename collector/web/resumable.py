"""Resumable uploads: the tus protocol 1.0.0 (core, creation, termination, expiration, checksum)
under ``/api/v1/uploads``, and ``GET /api/v1/photos/by-sha256/<hex>`` to ask before sending.

An upload's state is one ``resumable_uploads`` row, so any worker on any machine can take the
next request. Its bytes are on the shared photo storage, one object per PATCH named by the byte
range it holds (``partial/<id>/<start>-<end>``): the folder by default, or S3, where objects are
written once and never appended to. The row lists the ends of the parts in order; a PATCH moves
the offset with a conditional UPDATE (``WHERE offset = start``), so two racing PATCHes cannot
both win and a part stored by a request that then lost is simply not in the chain. A PATCH cut
off by a dropped connection keeps the bytes that arrived: the client asks (HEAD) and goes on
from there. When the last byte arrives, one worker (the state moves ``receiving ->
finishing`` conditionally) streams the parts in order through ``intake.submit``, exactly as the
JSON API does; the verdict is the body of that final PATCH (200, JSON) and is kept on the row
until the upload expires, so a reply lost on the way is given again by ``GET`` on the upload.

Limits: ``Upload-Length`` above ``MAX_UPLOAD_MB`` is refused at creation (``too_large``, 413);
an account may have ``MAX_OPEN_UPLOADS`` unfinished uploads; every upload expires
``UPLOAD_EXPIRY_HOURS`` after its last byte. Expired uploads are removed a few at a time when
new ones are created, and all at once by ``flask uploads clean``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import tempfile
from email.utils import format_datetime
from pathlib import Path

import click
from flask import Blueprint, Flask, g, jsonify, request
from flask.cli import with_appcontext
from sqlalchemy import delete, func, select, update
from werkzeug.exceptions import ClientDisconnected

from collector.intake.checks import MESSAGES, reject
from collector.intake.pipeline import CHUNK, clean_filename
from collector.platform.models import ResumableUpload, utcnow
from collector.platform.services import csrf, services
from collector.platform.storage import StorageUnavailable
from collector.web.api import STATUS_FOR, api_error, authenticated

log = logging.getLogger(__name__)

bp = Blueprint("resumable", __name__, url_prefix="/api/v1", cli_group="uploads")

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration,checksum"
CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}
PART_PREFIX = "partial/"
MAX_PARTS = 150  # parts of one upload; the list of their ends must fit its column (String(2000))
FINISH_STALE = dt.timedelta(minutes=10)  # a worker that died while finishing: another may retry
TUS_ROUTES = {"resumable.create", "resumable.upload"}


def init_app(app: Flask) -> None:
    """Register the blueprint; its requests check CSRF themselves, as the JSON API does."""
    app.register_blueprint(bp)
    csrf.exempt(bp)


# -- protocol plumbing -------------------------------------------------------------------------


@bp.before_request
def _tus_version():
    if request.endpoint in TUS_ROUTES and request.method in ("POST", "HEAD", "PATCH", "DELETE"):
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            response = api_error(412, "tus_version", f"Send 'Tus-Resumable: {TUS_VERSION}'; no other version is supported.")
            response.headers["Tus-Version"] = TUS_VERSION
            return response
    return None


@bp.after_request
def _tus_headers(response):
    if request.endpoint in TUS_ROUTES:
        response.headers["Tus-Resumable"] = TUS_VERSION
        response.headers["Cache-Control"] = "no-store"
    return response


def _options():
    response = _empty(204)
    response.headers["Tus-Version"] = TUS_VERSION
    response.headers["Tus-Extension"] = TUS_EXTENSIONS
    response.headers["Tus-Max-Size"] = str(_max_bytes())
    response.headers["Tus-Checksum-Algorithm"] = ",".join(CHECKSUMS)
    return response


def _empty(status: int, **headers):
    from flask import Response

    response = Response(status=status)
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = str(value)
    return response


def _max_bytes() -> int:
    return services().settings["MAX_UPLOAD_MB"] * 1024 * 1024


def _expiry() -> dt.timedelta:
    return dt.timedelta(hours=services().settings["UPLOAD_EXPIRY_HOURS"])


def _http_date(when: dt.datetime) -> str:
    return format_datetime(when.astimezone(dt.UTC), usegmt=True)


def parse_metadata(header: str) -> dict[str, str]:
    """``Upload-Metadata: key base64value,key2 base64value2``; bad pairs are ignored."""
    out: dict[str, str] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        if not key:
            continue
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value.strip() else ""
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def _int_header(name: str) -> int | None:
    raw = request.headers.get(name, "")
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


def _write(*statements) -> int:
    """Run UPDATE/DELETE statements in one short write transaction; returns the rows changed.

    The request's read transaction ends first: SQLite cannot turn a read into a write while
    another worker writes, and no transaction should stay open while a phone trickles bytes in.
    """
    svc = services()
    svc.db.session.rollback()
    with svc.db.write_transaction(lock=False) as tx:
        return sum(tx.execute(statement).rowcount for statement in statements)


def _own(upload_id: str) -> ResumableUpload | None:
    """The caller's upload; someone else's is answered exactly like one that does not exist."""
    row = services().db.session.get(ResumableUpload, upload_id)
    if row is None or row.user_id != g.api_user.id:
        return None
    return row


def _location(row: ResumableUpload) -> str:
    return f"{bp.url_prefix}/uploads/{row.id}"


def part_key(upload_id: str, start: int, end: int) -> str:
    return f"{PART_PREFIX}{upload_id}/{start:012d}-{end:012d}"


def part_keys(row: ResumableUpload) -> list[str]:
    ends = [int(e) for e in row.parts.split(",") if e]
    starts = [0, *ends[:-1]]
    return [part_key(row.id, s, e) for s, e in zip(starts, ends, strict=True)]


def _verdict_response(body: dict, status: int = 200):
    response = jsonify(body)
    response.status_code = status
    return response


def _rejected_body(user_id: int, key: str, filename: str, size: int | None, **details) -> dict:
    svc = services()
    rejection = reject(key, **details)
    svc.intake.record_rejection(user_id, rejection.code, rejection.message, filename, None, size)
    return {
        "status": "rejected",
        "code": rejection.code,
        "message": rejection.message,
        "photo": None,
        "progress": svc.intake.progress(user_id).as_dict(),
    }


# -- ask before sending ------------------------------------------------------------------------


@bp.route("/photos/by-sha256/<sha256>", methods=["GET"])
@authenticated
def by_sha256(sha256: str):
    """What sending these bytes would get, from the hash alone: 200 with a verdict
    (``already_uploaded``, ``duplicate``, a remembered refusal), or 404 ``unknown``: send them."""
    sha256 = sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        return api_error(400, "bad_request", "Give the SHA-256 of the file as 64 hexadecimal digits.")
    verdict = services().intake.known(g.api_user.id, sha256)
    if verdict is None:
        return api_error(404, "unknown", "The server does not have these bytes yet: send the photo.")
    return _verdict_response(verdict.as_dict())


# -- tus ----------------------------------------------------------------------------------------


@bp.route("/uploads", methods=["OPTIONS"], endpoint="create_options")
@bp.route("/uploads/<upload_id>", methods=["OPTIONS"], endpoint="upload_options")
def options(upload_id: str | None = None):
    return _options()


@bp.route("/uploads", methods=["POST"], endpoint="create")
@authenticated
def create():
    svc = services()
    user_id = g.api_user.id
    if request.headers.get("Upload-Defer-Length"):
        return api_error(400, "bad_request", "Give Upload-Length: deferred lengths are not supported.")
    length = _int_header("Upload-Length")
    if length is None:
        return api_error(400, "bad_request", "Give the file's size in bytes in Upload-Length.")
    meta = parse_metadata(request.headers.get("Upload-Metadata", ""))
    filename = clean_filename(meta.get("filename"))
    if length > _max_bytes():
        body = _rejected_body(user_id, "too_large", filename, length, max_mb=svc.settings["MAX_UPLOAD_MB"])
        return _verdict_response(body, 413)
    if length == 0:
        return _verdict_response(_rejected_body(user_id, "empty_file", filename, 0), 422)

    session = svc.db.session
    now = utcnow()
    clean_expired(svc.db, svc.storage, now, limit=5)
    open_count = session.scalar(
        select(func.count()).select_from(ResumableUpload)
        .where(ResumableUpload.user_id == user_id, ResumableUpload.state != "done", ResumableUpload.expires_at > now)
    )
    if open_count >= svc.settings["MAX_OPEN_UPLOADS"]:
        response = api_error(429, "too_many_uploads",
                             f"You have {open_count} unfinished uploads. Let them finish, or cancel some, then try again.")
        response.headers["Retry-After"] = "30"
        return response
    sha = (meta.get("sha256") or "").lower()
    row = ResumableUpload(
        id=secrets.token_hex(16),
        user_id=user_id,
        length=length,
        offset=0,
        parts="",
        filename=filename,
        sha256=sha if len(sha) == 64 else None,
        state="receiving",
        created_at=now,
        updated_at=now,
        expires_at=now + _expiry(),
    )
    session.rollback()
    with svc.db.write_transaction(lock=False) as tx:
        tx.add(row)
    return _empty(201, Location=_location(row), Upload_Expires=_http_date(row.expires_at), Upload_Offset=0)


@bp.route("/uploads/<upload_id>", methods=["GET", "HEAD", "PATCH", "DELETE"], endpoint="upload")
@authenticated
def upload(upload_id: str):
    """One endpoint, one method each: HEAD (offset), PATCH (bytes), DELETE, GET (verdict)."""
    return {"HEAD": head, "PATCH": patch, "DELETE": terminate, "GET": status}[request.method](upload_id)


def head(upload_id: str):
    row = _own(upload_id)
    if row is None:
        return _empty(404)
    if row.expires_at <= utcnow():
        return _empty(410)
    return _empty(200, Upload_Offset=row.offset, Upload_Length=row.length, Upload_Expires=_http_date(row.expires_at))


def patch(upload_id: str):
    """Store the bytes of one PATCH as a part and move the offset past them; on the last byte,
    finish the upload."""
    if (refusal := _patch_headers_refusal()) is not None:
        return refusal
    start = _int_header("Upload-Offset")
    algo, expected = _checksum_header()
    row = _own(upload_id)
    if (answer := _patch_target_answer(row, start)) is not None:
        return answer
    remaining = row.length - start
    services().db.session.rollback()  # no transaction open while the bytes trickle in
    got = _receive(remaining, algo)
    try:
        answer = _received_refusal(got, remaining, algo, expected) or _append_part(row, start, got)
    finally:
        got.path.unlink(missing_ok=True)
    if answer is not None:
        return answer
    if row.offset == row.length:
        return _finish_or_report(row)
    return _empty(204, Upload_Offset=row.offset, Upload_Expires=_http_date(row.expires_at))


def _checksum_header() -> tuple[str | None, str]:
    """Upload-Checksum as (algorithm, base64 digest); (None, "") without one."""
    checksum = request.headers.get("Upload-Checksum")
    algo, _, expected = (checksum or "").partition(" ")
    return (algo if checksum else None), expected


def _patch_headers_refusal():
    """The answer to a PATCH whose headers are wrong, before the upload is looked at."""
    if request.mimetype != "application/offset+octet-stream":
        return api_error(415, "bad_content_type", "Send the bytes as 'Content-Type: application/offset+octet-stream'.")
    if _int_header("Upload-Offset") is None:
        return api_error(400, "bad_request", "Give the offset these bytes start at in Upload-Offset.")
    algo, _ = _checksum_header()
    if algo is not None and algo not in CHECKSUMS:
        return api_error(400, "bad_checksum_algorithm", f"Upload-Checksum: use one of {', '.join(CHECKSUMS)}.")
    return None


def _patch_target_answer(row: ResumableUpload | None, start: int):
    """The answer when this upload cannot take bytes at ``start``: gone, expired, complete
    (a retry after a lost reply: its verdict), elsewhere, or in too many pieces already."""
    if row is None:
        return api_error(404, "not_found", "No such upload: it may have expired. Start it again.")
    if row.expires_at <= utcnow():
        return api_error(410, "expired", "This upload expired. Start it again.")
    if row.offset == row.length and start == row.length:
        return _finish_or_report(row)  # a retry after a lost reply to the last PATCH
    if start != row.offset or row.state != "receiving":
        return _at_offset(api_error(409, "offset_mismatch", f"The server has {row.offset} bytes of this upload; send from there."), row)
    if row.parts.count(",") >= MAX_PARTS:
        return api_error(400, "too_many_parts", f"This upload already has {MAX_PARTS} pieces: start it again, sending bigger ones.")
    return None


def _received_refusal(got: _Received, remaining: int, algo: str | None, expected: str):
    """The answer when the bytes received are more than the upload lacks, or fail the checksum."""
    if got.size > remaining:
        return api_error(413, "too_large", "More bytes than the Upload-Length given at creation.")
    if algo is not None:
        if got.cut_off:
            return api_error(460, "checksum_mismatch", "The connection dropped; send this part again.")
        if base64.b64encode(got.digest).decode() != expected.strip():
            return api_error(460, "checksum_mismatch", "The bytes do not match Upload-Checksum; send them again.")
    return None


def _append_part(row: ResumableUpload, start: int, got: _Received):
    """Store the received bytes as the part after ``start`` and move the offset to its end, if
    no other request did first; None when done (``row`` is then fresh), else the answer."""
    if not got.size:
        return None
    svc = services()
    end = start + got.size
    try:
        svc.storage.put_file(part_key(row.id, start, end), got.path, got.sha256)
    except StorageUnavailable:
        return _at_offset(api_error(503, "storage_unavailable", MESSAGES["storage_unavailable"]), row)
    now = utcnow()
    moved = _write(
        update(ResumableUpload)
        .where(ResumableUpload.id == row.id, ResumableUpload.offset == start, ResumableUpload.state == "receiving")
        .values(offset=end, parts=ResumableUpload.parts + f"{end},", updated_at=now, expires_at=now + _expiry())
    )
    svc.db.session.refresh(row)
    if not moved:  # another request took this range first; our part is not in the chain
        return _at_offset(api_error(409, "offset_mismatch", "Another request sent these bytes first."), row)
    return None


def _at_offset(response, row: ResumableUpload):
    """``response`` telling the client where the upload stands."""
    response.headers["Upload-Offset"] = str(row.offset)
    return response


def status(upload_id: str):
    """The upload's verdict once it has one (finishing it first if every byte is there)."""
    row = _own(upload_id)
    if row is None:
        return api_error(404, "not_found", "No such upload: it may have expired. Start it again.")
    if row.offset == row.length:
        return _finish_or_report(row)
    return _verdict_response({"status": "receiving", "offset": row.offset, "length": row.length}, 202)


def terminate(upload_id: str):
    svc = services()
    row = _own(upload_id)
    if row is None:
        return _empty(404)
    if row.state == "finishing":
        return api_error(409, "finishing", "This upload is being checked; it cannot be cancelled now.")
    _delete_parts(svc.storage, row)
    _write(delete(ResumableUpload).where(ResumableUpload.id == upload_id))
    return _empty(204)


# -- finishing ----------------------------------------------------------------------------------


class _Received:
    def __init__(self, path: Path, size: int, digest: bytes, cut_off: bool, sha256: str):
        self.path, self.size, self.digest, self.cut_off, self.sha256 = path, size, digest, cut_off, sha256


def _receive(remaining: int, algo: str | None) -> _Received:
    """Spool the body, keeping whatever arrived before a dropped connection."""
    fd, name = tempfile.mkstemp(prefix="tus-")
    hasher = CHECKSUMS[algo]() if algo else None
    sha = hashlib.sha256()  # the store checks the part against it (S3's ChecksumSHA256)
    size, cut_off = 0, False
    with os.fdopen(fd, "wb") as out:
        try:
            while size <= remaining:
                chunk = request.stream.read(min(CHUNK, remaining + 1 - size))
                if not chunk:
                    break
                out.write(chunk)
                size += len(chunk)
                sha.update(chunk)
                if hasher:
                    hasher.update(chunk)
        except (ClientDisconnected, OSError, ConnectionError):
            cut_off = True
    if request.content_length is not None and size < request.content_length and size <= remaining:
        cut_off = True
    return _Received(Path(name), size, hasher.digest() if hasher else b"", cut_off, sha.hexdigest())


class _Parts:
    """The parts read in order as one stream, for intake.spool."""

    def __init__(self, storage, keys: list[str]):
        self.storage, self.keys, self.current = storage, list(keys), None

    def read(self, n: int = -1) -> bytes:
        while True:
            if self.current is None:
                if not self.keys:
                    return b""
                self.current = self.storage.open(self.keys.pop(0))
            data = self.current.read(n)
            if data:
                return data
            self.current.close()
            self.current = None

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


def _finish_or_report(row: ResumableUpload):
    """Run the complete upload through intake once; report the kept verdict afterwards."""
    svc = services()
    session = svc.db.session
    if row.state == "done":
        return _done(row)
    now = utcnow()
    took = _write(
        update(ResumableUpload)
        .where(ResumableUpload.id == row.id, ResumableUpload.offset == ResumableUpload.length,
               (ResumableUpload.state == "receiving")
               | ((ResumableUpload.state == "finishing") & (ResumableUpload.updated_at < now - FINISH_STALE)))
        .values(state="finishing", updated_at=now)
    )
    if not took:
        session.refresh(row)
        if row.state == "done":
            return _done(row)
        response = _verdict_response({"status": "checking", "offset": row.offset, "length": row.length}, 202)
        response.headers["Retry-After"] = "2"
        return response
    stream = _Parts(svc.storage, part_keys(row))
    try:
        verdict = svc.intake.submit(row.user_id, stream, row.filename)
    except (StorageUnavailable, FileNotFoundError) as exc:
        log.warning("upload %s: cannot read its parts: %s", row.id, exc)
        verdict = None
    finally:
        stream.close()
    if verdict is None or verdict.code == "storage_unavailable":
        _write(update(ResumableUpload).where(ResumableUpload.id == row.id).values(state="receiving"))
        response = api_error(503, "storage_unavailable", MESSAGES["storage_unavailable"])
        response.headers["Retry-After"] = "10"
        return response
    body = verdict.as_dict()
    body["http_status"] = STATUS_FOR.get(verdict.status if verdict.status != "rejected" else verdict.code, 422)
    _write(
        update(ResumableUpload).where(ResumableUpload.id == row.id)
        .values(state="done", verdict=json.dumps(body), updated_at=utcnow())
    )
    _delete_parts(svc.storage, row)
    response = _verdict_response(body)
    response.headers["Upload-Offset"] = str(row.length)
    return response


def _done(row: ResumableUpload):
    response = _verdict_response(json.loads(row.verdict))
    response.headers["Upload-Offset"] = str(row.length)
    return response


def _delete_parts(storage, row: ResumableUpload) -> None:
    for key in part_keys(row):
        try:
            storage.delete(key)
        except (FileNotFoundError, StorageUnavailable, OSError):
            pass  # gone already, or left for `flask uploads clean`


# -- cleaning up --------------------------------------------------------------------------------


def clean_expired(db, storage, now: dt.datetime | None = None, limit: int | None = None) -> int:
    """Remove uploads past their expiry with their parts; returns how many. Any worker may run
    this at any time: a row is deleted only if it is still expired at that moment."""
    now = now or utcnow()
    query = select(ResumableUpload).where(ResumableUpload.expires_at <= now).order_by(ResumableUpload.expires_at)
    if limit:
        query = query.limit(limit)
    with db.Session() as session:
        rows = session.scalars(query).all()
    removed = 0
    for row in rows:
        _delete_parts(storage, row)
        with db.write_transaction(lock=False) as tx:
            removed += tx.execute(
                delete(ResumableUpload).where(ResumableUpload.id == row.id, ResumableUpload.expires_at <= now)
            ).rowcount
    return removed


def clean_orphan_parts(db, storage, grace: dt.timedelta = dt.timedelta(hours=1)) -> int:
    """Part objects that no upload's chain names (a PATCH that lost a race, or a crash)."""
    cutoff = utcnow() - grace
    with db.Session() as session:
        wanted = {key for row in session.scalars(select(ResumableUpload)) for key in part_keys(row)}
    removed = 0
    for obj in storage.list(PART_PREFIX):
        if obj.key not in wanted and obj.modified < cutoff:
            try:
                storage.delete(obj.key)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


@bp.cli.command("clean")
@click.option("--grace-minutes", type=click.IntRange(min=0), default=60, show_default=True,
              help="Leave unreferenced parts younger than this alone: a PATCH may be storing them.")
@with_appcontext
def clean_command(grace_minutes: int) -> None:
    """Remove expired resumable uploads and part objects no upload refers to."""
    svc = services()
    expired = clean_expired(svc.db, svc.storage)
    orphans = clean_orphan_parts(svc.db, svc.storage, dt.timedelta(minutes=grace_minutes))
    click.echo(f"removed {expired} expired uploads and {orphans} stray parts")
