"""Command line: ``flask --app app users ...``, ``import``, ``db upgrade``. Thin click wrappers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext

from collector.dataset import export as export_mod
from collector.organisers import reports
from collector.plates import jobs
from collector.platform import integrity
from collector.platform.services import services
from collector.web import accounts

log = logging.getLogger(__name__)
users = AppGroup("users", help="Manage accounts.")
db_group = AppGroup("db", help="Database schema.")
plates_group = AppGroup("plates", help="Read the plate of every accepted photo, off the upload path.")


@users.command("create")
@click.argument("email")
@click.option("--name", required=True, help="The person's name.")
@click.option("--organiser", is_flag=True, help="Make an organiser (dashboard, review, door check-in).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def create_user(email: str, name: str, organiser: bool, password_stdin: bool) -> None:
    """Create an account. Without --password-stdin, asks for the password twice."""
    password = _password(password_stdin, "Password")
    svc = services()
    try:
        user = accounts.create_user(svc.db, email, name, password, svc.settings["LICENCE"], organiser=organiser)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    role = "organiser" if user.is_organiser else "attendee"
    click.echo(f"created {role} {user.email} (id {user.id})", err=True)


@users.command("password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the new password from the first line of standard input.")
def set_password(email: str, password_stdin: bool) -> None:
    """Set a new password for EMAIL; every earlier session and remember cookie stops working."""
    svc = services()
    user = _account(svc, email)
    password = _password(password_stdin, "New password")
    try:
        accounts.set_password(svc.db, user.id, password)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"new password set for {user.email}; every earlier session of the account has ended", err=True)


@users.command("token")
@click.argument("email")
def create_token(email: str) -> None:
    """Print a new API token for EMAIL as the only line on standard output."""
    svc = services()
    user = _account(svc, email)
    click.echo(accounts.create_token(svc.db, user.id).token)


def _password(from_stdin: bool, prompt: str) -> str:
    """The first line of standard input, or the password typed twice at a prompt."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=True)


def _account(svc, email: str):
    user = accounts.user_by_email(svc.db.session, email)
    if user is None:
        raise click.ClickException(f"no account with email {email}")
    return user


def _files(paths: tuple[str, ...]):
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path).parts
                if child.is_file() and not any(part.startswith(".") for part in rel):
                    yield child
        else:
            yield path


@click.command("import")
@click.argument("paths", nargs=-1, required=True)
@click.option("--as", "as_email", required=True, metavar="EMAIL", help="The contributor who gets the credit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file per line on stdout.")
@with_appcontext
def import_photos(paths: tuple[str, ...], as_email: str, as_json: bool) -> None:
    """Run every file (folders recursively) through the same intake as an upload."""
    svc = services()
    user = _account(svc, as_email)
    counts: dict[str, int] = {}
    failed = 0
    for path in _files(paths):
        record = _import_one(svc, user.id, path)
        failed += record["status"] == "error"
        counts[record["status"]] = counts.get(record["status"], 0) + 1
        if as_json:
            click.echo(json.dumps(record))
        else:
            click.echo(f"{record['status']:<17} {record['code'] or '':<18} {path}")
    progress = svc.intake.progress(user.id)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no files"
    click.echo(f"{summary}; {user.email} now has {progress.accepted}/{progress.quota} accepted", err=True)
    if failed:
        sys.exit(1)


def _import_one(svc, user_id: int, path: Path) -> dict:
    """One file's verdict line; whatever the file does, the next one still gets its own."""
    record = {"file": str(path), "photo_id": None, "sha256": None, "metadata": None}
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below, whatever submit does)
    except OSError as exc:
        return record | {"status": "error", "code": "unreadable", "message": exc.strerror or str(exc)}
    try:
        verdict = svc.intake.submit(user_id, fh, path.name)
    except Exception as exc:  # a fault of ours or of the database: say so, log it, go on
        log.exception("import of %s failed", path)
        return record | {"status": "error", "code": "failed", "message": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        fh.close()
    return record | {"status": verdict.status, "code": verdict.code, "message": verdict.message,
                     "photo_id": verdict.photo_id, "sha256": verdict.sha256, "metadata": verdict.metadata}


@click.command("storage-check")
@click.option("--fix", is_flag=True, help="Move orphans older than the grace period under quarantine/.")
@click.option("--grace-minutes", type=click.IntRange(min=0), default=60, show_default=True,
              help="Leave orphans younger than this alone: an upload may be committing them.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_appcontext
def storage_check(fix: bool, grace_minutes: int, as_json: bool) -> None:
    """Compare stored objects with photo rows; find leftovers of killed writers.

    Exits 1 when a row's object is missing, or (without --fix) when stale orphans, half-written
    temporary objects or spool files are found."""
    svc = services()
    report = integrity.check_storage(svc.db, svc.storage, fix=fix, grace=dt.timedelta(minutes=grace_minutes),
                                     spool_dir=svc.intake.spool_dir)
    lines = [json.dumps(report.as_dict(), indent=2)] if as_json else _storage_report_lines(report, svc.storage)
    for line in lines:
        click.echo(line)
    if not report.healthy:
        sys.exit(1)


def _storage_report_lines(report: integrity.StorageReport, storage) -> Iterator[str]:
    """storage-check's report for people: what it looked at, one line a finding, a verdict."""
    yield f"{report.rows} photo rows, {report.objects} objects in {storage!r}"
    yield from (f"MISSING  photo {pid}: {key}" for pid, key in report.missing)
    yield from (f"orphan   {_described(obj)}" for obj in report.orphans)
    yield from (f"temp     {_described(obj)}: a write a killed process left" for obj in report.temporaries)
    yield from (f"spool    {name}: an upload a killed worker left (a whole original)" for name in report.spool)
    yield from (f"moved    {key} -> {integrity.QUARANTINE}{key}" for key in report.quarantined)
    yield from (f"removed  {key}" for key in report.removed)
    if report.missing:
        yield f"ERROR: {len(report.missing)} objects missing"
    elif not report.healthy:
        yield "NOT CLEAN: stale orphans, temporary objects or spool files; run with --fix"
    else:
        yield "healthy"


def _described(obj) -> str:
    return f"{obj.key} ({obj.size} bytes, {obj.modified:%Y-%m-%d %H:%M})"


@click.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(export_mod.FORMATS), default="imagefolder", show_default=True)
@click.option("--split", "split", default="80/10/10", show_default=True, help="train/validation/test percentages.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Only photos accepted on or after this date (UTC): a delta export. Use a folder of its own.")
@click.option("--include-flagged", is_flag=True, help="Add photos flagged for review (never those rejected in review).")
@click.option("--keep-gps", is_flag=True, help="Keep GPS in the images: for a private research copy only.")
@click.option("--dry-run", is_flag=True, help="Say what would be written and removed; write nothing.")
@with_appcontext
def export_dataset(out_dir: Path, fmt: str, split: str, since, include_flagged: bool, keep_gps: bool, dry_run: bool) -> None:
    """Write the accepted photos as a dataset: images without private metadata, manifests,
    a dataset card and SHA256SUMS. Running it again into the same folder is incremental."""
    from tqdm import tqdm

    try:
        ratios = export_mod.parse_split(split)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--split") from None
    svc = services()
    options = export_mod.Options(
        format=fmt, split=ratios, since=since.replace(tzinfo=dt.UTC) if since else None,
        include_flagged=include_flagged, keep_gps=keep_gps, dry_run=dry_run,
        secret=svc.settings["SECRET_KEY"], licence=svc.settings["LICENCE"],
        near_duplicate_distance=svc.settings["NEAR_DUPLICATE_DISTANCE"],
        progress=lambda items: tqdm(items, desc="export", unit="photo", file=sys.stderr, disable=None),
    )
    out_dir.mkdir(parents=True, exist_ok=True) if not dry_run else None
    summary = export_mod.export(svc.db, svc.storage, out_dir, options)
    splits = ", ".join(f"{s} {summary.per_split.get(s, 0)}" for s in export_mod.SPLITS)
    verb = "would write" if dry_run else "written"
    click.echo(
        f"{'DRY RUN: ' if dry_run else ''}{summary.planned} photos ({splits}) in {fmt} format at {out_dir}\n"
        f"  {verb}: {summary.written if not dry_run else summary.planned - summary.skipped}, unchanged: {summary.skipped}, "
        f"removed: {summary.removed}\n"
        f"  {summary.bytes_written / 1e6:.1f} MB in {summary.seconds:.1f} s",
        err=True,
    )


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@with_appcontext
def stats_command(as_json: bool) -> None:
    """The dashboard's headline numbers."""
    svc = services()
    numbers = reports.stats(svc.db.session, svc.settings["QUOTA"])
    if as_json:
        click.echo(json.dumps(numbers, indent=2))
        return
    for key in ("contributors", "paid", "in_progress", "not_started", "checked_in", "photos_accepted", "rejected_attempts"):
        click.echo(f"{key.replace('_', ' '):<20} {numbers[key]}")
    for code, n in numbers["rejected_by_code"].items():
        click.echo(f"  {code:<18} {n}")


@plates_group.command("run")
@click.option("--until-idle", is_flag=True, help="Read everything pending, then exit.")
@click.option("--lease-seconds", type=click.FloatRange(min=0), default=jobs.LEASE.total_seconds(), show_default=True,
              help="A claim older than this is taken over (its worker is presumed dead).")
@click.option("--deadline-seconds", type=click.FloatRange(min=0), default=jobs.DEADLINE_S, show_default=True,
              help="Give up on one photo after this long (it is marked error).")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many photos.")
@click.option("--stop-with", type=int, metavar="PID", help="Exit when this process is gone (make run passes its own).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per event on stdout.")
@with_appcontext
def plates_run(until_idle: bool, lease_seconds: float, deadline_seconds: float, limit: int | None,
               stop_with: int | None, as_json: bool) -> None:
    """A plate worker: claims photos without a reading in the database, reads them one at a time
    and writes the result. Run one per machine (or more on PostgreSQL); `make run` starts one."""
    svc = services()
    if svc.settings["PLATE_POLICY"] == "off":
        click.echo("plate reading is off (COLLECTOR_PLATE_POLICY=off)", err=True)
        return

    def event(state: str, photo_id: int, worker: str) -> None:
        if as_json:
            click.echo(json.dumps({"event": state, "photo_id": photo_id, "worker": worker}))
            sys.stdout.flush()
        elif state != "reading":
            click.echo(f"photo {photo_id}: {state}", err=True)

    n = jobs.run(svc.db, svc.storage, svc.settings, until_idle=until_idle, lease=dt.timedelta(seconds=lease_seconds),
                 deadline_s=deadline_seconds, limit=limit, stop_with=stop_with, on_event=event)
    click.echo(f"{n} photos read", err=True)


@plates_group.command("report")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per photo per line.")
@with_appcontext
def plates_report(as_json: bool) -> None:
    """One line per photo: photo_id, sha256, status (found|none|pending|error), text, score, box
    [x, y, w, h] in the oriented photo's pixels."""
    svc = services()
    for row in jobs.report_rows(svc.db.session):
        if as_json:
            click.echo(json.dumps({k: row[k] for k in ("photo_id", "sha256", "status", "text", "score", "box", "source", "plates")}))
        else:
            box = " ".join(map(str, row["box"])) if row["box"] else "-"
            score = f"{row['score']:.2f}" if row["score"] is not None else "-"
            click.echo(f"{row['photo_id']:>7} {row['sha256'][:12]} {row['status']:<8} {row['text'] or '-':<12} {score:>5} {box}")


@db_group.command("upgrade")
def upgrade() -> None:
    """Apply database migrations: before serving a new version (make run and gunicorn.conf.py do)."""
    services().db.migrate()
    click.echo("database is at the newest revision", err=True)


def init_app(app: Flask) -> None:
    app.cli.add_command(users)
    app.cli.add_command(import_photos)
    app.cli.add_command(db_group)
    app.cli.add_command(storage_check)
    app.cli.add_command(export_dataset)
    app.cli.add_command(stats_command)
    app.cli.add_command(plates_group)
