"""Events/s from the producer through the broker into DuckDB rows, against a bare
kafka-python consume of the same events, in the same run; and landing lag at a steady rate.

1. N interaction events (~1 KB each, realistic) are produced with the project's producer
   (spool + idempotent kafka-python producer).
2. The control plane (a real `flywheel control-plane` process) lands them: the rate is
   measured from the first landed row to the last (consumer-group join time reported apart).
3. A bare kafka-python consumer group reads the same N events (the baseline).
4. With landing running, events are produced at a steady rate (default 2,000/s); lag =
   landed_at - created_at per row, from DuckDB.

Targets (issue 2): >= 20,000 events/s landed, >= 50% of the bare consume rate,
landing lag p99 < 2 s at 2,000 events/s.
    python bench/ingest.py [--events 100000] [--rate 2000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import signal
import time
import uuid
from datetime import datetime, timezone

from _stack import broker_and_settings, control_plane, emit, get_json

from streams.producer import EventProducer
from streams.schemas import Interaction
from streams.topics import topic_names
from streams.warehouse import connect

QUESTION = ("Monthly profit margin by region for the last half year, only the West and East regions, "
            "sorted by profit margin descending, as a column chart please.")
ANSWER = ('{"chartType":"CHART_COLUMN","chartFields":{"dimensions":["Region"],"metrics":["Profit margin"]},'
          '"mainAxis":"Region","sort":{"metric":"Profit margin","sort":"DESC"},"dimensionFilters":[{"dimension":'
          '"Region","filter":{"condition":"in","value":["West","East"]}}],"chartTimeFilter":{"granularity":"month",'
          '"dayjsScript":["dayjs().subtract(6, \'month\').startOf(\'month\')","dayjs().endOf(\'month\')"]}}')


def make_event(i: int, run: str) -> bytes:
    return Interaction(
        event_id=f"{run}-{i}", request_id=f"chatcmpl-{run}-{i}", session_id=f"sess-{i % 997}", turn=1,
        user_id=f"u_{i % 313:024x}", app="analytics", created_at=datetime.now(timezone.utc),
        model_alias="flywheel-chat", model_version="base",
        messages=[{"role": "system", "content": "You are a data visualization assistant."},
                  {"role": "user", "content": QUESTION}],
        drafts=[{"index": 0, "content": ANSWER, "finish_reason": "stop"}],
        params={"temperature": 0.0, "max_tokens": 256, "n": 1},
        usage={"prompt_tokens": 470, "completion_tokens": 95}, timing={"total_ms": 812.5, "ttft_ms": 95.1},
        tags={"source": "gateway"},
    ).model_dump_json().encode()


def landed(s) -> int:
    return get_json(f"{s.control_url}/api/status")["tables"].get("interactions", 0)


def bare_consume(s, topic: str, n: int) -> tuple[float, float]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, bootstrap_servers=s.bootstrap, group_id=f"bare-{uuid.uuid4().hex[:6]}",
                      auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=5000,
                      session_timeout_ms=6000, heartbeat_interval_ms=2000)
    t_start = time.perf_counter()
    got, t_first = 0, None
    while got < n:
        polled = c.poll(timeout_ms=500, max_records=5000)
        for records in polled.values():
            if t_first is None and records:
                t_first = time.perf_counter()
            for r in records:
                _ = r.value  # touch every record, as landing does
            got += len(records)
    t_end = time.perf_counter()
    c.close()
    return n / (t_end - t_first), t_first - t_start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=2000.0, help="steady rate for the lag measurement, events/s")
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of the lag measurement")
    args = ap.parse_args()
    run = uuid.uuid4().hex[:6]
    with broker_and_settings() as s:
        topic = topic_names(s)["interactions"]
        producer = EventProducer.from_settings(s, client_id="bench")
        events = [make_event(i, run) for i in range(args.events)]
        size = sum(map(len, events)) / len(events)
        t0 = time.perf_counter()
        for i in range(0, len(events), 1000):
            producer.emit_many([(topic, f"sess-{j % 997}", e) for j, e in enumerate(events[i:i + 1000], i)])
        assert producer.flush(600), "producer did not drain"
        produce_rate = args.events / (time.perf_counter() - t0)

        with control_plane(s) as plane:
            t_start = time.perf_counter()
            t_first = None
            while (n := landed(s)) < args.events:
                if t_first is None and n > 0:
                    t_first, first_n = time.perf_counter(), n
                time.sleep(0.02)
            t_end = time.perf_counter()
            landing_rate = (args.events - first_n) / (t_end - t_first)
            join_s = t_first - t_start

            bare_rate, bare_join = bare_consume(s, topic, args.events)

            # Steady rate, landing running: lag of each row.
            lag_run = uuid.uuid4().hex[:6]
            total = int(args.rate * args.seconds)
            t0 = time.perf_counter()
            for i in range(total):
                due = t0 + i / args.rate
                while (d := due - time.perf_counter()) > 0:
                    time.sleep(min(d, 0.005))
                producer.emit(topic, f"sess-{i % 997}", make_event(i, lag_run))
            producer.flush(60)
            while landed(s) < args.events + total:
                time.sleep(0.1)
            plane.send_signal(signal.SIGTERM)
            plane.wait(120)
        producer.close()
        with connect(s.db_path, read_only=True) as db:
            p50, p99, mx = db.execute(
                "SELECT quantile_cont(x, 0.5), quantile_cont(x, 0.99), max(x) FROM (SELECT "
                "epoch(landed_at) - epoch(created_at) AS x FROM interactions WHERE event_id LIKE ?)",
                [f"{lag_run}-%"]).fetchone()
            rows, distinct = db.execute("SELECT count(*), count(DISTINCT event_id) FROM interactions").fetchone()
    emit({
        "bench": "ingest",
        "events": args.events,
        "event_bytes_avg": round(size),
        "produce_events_per_s": round(produce_rate),
        "landed_events_per_s": round(landing_rate),
        "bare_consume_events_per_s": round(bare_rate),
        "landed_vs_bare": round(landing_rate / bare_rate, 3),
        "group_join_s": {"landing": round(join_s, 2), "bare": round(bare_join, 2)},
        "lag_at_rate": {"events_per_s": args.rate, "seconds": args.seconds, "p50_s": round(p50, 3),
                        "p99_s": round(p99, 3), "max_s": round(mx, 3)},
        "rows": rows, "distinct_event_ids": distinct,
        "targets": {"landed>=20000/s": landing_rate >= 20000, "landed>=50%_of_bare": landing_rate >= 0.5 * bare_rate,
                    "lag_p99<2s": p99 < 2.0},
    })


if __name__ == "__main__":
    main()
