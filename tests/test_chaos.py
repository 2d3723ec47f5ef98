"""Chaos under steady load (issue #13): every accepted event lands exactly once.

The whole stack runs as processes, as `flywheel up` runs it: the tansu broker, the control
plane (landing into DuckDB), the stream worker and the gateway (gunicorn, the scripted
backend: the test is about events, not the model). Four clients send chat requests and
feedback through the official ``openai`` client without pause, while, in turn:

1. the gateway is killed with SIGKILL (its process group: master and worker) and restarted;
2. the control plane (landing) is killed and restarted;
3. the broker is killed and restarted, and stays down until the gateway's spool (a tiny
   ``spool.max_bytes``) is full: chat requests and feedback get 503 ``event_spool_full``,
   before any generation;
4. the stream worker is killed and restarted.

Afterwards every 2xx chat answer's interaction and every 2xx feedback is in DuckDB exactly
once. The embedded broker keeps its log in memory only, so killing it loses what it holds
(Apache Kafka, with its log on disk, does not): before that kill the gateway is paused
(SIGSTOP) until landing has caught up, so the kill tests what a broker outage does to the
gateway, its spool and landing, not tansu's lack of a disk.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from flywheel.settings import settings_env
from flywheel.supervisor import Child, Supervisor, http_ready
from services.gateway.auth import KeyStore
from streams.broker import EmbeddedBroker
from streams.stream_worker import ready_path
from streams.topics import ensure_topics, topic_names
from tests.conftest import free_port, make_settings, query, wait_for

CLIENTS = 4
SPOOL_BYTES = 64 * 1024  # fills in a few seconds of broker outage under this load
LOAD_S = 4.0  # steady load between faults


@dataclass
class Load:
    """What the clients were told: accepted ids, and every other outcome counted."""

    chats: set = field(default_factory=set)
    feedback: set = field(default_factory=set)
    outcomes: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    phase: str = "start"  # what the test was doing (a failure message says when a lost event was accepted)
    phase_of: dict = field(default_factory=dict)

    def note(self, what: str, accepted_id: str | None = None, into: set | None = None) -> None:
        with self.lock:
            self.outcomes[what] += 1
            if accepted_id is not None:
                into.add(accepted_id)
                self.phase_of[accepted_id] = self.phase

    def phases(self, ids) -> Counter:
        return Counter(self.phase_of.get(i) for i in ids)


def _outcome(e: Exception) -> str:
    import openai

    if isinstance(e, openai.APIStatusError):
        code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
        return f"{e.status_code} {code or ''}".strip()
    return type(e).__name__


def _client_loop(url: str, key: str, k: int, load: Load) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=15)
    i = 0
    while not load.stop.is_set():
        i += 1
        try:
            resp = client.chat.completions.create(model="flywheel-chat", max_tokens=8, user=f"chaos-user-{k}",
                                                  messages=[{"role": "user", "content": f"client {k} asks {i}"}])
            load.note("chat 200", resp.id, load.chats)
        except Exception as e:  # noqa: BLE001 - every failure is an outcome to count
            load.note(f"chat {_outcome(e)}")
            time.sleep(0.05)
            continue
        if i % 2:
            try:
                fb = client.post("/feedback", cast_to=object,
                                 body={"request_id": resp.id, "kind": "thumb", "value": 1 if i % 4 == 1 else -1})
                load.note("feedback 200", fb["id"], load.feedback)
            except Exception as e:  # noqa: BLE001
                load.note(f"feedback {_outcome(e)}")
        time.sleep(0.01)


class Stack:
    """The stack's processes, each killable with SIGKILL and restartable."""

    def __init__(self, settings, broker: EmbeddedBroker):
        self.s = settings
        self.broker = broker
        self.sup = Supervisor(settings.data_path / "logs")
        self.env = settings_env(settings)
        self.procs: dict[str, Child] = {}
        self.faults: list[str] = []

    def start(self, name: str) -> None:
        s, cmd = self.s, [sys.executable, "-m", "flywheel", name]
        ready = {"gateway": http_ready(f"{s.gateway_url}/healthz"),
                 "control-plane": http_ready(f"{s.control_url}/healthz"),
                 "stream-worker": ready_path(s).exists}[name]
        if name == "stream-worker":
            ready_path(s).unlink(missing_ok=True)
        self.procs[name] = self.sup.start(Child(name, cmd, ready, env=self.env, stop_timeout=60), timeout=120)

    def kill(self, name: str) -> None:
        proc = self.procs[name].proc
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: gunicorn's master and worker alike
        proc.wait(10)
        self.faults.append(f"kill -9 {name}")

    def signal_gateway(self, sig: int) -> None:
        os.killpg(self.procs["gateway"].proc.pid, sig)

    def kill_broker(self) -> None:
        self.broker.proc.kill()
        self.broker.proc.wait(10)
        self.broker.proc = None
        self.faults.append("kill -9 broker")

    def restart_broker(self) -> None:
        self.broker.start()
        ensure_topics(self.s.bootstrap, list(topic_names(self.s).values()), self.s.kafka.partitions)

    def gateway_health(self) -> dict:
        try:
            return httpx.get(f"{self.s.gateway_url}/healthz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return {}

    def stop(self) -> None:
        self.sup.stop_all()


def _events_in_log(settings) -> tuple[int, int]:
    """(interactions, feedback): distinct event ids the broker holds (read from the start)."""
    from kafka import KafkaConsumer

    t = topic_names(settings)
    consumer = KafkaConsumer(t["interactions"], t["feedback"], bootstrap_servers=settings.bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=2000, enable_auto_commit=False)
    ids: dict[str, set] = {t["interactions"]: set(), t["feedback"]: set()}
    try:
        for record in consumer:
            ids[record.topic].add(json.loads(record.value)["event_id"])
    finally:
        consumer.close()
    return len(ids[t["interactions"]]), len(ids[t["feedback"]])


def _landed(settings) -> tuple[int, int]:
    """(interactions, feedback) landed, as the running control plane counts them (it holds DuckDB)."""
    try:
        body = httpx.get(f"{settings.control_url}/api/status", timeout=2,
                         headers={"Authorization": f"Bearer {settings.operator_token_path.read_text().strip()}"}).json()
        return body["tables"]["interactions"], body["tables"]["feedback"]
    except (httpx.HTTPError, KeyError, ValueError, OSError):
        return -1, -1


@pytest.mark.slow
def test_kill_each_part_under_load_and_fill_the_spool_every_accepted_event_lands_once(tmp_path):
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log").start()
    s = make_settings(tmp_path, broker.bootstrap, model={"backend": "scripted"}, spool={"max_bytes": SPOOL_BYTES},
                      landing={"poll_ms": 100}, stream={"flush_s": 1.0}, gateway={"routing_poll_s": 0})
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    store = KeyStore.load(s.keys_path)
    key = store.create("chat", name="chaos")
    store.save(s.keys_path)
    stack = Stack(s, broker)
    load = Load()
    clients: list[threading.Thread] = []
    t0 = time.monotonic()
    try:
        for name in ("control-plane", "stream-worker", "gateway"):
            stack.start(name)
        clients = [threading.Thread(target=_client_loop, args=(s.gateway_url, key, k, load), daemon=True)
                   for k in range(CLIENTS)]
        for c in clients:
            c.start()
        time.sleep(LOAD_S)

        # 1-2. The gateway, then the control plane: killed mid-load, restarted.
        for name in ("gateway", "control-plane"):
            load.phase = f"{name} killed"
            stack.kill(name)
            time.sleep(1.0)
            stack.start(name)
            load.phase = f"{name} restarted"
            time.sleep(LOAD_S)

        # 3. The broker. Landing catches up while the gateway is paused (tansu forgets what it holds) ...
        load.phase = "gateway paused"
        stack.signal_gateway(signal.SIGSTOP)
        try:
            time.sleep(0.5)  # what the gateway had in flight reaches the broker
            in_log = _events_in_log(s)  # distinct event ids in the broker's log, per topic
            wait_for(lambda: _landed(s) >= in_log, timeout=120, interval=0.2,
                     what=f"landing to catch up with the broker's log ({in_log})")
        finally:
            stack.kill_broker()
            load.phase = "broker down"
            stack.signal_gateway(signal.SIGCONT)
        # ... then the load goes on with no broker until the spool is full and refuses (503).
        wait_for(lambda: load.outcomes["chat 503 event_spool_full"] + load.outcomes["feedback 503 event_spool_full"]
                 >= 10, timeout=120, interval=0.2, what="the spool to fill (503 event_spool_full)")
        full = stack.gateway_health().get("events", {})
        time.sleep(1.0)
        stack.restart_broker()
        load.phase = "broker restarted"
        wait_for(lambda: stack.gateway_health().get("events", {}).get("spool_depth") == 0, timeout=120,
                 what="the spool to drain into the restarted broker")
        time.sleep(LOAD_S)

        # 4. The stream worker.
        stack.kill("stream-worker")
        stack.start("stream-worker")
        load.phase = "stream worker restarted"
        metrics_before = query_metrics(s)
        time.sleep(LOAD_S)
        load.stop.set()
        for c in clients:
            c.join(30)

        # Everything accepted lands, once.
        wait_for(lambda: stack.gateway_health().get("events", {}).get("spool_depth") == 0, timeout=60,
                 what="the spool to drain")
        want = (len(load.chats), len(load.feedback))
        wait_for(lambda: _landed(s)[0] >= want[0] and _landed(s)[1] >= want[1], timeout=120, interval=0.5,
                 what=f"{want[0]} interactions and {want[1]} feedback to land")
        wait_for(lambda: query_metrics(s) > metrics_before, timeout=60, what="the restarted stream worker's figures")
        lost = httpx.get(f"{s.gateway_url}/metrics", timeout=5).text
        stack.stop()  # the control plane lands what is left and closes DuckDB
        seconds = time.monotonic() - t0
    finally:
        load.stop.set()
        stack.stop()
        broker.stop()

    rows_i = query(s.db_path, "SELECT request_id, count(*) FROM interactions GROUP BY request_id")
    rows_f = query(s.db_path, "SELECT event_id, count(*) FROM feedback GROUP BY event_id")
    landed_i, landed_f = dict(rows_i), dict(rows_f)
    dead = query(s.db_path, "SELECT count(*) FROM dead_letters")[0][0]
    outcomes = ", ".join(f"{k}: {n}" for k, n in sorted(load.outcomes.items()))
    print(f"\nchaos: {len(stack.faults) + 1} faults ({', '.join(stack.faults)}, spool full at "
          f"{full.get('spool_bytes')} of {SPOOL_BYTES} bytes) in {seconds:.0f}s; client outcomes: {outcomes}; "
          f"accepted {len(load.chats)} chat + {len(load.feedback)} feedback; landed {len(landed_i)} interactions "
          f"({len(set(landed_i) - load.chats)} of requests whose answer never reached the client) + "
          f"{len(landed_f)} feedback; dead letters {dead}")
    lost_i, lost_f = load.chats - set(landed_i), load.feedback - set(landed_f)
    assert not lost_i, f"accepted chat requests not landed: {sorted(lost_i)[:10]}, accepted when {load.phases(lost_i)}"
    assert not lost_f, f"accepted feedback not landed: {sorted(lost_f)[:10]}, accepted when {load.phases(lost_f)}"
    assert all(n == 1 for n in landed_i.values()) and all(n == 1 for n in landed_f.values()), "landed twice"
    assert dead == 0
    assert 'flywheel_events_lost_total{reason="spool_full"}' not in lost, "an answered request's interaction was lost"
    assert load.outcomes["chat 503 event_spool_full"] > 0  # refused before generation, never answered unrecorded


def query_metrics(settings) -> int:
    try:
        body = httpx.get(f"{settings.control_url}/api/status", timeout=2,
                         headers={"Authorization": f"Bearer {settings.operator_token_path.read_text().strip()}"}).json()
        return body["tables"].get("live_metrics", 0)
    except (httpx.HTTPError, KeyError, ValueError, OSError):
        return -1
