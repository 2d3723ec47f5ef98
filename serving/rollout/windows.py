"""A version's figures over a time window: what the rollout controller analyses.

Two sources (setting ``rollout.source``):

- ``landed`` (default): the landed interactions and the feedback on them, queried in
  DuckDB; feedback counts with the interaction it is about, whenever it arrived.
- ``stream``: the stream worker's live windows (``live_metrics``); feedback counts in the
  window it arrived in, and the interval is rounded to whole windows (those that start in
  it). Cheaper on a busy warehouse; needs the stream worker running.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from serving.rollout.analysis import VersionWindow
from streams.live_metrics import version_figures

SOURCES = ("landed", "stream")


def version_window(conn: duckdb.DuckDBPyConnection, version: str, start: datetime, end: datetime,
                   alias: str | None = None) -> VersionWindow:
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


def stream_version_window(conn: duckdb.DuckDBPyConnection, version: str, start: datetime, end: datetime,
                          alias: str | None = None) -> VersionWindow:
    """The same figures from the stream worker's windows that start in [start, end)."""
    fig = version_figures(conn, version, start, end, alias)
    return VersionWindow(
        requests=fig.requests, errors=fig.errors, latency_p95_ms=fig.latency_ms(0.95), thumbs_up=fig.thumbs_up,
        thumbs_down=fig.thumbs_down, ratings=tuple(fig.ratings), regenerations=fig.regenerations, edits=fig.edits,
        copies=fig.copies)


def window_reader(source: str):
    """The function that reads a version's window for ``source`` (landed or stream)."""
    if source not in SOURCES:
        raise ValueError(f"rollout.source must be one of {', '.join(SOURCES)}, got {source!r}")
    return version_window if source == "landed" else stream_version_window
