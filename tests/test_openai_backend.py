"""The ``openai`` backend: against a second gateway instance acting as the upstream server
(real HTTP, real streaming), and against a minimal stand-in of vLLM's LoRA endpoints."""

from __future__ import annotations

import json
import threading

import openai
import pytest
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

from serving.backends.base import GenerationRequest
from serving.backends.openai_server import OpenAIServerBackend
from serving.backends.scripted import ScriptedBackend
from streams.topics import ensure_topics, topic_names
from tests.conftest import free_port, make_settings

ASK = dict(model="flywheel-chat", messages=[{"role": "user", "content": "hello there"}])


@pytest.fixture
def chain(tmp_path, broker, start_gateway):
    """client -> gateway (openai backend) -> upstream gateway (scripted backend)."""
    up_settings = make_settings(tmp_path / "up", broker.bootstrap)
    ensure_topics(broker.bootstrap, list(topic_names(up_settings).values()), 2)
    upstream_backend = ScriptedBackend(reply="Upstream says hello to you.")
    upstream = start_gateway(up_settings, upstream_backend)
    down_settings = make_settings(tmp_path / "down", broker.bootstrap)
    ensure_topics(broker.bootstrap, list(topic_names(down_settings).values()), 2)
    backend = OpenAIServerBackend(f"{upstream.url}/v1", model="flywheel-chat", api_key=upstream.tokens["chat"])
    gateway = start_gateway(down_settings, backend)
    yield gateway, upstream_backend
    backend.close()


def test_serves_through_an_upstream_server(chain):
    gateway, _ = chain
    client = gateway.client()
    plain = client.chat.completions.create(**ASK, max_tokens=50)
    assert plain.choices[0].message.content == "Upstream says hello to you."
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage.completion_tokens == 5 and plain.usage.prompt_tokens > 0
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(**ASK, stream=True) if c.choices]
    assert "".join(pieces) == plain.choices[0].message.content
    two = client.chat.completions.create(**ASK, n=2, max_tokens=3)
    assert [c.message.content for c in two.choices] == ["Upstream says hello "] * 2
    assert [c.finish_reason for c in two.choices] == ["length", "length"]


def test_upstream_failures_are_502_and_503(chain, tmp_path, start_gateway, broker):
    gateway, upstream_backend = chain
    client = gateway.client()
    upstream_backend.fail_next(502, "upstream model crashed")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**ASK)
    assert e.value.status_code == 502
    upstream_backend.fail_next(503, "upstream overloaded")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**ASK)
    assert e.value.status_code == 503
    # Nothing listening upstream: 503, and the gateway keeps answering.
    s = make_settings(tmp_path / "dead", broker.bootstrap)
    dead = start_gateway(s, OpenAIServerBackend(f"http://127.0.0.1:{free_port()}/v1", model="m", timeout_s=3))
    with pytest.raises(openai.APIStatusError) as e:
        dead.client().chat.completions.create(**ASK)
    assert e.value.status_code == 503 and "unreachable" in e.value.message


@pytest.fixture
def vllm_standin():
    """The two LoRA endpoints of vLLM's OpenAI server, and a chat endpoint that answers
    with the model name it was asked for."""
    app = Flask("vllm-standin")
    state = {"loaded": {}, "calls": []}

    @app.post("/v1/load_lora_adapter")
    def load():
        body = request.get_json()
        state["calls"].append(("load", body))
        if body["lora_name"] in state["loaded"]:
            return jsonify({"error": {"message": f"The lora adapter '{body['lora_name']}' has already been loaded."}}), 400
        state["loaded"][body["lora_name"]] = body["lora_path"]
        return f"Success: LoRA adapter '{body['lora_name']}' added successfully."

    @app.post("/v1/unload_lora_adapter")
    def unload():
        body = request.get_json()
        state["calls"].append(("unload", body))
        if state["loaded"].pop(body["lora_name"], None) is None:
            return jsonify({"error": {"message": "not found"}}), 404
        return f"Success: LoRA adapter '{body['lora_name']}' removed successfully."

    @app.post("/v1/chat/completions")
    def chat():
        body = request.get_json()
        if body["model"] not in ("base-model", *state["loaded"]):
            return jsonify({"error": {"message": f"The model `{body['model']}` does not exist."}}), 404
        chunks = [{"choices": [{"index": 0, "delta": {"content": f"served by {body['model']}"}, "finish_reason": None}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                  {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}]
        return Response("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n",
                        mimetype="text/event-stream")

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/v1", state
    server.shutdown()


def test_vllm_adapters_load_by_version_name_and_unload(vllm_standin, tmp_path):
    url, state = vllm_standin
    backend = OpenAIServerBackend(url, model="base-model")
    try:
        def answer(version):
            gen = backend.submit(GenerationRequest(messages=({"role": "user", "content": "hi"},), version=version))
            return gen.collect()[0][0], gen

        assert answer("base")[0] == "served by base-model"
        backend.load_adapter("cand-1", tmp_path / "cand-1")
        backend.load_adapter("cand-1", tmp_path / "cand-1")  # idempotent for the same path
        assert state["calls"][0] == ("load", {"lora_name": "cand-1", "lora_path": str(tmp_path / "cand-1")})
        assert backend.versions() == ["base", "cand-1"]
        text, gen = answer("cand-1")
        assert text == "served by cand-1" and gen.prompt_tokens == 7 and gen.completion_tokens == [3]
        with pytest.raises(ValueError, match="immutable"):
            backend.load_adapter("cand-1", tmp_path / "other")
        backend.unload_adapter("cand-1")
        assert state["calls"][-1] == ("unload", {"lora_name": "cand-1"}) and backend.versions() == ["base"]
        from serving.backends.base import BackendError

        with pytest.raises(BackendError) as e:
            answer("cand-1")
        assert e.value.status == 503
    finally:
        backend.close()
