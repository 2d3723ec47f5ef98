"""Every bad input gets its OpenAI-style error with the right status, and lands nothing.

Uses the scripted backend (the model is not what is under test here), a real broker,
the real landing into DuckDB, real HTTP and the official openai client.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import count, wait_for

CHAT = {"model": "flywheel-chat", "messages": [{"role": "user", "content": "hello"}]}


def post(gw, path, body=None, role="chat", token=None, raw: bytes | None = None, headers=None):
    h = {"Authorization": f"Bearer {gw.tokens[role]}"} if token is None else ({"Authorization": f"Bearer {token}"} if token else {})
    h.update(headers or {})
    if raw is not None:
        return httpx.post(gw.url + path, content=raw, headers={**h, "Content-Type": "application/json"})
    return httpx.post(gw.url + path, json=body, headers=h)


def assert_error(resp, status, param=None, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


BAD_CHATS = [
    ({"messages": [{"role": "user", "content": "x"}]}, "model", "missing_required_parameter"),
    ({"model": "flywheel-chat"}, "messages", None),
    ({"model": "flywheel-chat", "messages": []}, "messages", None),
    ({**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", None),
    ({**CHAT, "temperature": 2.5}, "temperature", None),
    ({**CHAT, "temperature": -1}, "temperature", None),
    ({**CHAT, "top_p": 0}, "top_p", None),
    ({**CHAT, "n": 0}, "n", None),
    ({**CHAT, "n": 99}, "n", None),
    ({**CHAT, "max_tokens": 0}, "max_tokens", None),
    ({**CHAT, "max_tokens": 10**6}, "max_tokens", None),
    ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    ({**CHAT, "functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {
        "type": "function", "function": {"name": "g"}}}, "tool_choice", "invalid_value"),
    ({**CHAT, "logprobs": True}, "logprobs", "unsupported_parameter"),  # the scripted backend cannot
    ({**CHAT, "messages": [{"role": "assistant", "content": None}]}, "messages[0]", None),
]


def test_bad_inputs_get_errors_and_land_nothing(scripted_gateway, control_plane):
    gw = scripted_gateway
    for body, param, code in BAD_CHATS:
        assert_error(post(gw, "/v1/chat/completions", body), 400, param=param, code=code)
    assert_error(post(gw, "/v1/chat/completions", raw=b"{not json"), 400, code="invalid_json")
    assert_error(post(gw, "/v1/chat/completions", raw=b"[1, 2]"), 400, code="invalid_json")
    assert_error(post(gw, "/v1/chat/completions", {**CHAT, "model": "gpt-9"}), 404, param="model", code="model_not_found")
    assert_error(post(gw, "/v1/nothing-here", CHAT), 404)
    assert_error(post(gw, "/v1/chat/completions", CHAT, token=""), 401, code="invalid_api_key")
    assert_error(post(gw, "/v1/chat/completions", CHAT, token="fw-chat-wrong"), 401, code="invalid_api_key")
    assert_error(post(gw, "/v1/chat/completions", CHAT, role="ingest"), 403)
    assert_error(post(gw, "/v1/events", {"events": [{"type": "feedback"}]}, role="chat"), 403)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (gw.settings.gateway.max_body_bytes + 10)}]}
    assert_error(post(gw, "/v1/chat/completions", big), 413, code="request_too_large")
    # Feedback: bad kinds, values out of range, unknown fields.
    assert_error(post(gw, "/v1/feedback", {"request_id": "r", "kind": "like"}), 400, param="kind")
    assert_error(post(gw, "/v1/feedback", {"request_id": "r", "kind": "rating", "value": 7}), 400)
    assert_error(post(gw, "/v1/feedback", {"request_id": "r", "kind": "thumb", "value": 0}), 400)
    assert_error(post(gw, "/v1/feedback", {"request_id": "r", "kind": "edit"}), 400)
    assert_error(post(gw, "/v1/feedback", {"request_id": "r", "kind": "copy", "colour": "red"}), 400, param="colour")
    assert_error(post(gw, "/v1/feedback", {"kind": "copy"}), 400, param="request_id")
    # Batch ingest: a body that is not a batch.
    assert_error(post(gw, "/v1/events", {"events": []}, role="ingest"), 400, param="events")
    assert_error(post(gw, "/v1/events", {"items": []}, role="ingest"), 400)
    too_many = {"events": [{"type": "feedback", "request_id": "r", "kind": "copy"}] * (gw.settings.gateway.max_batch_events + 1)}
    assert_error(post(gw, "/v1/events", too_many, role="ingest"), 413, param="events")

    # A good request afterwards lands, and it is the only thing that does.
    ok = post(gw, "/v1/chat/completions", CHAT)
    assert ok.status_code == 200
    wait_for(lambda: count(control_plane, "interactions") == 1, what="the good request to land")
    time.sleep(0.5)
    assert count(control_plane, "interactions") == 1
    assert count(control_plane, "feedback") == 0
    assert count(control_plane, "dead_letters") == 0


def test_backend_failures_are_502_503_and_recorded(scripted_gateway, control_plane):
    gw = scripted_gateway
    backend = gw.gw.backend._inner
    client = gw.client()
    backend.fail_next(503, "overloaded")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**CHAT)
    assert e.value.status_code == 503
    assert e.value.body["code"] == "backend_unavailable"
    backend.fail_next(502, "crashed mid-way")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**CHAT)
    assert e.value.status_code == 502
    # The failures are recorded on their interactions.
    wait_for(lambda: count(control_plane, "interactions", "status = 'error'") == 2, what="failed interactions")
    rows = {r[0] for r in control_plane.conn.cursor().execute(
        "SELECT CAST(error->>'status' AS INTEGER) FROM interactions").fetchall()}
    assert rows == {502, 503}


def test_models_health_and_metrics(scripted_gateway):
    gw = scripted_gateway
    models = gw.client().models.list()
    assert [m.id for m in models.data] == ["flywheel-chat"]
    health = httpx.get(gw.url + "/healthz").json()
    assert health["status"] in ("ok", "degraded") and health["backend"]["ok"]
    gw.client().chat.completions.create(**CHAT)
    metrics = httpx.get(gw.url + "/metrics").text
    assert "flywheel_spool_depth" in metrics
    assert 'flywheel_gateway_requests_total{route="/v1/chat/completions",status="200"} 1.0' in metrics


def test_batch_ingest_lands_every_valid_item(scripted_gateway, control_plane):
    gw = scripted_gateway
    good_interaction = {
        "type": "interaction", "request_id": "req-ext-1", "session_id": "s-ext", "user": "alice@example.com",
        "model_alias": "their-model", "model_version": "v7",
        "messages": [{"role": "user", "content": "call me on 13812345678"}],
        "drafts": [{"index": 0, "content": "ok", "finish_reason": "stop"}],
    }
    items = [
        good_interaction,
        {"type": "feedback", "request_id": "req-ext-1", "kind": "thumb", "value": 1},
        {"type": "feedback", "request_id": "req-ext-1", "kind": "edit", "text": "better answer"},
        {"type": "feedback", "request_id": "req-ext-1", "kind": "rating", "value": 9},  # invalid
        {"type": "interaction", "request_id": "x"},  # invalid: missing fields
        {"type": "comment"},  # invalid type
        {**good_interaction, "request_id": "req-ext-2", "surprise": 1},  # invalid: unknown field
    ]
    resp = post(gw, "/v1/events", {"events": items}, role="ingest")
    assert resp.status_code == 200
    body = resp.json()
    assert (body["accepted"], body["rejected"]) == (3, 4)
    statuses = [r["status"] for r in body["data"]]
    assert statuses == ["accepted"] * 3 + ["rejected"] * 4
    assert body["data"][3]["error"]["param"] == "events[3]"
    assert body["data"][6]["error"]["param"] == "events[6].surprise"
    wait_for(lambda: count(control_plane, "feedback") == 2 and count(control_plane, "interactions") == 1,
             what="ingested events to land")
    (content, user_id, source), = control_plane.conn.cursor().execute(
        "SELECT messages->>'$[0].content', user_id, source FROM interactions").fetchall()
    assert "13812345678" not in content and "<PHONE>" in content
    assert user_id.startswith("u_") and "alice" not in user_id
    assert source == "ingest"
