"""The ways in that the README names: `gunicorn app:app` (tested with four workers in
test_scale.py), `flask --app app ...`, and the command-line examples as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


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
        "assert (data / 'collector.sqlite3').exists()\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(data)], cwd=ROOT, env=clean_env(data), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


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
