"""The attendee's pages: landing, upload (JavaScript or plain form), my photos, photo files."""

from __future__ import annotations

from flask import Blueprint, abort, flash, render_template, request, send_file, url_for
from flask_login import current_user, login_required

from collector.intake.credits import progress_of
from collector.intake.imaging import MIME_TYPES
from collector.organisers import reports
from collector.organisers.review import REASONS
from collector.plates import jobs
from collector.platform.models import Photo
from collector.platform.services import services
from collector.web.auth import EmptyForm
from collector.web.security import MAX_FORM_FILES

bp = Blueprint("pages", __name__)


@bp.route("/")
def index():
    return render_template("index.html")


@bp.route("/upload", methods=["GET", "POST"])
@login_required
def upload():
    svc = services()
    verdicts = []
    if request.method == "POST":
        # The no-JavaScript path: many files in one plain form post, each through intake.
        files = [f for f in request.files.getlist("photo") if f.filename or f.content_length]
        if len(files) > MAX_FORM_FILES:
            flash(f"Only the first {MAX_FORM_FILES} files were checked; send the others in another batch.", "error")
        svc.db.release()  # current_user is loaded; intake takes connections of its own
        for storage in files[:MAX_FORM_FILES]:
            verdicts.append(svc.intake.submit(current_user.id, storage.stream, storage.filename))
    progress = svc.intake.progress(current_user.id)  # a fresh read, after the uploads' commits
    return render_template("upload.html", progress=progress, verdicts=verdicts, form=EmptyForm(), max_files=MAX_FORM_FILES)


@bp.route("/pass")
@login_required
def meetup_pass():
    import segno

    from collector.intake import credits

    svc = services()
    progress = svc.intake.progress(current_user.id)
    if not progress.complete:
        return render_template("pass.html", progress=progress, qr=None, code=None)
    secret = svc.settings["SECRET_KEY"]
    code = credits.ensure_pass_code(svc.db, secret, current_user.id)
    url = url_for("dashboard.checkin", token=credits.pass_token(secret, current_user.id), _external=True)
    qr = segno.make(url, error="m").svg_inline(scale=6, dark="#111", light="#fff", title="Meetup pass")
    return render_template("pass.html", progress=progress, qr=qr, code=code)


@bp.route("/photos")
@login_required
def photos():
    svc = services()
    session = svc.db.session
    mine = reports.contributor_photos(session, current_user.id, refusals=200)
    progress = progress_of(session, current_user.id, svc.settings["QUOTA"])
    ids = [p.id for p in mine.photos]
    return render_template("photos.html", photos=mine.photos, rejected=mine.rejected, progress=progress, reasons=REASONS,
                           plates=jobs.plates_of(session, ids), reads=jobs.reads_of(session, ids))


def _visible_photo(photo_id: int) -> Photo:
    photo = services().db.session.get(Photo, photo_id)
    if photo is None or (photo.user_id != current_user.id and not current_user.is_organiser):
        abort(404)  # not 403: do not confirm that someone else's photo exists
    return photo


def _stream(key: str, mimetype: str, download_name: str):
    try:
        fh = services().storage.open(key)
    except FileNotFoundError:
        abort(404)
    # The type is the one our decoder found; nosniff (on every response) keeps browsers to it.
    response = send_file(fh, mimetype=mimetype, max_age=3600, download_name=download_name)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.route("/photos/<int:photo_id>/thumb")
@login_required
def thumb(photo_id: int):
    return _stream(_visible_photo(photo_id).thumb_key, "image/jpeg", f"plate-{photo_id}-thumb.jpg")


@bp.route("/photos/<int:photo_id>/file")
@login_required
def original(photo_id: int):
    photo = _visible_photo(photo_id)
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "HEIF": "heic"}.get(photo.format, "bin")
    return _stream(photo.storage_key, MIME_TYPES[photo.format], f"plate-{photo_id}.{ext}")
