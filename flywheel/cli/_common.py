"""What every command group shares: the settings, the control plane's API, the DuckDB file
when no control plane runs, the registry, and a few printing helpers.

DuckDB allows one writing process. When a control plane runs it owns the database, so a
command asks it over HTTP (`control`); when none answers, the command opens the file
itself and is then the only writer (`ask` chooses; `with_db`, `read_db`, `with_registry`
open it). Imports of the library stay inside the functions: `flywheel --help` loads no
model code, and flywheel/ imports nothing above it at load time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import duckdb

    from flywheel.settings import Settings

T = TypeVar("T")

console = Console()


def settings_of(ctx: click.Context) -> Settings:
    """The settings `main` loaded for this invocation."""
    return ctx.obj["settings"]


# -- the control plane ----------------------------------------------------------------
def control(s: Settings, method: str, path: str, body: dict | None = None) -> Any:
    """Call the running control plane's API (the DuckDB writer); None if none is running.
    Sends the operator token (control.token, else DATA_DIR/operator_token). An error answer
    becomes a ClickException with the API's message."""
    import urllib.error
    import urllib.request

    from flywheel.operator_token import operator_headers

    req = urllib.request.Request(f"{s.control_url}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", **operator_headers(s)})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"control plane answered {e.code}"
        if e.code == 401:
            message += (f" (this command sent {'control.token' if s.control.token.get_secret_value() else s.operator_token_path}"
                        "; set FLYWHEEL_CONTROL__TOKEN to a token from `flywheel operators create`)")
        raise click.ClickException(message) from None
    except OSError:
        return None


def ask(s: Settings, method: str, path: str, body: dict | None = None, *, local: Callable[[], T],
        key: str | None = None) -> Any:
    """The control plane's answer (its ``key`` field, if given) when one runs; else ``local()``,
    which does the same here on the DuckDB file."""
    answer = control(s, method, path, body)
    if answer is None:
        return local()
    return answer[key] if key else answer


def require_control(s: Settings, method: str, path: str, body: dict | None = None, *, what: str) -> Any:
    """For what only runs in the control plane: its answer, or an error saying ``what``."""
    answer = control(s, method, path, body)
    if answer is None:
        raise click.ClickException(f"no control plane at {s.control_url}: {what} (`flywheel up`)")
    return answer


# -- the DuckDB file, when no control plane runs ----------------------------------------
@contextmanager
def open_db(s: Settings, *, read_only: bool = False,
            missing: str = ": start the stack with `flywheel up`") -> Iterator[duckdb.DuckDBPyConnection]:
    """The DuckDB file, opened here. Read-only opens need the file (``missing`` ends the
    message when it is not there yet)."""
    from streams.warehouse import connect

    if read_only and not s.db_path.exists():
        raise click.ClickException(f"no database at {s.db_path}{missing}")
    try:
        conn = connect(s.db_path, read_only=read_only)
    except Exception as e:  # noqa: BLE001 - typically: locked by a control plane we cannot reach
        raise click.ClickException(f"cannot open {s.db_path} ({e}); is a control plane running elsewhere?") from None
    with conn:
        yield conn


def with_db(s: Settings, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """Run ``fn(conn)`` on the DuckDB file as its writer (no control plane runs), after the
    migrations."""
    from services.control.migrations import ALL
    from streams.warehouse import apply_migrations

    with open_db(s) as conn:
        apply_migrations(conn, ALL)
        return fn(conn)


def read_db(s: Settings, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """Run ``fn(conn)`` on the DuckDB file read-only (no control plane is running)."""
    with open_db(s, read_only=True) as conn:
        try:
            return fn(conn)
        except Exception as e:  # noqa: BLE001 - e.g. a database from before the live_metrics migration
            raise click.ClickException(f"cannot read {s.db_path}: {e}") from None


def with_registry(s: Settings, fn: Callable[[Any], T]) -> T:
    """Run ``fn(registry)`` on the model registry in the DuckDB file (no control plane runs)."""
    from serving.registry import Registry, RegistryError

    def run(conn):
        registry = Registry.from_settings(conn, s)
        registry.ensure_base()
        try:
            return fn(registry)
        except RegistryError as e:
            raise click.ClickException(str(e)) from None

    return with_db(s, run)


def model_versions(s: Settings) -> list[dict]:
    """Every registered version as a dict, from the control plane or the file."""
    return ask(s, "GET", "/api/models", key="data",
               local=lambda: with_registry(s, lambda r: [m.to_dict() for m in r.list()]))


# -- printing ---------------------------------------------------------------------------
def kv_table(title: str) -> Table:
    """A two-column "what / value" table."""
    table = Table(title=title)
    table.add_column("what")
    table.add_column("value", justify="right")
    return table
