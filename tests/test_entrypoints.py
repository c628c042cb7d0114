"""The ways in that the README names: `gunicorn app:app` (tested with four workers in
test_scale.py), `flask --app app ...`, and the command-line examples as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from collector.platform.db import Database, head_revision

from .conftest import ROOT, gunicorn


def clean_env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env["COLLECTOR_DATA_DIR"] = str(data_dir)
    return env


def test_app_is_built_on_first_access_and_importing_has_no_side_effects(tmp_path):
    data = tmp_path / "data"
    code = (
        "import pathlib, sys\n"
        "from app import create_app\n"
        "import app\n"
        "data = pathlib.Path(sys.argv[1])\n"
        "assert not data.exists(), 'importing app.py created the data directory'\n"
        "assert app.app is app.app\n"
        "assert type(app.app).__name__ == 'Flask' and callable(create_app)\n"
        "assert (data / 'secret_key').exists()\n"
        "assert app.app.extensions['collector'].db.revision() is None, 'building the app migrated'\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(data)], cwd=ROOT, env=clean_env(data), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_importing_and_building_change_nothing_in_the_process(tmp_path):
    """No Argon2 hash at import; no Pillow limit, warning filter or migration from create_app."""
    data = tmp_path / "data"
    code = (
        "import sys, warnings\n"
        "from PIL import Image\n"
        "from collector import create_app; from collector.web import accounts\n"
        "assert accounts._dummy_hash.cache_info().currsize == 0, 'an Argon2 hash at import'\n"
        "before = (Image.MAX_IMAGE_PIXELS, list(warnings.filters))\n"
        "app = create_app({'DATA_DIR': sys.argv[1], 'SECRET_KEY': 'x'})\n"
        "assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before, 'create_app changed the process'\n"
        "assert app.extensions['collector'].db.revision() is None, 'create_app migrated'\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(data)], cwd=ROOT, env=clean_env(data), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_gunicorn_app_app_migrates_a_fresh_database_before_its_workers_start(tmp_path):
    """`gunicorn app:app` alone, as a Flask user would type it: gunicorn.conf.py's on_starting
    brings a new database to the newest revision, then the workers serve."""
    data = tmp_path / "data"
    with gunicorn({"DATA_DIR": data}, tmp_path / "gunicorn.log", workers=2, threads=2,
                  COLLECTOR_DATABASE_URL=f"sqlite:///{data / 'collector.sqlite3'}") as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/register", timeout=30) as r:
            assert r.status == 200 and b"Register" in r.read()
    db = Database(f"sqlite:///{data / 'collector.sqlite3'}")
    try:
        assert db.revision() == head_revision()
    finally:
        db.dispose()


def test_flask_finds_the_app(tmp_path):
    flask = Path(sys.executable).parent / "flask"
    r = subprocess.run([str(flask), "--app", "app", "routes"], cwd=ROOT, env=clean_env(tmp_path / "data"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "/api/v1/photos" in r.stdout


def test_readme_command_line_examples_name_real_commands(runner):
    """Every `.venv/bin/flask --app app ...` line of the README names a command (and
    options) that exists."""
    readme = (ROOT / "README.md").read_text()
    lines = [m.group(1) for m in re.finditer(r"\.venv/bin/flask --app app ([^\n#]+)", readme)]
    assert len(lines) >= 8
    for line in lines:
        command = []
        for word in line.split():
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            command.append(word)
        if command == ["run"]:
            continue  # Flask's own development server (test_flask_finds_the_app runs Flask's CLI)
        r = runner.invoke(args=[*command, "--help"])
        assert r.exit_code == 0, (line, r.output)
        for option in re.findall(r"(--[a-z][a-z-]*)", line):
            assert option in r.output, (line, option)
