"""Events/s through the faust stream worker (interactions + feedback in, per-version window
deltas out), against a bare kafka-python consumer that reads and parses the same events,
in the same run.

1. N interactions (~1 KB, two versions) and 0.7 N feedback events are produced first.
2. The baseline: a bare kafka-python consumer group reads both topics and parses every
   record's JSON (the least any consumer must do).
3. A real `flywheel stream-worker` process starts; the clock runs from the moment it has
   its partitions until the deltas it published (read from the metrics topic) account
   for every event. Its flush interval is 0.5 s, which bounds the error of the end time.

Target (issue 14): the worker at >= 0.33x the bare consumer's rate (``ratio_to_bare``).

    python bench/stream_metrics.py [--events 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

from _stack import REPO, broker_and_settings, emit, env_of

from streams.producer import EventProducer
from streams.schemas import Feedback, Interaction
from streams.stream_worker import ready_path

TARGET = 0.33  # issue 14: worker events/s over the bare consumer's
ANSWER = '{"chartType":"CHART_LINE","chartFields":{"dimensions":["Order date"],"metrics":["Sales"]},"mainAxis":"Order date"}'


def make_events(n: int, run: str) -> tuple[list, list]:
    rng = random.Random(0)
    now = datetime.now(timezone.utc)
    interactions, feedback = [], []
    for i in range(n):
        rid = f"chatcmpl-{run}-{i}"
        interactions.append((f"sess-{i % 997}", Interaction(
            event_id=f"{run}-i{i}", request_id=rid, session_id=f"sess-{i % 997}", user_id=f"u_{i % 313:024x}",
            app="analytics", created_at=now, model_alias="flywheel-chat",
            model_version="candidate" if rng.random() < 0.1 else "base",
            messages=[{"role": "system", "content": "You are a data visualization assistant. " * 8},
                      {"role": "user", "content": "Monthly sales for the last half year as a line chart, please."}],
            drafts=[{"index": 0, "content": ANSWER, "finish_reason": "stop"}],
            params={"temperature": 0.0, "max_tokens": 256}, usage={"prompt_tokens": 470, "completion_tokens": 60},
            timing={"total_ms": rng.uniform(200, 2000), "ttft_ms": 90.0}, tags={"source": "gateway"},
        ).model_dump_json().encode()))
        if rng.random() < 0.7:
            feedback.append((rid, Feedback(event_id=f"{run}-f{i}", request_id=rid, kind="thumb",
                                           value=rng.choice([1, -1]), created_at=now).model_dump_json().encode()))
    return interactions, feedback


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_consume(s, topics: list[str], n: int) -> tuple[float, float]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(*topics, bootstrap_servers=s.bootstrap, group_id=f"bare-{uuid.uuid4().hex[:6]}",
                      auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=5000,
                      session_timeout_ms=6000, heartbeat_interval_ms=2000)
    got, t_first = 0, None
    while got < n:
        for records in c.poll(timeout_ms=500, max_records=5000).values():
            if t_first is None and records:
                t_first, cpu_first, first_n = time.perf_counter(), time.process_time(), got
            for r in records:
                json.loads(r.value)
            got += len(records)
    rate, cpu = n / (time.perf_counter() - t_first), (time.process_time() - cpu_first) / (n - first_n)
    c.close()
    return rate, cpu


def worker_rate(s, n_interactions: int, n_feedback: int) -> tuple[float, float, float]:
    from kafka import KafkaConsumer

    ready = ready_path(s)
    ready.unlink(missing_ok=True)
    env = {**env_of(s), "FLYWHEEL_STREAM__FLUSH_S": "0.5", "FLYWHEEL_STREAM__SESSION_TIMEOUT_S": "6"}
    t_launch = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "flywheel", "stream-worker"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = KafkaConsumer(s.topic("metrics"), bootstrap_servers=s.bootstrap, auto_offset_reset="earliest",
                            enable_auto_commit=False)
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError("the stream worker exited")
            time.sleep(0.01)
        t_ready, cpu_ready = time.perf_counter(), cpu_s(proc.pid)
        requests = thumbs = 0
        while requests < n_interactions or thumbs < n_feedback:
            if proc.poll() is not None:
                raise RuntimeError("the stream worker exited")
            for records in metrics.poll(timeout_ms=200).values():
                for r in records:
                    m = json.loads(r.value)
                    requests += m["requests"]
                    thumbs += m["thumbs_up"] + m["thumbs_down"]
        t_done, cpu_done = time.perf_counter(), cpu_s(proc.pid)
        n = n_interactions + n_feedback
        return n / (t_done - t_ready), t_ready - t_launch, (cpu_done - cpu_ready) / n
    finally:
        metrics.close()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000, help="interactions (feedback: ~70%% as many)")
    args = ap.parse_args()
    run = uuid.uuid4().hex[:6]
    with broker_and_settings() as s:
        interactions, feedback = make_events(args.events, run)
        producer = EventProducer.from_settings(s, client_id="bench")
        for topic, items in ((s.topic("interactions"), interactions), (s.topic("feedback"), feedback)):
            for i in range(0, len(items), 1000):
                producer.emit_many([(topic, key, value) for key, value in items[i:i + 1000]])
        assert producer.flush(600), "producer did not drain"
        producer.close()
        total = len(interactions) + len(feedback)
        bare, bare_cpu = bare_consume(s, [s.topic("interactions"), s.topic("feedback")], total)
        rate, startup, worker_cpu = worker_rate(s, len(interactions), len(feedback))
    emit({"bench": "stream_metrics", "interactions": len(interactions), "feedback": len(feedback),
          "worker_events_per_s": round(rate), "bare_consume_events_per_s": round(bare),
          "ratio_to_bare": round(rate / bare, 3), "target_ratio": TARGET, "target_met": rate / bare >= TARGET,
          # CPU per event (all threads of the process): steadier than the rates on a shared machine.
          "cpu_us_per_event": {"worker": round(worker_cpu * 1e6, 1), "bare": round(bare_cpu * 1e6, 1)},
          "worker_startup_s": round(startup, 1)})


if __name__ == "__main__":
    main()
