"""A version's figures over a time window, from the landed events in DuckDB.

This is where the control plane reads what it analyses. (The issue's faust stream worker
will publish the same figures per 1-minute window; until it exists, the control plane
queries the landed interactions and feedback directly, which also never depends on the
local broker's offset defects.)
"""

from __future__ import annotations

from datetime import datetime

from serving.rollout.analysis import VersionWindow


def version_window(conn, version: str, start: datetime, end: datetime, alias: str | None = None) -> VersionWindow:
    """Requests, errors and p95 latency of ``version``'s interactions created in
    [start, end), and the feedback on those interactions (whenever it arrived)."""
    alias_sql, args = ("AND model_alias = ?", [alias]) if alias else ("", [])
    requests, errors, p95 = conn.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE status = 'error'), quantile_cont(total_ms, 0.95)
        FROM interactions
        WHERE model_version = ? AND created_at >= ? AND created_at < ? {alias_sql}""",
                                         [version, start, end, *args]).fetchone()
    rows = conn.execute(f"""
        SELECT f.kind, f.value, count(*)
        FROM feedback f JOIN interactions i USING (request_id)
        WHERE i.model_version = ? AND i.created_at >= ? AND i.created_at < ? {alias_sql.replace('model_alias', 'i.model_alias')}
        GROUP BY ALL""", [version, start, end, *args]).fetchall()
    counts: dict[tuple[str, int | None], int] = {(kind, value): n for kind, value, n in rows}
    by_kind = lambda kind: sum(n for (k, _), n in counts.items() if k == kind)  # noqa: E731
    return VersionWindow(
        requests=requests,
        errors=errors,
        latency_p95_ms=float(p95) if p95 is not None else None,
        thumbs_up=counts.get(("thumb", 1), 0),
        thumbs_down=counts.get(("thumb", -1), 0),
        ratings=tuple(counts.get(("rating", stars), 0) for stars in range(1, 6)),
        regenerations=by_kind("regenerate"),
        edits=by_kind("edit"),
        copies=by_kind("copy"),
        # Draft choices compare drafts of one request, which one version wrote: they say
        # nothing about canary vs production, so they are not counted here.
    )
