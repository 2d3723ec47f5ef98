"""Landing isolates a record DuckDB refuses: the batch is split until that record is found,
it becomes a dead letter with DuckDB's reason, the rest of the batch lands exactly once,
and landing keeps going. Dead letters sent to the DLQ topic are checked (issue #13)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaConsumer, KafkaProducer

from streams.landing import DeadLetterSendError, Lander, Record, dlq_record, send_dead_letters
from streams.migrations import MIGRATIONS
from streams.schemas import DeadLetter, Interaction, Metrics
from streams.topics import topic_names
from streams.warehouse import apply_migrations, connect
from tests.conftest import count, query, wait_for

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
TOPICS = {"interactions": "i", "feedback": "f", "dlq": "d", "metrics": "m"}


def interaction(i: int) -> bytes:
    return Interaction(
        event_id=f"ev-{i}", request_id=f"req-{i}", session_id=f"s-{i % 7}", created_at=T0 + timedelta(seconds=i),
        model_alias="flywheel-chat", model_version="base", messages=[{"role": "user", "content": f"question {i}"}],
        drafts=[{"index": 0, "content": f"answer {i}", "finish_reason": "stop"}],
    ).model_dump_json().encode()


def metrics(i: int) -> bytes:
    return Metrics(event_id=f"m-{i}", alias="flywheel-chat", model_version="base", window_start=T0 + timedelta(minutes=i),
                   window_s=60.0, requests=i, worker="w", created_at=T0).model_dump_json().encode()


def poison_metrics(i: int) -> bytes:
    """Valid for the schema (pydantic reads a string of digits as a unix timestamp), refused
    by DuckDB (its JSON reader makes NULL of it, and window_start is NOT NULL): the kind of
    record that used to fail its batch, and every redelivery of it, for ever."""
    record = json.loads(metrics(i))
    record["window_start"] = "1767000000"
    data = json.dumps(record).encode()
    Metrics.model_validate_json(data)  # the schema accepts it: only the warehouse refuses it
    return data


def poison_dead_letter(offset: int) -> bytes:
    """A dead letter (as another landing could produce) whose partition does not fit DuckDB's INTEGER."""
    return DeadLetter(event_id=f"x:{offset}", source_topic="x", partition=2 ** 40, offset=offset, reason="r",
                      payload="p", created_at=T0).model_dump_json().encode()


@pytest.fixture
def lander():
    conn = connect(":memory:")
    apply_migrations(conn, MIGRATIONS)
    yield Lander(conn, TOPICS)
    conn.close()


def test_one_refused_record_is_dead_lettered_and_the_rest_of_its_batch_lands_once(lander):
    batch = [Record("i", k % 2, k, f"s-{k}".encode(), interaction(k)) for k in range(300)]
    batch += [Record("m", 0, k, b"base", metrics(k)) for k in range(60)]
    batch.insert(200, Record("m", 1, 7, b"poison", poison_metrics(999)))
    first = lander.land(batch)
    assert first.landed == {"interactions": 300, "live_metrics": 60, "dead_letters": 1}
    assert first.refused == 1 and [d.event_id for d in first.dead] == ["m:1:7"]
    dead = first.dead[0]
    assert dead.key == "poison" and "the warehouse refused it" in dead.reason and "window_start" in dead.reason
    assert json.loads(dead.payload)["event_id"] == "m-999"  # the record as received
    conn = lander.conn
    assert conn.execute("SELECT count(*), count(DISTINCT event_id) FROM interactions").fetchone() == (300, 300)
    assert conn.execute("SELECT count(*) FROM live_metrics").fetchone() == (60,)
    assert conn.execute("SELECT event_id, source_topic, partition, \"offset\", key FROM dead_letters").fetchall() == \
        [("m:1:7", "m", 1, 7, "poison")]
    # Positions cover the refused record too: landing never reads it again.
    assert sorted(conn.execute("SELECT topic, partition, next_offset FROM landing_offsets").fetchall()) == \
        [("i", 0, 299), ("i", 1, 300), ("m", 0, 60), ("m", 1, 8)]

    # Redelivered (a crash before the offsets were committed): nothing lands twice.
    again = lander.land(batch + [Record("i", 0, 400, None, interaction(400))])
    assert again.refused == 1 and [d.event_id for d in again.dead] == ["m:1:7"]
    assert conn.execute("SELECT count(*), count(DISTINCT event_id) FROM interactions").fetchone() == (301, 301)
    assert conn.execute("SELECT count(*) FROM live_metrics").fetchone() == (60,)
    assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (1,)


def test_several_refused_records_in_several_tables_are_each_found(lander):
    batch = [Record("m", 0, k, None, poison_metrics(k) if k in (0, 17, 18, 63) else metrics(k)) for k in range(64)]
    batch += [Record("i", 0, k, None, interaction(k)) for k in range(50)]
    batch += [Record("d", 0, k, None, poison_dead_letter(k) if k == 3 else
                     DeadLetter(event_id=f"y:{k}", source_topic="y", partition=0, offset=k, reason="r", payload="p",
                                created_at=T0).model_dump_json().encode()) for k in range(5)]
    result = lander.land(batch)
    assert result.refused == 5
    # The refused metrics go to the DLQ topic; the refused dead letter only to the table (no bounce).
    assert sorted(d.event_id for d in result.dead) == ["m:0:0", "m:0:17", "m:0:18", "m:0:63"]
    conn = lander.conn
    assert conn.execute("SELECT count(*) FROM live_metrics").fetchone() == (60,)
    assert conn.execute("SELECT count(*) FROM interactions").fetchone() == (50,)
    ids = {r[0] for r in conn.execute("SELECT event_id FROM dead_letters").fetchall()}
    assert ids == {"m:0:0", "m:0:17", "m:0:18", "m:0:63", "d:0:3", "y:0", "y:1", "y:2", "y:4"}


def test_a_batch_that_fails_for_another_reason_still_stops_landing(lander):
    """Only errors a record's values cause are isolated; a broken warehouse is not a poison record."""
    lander.conn.execute("DROP TABLE live_metrics")
    with pytest.raises(Exception) as err:
        lander.land([Record("m", 0, 0, None, metrics(0))])
    assert "live_metrics" in str(err.value)
    assert lander.conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)


def test_a_dead_letter_too_large_for_the_dlq_topic_is_sent_with_its_payload_cut():
    payload = "数据" * 400_000  # 2.4 MB as UTF-8
    dead = DeadLetter(event_id="i:0:1", source_topic="i", partition=0, offset=1, reason="schema validation failed",
                      payload=payload, created_at=T0)
    data = dlq_record(dead, 1_000_000)
    assert 900_000 < len(data) <= 1_000_000
    sent = DeadLetter.model_validate_json(data)
    assert payload.startswith(sent.payload) and "payload cut from 800,000 characters" in sent.reason
    small = dead.model_copy(update={"payload": "x"})
    assert dlq_record(small, 1_000_000) == small.model_dump_json().encode()


def test_a_poison_record_through_kafka_is_isolated_and_landing_keeps_going(settings, control_plane):
    t = topic_names(settings)
    p = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", linger_ms=20)
    for k in range(400):
        p.send(t["interactions"], key=f"s-{k % 7}".encode(), value=interaction(k))
        if k == 200:
            p.send(t["metrics"], key=b"base", value=poison_metrics(1000))
    for k in range(30):
        p.send(t["metrics"], key=b"base", value=metrics(k))
    p.flush(30)
    wait_for(lambda: count(control_plane, "interactions") == 400 and count(control_plane, "live_metrics") == 30
             and count(control_plane, "dead_letters") == 1, timeout=60, what="every good record and the poison's dead letter")
    reason, payload = query(control_plane, "SELECT reason, payload FROM dead_letters")[0]
    assert "the warehouse refused it" in reason and json.loads(payload)["event_id"] == "m-1000"
    # The dead letter is counted once the DLQ topic acknowledged it, after the row committed.
    wait_for(lambda: control_plane.landing_stats()["dead_letters"] == 1, timeout=30, what="the DLQ send")
    stats = control_plane.landing_stats()
    assert stats["running"] and stats["dead_letters"] == 1 and control_plane.landing.refused_total == 1
    # Landing goes on: later records land too, and the dead letter reached the DLQ topic once.
    for k in range(400, 450):
        p.send(t["interactions"], key=b"s", value=interaction(k))
    p.flush(30)
    p.close()
    wait_for(lambda: count(control_plane, "interactions") == 450, timeout=60, what="records after the poison")
    consumer = KafkaConsumer(t["dlq"], bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=3000)
    seen = [json.loads(r.value)["event_id"] for r in consumer]
    consumer.close()
    assert len(seen) == 1 and seen[0].startswith(t["metrics"] + ":")
    assert count(control_plane, "dead_letters") == 1 and count(control_plane, "live_metrics") == 30


def test_dead_letter_sends_are_checked_and_raise_when_the_broker_is_gone(own_broker):
    dead = [DeadLetter(event_id=f"i:0:{k}", source_topic="i", partition=0, offset=k, reason="r", payload="p",
                       created_at=T0) for k in range(3)]
    producer = KafkaProducer(bootstrap_servers=own_broker.bootstrap, acks="all", max_block_ms=2000,
                             request_timeout_ms=2000, delivery_timeout_ms=4000, reconnect_backoff_max_ms=500)
    try:
        send_dead_letters(producer, "dlq-check", dead, 1_000_000)  # acknowledged: returns
        own_broker.stop()
        started = time.monotonic()
        with pytest.raises(DeadLetterSendError) as err:
            send_dead_letters(producer, "dlq-check", dead, 1_000_000, attempts=2, timeout_s=3, backoff_s=0.1)
        assert "3 dead letters could not be produced to dlq-check after 2 attempts" in str(err.value)
        assert time.monotonic() - started < 30
    finally:
        producer.close(timeout=0)
