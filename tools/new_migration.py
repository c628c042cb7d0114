"""Write a new Alembic migration: the difference between collector/platform/models.py and the schema
that the existing migrations build.

    make migration MSG="add a note to photos"      (or: .venv/bin/python tools/new_migration.py "...")

It upgrades a scratch SQLite database (in a temporary folder, deleted afterwards) to the newest
revision, then lets Alembic's autogenerate compare it with the models and write
collector/platform/migrations/versions/<next number>_<message>.py. Read what it wrote before committing:
autogenerate cannot see renames (it writes a drop and an add), server defaults or data
migrations, and SQLite changes tables in batch mode. Then run the suite on both databases
(`make test`); tests/test_migrations.py upgrades a database that holds rows.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

from collector.platform.db import MIGRATIONS, Database  # noqa: E402


def next_revision() -> str:
    numbers = [int(m.group(1)) for p in (Path(MIGRATIONS) / "versions").glob("*.py") if (m := re.match(r"(\d{4})_", p.name))]
    return f"{max(numbers, default=0) + 1:04d}"


def main(argv: list[str]) -> int:
    message = " ".join(argv).strip()
    if not message:
        print('usage: make migration MSG="what the change does"', file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/scratch.sqlite3")
        try:
            db.migrate()
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            with db.engine.connect() as conn:
                cfg.attributes["connection"] = conn
                script = command.revision(cfg, message=message, autogenerate=True, rev_id=next_revision())
        finally:
            db.dispose()
    # the template imports sqlalchemy whether or not the change uses it; keep `make lint` clean
    subprocess.run([sys.executable, "-m", "ruff", "check", "--fix", "--quiet", script.path], check=False)
    print(f"wrote {script.path}\nread it, then run `make test`")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
