"""Data health for the console: is everything the gateways accept reaching the database?

- events per minute by kind (interactions, feedback, dead letters), by creation time;
- landing delay: how long the events landed lately took from creation to landing, and when
  the last one landed;
- spool depth and landing lag per gateway: each gateway's /healthz (spool depth, broker
  state, the highest offset its producer had acknowledged per partition) against the
  landed position per partition (``landing_offsets``), as `flywheel status` computes it;
- dead letters: landed ones (``dead_letters``: the record, its topic position and why it was
  refused) to browse by reason and topic, and the producers' dead-letter files.

Read-only SQL on a DuckDB cursor, plus one short HTTP call per known gateway.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime

from markupsafe import Markup

from services.console.charts import Series, line_chart
from services.console.overview import Span

def events_per_minute(cur, span: Span) -> dict[str, list[tuple[float, float]]]:
    """kind (interactions, feedback, dead letters) -> [(bucket start, events per minute)], by
    the events' own creation time."""
    rows = cur.execute("""
        SELECT kind, (floor(epoch(created_at) / $b) * $b)::BIGINT AS t, count(*) FROM (
            SELECT 'interactions' AS kind, created_at FROM interactions WHERE created_at >= $start AND created_at < $end
            UNION ALL SELECT 'feedback', created_at FROM feedback WHERE created_at >= $start AND created_at < $end
            UNION ALL SELECT 'dead letters', created_at FROM dead_letters WHERE created_at >= $start AND created_at < $end)
        GROUP BY 1, 2 ORDER BY 1, 2""", {"b": span.bucket_s, "start": span.start, "end": span.end}).fetchall()
    out: dict[str, list[tuple[float, float]]] = {}
    for kind, t, n in rows:
        out.setdefault(kind, []).append((float(t), n * 60.0 / span.bucket_s))
    return out


def events_chart(rates: dict[str, list[tuple[float, float]]]) -> Markup:
    colours = {"interactions": "#0072B2", "feedback": "#009E73", "dead letters": "#D55E00"}
    return line_chart([Series(k, v, colours.get(k)) for k, v in sorted(rates.items())], title="Events per minute",
                      y_format=lambda v: f"{v:.3g}", chart_id="chart-events")


def landing_delay(cur, within_s: float = 3600.0) -> dict:
    """How long events landed in the last `within_s` seconds took from creation to landing
    (p50, p95 seconds), how many those were, and when the last one landed."""
    p50, p95, n, last = cur.execute("""
        SELECT quantile_cont(d, 0.5), quantile_cont(d, 0.95), count(*), max(landed_at) FROM (
            SELECT epoch(landed_at) - epoch(created_at) AS d, landed_at FROM interactions
            WHERE landed_at > now() - to_seconds($s)
            UNION ALL SELECT epoch(landed_at) - epoch(created_at), landed_at FROM feedback
            WHERE landed_at > now() - to_seconds($s))""", {"s": within_s}).fetchone()
    if last is None:
        last = cur.execute("SELECT max(landed_at) FROM (SELECT landed_at FROM interactions UNION ALL "
                           "SELECT landed_at FROM feedback)").fetchone()[0]
    return {"p50_s": p50, "p95_s": p95, "events": n, "within_s": within_s,
            "last_landed_at": last.isoformat() if isinstance(last, datetime) else None}


def dead_letter_summary(cur, top: int = 6) -> dict:
    """The landed dead letters: how many, the commonest reasons, the latest time."""
    total, last = cur.execute("SELECT count(*), max(landed_at) FROM dead_letters").fetchone()
    reasons = cur.execute("SELECT reason, count(*) AS n FROM dead_letters GROUP BY 1 ORDER BY n DESC, reason LIMIT ?",
                          [top]).fetchall()
    return {"total": total, "last_at": last.isoformat() if isinstance(last, datetime) else None,
            "reasons": [{"reason": r, "n": n} for r, n in reasons]}


def list_dead_letters(cur, *, reason: str | None = None, topic: str | None = None, limit: int = 50,
                      offset: int = 0) -> list[dict]:
    """Dead letters, newest first; `reason` matches part of the reason, `topic` the source topic."""
    clauses, params = ["true"], []
    if reason:
        clauses.append("reason ILIKE ?")
        params.append(f"%{reason}%")
    if topic:
        clauses.append("source_topic = ?")
        params.append(topic)
    cur.execute(f"""SELECT event_id, source_topic, partition, "offset", key, reason, payload, created_at, landed_at
                    FROM dead_letters WHERE {' AND '.join(clauses)} ORDER BY landed_at DESC, event_id
                    LIMIT {int(limit)} OFFSET {int(offset)}""", params)
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        rec = dict(zip(names, row))
        for key in ("created_at", "landed_at"):
            rec[key] = rec[key].isoformat() if isinstance(rec[key], datetime) else rec[key]
        out.append(rec)
    return out


def dead_letter_topics(cur) -> list[str]:
    return [t for (t,) in cur.execute("SELECT DISTINCT source_topic FROM dead_letters ORDER BY 1").fetchall()]


def probe_gateway(url: str, timeout: float = 0.5) -> dict:
    """A gateway's /healthz, shortly: reachable, status, spool depth, broker state and the
    offsets its producer had acknowledged (empty when it cannot be reached)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:  # 503 with a body when degraded
        try:
            body = json.loads(e.read())
        except ValueError:
            body = None
    except (OSError, ValueError):
        body = None
    if not isinstance(body, dict):
        return {"url": url, "reachable": False}
    events = body.get("events") or {}
    return {"url": url, "reachable": True, "status": body.get("status"), "spool_depth": events.get("spool_depth"),
            "broker_up": events.get("broker_up"), "acked_offsets": events.get("acked_offsets") or {}}


def landing_lag(cur, acked: dict[str, int]) -> int:
    """Events a producer had acknowledged that are not landed yet (acked offsets are the
    last acknowledged offset per ``topic:partition``)."""
    landed = {f"{t}:{p}": o for t, p, o in cur.execute("SELECT topic, partition, next_offset FROM landing_offsets").fetchall()}
    return sum(max(0, hi + 1 - landed.get(tp, 0)) for tp, hi in acked.items())
