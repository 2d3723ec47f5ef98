"""Broker outages and gateway restarts lose nothing and duplicate nothing.

The embedded broker keeps everything in memory, so a restart forgets topics and committed
offsets: the test recreates the topics and starts a fresh landing consumer, as an operator
of that broker would. (With Apache Kafka the log and the offsets survive a restart.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from services.control.plane import ControlPlane
from streams.broker import EmbeddedBroker
from streams.topics import ensure_topics, topic_names
from tests.conftest import count, make_settings, query, wait_for

ASK = dict(model="flywheel-chat", max_tokens=2, temperature=0)


def _ask(client, i: int) -> str:
    resp = client.chat.completions.create(messages=[{"role": "user", "content": f"Say the number {i}."}], **ASK)
    assert resp.choices[0].message.content is not None
    return resp.id


def _restart(broker: EmbeddedBroker, settings) -> None:
    broker.start()
    ensure_topics(settings.bootstrap, list(topic_names(settings).values()), settings.kafka.partitions)


def test_broker_outage_then_all_requests_land_exactly_once(tmp_path, own_broker, start_gateway, local_backend):
    s = make_settings(tmp_path, own_broker.bootstrap)
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    gw = start_gateway(s, local_backend)
    client = gw.client()

    own_broker.stop()
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: _ask(client, i), range(200)))  # every one succeeds
    assert len(set(ids)) == 200
    assert gw.gw.producer.spool.depth == 200  # all waiting on disk

    _restart(own_broker, s)
    plane = ControlPlane(s, serve_api=False).start()
    try:
        wait_for(lambda: count(plane, "interactions") >= 200, timeout=120, what="the spooled interactions to land")
        wait_for(lambda: gw.gw.producer.spool.depth == 0, timeout=30, what="the spool to drain")
        total, distinct = query(plane, "SELECT count(*), count(DISTINCT request_id) FROM interactions")[0]
        landed_ids = {r[0] for r in query(plane, "SELECT request_id FROM interactions")}
    finally:
        plane.stop(drain=True)
    assert (total, distinct) == (200, 200)
    assert landed_ids == set(ids)


def test_gateway_restart_with_a_non_empty_spool_loses_nothing(tmp_path, own_broker, start_gateway, local_backend):
    s = make_settings(tmp_path, own_broker.bootstrap)
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    first = start_gateway(s, local_backend)
    own_broker.stop()
    ids = [_ask(first.client(), i) for i in range(20)]
    first.stop(drain_timeout=0.5)  # the broker is down: what is not sent stays in the spool
    assert first.gw.producer.spool.depth == 20  # still on disk after the gateway is gone

    _restart(own_broker, s)
    second = start_gateway(s, local_backend)  # same data folder, so the same spool
    plane = ControlPlane(s, serve_api=False).start()
    try:
        wait_for(lambda: count(plane, "interactions") >= 20, timeout=120, what="the old spool to land")
        landed = {r[0] for r in query(plane, "SELECT request_id FROM interactions")}
        total = count(plane, "interactions")
    finally:
        plane.stop(drain=True)
        second.stop()
    assert total == 20 and landed == set(ids)
