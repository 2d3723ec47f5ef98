"""What the overview page reads: is the flywheel healthy, and is it working?

- **Traffic per model version** over a time range (`Span`): requests, the feedback rates
  (thumbs up and down, edits, regenerations per request) and latency (p50, p95), from the
  landed ``interactions`` and ``feedback`` (feedback counts in the bucket of the request it
  is about, so a rate is "of the requests served then, how many got a thumb down").
- **Quality across versions**: each version's evaluation figures per task type (verifier
  pass, exactly right where a report has it, judge win rate, usability) from the
  ``evaluations`` rows and the ``report.json`` each evaluation wrote, as a line over
  versions in registry order. A version that was only ever the production side of an
  evaluation gets its production figures.

Data health (landing, spools, dead letters) is `services.console.health`.
Read-only SQL on a DuckDB cursor; the charts come from `services.console.charts`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from markupsafe import Markup

from flywheel.humanize import format_duration

from services.console.charts import Bar, Colours, Series, bar_chart, line_chart

log = logging.getLogger(__name__)

#: The time-range control: key -> seconds (None: everything landed).
RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": None}
DEFAULT_RANGE = "24h"
#: Bucket sizes, the smallest that gives at most MAX_BUCKETS points is used.
BUCKETS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 72


@dataclass(frozen=True)
class Span:
    key: str
    start: datetime
    end: datetime
    bucket_s: int

    @property
    def bucket_label(self) -> str:
        s = self.bucket_s
        return f"{s // 86400} d" if s >= 86400 else f"{s // 3600} h" if s >= 3600 else f"{s // 60} min"


def span_of(cur, key: str | None, now: datetime | None = None) -> Span:
    """The span of a range key (`RANGES`); "all" covers every landed interaction. ValueError
    names the keys for an unknown one."""
    key = key or DEFAULT_RANGE
    if key not in RANGES:
        raise ValueError(f"unknown range {key!r}; use one of {', '.join(RANGES)}")
    now = now or datetime.now(timezone.utc)
    seconds = RANGES[key]
    if seconds is None:
        lo, hi = cur.execute("SELECT min(epoch(created_at)), max(epoch(created_at)) FROM interactions").fetchone()
        start = datetime.fromtimestamp(lo, tz=timezone.utc) if lo is not None else now - timedelta(hours=1)
        end = max(now, datetime.fromtimestamp(hi, tz=timezone.utc)) if hi is not None else now
    else:
        start, end = now - timedelta(seconds=seconds), now
    width = max((end - start).total_seconds(), 60.0)
    bucket = next((b for b in BUCKETS if width / b <= MAX_BUCKETS), BUCKETS[-1])
    return Span(key, start, end, bucket)


# ----------------------------------------------------------------------------- traffic


_TRAFFIC = """
WITH i AS (
    SELECT request_id, model_version, status, total_ms, (floor(epoch(created_at) / $b) * $b)::BIGINT AS t
    FROM interactions WHERE created_at >= $start AND created_at < $end),
f AS (
    SELECT f.request_id,
           count(*) FILTER (WHERE f.kind = 'thumb' AND f.value > 0) AS up,
           count(*) FILTER (WHERE f.kind = 'thumb' AND f.value < 0) AS down,
           count(*) FILTER (WHERE f.kind = 'edit') AS edits,
           count(*) FILTER (WHERE f.kind = 'regenerate') AS regenerations
    FROM feedback f WHERE f.request_id IN (SELECT request_id FROM i) GROUP BY 1)
SELECT i.model_version, i.t, count(*) AS requests, count(*) FILTER (WHERE i.status <> 'ok') AS errors,
       quantile_cont(i.total_ms, 0.5) AS p50, quantile_cont(i.total_ms, 0.95) AS p95,
       coalesce(sum(f.up), 0) AS up, coalesce(sum(f.down), 0) AS down, coalesce(sum(f.edits), 0) AS edits,
       coalesce(sum(f.regenerations), 0) AS regenerations
FROM i LEFT JOIN f USING (request_id) GROUP BY 1, 2 ORDER BY 1, 2"""

FEEDBACK_RATES = (("up", "thumbs up"), ("down", "thumbs down"), ("edits", "edits"), ("regenerations", "regenerations"))


def traffic(cur, span: Span) -> dict[str, list[dict]]:
    """model version -> its buckets in time order: t (epoch seconds), requests, errors, p50,
    p95 (ms), and the feedback counts (up, down, edits, regenerations) on those requests."""
    cur.execute(_TRAFFIC, {"b": span.bucket_s, "start": span.start, "end": span.end})
    names = [d[0] for d in cur.description]
    out: dict[str, list[dict]] = {}
    for row in cur.fetchall():
        rec = dict(zip(names, row))
        out.setdefault(rec.pop("model_version"), []).append(rec)
    return out


def traffic_totals(series: dict[str, list[dict]]) -> list[dict]:
    """Per version over the whole span: requests, error and feedback rates."""
    out = []
    for version, rows in series.items():
        n = sum(r["requests"] for r in rows)
        rec = {"version": version, "requests": n, "errors": sum(r["errors"] for r in rows)}
        for key, _ in FEEDBACK_RATES:
            rec[key] = sum(r[key] for r in rows)
            rec[f"{key}_rate"] = rec[key] / n if n else None
        out.append(rec)
    return sorted(out, key=lambda r: -r["requests"])


def _pct(v: float) -> str:
    return f"{v:.0%}" if v >= 0.1 or v == 0 else f"{v:.1%}"


def _ms(v: float) -> str:
    return f"{v / 1000:.1f}s" if v >= 1000 else f"{v:.0f}ms"


def traffic_charts(series: dict[str, list[dict]], span: Span, colour: Colours) -> dict[str, Markup]:
    """The overview's time charts: traffic, the four feedback rates, latency."""
    versions = sorted(series)

    def lines(value, **kw) -> list[Series]:
        return [Series(v, [(r["t"], value(r)) for r in series[v]], colour(v), **kw) for v in versions]

    per_min = 60.0 / span.bucket_s

    def requests(version: str) -> Series:
        # A bucket without requests is a zero between a version's first and last one (not a
        # line drawn across it); rates have no value there and are left out.
        seen = {r["t"]: r["requests"] for r in series[version]}
        lo, hi = min(seen), max(seen)
        return Series(version, [(t, seen.get(t, 0) * per_min) for t in range(lo, hi + 1, span.bucket_s)], colour(version))

    charts = {"traffic": line_chart([requests(v) for v in versions], title="Requests per minute",
                                    y_format=lambda v: f"{v:.3g}", chart_id="chart-traffic")}
    for key, label in FEEDBACK_RATES:
        charts[key] = line_chart(lines(lambda r, k=key: r[k] / r["requests"] if r["requests"] else None),
                                 title=f"{label.capitalize()} per request", y_format=_pct, chart_id=f"chart-{key}")
    latency = [Series(f"{v} p95", [(r["t"], r["p95"]) for r in series[v]], colour(v)) for v in versions]
    latency += [Series(f"{v} p50", [(r["t"], r["p50"]) for r in series[v]], colour(v), dashed=True) for v in versions]
    charts["latency"] = line_chart(latency, title="Latency (p95 solid, p50 dashed)", y_format=_ms,
                                   chart_id="chart-latency")
    return charts


# ----------------------------------------------------------------------------- evaluations


#: Figures of a report's task type: (name on the chart, key of the type's result in report.json).
EVAL_METRICS = (("verifier pass", "pass_rate"), ("exactly right", "exact"), ("judge win rate", "judge"),
                ("usability", "usability"))


def _report_types(report_path: str | None) -> list[dict]:
    if not report_path:
        return []
    path = Path(report_path) / "report.json"
    try:
        return list(json.loads(path.read_text()).get("types") or [])
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        log.warning("console: cannot read %s: %s", path, e)
        return []


def _figure(result: dict, key: str, side: str) -> float | None:
    value = result.get(key)
    if not isinstance(value, dict):
        return None
    if key == "judge":  # the candidate's win rate against production; production's is its complement
        w = value.get("win_rate")
        return None if w is None else (float(w) if side == "candidate" else 1.0 - float(w))
    v = value.get(side)
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None


def evaluation_lines(cur) -> dict:
    """{"versions": [...in registry order...], "types": {task type: {metric: [value per
    version, None where not evaluated]}}}. Each version's figures come from its latest
    evaluation as the candidate; a version never evaluated as one (the base model) takes the
    production side of the first evaluation against it. "all types" holds the overall
    figures every evaluation row keeps."""
    rows = cur.execute("SELECT candidate, production, overall, report_path FROM evaluations "
                       "ORDER BY created_at, eval_id").fetchall()
    if not rows:
        return {"versions": [], "types": {}}
    own: dict[str, dict] = {}  # version -> {(type, metric): value}, its latest evaluation as candidate
    as_production: dict[str, dict] = {}
    for candidate, production, overall, report_path in rows:
        overall = json.loads(overall) if isinstance(overall, str) else (overall or {})
        results = [{"task_type": "all types", **overall}] + _report_types(report_path)
        mine, theirs = {}, {}
        for r in results:
            for name, key in EVAL_METRICS:
                c, p = _figure(r, key, "candidate"), _figure(r, key, "production")
                if c is not None:
                    mine[(r["task_type"], name)] = c
                if p is not None:
                    theirs[(r["task_type"], name)] = p
        own[candidate] = mine
        as_production.setdefault(production, theirs)
    order = [v for (v,) in cur.execute("SELECT version FROM model_versions ORDER BY created_at, version").fetchall()]
    seen = set(own) | set(as_production)
    versions = [v for v in order if v in seen] + sorted(seen - set(order))
    types: dict[str, dict[str, list]] = {}
    for i, version in enumerate(versions):
        figures = own.get(version) or as_production.get(version) or {}
        for (task_type, name), value in figures.items():
            types.setdefault(task_type, {}).setdefault(name, [None] * len(versions))[i] = value
    ordered = dict(sorted(types.items(), key=lambda kv: (kv[0] != "all types", kv[0])))
    return {"versions": versions, "types": ordered}


def evaluation_charts(lines: dict) -> list[Markup]:
    """One small chart per task type: each metric a line over the versions."""
    colour = Colours({name: c for (name, _), c in zip(EVAL_METRICS, ("#0072B2", "#009E73", "#E69F00", "#999999"))})
    out = []
    for k, (task_type, metrics) in enumerate(lines["types"].items()):
        series = [Series(name, list(enumerate(values)), colour(name)) for name, values in metrics.items()]
        out.append(line_chart(series, title=task_type, x_kind="category", categories=lines["versions"], y_min=0.0,
                              y_max=1.0, y_format=_pct, width=360, height=170, chart_id=f"chart-eval-{k}"))
    return out


# ----------------------------------------------------------------------------- the flywheel's turn


def turn_chart(turn: dict | None) -> Markup:
    """The stages of a turn by duration (a running one by its time so far)."""
    if not turn:
        return bar_chart([], title="Last turn", chart_id="chart-turn", empty="no flywheel turn yet")
    now = datetime.now(timezone.utc)
    bars = []
    for st in turn.get("steps") or []:
        took = st.get("duration_s")
        if took is None and st.get("status") == "running" and st.get("started_at"):
            try:
                took = (now - datetime.fromisoformat(st["started_at"])).total_seconds()
            except ValueError:
                took = None
        bars.append(Bar(st["name"], float(took or 0.0), st.get("status", "ok"),
                        title=f"{st['name']}: {st.get('status')} — {st.get('detail') or st.get('progress') or ''}",
                        note=f"{format_duration(took)} {st.get('status')}"))
    return bar_chart(bars, title=f"Last turn {turn['run_id']}: stages by duration", chart_id="chart-turn",
                     empty="the turn has no stages yet")
