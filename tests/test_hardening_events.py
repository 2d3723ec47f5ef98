"""Issue 13, events: one large or broken event never stops the pipeline, and nothing after
the answer turns into a 500 or a lost record without a count.

Attacks with real parts: the tansu broker, the real gateway over HTTP, the landing into
DuckDB, the official openai client; the model is the scripted backend (not under test).
"""

from __future__ import annotations

import json
import os
import stat
import threading

import httpx
import pytest
from kafka import KafkaConsumer

from serving.routing import Route, RoutingError, RoutingTable
from services.control.status import collect_status
from streams.event_size import EventTooLarge, fit_interaction
from streams.producer import EventProducer
from streams.schemas import Interaction, utcnow
from streams.spool import Spool
from streams.topics import ensure_topics, topic_names
from tests.conftest import count, make_settings, query, wait_for

CHAT = {"model": "flywheel-chat", "messages": [{"role": "user", "content": "hello"}]}
CJK = "数据飞轮图表配置" * 50_000  # 400,000 characters, 1.2 MB in UTF-8


def post(gw, path, body, role="chat", headers=None):
    h = {"Authorization": f"Bearer {gw.tokens[role]}", **(headers or {})}
    return httpx.post(gw.url + path, json=body, headers=h, timeout=60)


def assert_error(resp, status, param=None, code=None):
    assert resp.status_code == status, resp.text[:500]
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


# -- the spool: long and unreadable lines -----------------------------------------------

def test_a_spool_line_longer_than_the_read_window_comes_back_whole(tmp_path):
    sp = Spool(tmp_path, max_bytes=10**7, segment_bytes=10**7, read_bytes=1024)
    big = b'{"v":"' + b"x" * 5000 + b'"}'
    sp.append([("t", b"a", b'{"i":0}'), ("t", b"b", big), ("t", b"c", b'{"i":2}')])
    first = sp.read(10)
    assert [r.value for r in first][:1] == [b'{"i":0}']
    sp.commit(first)
    got = sp.read(10)
    assert got[0].value == big and got[0].error is None  # whole, not stalled
    sp.commit(got[:1])
    assert [r.value for r in sp.read(10)] == [b'{"i":2}']


def test_an_unreadable_spool_line_comes_back_flagged_with_the_rest_behind_it(tmp_path):
    sp = Spool(tmp_path, max_bytes=10**6, segment_bytes=10**6)
    sp.append([("t", b"a", b'{"i":0}')])
    seg = next(tmp_path.glob("seg-*.log"))
    with open(seg, "ab") as f:
        f.write(b'not a header\t{"i":1}\n')
    sp.append([("t", b"c", b'{"i":2}')])
    got = sp.read(10)
    assert [r.error is None for r in got] == [True, False, True]
    assert "unreadable spool line" in got[1].error and got[1].value == b'not a header\t{"i":1}'


# -- the sender: dead letters and supervision ------------------------------------------

def _consume(settings, topic: str, n: int, timeout: float = 30.0) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=[settings.bootstrap], auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout * 1000), max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        out = []
        for m in consumer:
            out.append(m)
            if len(out) >= n:
                break
        return out
    finally:
        consumer.close()


def test_poison_records_go_to_the_dead_letter_file_and_the_records_behind_them_are_delivered(settings):
    topic = settings.topic("feedback")
    # What an older gateway (or another limit) left in the spool: a 1.2 MB record over the
    # producer's max_request_size, and a line a crash or a bug made unreadable.
    sp = Spool(settings.spool_path, max_bytes=10**8, segment_bytes=10**8)
    sp.append([(topic, b"r0", b'{"i":0}')])
    sp.append([(topic, b"r1", json.dumps({"text": CJK}, ensure_ascii=False).encode())])
    seg = next(settings.spool_path.glob("seg-*.log"))
    with open(seg, "ab") as f:
        f.write(b'["' + topic.encode() + b'", broken\t{"i":"x"}\n')
    sp.append([(topic, f"r{i}".encode(), f'{{"i":{i}}}'.encode()) for i in range(2, 5)])
    sp.close()

    producer = EventProducer.from_settings(settings, client_id="test")
    try:
        assert producer.flush(30), producer.stats()
        stats = producer.stats()
    finally:
        producer.close()
    values = [json.loads(m.value)["i"] for m in _consume(settings, topic, 4)]
    assert sorted(values) == [0, 2, 3, 4]  # every deliverable record, nothing stuck behind the poison
    assert stats["dead_lettered"] == 2 and stats["broker_up"] is True
    assert stats["sender"]["alive"] and stats["spool_depth"] == 0
    lines = [json.loads(x) for x in (settings.data_path / "dead-letters" / "spool.jsonl").read_text().splitlines()]
    assert [ln["key"] for ln in lines] == ["r1", None]
    assert "MessageSizeTooLarge" in lines[0]["reason"] and lines[0]["bytes"] > 1_200_000
    assert json.loads(lines[0]["value"])["text"] == CJK  # moved aside whole, for an operator to replay
    assert "unreadable spool line" in lines[1]["reason"]
    # `flywheel status` reads the dead-letter files; a restart has nothing left to send.
    assert collect_status(settings)["dead_letters"]["count"] == 2
    again = EventProducer.from_settings(settings, client_id="test", start=False)
    assert again.spool.depth == 0
    again.spool.close()


class _Refused:
    """A produce future as kafka-python leaves it when the broker answers MESSAGE_TOO_LARGE."""

    def __init__(self, error):
        self.exception = error

    def succeeded(self):
        return False

    def failed(self):
        return True


class BrokerLimitProducer(EventProducer):
    """The real client to the real broker, except that records keyed ``refuse`` come back
    refused as by an Apache Kafka broker's message.max.bytes (tansu has no such limit)."""

    def _client(self):
        from kafka.errors import MessageSizeTooLargeError

        real = super()._client()

        class Client:
            def send(self, topic, key=None, value=None):
                if key == b"refuse":
                    return _Refused(MessageSizeTooLargeError("over the broker's message.max.bytes"))
                return real.send(topic, key=key, value=value)

            def flush(self, timeout=None):
                real.flush(timeout=timeout)

        return Client()


def test_a_record_the_broker_refuses_is_dead_lettered_and_the_rest_delivered(settings):
    topic = settings.topic("interactions")
    producer = BrokerLimitProducer.from_settings(settings, client_id="test", start=False)
    producer.emit_many([(topic, "k0", b'{"i":0}'), (topic, "refuse", b'{"i":1}'), (topic, "k2", b'{"i":2}')])
    producer._thread.start()
    producer._started = True
    try:
        assert producer.flush(30), producer.stats()
        producer.emit(topic, "k3", b'{"i":3}')  # the client was renewed after the refusal; sending goes on
        assert producer.flush(30)
        stats = producer.stats()
    finally:
        producer.close()
    assert sorted(json.loads(m.value)["i"] for m in _consume(settings, topic, 3)) == [0, 2, 3]
    assert stats["dead_lettered"] == 1 and stats["broker_up"] is True and stats["send_errors"] == 0
    line = json.loads((settings.data_path / "dead-letters" / "spool.jsonl").read_text())
    assert line["key"] == "refuse" and line["reason"].startswith("refused by the broker: MessageSizeTooLargeError")


def test_the_sender_survives_errors_and_reports_its_state(settings):
    producer = EventProducer.from_settings(settings, client_id="test")
    real_read = producer.spool.read
    calls = {"n": 0}

    def flaky_read(n):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("disk hiccup")
        return real_read(n)

    producer.spool.read = flaky_read
    try:
        wait_for(lambda: producer.sender_errors >= 2, timeout=20, what="the sender to hit the errors")
        state = producer.sender_state()
        assert state["alive"] and "disk hiccup" in state["last_error"] and state["last_error_at"]
        producer.emit(settings.topic("feedback"), "k", b'{"i":1}')
        assert producer.flush(30)
        assert producer.sender_state()["last_success_at"]
        # A sender thread that died anyway is started again by the next look at it.
        producer._stop.set()
        producer._wake.set()
        producer._thread.join(10)
        producer._stop.clear()
        assert not producer._thread.is_alive()
        assert producer.sender_state()["alive"] and producer.sender_restarts == 1
    finally:
        producer.close()


# -- the gateway: sizes, headers, metadata ----------------------------------------------

def test_a_1_2_mb_edit_gets_413_and_the_events_after_it_land(scripted_gateway, control_plane):
    gw = scripted_gateway
    rid = gw.client().chat.completions.create(**CHAT).id
    big = post(gw, "/v1/feedback", {"request_id": rid, "kind": "edit", "text": CJK})
    assert_error(big, 413, code="event_too_large")
    assert "events.max_event_bytes" in big.json()["error"]["message"]
    fits = "图表" * 150_000  # 300,000 characters, 900 kB: under the cap, lands
    assert post(gw, "/v1/feedback", {"request_id": rid, "kind": "edit", "text": fits}).status_code == 200
    assert post(gw, "/v1/feedback", {"request_id": rid, "kind": "thumb", "value": 1}).status_code == 200
    # Batch ingest: the oversized item is rejected on its own, the other accepted.
    batch = post(gw, "/v1/events", {"events": [{"type": "feedback", "request_id": rid, "kind": "edit", "text": CJK},
                                               {"type": "feedback", "request_id": rid, "kind": "copy"}]}, role="ingest")
    assert batch.status_code == 200 and batch.json()["accepted"] == 1
    assert "events.max_event_bytes" in batch.json()["data"][0]["error"]["message"]
    wait_for(lambda: count(control_plane, "feedback") == 3, timeout=60, what="the feedback after the 413 to land")
    assert query(control_plane, "SELECT length(text) FROM feedback WHERE kind = 'edit'") == [(300_000,)]
    assert gw.gw.producer.flush(10)
    health = httpx.get(gw.url + "/healthz").json()
    assert health["status"] == "ok" and health["events"]["broker_up"] is True
    assert health["events"]["dead_lettered"] == 0 and health["events"]["sender"]["alive"]


def test_oversized_headers_and_metadata_get_400_before_generation_and_land_nothing(scripted_gateway, control_plane):
    gw = scripted_gateway
    backend = gw.gw.backend._inner
    long = "s" * 129
    cases = [
        (CHAT, {"X-Session-Id": long}, "X-Session-Id", "invalid_header"),
        (CHAT, {"X-App": long}, "X-App", "invalid_header"),
        ({**CHAT, "stream": True}, {"X-Session-Id": long}, "X-Session-Id", "invalid_header"),
        ({**CHAT, "metadata": {"session_id": "m" * 200}}, {}, "metadata.session_id", "invalid_value"),
        ({**CHAT, "metadata": {"app": "a" * 200}}, {}, "metadata.app", "invalid_value"),
        ({**CHAT, "metadata": {"app": "a" * 600}}, {}, "metadata.app", None),  # the protocol's own cap
    ]
    for body, headers, param, code in cases:
        assert_error(post(gw, "/v1/chat/completions", body, headers=headers), 400, param=param, code=code)
    assert_error(post(gw, "/v1/feedback", {"request_id": "r", "kind": "copy"}, headers={"X-App": long}), 400,
                 param="X-App")
    assert backend.requests == []  # refused before generation
    ok = post(gw, "/v1/chat/completions", CHAT, headers={"X-Session-Id": "s" * 128, "X-App": "a" * 128})
    assert ok.status_code == 200
    wait_for(lambda: count(control_plane, "interactions") == 1, what="the good request to land")
    assert count(control_plane, "feedback") == 0 and count(control_plane, "dead_letters") == 0
    assert query(control_plane, "SELECT session_id, app FROM interactions") == [("s" * 128, "a" * 128)]


def test_a_prompt_over_the_caps_is_refused_before_generation(scripted_gateway):
    gw = scripted_gateway
    backend = gw.gw.backend._inner
    over_schema = {**CHAT, "messages": [{"role": "user", "content": "x" * 1_150_000}]}
    assert_error(post(gw, "/v1/chat/completions", over_schema), 400, param="messages[0].content",
                 code="string_above_max_length")
    over_bytes = {**CHAT, "messages": [{"role": "user", "content": "x" * 999_000}]}
    assert_error(post(gw, "/v1/chat/completions", over_bytes), 413, param="messages", code="event_too_large")
    cjk = {**CHAT, "stream": True, "messages": [{"role": "user", "content": CJK}]}
    assert_error(post(gw, "/v1/chat/completions", cjk), 413, code="event_too_large")
    assert backend.requests == []
    assert gw.client().chat.completions.create(**CHAT).choices[0].message.content


@pytest.fixture
def small_event_gateway(tmp_path, broker, start_gateway):
    from serving.backends.scripted import ScriptedBackend

    s = make_settings(tmp_path, broker.bootstrap, events={"max_event_bytes": 20_000})
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    return start_gateway(s, ScriptedBackend())


def test_an_oversized_draft_is_cut_to_fit_and_lands_marked(small_event_gateway):
    from services.control.plane import ControlPlane

    gw = small_event_gateway
    backend = gw.gw.backend._inner
    long_answer = "abcdefghijklmnopqrstuvwxy " * 1500  # 39,000 characters
    backend.enqueue(long_answer, "short answer", long_answer)
    client = gw.client()
    full = client.chat.completions.create(**CHAT, n=2, max_tokens=2000)
    assert full.choices[0].message.content == long_answer  # the client gets the whole answer
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        **CHAT, max_tokens=2000, stream=True) if c.choices)
    assert streamed == long_answer
    plane = ControlPlane(gw.settings, serve_api=False).start()
    try:
        wait_for(lambda: count(plane, "interactions") == 2, timeout=60, what="both truncated interactions to land")
        rows = query(plane, "SELECT drafts, tags FROM interactions ORDER BY created_at")
    finally:
        plane.stop(drain=False)
    drafts, tags = json.loads(rows[0][0]), json.loads(rows[0][1])
    assert tags["labels"]["truncated"] == "drafts"
    assert drafts[1]["content"] == "short answer"  # the short draft is never cut while the long one can be
    assert long_answer.startswith(drafts[0]["content"]) and 0 < len(drafts[0]["content"]) < len(long_answer)
    assert int(tags["labels"]["truncated_chars"]) == len(long_answer) - len(drafts[0]["content"])
    assert json.loads(rows[1][1])["labels"]["truncated"] == "drafts"
    assert "flywheel_events_lost_total{" not in httpx.get(gw.url + "/metrics").text  # nothing lost


def test_fit_interaction_water_fills_and_refuses_what_cannot_fit():
    def event(*drafts, prompt="q"):
        return Interaction(event_id="e", request_id="r", session_id="s", created_at=utcnow(), model_alias="a",
                           model_version="v", messages=[{"role": "user", "content": prompt}],
                           drafts=[{"index": i, "content": d, "finish_reason": "stop"} for i, d in enumerate(drafts)])
    ev = event("é" * 3000, "b" * 500, "c" * 2000)
    fitted, data = fit_interaction(ev, 4000)
    assert len(data) <= 4000 and fitted.drafts[1]["content"] == "b" * 500
    assert len(fitted.drafts[0]["content"].encode()) == pytest.approx(len(fitted.drafts[2]["content"]), abs=4)
    small = event("ok")
    assert fit_interaction(small, 4000)[0] is small  # untouched when it fits
    with pytest.raises(EventTooLarge):
        fit_interaction(event("x", prompt="p" * 5000), 4000)


# -- smaller items of the issue ---------------------------------------------------------

def test_nan_and_infinite_routing_weights_are_refused(control_plane):
    from serving.registry import RegistryError

    for w in (float("nan"), float("inf")):
        with pytest.raises(RoutingError, match="finite"):
            RoutingTable(1, {"flywheel-chat": (Route("base", w),)})
    with pytest.raises(RoutingError):
        RoutingTable.from_dict({"revision": 2, "routes": {"flywheel-chat": [{"version": "base", "weight": "NaN"}]}})
    with control_plane.reader() as cur:
        with pytest.raises(RegistryError, match="finite"):
            control_plane.registry(cur).set_routes("flywheel-chat", {"base": float("nan")}, "attack")
        assert control_plane.registry(cur).routing_table().routes["flywheel-chat"][0].weight == 100.0


def test_key_files_are_created_mode_600_without_a_chmod(settings, monkeypatch):
    from services.gateway.auth import KeyStore, dev_keys_path, ensure_dev_keys

    def no_chmod(*a, **k):
        raise AssertionError("a key file was written with a wider mode first, then chmod-ed")

    monkeypatch.setattr(os, "chmod", no_chmod)
    old = os.umask(0)  # the widest the process could have: the mode must come from open()
    try:
        store = KeyStore([])
        store.create("chat")
        store.save(settings.keys_path)
        ensure_dev_keys(settings)
    finally:
        os.umask(old)
    for path in (settings.keys_path, dev_keys_path(settings.data_path)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_failure_to_emit_after_the_answer_is_counted_not_a_500(scripted_gateway, monkeypatch):
    gw = scripted_gateway
    boom = threading.Event()

    def failing_emit(items, reservation=None):
        boom.set()
        raise RuntimeError("spool disk vanished")

    monkeypatch.setattr(gw.gw, "emit", failing_emit)
    resp = gw.client().chat.completions.create(**CHAT)
    assert resp.choices[0].message.content and boom.is_set()
    chunks = list(gw.client().chat.completions.create(**CHAT, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"  # the stream ended normally, [DONE] included
    wait_for(lambda: 'flywheel_events_lost_total{reason="error"} 2.0' in httpx.get(gw.url + "/metrics").text,
             timeout=10, what="both lost interactions to be counted")
