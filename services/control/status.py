"""`flywheel status`: rows landed per table, spool depth, landing lag, last event time.

Lag is computed from positions both sides know for sure: the highest offset each
producer had acknowledged per partition (gateway /healthz) against the landed position
per partition (``landing_offsets``, written with each batch). Broker end offsets are not
used: the local broker reports them wrong (STACK_NOTES).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime

import duckdb

from flywheel.operator_token import operator_headers
from flywheel.settings import Settings
from streams.producer import dead_letter_counts
from streams.warehouse import connect, table_counts


def landed_status(conn: duckdb.DuckDBPyConnection) -> dict:
    counts = table_counts(conn)
    offsets = {f"{t}:{p}": o for t, p, o in conn.execute(
        "SELECT topic, partition, next_offset FROM landing_offsets ORDER BY 1, 2").fetchall()}
    last_event, last_landed = conn.execute(
        "SELECT max(created_at), max(landed_at) FROM (SELECT created_at, landed_at FROM interactions "
        "UNION ALL SELECT created_at, landed_at FROM feedback)").fetchone()
    return {
        "tables": counts,
        "landed_offsets": offsets,
        "last_event_at": last_event.isoformat() if isinstance(last_event, datetime) else None,
        "last_landed_at": last_landed.isoformat() if isinstance(last_landed, datetime) else None,
    }


def _get_json(url: str, timeout: float = 2.0, headers: dict | None = None) -> dict | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:  # /healthz answers 503 with a body when degraded
        try:
            return json.loads(e.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


def collect_status(settings: Settings) -> dict:
    """Ask the running control plane and gateway; read DuckDB directly if no control plane runs."""
    control = _get_json(f"{settings.control_url}/api/status", headers=operator_headers(settings))
    if control is not None and isinstance(control.get("error"), dict):  # refused (401/403): the API's message
        control = {"error": f"control plane at {settings.control_url}: {control['error'].get('message')}"}
    source = "control-plane"
    if control is None:
        source = "database"
        if settings.db_path.exists():
            try:
                conn = connect(settings.db_path, read_only=True)
            except Exception as e:  # noqa: BLE001 - e.g. locked by a control plane we could not reach
                control = {"error": f"cannot read {settings.db_path}: {e}"}
            else:
                with conn:
                    control = landed_status(conn)
        else:
            control = {"error": f"no database yet at {settings.db_path}"}
    gateway = _get_json(f"{settings.gateway_url}/healthz")
    events = (gateway or {}).get("events") or {}
    acked = events.get("acked_offsets", {})
    landed = control.get("landed_offsets", {})
    lag = {tp: max(0, hi + 1 - landed.get(tp, 0)) for tp, hi in acked.items()}
    dead = dead_letter_counts(settings.data_path)
    return {
        "source": source,
        "tables": control.get("tables", {}),
        "last_event_at": control.get("last_event_at"),
        "last_landed_at": control.get("last_landed_at"),
        "landing": control.get("landing"),
        "gateway": {"reachable": gateway is not None, "status": (gateway or {}).get("status"),
                    "spool_depth": events.get("spool_depth"), "broker_up": events.get("broker_up"),
                    "sender": events.get("sender")},
        # Events no retry could deliver, moved aside by the producers (streams/producer.py).
        "dead_letters": {"count": sum(dead.values()), "files": dead},
        "landing_lag_events": sum(lag.values()) if gateway is not None else None,
        "landing_lag_by_partition": lag,
        "error": control.get("error"),
    }
