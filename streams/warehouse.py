"""The DuckDB warehouse: connection and schema migrations.

Migrations are named functions applied once, in one ordered list, each in its own
transaction, and recorded in ``_migrations`` (as llm's and sqlite-utils' migrations do).
Each package owns its tables and contributes its list; the control plane concatenates
them in import order (streams, then serving, then training) in
``services.control.migrations``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

Migration = Callable[[duckdb.DuckDBPyConnection], None]


def connect(path: Path | str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(path), read_only=read_only)


def apply_migrations(conn: duckdb.DuckDBPyConnection, migrations: Sequence[Migration]) -> list[str]:
    """Apply the migrations not yet recorded; return the names applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM _migrations").fetchall()}
    names = [m.__name__ for m in migrations]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate migration names in {names}")
    applied = []
    for migration in migrations:
        if migration.__name__ in done:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            migration(conn)
            conn.execute("INSERT INTO _migrations (name) VALUES (?)", [migration.__name__])
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration.__name__)
    return applied


def table_counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    tables = [r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND table_name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY 1"
    ).fetchall()]
    return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
