"""A version's figures over a time window: what the rollout controller analyses.

Two sources (setting ``rollout.source``):

- ``landed`` (default): the landed interactions and the feedback on them, queried in
  DuckDB; feedback counts with the interaction it is about, whenever it arrived. Only
  the feedback that counts (streams/counted_feedback.py: the requester's own, one per
  request, kind and draft, the latest) and at most ``rollout.max_feedback_per_user`` events
  of one user (their latest) in the window: one person cannot swing a verdict.
- ``stream``: the stream worker's live windows (``live_metrics``); feedback counts in the
  window it arrived in, and the interval is rounded to whole windows (those that start in
  it). Cheaper on a busy warehouse; needs the stream worker running. It counts every
  feedback event as it passes: no binding to the requester, no dedup, no per-user cap.
"""

from __future__ import annotations

import functools
from datetime import datetime

import duckdb

from serving.rollout.analysis import VersionWindow
from streams.counted_feedback import counted_feedback
from streams.live_metrics import version_figures

SOURCES = ("landed", "stream")


def version_window(conn: duckdb.DuckDBPyConnection, version: str, start: datetime, end: datetime,
                   alias: str | None = None, *, max_feedback_per_user: int = 0) -> VersionWindow:
    """Requests, errors and p95 latency of ``version``'s interactions created in
    [start, end), and the feedback that counts on those interactions (whenever it
    arrived): the latest ``max_feedback_per_user`` of each user's (0: all)."""
    alias_sql, args = ("AND model_alias = ?", [alias]) if alias else ("", [])
    requests, errors, p95 = conn.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE status = 'error'), quantile_cont(total_ms, 0.95)
        FROM interactions
        WHERE model_version = ? AND created_at >= ? AND created_at < ? {alias_sql}""",
                                         [version, start, end, *args]).fetchone()
    rows = conn.execute(f"""
        WITH served AS (
            SELECT request_id, user_id, session_id, drafts FROM interactions
            WHERE model_version = ? AND created_at >= ? AND created_at < ? {alias_sql}),
        counted AS (
            SELECT kind, value, row_number() OVER (PARTITION BY rater ORDER BY created_at DESC, event_id DESC) AS nth
            FROM {counted_feedback("served")})
        SELECT kind, value, count(*) FROM counted WHERE ? = 0 OR nth <= ?
        GROUP BY ALL""", [version, start, end, *args, max_feedback_per_user, max_feedback_per_user]).fetchall()
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


def window_reader(source: str, *, max_feedback_per_user: int = 0):
    """The function that reads a version's window for ``source`` (landed or stream);
    ``max_feedback_per_user`` caps each user's feedback in a landed window."""
    if source not in SOURCES:
        raise ValueError(f"rollout.source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "stream":
        return stream_version_window
    return functools.partial(version_window, max_feedback_per_user=max_feedback_per_user)
