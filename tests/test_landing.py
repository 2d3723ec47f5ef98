"""Landing: Kafka → DuckDB exactly once; invalid records reach the DLQ with a reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone

import httpx
from kafka import KafkaConsumer, KafkaProducer

from streams.schemas import Feedback, Interaction
from streams.topics import topic_names
from tests.conftest import REPO, count, operator_token, query, wait_for


def interaction(i: int) -> Interaction:
    return Interaction(
        event_id=f"ev-{i}", request_id=f"req-{i}", session_id=f"s-{i % 50}", created_at=datetime.now(timezone.utc),
        model_alias="flywheel-chat", model_version="base",
        messages=[{"role": "user", "content": f"question {i}"}],
        drafts=[{"index": 0, "content": f"answer {i}", "finish_reason": "stop"}],
    )


def produce(settings, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    p = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", linger_ms=5)
    for topic, key, value in records:
        p.send(topic, key=key, value=value)
    p.flush(30)
    p.close()


def test_invalid_records_reach_the_dlq_with_reasons(settings, control_plane):
    t = topic_names(settings)
    now = datetime.now(timezone.utc)
    good_fb = Feedback(event_id="fb-1", request_id="req-1", kind="thumb", value=-1, created_at=now)
    bad = [
        (t["interactions"], b"k1", b"{this is not json"),
        (t["interactions"], b"k2", json.dumps({"type": "interaction", "event_id": "x"}).encode()),
        (t["interactions"], b"k3", interaction(1).model_dump_json().replace('"turn":1', '"turn":1,"extra":true').encode()),
        (t["feedback"], None, good_fb.model_dump_json().replace('"value":-1', '"value":4').encode()),
        (t["feedback"], b"", None),  # a tombstone-like record with no value
    ]
    good = [(t["interactions"], b"s", interaction(2).model_dump_json().encode()),
            (t["feedback"], b"req-1", good_fb.model_dump_json().encode())]
    produce(settings, bad + good)
    wait_for(lambda: count(control_plane, "dead_letters") == len(bad), what="dead letters")
    wait_for(lambda: count(control_plane, "interactions") == 1 and count(control_plane, "feedback") == 1,
             what="valid events")
    reasons = dict(query(control_plane, "SELECT key, reason FROM dead_letters WHERE key IS NOT NULL AND key <> ''"))
    assert "Invalid JSON" in reasons["k1"] or "json" in reasons["k1"].lower()
    assert "request_id: Field required" in reasons["k2"]
    assert "extra: Extra inputs are not permitted" in reasons["k3"]
    fb_reasons = [r for (r,) in query(control_plane, "SELECT reason FROM dead_letters WHERE key IS NULL OR key = ''")]
    assert any("rating" in r or "thumb" in r for r in fb_reasons)
    assert any("empty record" in r for r in fb_reasons)
    payload = query(control_plane, "SELECT payload FROM dead_letters WHERE key = 'k1'")[0][0]
    assert payload == "{this is not json"  # kept as received: nothing lost

    # The same dead letters were produced to the DLQ topic.
    consumer = KafkaConsumer(t["dlq"], bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=3000)
    seen = [json.loads(r.value) for r in consumer]
    consumer.close()
    assert sorted(d["event_id"] for d in seen) == sorted(r[0] for r in query(control_plane, "SELECT event_id FROM dead_letters"))
    # Redelivered dead letters (from the DLQ topic itself) did not land twice.
    assert count(control_plane, "dead_letters") == len(bad)


def _plane_env(settings) -> dict:
    return {
        **os.environ,
        "FLYWHEEL_DATA_DIR": str(settings.data_path),
        "FLYWHEEL_KAFKA__BOOTSTRAP": settings.bootstrap,
        "FLYWHEEL_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "FLYWHEEL_LANDING__GROUP_ID": settings.landing.group_id,
        "FLYWHEEL_LANDING__BATCH_MAX": "200",
        "FLYWHEEL_CONTROL__PORT": str(settings.control.port),
    }


def _landed(settings) -> int:
    try:
        return httpx.get(f"{settings.control_url}/api/status", timeout=2,
                         headers={"Authorization": f"Bearer {operator_token(settings)}"}).json()["tables"]["interactions"]
    except (httpx.HTTPError, KeyError, ValueError, OSError):  # OSError: no token file yet (the plane is starting)
        return -1


def test_sigkill_mid_stream_then_restart_lands_every_event_once(settings):
    n = 20_000
    t = topic_names(settings)
    produce(settings, [(t["interactions"], f"s-{i % 50}".encode(), interaction(i).model_dump_json().encode()) for i in range(n)])
    cmd = [sys.executable, "-m", "flywheel", "control-plane"]
    env = _plane_env(settings)
    plane = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _landed(settings) > 0, timeout=60, interval=0.02, what="landing to start")
        os.kill(plane.pid, signal.SIGKILL)
        plane.wait(10)
    finally:
        if plane.poll() is None:
            plane.kill()
    partial = count(settings.db_path, "interactions")
    assert 0 < partial < n, f"the kill should land mid-stream (landed {partial} of {n})"

    plane = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _landed(settings) == n, timeout=120, interval=0.2, what="every event to land")
    finally:
        plane.send_signal(signal.SIGTERM)
        plane.wait(60)
    assert plane.returncode == 0
    total, distinct, lo, hi = query(settings.db_path, "SELECT count(*), count(DISTINCT event_id), "
                                    "min(CAST(substr(event_id, 4) AS INT)), max(CAST(substr(event_id, 4) AS INT)) FROM interactions")[0]
    assert (total, distinct, lo, hi) == (n, n, 0, n - 1)
    assert count(settings.db_path, "dead_letters") == 0


def test_a_minimal_record_lands_like_its_canonical_form():
    """Landing stores records as received and fills defaults in SQL: those defaults must be
    the schema's own (this fails when one side changes without the other)."""
    from streams.landing import Lander, Record
    from streams.migrations import MIGRATIONS
    from streams.warehouse import apply_migrations, connect

    conn = connect(":memory:")
    apply_migrations(conn, MIGRATIONS)
    lander = Lander(conn, {"interactions": "i", "feedback": "f", "dlq": "d"})
    minimal_i = {"event_id": "a", "request_id": "r", "session_id": "s", "created_at": "2026-01-02T03:04:05+08:00",
                 "model_alias": "m", "model_version": "v", "messages": [{"role": "user", "content": "hi"}],
                 "drafts": [{"index": 0, "content": "yo"}]}
    minimal_f = {"event_id": "a", "request_id": "r", "kind": "copy", "created_at": "2026-01-02T03:04:05Z"}
    canonical_i = Interaction.model_validate_json(json.dumps(minimal_i)).model_copy(update={"event_id": "b"})
    canonical_f = Feedback.model_validate_json(json.dumps(minimal_f)).model_copy(update={"event_id": "b"})
    lander.land([Record("i", 0, 0, None, json.dumps(minimal_i).encode()),
                 Record("i", 0, 1, None, canonical_i.model_dump_json().encode()),
                 Record("f", 0, 0, None, json.dumps(minimal_f).encode()),
                 Record("f", 0, 1, None, canonical_f.model_dump_json().encode())])
    for table, ignore in (("interactions", {"event_id", "kafka_offset", "messages", "drafts"}),
                          ("feedback", {"event_id", "kafka_offset"})):
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY event_id")
        names = [d[0] for d in cur.description]
        a, b = (dict(zip(names, row)) for row in cur.fetchall())
        assert {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}
    # created_at is normalised to UTC from the validated value.
    assert str(conn.execute("SELECT created_at AT TIME ZONE 'UTC' FROM interactions WHERE event_id = 'a'").fetchone()[0]) \
        == "2026-01-01 19:04:05"


def test_a_batch_lands_its_valid_records_dead_letters_the_bad_one_and_a_redelivery_adds_nothing():
    """Batches are written with plain INSERTs first; a batch that repeats landed events (a
    redelivery) is written again with INSERT OR IGNORE, in the same single transaction."""
    from streams.landing import Lander, Record
    from streams.migrations import MIGRATIONS
    from streams.warehouse import apply_migrations, connect

    conn = connect(":memory:")
    apply_migrations(conn, MIGRATIONS)
    lander = Lander(conn, {"interactions": "i", "feedback": "f", "dlq": "d"})
    batch = [Record("i", 0, k, None, interaction(k).model_dump_json().encode()) for k in range(5)]
    batch.insert(2, Record("i", 0, 99, b"bad", b'{"type": "interaction", "event_id": "x"}'))
    first = lander.land(batch)
    assert first.landed == {"interactions": 5, "dead_letters": 1}
    assert [d.event_id for d in first.dead] == ["i:0:99"] and "request_id: Field required" in first.dead[0].reason

    # The same records again plus two new ones: only the new ones land, nothing twice.
    again = lander.land(batch + [Record("i", 1, k, None, interaction(k).model_dump_json().encode()) for k in (5, 6)])
    assert again.landed == {"interactions": 7, "dead_letters": 1}
    assert conn.execute("SELECT count(*), count(DISTINCT event_id) FROM interactions").fetchall() == [(7, 7)]
    assert conn.execute("SELECT count(*) FROM dead_letters").fetchall() == [(1,)]
    assert sorted(conn.execute("SELECT topic, partition, next_offset FROM landing_offsets").fetchall()) == \
        [("i", 0, 100), ("i", 1, 7)]
