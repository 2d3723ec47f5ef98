"""Issue 13: per-key rate limit and in-flight cap in the gateway (429 with Retry-After, in
OpenAI's error format, as the official client sees it), and the stream worker's bounded
pending feedback.

Real gateway over HTTP, real broker; the scripted backend, and a held one for streams.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from serving.backends.base import Generation
from serving.backends.scripted import ScriptedBackend
from services.gateway.errors import APIError
from services.gateway.limits import KeyLimiter
from streams.live_metrics import LiveMetrics
from streams.topics import ensure_topics, topic_names
from tests.conftest import make_settings

CHAT = {"model": "flywheel-chat", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def limited(tmp_path, broker, start_gateway):
    def start(backend=None, **gateway):
        s = make_settings(tmp_path, broker.bootstrap, gateway=gateway)
        ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
        return start_gateway(s, backend or ScriptedBackend())
    return start


def post(gw, path, body, role="chat"):
    return httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {gw.tokens[role]}"}, timeout=30)


def test_the_rate_limit_answers_429_with_retry_after_and_openai_raises_rate_limit_error(limited):
    gw = limited(rate_limit_rps=0.5, rate_limit_burst=3)
    client = gw.client()
    for _ in range(3):  # the burst
        client.chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**CHAT)
    assert e.value.status_code == 429
    assert e.value.body["code"] == "rate_limit_exceeded" and e.value.body["type"] == "requests"
    assert e.value.response.headers["Retry-After"] in ("1", "2")  # one token back at 0.5/s: under 2 s
    raw = post(gw, "/v1/feedback", {"request_id": "r", "kind": "copy"})  # the same key's bucket
    assert raw.status_code == 429 and int(raw.headers["Retry-After"]) >= 1
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert "gateway.rate_limit_rps" in raw.json()["error"]["message"]
    # Another key has its own bucket; /healthz and /metrics are never limited.
    assert gw.client("admin").chat.completions.create(**CHAT).choices[0].message.content
    assert httpx.get(gw.url + "/healthz").status_code == 200
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'flywheel_gateway_rate_limited_total{limit="rate"} 2.0' in metrics
    # The official client, retrying, waits as Retry-After says and gets through.
    retrying = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.tokens["chat"], max_retries=2)
    assert retrying.chat.completions.create(**CHAT).choices[0].message.content
    assert len(gw.gw.backend._inner.requests) == 5  # the refused requests never reached the model


class HeldBackend(ScriptedBackend):
    """Answers only when the test says so: ``release(i)`` finishes the i-th generation."""

    def __init__(self):
        super().__init__()
        self.gens: list[Generation] = []
        self.started = threading.Semaphore(0)

    def submit(self, request):
        gen = Generation(request.n)
        self.gens.append(gen)
        self.started.release()
        return gen

    def release(self, i: int) -> None:
        self.gens[i].put(0, "done", "stop")


def test_the_in_flight_cap_counts_streams_until_they_end(limited):
    backend = HeldBackend()
    gw = limited(backend=backend, max_concurrent_per_key=2, rate_limit_rps=0)
    client = gw.client()
    streams = []

    def open_stream():
        s = client.chat.completions.create(**CHAT, stream=True)
        streams.append(s)
        next(iter(s))  # the role chunk: the stream is open and held

    threads = [threading.Thread(target=open_stream) for _ in range(2)]
    for t in threads:
        t.start()
    assert backend.started.acquire(timeout=10) and backend.started.acquire(timeout=10)
    for t in threads:
        t.join(10)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(**CHAT)
    assert "gateway.max_concurrent_per_key" in e.value.body["message"]
    assert e.value.response.headers["Retry-After"] == "1"
    backend.release(0)
    backend.release(1)
    for s in streams:
        assert "done" in "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    deadline = time.monotonic() + 10
    while gw.gw.limiter.in_flight(f"{gw.gw.keys.verify(gw.tokens['chat']).id}") and time.monotonic() < deadline:
        time.sleep(0.05)
    # Both places are free again: the next request is admitted.
    t = threading.Thread(target=lambda: client.chat.completions.create(**CHAT))
    t.start()
    assert backend.started.acquire(timeout=10)
    backend.release(2)
    t.join(10)
    assert not t.is_alive()


def test_the_limiter_refills_and_caps_in_flight_per_key():
    now = [0.0]
    lim = KeyLimiter(rate_per_s=2, burst=2, max_in_flight=3, clock=lambda: now[0])
    a, b = lim.admit("k"), lim.admit("k")
    with pytest.raises(APIError) as e:
        lim.admit("k")
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "1"
    now[0] += 0.5  # one token back
    c = lim.admit("k")
    lim.admit("other").release()
    assert lim.in_flight("k") == 3
    now[0] += 10
    with pytest.raises(APIError) as e:
        lim.admit("k")  # tokens, but three in flight
    assert e.value.limit == "concurrency"
    for lease in (a, b, c, c):  # a second release is a no-op
        lease.release()
    assert lim.in_flight("k") == 0
    lim.admit("k")


def test_pending_feedback_in_the_stream_worker_is_bounded():
    m = LiveMetrics(window_s=60, join_wait_s=120, max_pending=3)
    created = "2026-03-01T00:00:00+00:00"
    for i in range(10):  # random request ids, never followed by an interaction
        m.add_feedback({"request_id": f"random-{i}", "kind": "thumb", "value": 1, "created_at": created}, now=float(i))
    assert m.pending_feedback == 3
    assert m.counted["pending_evicted"] == 7 and m.counted["feedback_unknown"] == 7
    deltas = m.flush(now=200.0)  # past join_wait_s: the rest are counted under 'unknown' too
    assert m.pending_feedback == 0
    assert sum(d.thumbs_up for d in deltas if d.model_version == "unknown") == 10
