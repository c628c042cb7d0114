"""Exit 0 when the PostgreSQL of COLLECTOR_TEST_POSTGRES_URL answers, 1 otherwise (for make)."""

import os
import sys

from sqlalchemy import create_engine, text

url = os.environ.get("COLLECTOR_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres")
try:
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
except Exception as exc:
    print(f"PostgreSQL not reachable: {type(exc).__name__}", file=sys.stderr)
    sys.exit(1)
