"""Register, log in, log out, and the account page with API tokens. Thin views over accounts."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import BooleanField, EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Length

from collector.platform.models import ApiToken
from collector.platform.services import services
from collector.web import accounts, limits

bp = Blueprint("auth", __name__)


class RegisterForm(FlaskForm):
    name = StringField("Your name", validators=[DataRequired(), Length(max=120)])
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(min=accounts.MIN_PASSWORD, max=1024)])
    consent = BooleanField("I agree", validators=[DataRequired("You must agree to the licence to take part.")])


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class EmptyForm(FlaskForm):
    """A form with only the CSRF token, for buttons that change something."""


def _safe_next(target: str | None) -> str:
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return url_for("pages.upload")


@bp.route("/register", methods=["GET", "POST"])
def register():
    if current_user.is_authenticated:
        return redirect(url_for("pages.upload"))
    form = RegisterForm()
    if form.validate_on_submit():
        svc = services()
        per_ten_minutes = svc.settings["REGISTRATIONS_PER_ADDRESS"]
        limits.enforce(svc.db, f"register:addr:{request.remote_addr}", limits.Limit(per_ten_minutes, 600),
                       "Too many accounts were created from this address just now. Wait {wait}, then try again.")
        try:
            accounts.create_user(svc.db, form.email.data, form.name.data, form.password.data, svc.settings["LICENCE"])
        except accounts.DuplicateEmail:
            pass  # the same answer as for a new account: whether an email is known is nobody's business
        except accounts.AccountError as exc:
            getattr(form, exc.field or "email").errors.append(str(exc))
        if not form.errors:
            flash("If this email is new, your account is ready: log in below.", "success")
            return redirect(url_for("auth.login"))
    status = 400 if form.is_submitted() else 200
    return render_template("register.html", form=form), status


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("pages.upload"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        svc = services()
        try:
            user = accounts.authenticate(
                svc.db, form.email.data, form.password.data, request.remote_addr, svc.settings["LOGIN_MAX_FAILURES"]
            )
        except limits.RateLimited as exc:
            form.password.errors.append(exc.message)
            status = 429
            headers = {"Retry-After": str(exc.retry_after)}
            return render_template("login.html", form=form), status, headers
        else:
            if user is not None:
                login_user(user, remember=True)
                # A new CSRF token for the new session: one planted before log-in is worthless.
                field = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
                session.pop(field, None)
                g.pop(field, None)
                if not request.args.get("next") and user.is_organiser:
                    return redirect(url_for("dashboard.index"))  # organisers work from the dashboard
                return redirect(_safe_next(request.args.get("next")))
            form.password.errors.append("Wrong email or password.")
            status = 401
    elif form.is_submitted():
        status = 400
    return render_template("login.html", form=form), status


@bp.route("/logout", methods=["POST"])
def logout():
    if current_user.is_authenticated:
        accounts.end_sessions(services().db, current_user.id)  # every device, every remember cookie
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("pages.index"))


def _render_account(new_token: str | None = None):
    tokens = services().db.session.scalars(
        select(ApiToken).where(ApiToken.user_id == current_user.id).order_by(ApiToken.id.desc())
    ).all()
    return render_template("account.html", tokens=tokens, form=EmptyForm(), new_token=new_token)


@bp.route("/account")
@login_required
def account():
    new_token = session.pop("new_token", None)
    response = make_response(_render_account(new_token))
    if new_token:
        response.headers["Cache-Control"] = "no-store"  # the secret must not be kept anywhere
    return response


@bp.route("/account/tokens", methods=["POST"])
@login_required
def create_token():
    try:
        new = accounts.create_token(services().db, current_user.id, services().settings["MAX_API_TOKENS"])
    except accounts.TooManyTokens as exc:
        flash(str(exc), "error")
        return _render_account(), 422
    # Post-redirect-get: a reload shows the list and creates nothing. The secret rides in the
    # (signed, HttpOnly) session cookie to the next page only, which shows it once and drops it;
    # the database keeps a hash.
    session["new_token"] = new.token
    return redirect(url_for("auth.account"), 303)


@bp.route("/account/tokens/<int:token_id>/revoke", methods=["POST"])
@login_required
def revoke_token(token_id: int):
    if not accounts.revoke_token(services().db, current_user.id, token_id):
        abort(404)
    flash("Token revoked.", "info")
    return redirect(url_for("auth.account"))
