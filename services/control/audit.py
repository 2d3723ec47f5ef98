"""The audit log (table ``audit_log``, migration m301): who changed what, and when.

Every state-changing request to the control plane adds a row once it is answered (the
operator, the endpoint, a capped summary of the body, the status, refusals included);
actions that need more than a request's trace (a rollout that overrides the evaluation
gate) add their own named row in the same transaction as the change.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import duckdb

from streams.schemas import new_id

if TYPE_CHECKING:
    from services.control.operators import Operator

#: Fields never written to the log, whatever their value.
SECRET_FIELDS = {"token", "csrf_token", "password", "api_key"}
MAX_TEXT = 200
MAX_DETAIL = 4000


def summarize(value: Any, depth: int = 0) -> Any:
    """A body as the log keeps it: strings cut to MAX_TEXT characters, lists to 20 items,
    secrets dropped."""
    if isinstance(value, dict):
        return {str(k): "<hidden>" if str(k).lower() in SECRET_FIELDS else summarize(v, depth + 1)
                for k, v in list(value.items())[:50]}
    if isinstance(value, list):
        return [summarize(v, depth + 1) for v in value[:20]] + (["…"] if len(value) > 20 else [])
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[: MAX_TEXT - 1] + "…"
    return value


def record(cur: duckdb.DuckDBPyConnection, operator: Operator | None, action: str, *, via: str | None = None,
           method: str | None = None, path: str | None = None, target: str | None = None,
           status: int | None = None, detail: Any = None) -> str:
    text = None if detail is None else json.dumps(summarize(detail), ensure_ascii=False, default=str)
    if text is not None and len(text) > MAX_DETAIL:
        text = json.dumps({"truncated": text[:MAX_DETAIL]}, ensure_ascii=False)
    audit_id = new_id("aud-")
    cur.execute("INSERT INTO audit_log (audit_id, created_at, operator_id, operator_name, role, via, action, method, path, "
                "target, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [audit_id, datetime.now(timezone.utc), getattr(operator, "id", None), getattr(operator, "name", None),
                 getattr(operator, "role", None), via, action, method, path, target, status, text])
    return audit_id


def list_entries(cur: duckdb.DuckDBPyConnection, limit: int = 100, action: str | None = None) -> list[dict]:
    where, args = ("WHERE action = ?", [action]) if action else ("", [])
    rows = cur.execute(f"SELECT audit_id, created_at, operator_id, operator_name, role, via, action, method, path, target, "
                       f"status, detail FROM audit_log {where} ORDER BY created_at DESC LIMIT ?", [*args, limit]).fetchall()
    cols = ("audit_id", "created_at", "operator_id", "operator_name", "role", "via", "action", "method", "path", "target",
            "status", "detail")
    out = []
    for row in rows:
        d = dict(zip(cols, row))
        d["created_at"] = d["created_at"].isoformat() if isinstance(d["created_at"], datetime) else d["created_at"]
        d["detail"] = json.loads(d["detail"]) if d["detail"] else None
        out.append(d)
    return out
