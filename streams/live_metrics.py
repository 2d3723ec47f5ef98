"""Live per-version figures in tumbling windows: the counting the stream worker does.

Pure Python, no Kafka: ``LiveMetrics`` takes interaction and feedback records (already
parsed) and, on ``flush``, returns what it counted since the last flush as ``Metrics``
deltas, one per (alias, version, window) it touched. Deltas add up, so

- a late event (its window already flushed) just produces another delta for that window;
- the landed table needs no updates: ``read_windows`` merges the rows of a window on read.

Feedback names a request, not a version: the worker remembers which version served each
request it has seen (``request_ttl_s``, bounded by ``max_requests``). Feedback whose request
it has not seen waits up to ``join_wait_s`` (the interaction may still be on its way: it
travels on another topic, keyed by session) and is then counted under version
``unknown`` rather than dropped. Feedback is counted in the window of its own time. At
most ``max_pending`` feedback events wait (random request ids must not grow the worker
without bound): past it the oldest is counted under ``unknown`` at once, an eviction
(``counted["pending_evicted"]``).

Latency travels as a histogram of log-spaced buckets, which merges exactly; p50/p95 come
from the merged histogram (bucket midpoints, within 5% of the true value).
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import duckdb

from streams.schemas import Metrics

UNKNOWN = "unknown"
BUCKET_BASE = 1.1
_LOG_BASE = math.log(BUCKET_BASE)


def latency_bucket(ms: float) -> int:
    """Bucket i holds [1.1**i, 1.1**(i+1)) ms; everything under 1 ms goes to bucket 0."""
    return 0 if ms < 1.0 else int(math.log(ms) / _LOG_BASE)


def bucket_value(i: int) -> float:
    """The bucket's geometric midpoint: at most ~4.9% from any value in it."""
    return BUCKET_BASE ** (i + 0.5) if i > 0 else 1.0


def quantile_from_buckets(buckets: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0..1) of the values a histogram counted, interpolated between the
    two nearest ranks as DuckDB's ``quantile_cont`` does; None when it is empty."""
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = q * (total - 1)
    lo, hi = math.floor(rank), math.ceil(rank)

    def value_at(k: int) -> float:
        seen = 0
        for i in sorted(buckets):
            seen += buckets[i]
            if seen > k:
                return bucket_value(i)
        return bucket_value(max(buckets))

    low = value_at(lo)
    return low if hi == lo else low + (rank - lo) * (value_at(hi) - low)


@dataclass
class WindowFigures:
    """Counts of one version in one window; ``merge`` adds another's (deltas add up)."""

    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    latency_buckets: Counter = field(default_factory=Counter)
    thumbs_up: int = 0
    thumbs_down: int = 0
    ratings: list[int] = field(default_factory=lambda: [0] * 5)
    regenerations: int = 0
    choices: int = 0
    edits: int = 0
    copies: int = 0

    def merge(self, other: "WindowFigures") -> "WindowFigures":
        for name in ("requests", "errors", "latency_sum_ms", "thumbs_up", "thumbs_down", "regenerations", "choices",
                     "edits", "copies"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency_buckets.update(other.latency_buckets)
        self.ratings = [a + b for a, b in zip(self.ratings, other.ratings)]
        return self

    @property
    def feedback(self) -> int:
        return self.thumbs_up + self.thumbs_down + sum(self.ratings) + self.regenerations + self.choices + \
            self.edits + self.copies

    def latency_ms(self, q: float) -> float | None:
        return quantile_from_buckets(self.latency_buckets, q)

    def summary(self) -> dict:
        rated = sum(self.ratings)
        return {
            "requests": self.requests, "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "latency_p50_ms": self.latency_ms(0.5), "latency_p95_ms": self.latency_ms(0.95),
            "latency_mean_ms": self.latency_sum_ms / self.requests if self.requests else None,
            "thumbs_up": self.thumbs_up, "thumbs_down": self.thumbs_down,
            "ratings": rated, "mean_rating": sum((i + 1) * n for i, n in enumerate(self.ratings)) / rated if rated else None,
            "regenerations": self.regenerations, "choices": self.choices, "edits": self.edits, "copies": self.copies,
        }


def window_start(ts: datetime, window_s: float) -> datetime:
    epoch = ts.timestamp()
    return datetime.fromtimestamp(epoch - (epoch % window_s), tz=timezone.utc)


def _parse_time(value) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass
class _PendingFeedback:
    record: dict
    arrived: float  # the worker's clock (seconds), for join_wait_s


class LiveMetrics:
    """The worker's state: open deltas, which version served which request, feedback
    waiting for its interaction. Not thread-safe (the worker's event loop owns it)."""

    def __init__(self, window_s: float = 60.0, join_wait_s: float = 120.0, request_ttl_s: float = 3600.0,
                 max_requests: int = 1_000_000, worker: str | None = None, max_pending: int = 100_000):
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = float(window_s)
        self.join_wait_s = join_wait_s
        self.request_ttl_s = request_ttl_s
        self.max_requests = max_requests
        self.max_pending = max_pending
        self.worker = worker or f"metrics-{uuid.uuid4().hex[:8]}"
        self._open: dict[tuple[str, str, datetime], WindowFigures] = {}
        self._served: OrderedDict[str, tuple[str, str, float]] = OrderedDict()  # request -> alias, version, seen
        self._pending: deque[_PendingFeedback] = deque()  # in arrival order
        self._seq = 0
        self.counted = Counter()  # interactions, feedback, feedback_unknown, skipped: for logs and tests

    def _figures(self, alias: str, version: str, ts: datetime) -> WindowFigures:
        key = (alias, version, window_start(ts, self.window_s))
        fig = self._open.get(key)
        if fig is None:
            fig = self._open[key] = WindowFigures()
        return fig

    def add_interaction(self, record: Mapping, now: float) -> None:
        alias, version = record["model_alias"], record["model_version"]
        fig = self._figures(alias, version, _parse_time(record["created_at"]))
        fig.requests += 1
        if record.get("status", "ok") != "ok":
            fig.errors += 1
        total_ms = float((record.get("timing") or {}).get("total_ms") or 0.0)
        fig.latency_sum_ms += total_ms
        fig.latency_buckets[latency_bucket(total_ms)] += 1
        self._served[record["request_id"]] = (alias, version, now)
        self._served.move_to_end(record["request_id"])
        while len(self._served) > self.max_requests:
            self._served.popitem(last=False)
        self.counted["interactions"] += 1

    def add_feedback(self, record: Mapping, now: float) -> None:
        if not self._count_feedback(record):
            self._pending.append(_PendingFeedback(dict(record), now))
            while len(self._pending) > self.max_pending:
                self._count_feedback(self._pending.popleft().record, force_unknown=True)
                self.counted["pending_evicted"] += 1

    def _count_feedback(self, record: Mapping, force_unknown: bool = False) -> bool:
        served = self._served.get(record["request_id"])
        if served is None and not force_unknown:
            return False
        alias, version = (served[0], served[1]) if served is not None else (UNKNOWN, UNKNOWN)
        fig = self._figures(alias, version, _parse_time(record["created_at"]))
        kind, value = record["kind"], record.get("value")
        if kind == "thumb":
            if value == 1:
                fig.thumbs_up += 1
            else:
                fig.thumbs_down += 1
        elif kind == "rating":
            fig.ratings[int(value) - 1] += 1
        elif kind == "regenerate":
            fig.regenerations += 1
        elif kind == "choice":
            fig.choices += 1
        elif kind == "edit":
            fig.edits += 1
        elif kind == "copy":
            fig.copies += 1
        self.counted["feedback_unknown" if served is None else "feedback"] += 1
        return True

    def flush(self, now: float, created_at: datetime | None = None) -> list[Metrics]:
        """Settle waiting feedback, forget old requests, and hand out the open deltas."""
        still: deque[_PendingFeedback] = deque()
        for p in self._pending:
            if self._count_feedback(p.record):
                continue
            if now - p.arrived >= self.join_wait_s:
                self._count_feedback(p.record, force_unknown=True)
            else:
                still.append(p)
        self._pending = still
        while self._served:
            _, (_, _, seen) = next(iter(self._served.items()))
            if now - seen < self.request_ttl_s:
                break
            self._served.popitem(last=False)
        created_at = created_at or datetime.now(timezone.utc)
        out = []
        for (alias, version, start), fig in sorted(self._open.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
            self._seq += 1
            out.append(Metrics(
                event_id=f"{self.worker}-{self._seq}", alias=alias, model_version=version, window_start=start,
                window_s=self.window_s, requests=fig.requests, errors=fig.errors, latency_sum_ms=fig.latency_sum_ms,
                latency_buckets={str(i): n for i, n in sorted(fig.latency_buckets.items())},
                thumbs_up=fig.thumbs_up, thumbs_down=fig.thumbs_down, ratings=list(fig.ratings),
                regenerations=fig.regenerations, choices=fig.choices, edits=fig.edits, copies=fig.copies,
                worker=self.worker, created_at=created_at))
        self._open.clear()
        return out

    @property
    def pending_feedback(self) -> int:
        return len(self._pending)


def figures_of(rows: Iterable[Mapping]) -> WindowFigures:
    """Merge delta rows (dicts with the ``live_metrics`` columns) into one ``WindowFigures``."""
    total = WindowFigures()
    for row in rows:
        buckets = row["latency_buckets"]
        ratings = row["ratings"]
        buckets = json.loads(buckets) if isinstance(buckets, str) else buckets
        ratings = json.loads(ratings) if isinstance(ratings, str) else ratings
        total.merge(WindowFigures(
            requests=row["requests"], errors=row["errors"], latency_sum_ms=row["latency_sum_ms"],
            latency_buckets=Counter({int(i): n for i, n in buckets.items()}), thumbs_up=row["thumbs_up"],
            thumbs_down=row["thumbs_down"], ratings=list(ratings), regenerations=row["regenerations"],
            choices=row["choices"], edits=row["edits"], copies=row["copies"]))
    return total


_COLUMNS = ("alias", "model_version", "window_start", "window_s", "requests", "errors", "latency_sum_ms",
            "latency_buckets", "thumbs_up", "thumbs_down", "ratings", "regenerations", "choices", "edits", "copies")


def read_rows(conn: duckdb.DuckDBPyConnection, *, alias: str | None = None, version: str | None = None,
              since: datetime | None = None, until: datetime | None = None) -> list[dict]:
    where, args = ["true"], []
    for sql, value in (("alias = ?", alias), ("model_version = ?", version), ("window_start >= ?", since),
                       ("window_start < ?", until)):
        if value is not None:
            where.append(sql)
            args.append(value)
    cur = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM live_metrics WHERE {' AND '.join(where)} "
                       "ORDER BY window_start, alias, model_version", args)
    return [dict(zip(_COLUMNS, row)) for row in cur.fetchall()]


def read_windows(conn: duckdb.DuckDBPyConnection, **filters) -> list[dict]:
    """One dict per (alias, version, window) with the merged figures, oldest first."""
    groups: dict[tuple, list[dict]] = {}
    for row in read_rows(conn, **filters):
        groups.setdefault((row["alias"], row["model_version"], row["window_start"], row["window_s"]), []).append(row)
    out = []
    for (alias, version, start, window_s), rows in groups.items():
        out.append({"alias": alias, "model_version": version, "window_start": start.isoformat(),
                    "window_s": window_s, "deltas": len(rows), **figures_of(rows).summary()})
    return out


def metrics_filters(args: Mapping[str, str]) -> dict:
    """``read_windows`` filters from query parameters: alias, version, minutes (default 60)."""
    try:
        minutes = float(args.get("minutes", 60))
    except ValueError:
        raise ValueError(f"minutes must be a number, got {args.get('minutes')!r}") from None
    if not minutes > 0:  # NaN included
        raise ValueError("minutes must be a positive number")
    # More than a century back is "everything" (timedelta and datetime overflow past it).
    minutes = min(minutes, _CENTURY_MIN)
    return {"alias": args.get("alias") or None, "version": args.get("version") or None,
            "since": datetime.now(timezone.utc) - timedelta(minutes=minutes)}


_CENTURY_MIN = 100 * 366 * 24 * 60


def version_figures(conn: duckdb.DuckDBPyConnection, version: str, start: datetime, end: datetime,
                    alias: str | None = None) -> WindowFigures:
    """A version's merged figures over the windows that start in [start, end)."""
    return figures_of(read_rows(conn, alias=alias, version=version, since=start, until=end))


__all__ = ["LiveMetrics", "WindowFigures", "figures_of", "latency_bucket", "metrics_filters", "quantile_from_buckets",
           "read_windows",
           "version_figures", "window_start", "UNKNOWN"]
