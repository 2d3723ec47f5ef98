"""What the gateway sends is OpenAI's protocol: every raw JSON answer, every SSE chunk and
every error body validates against the official ``openai`` types with no field left over,
and the streamed answer equals the non-streamed one.

The scripted backend is the fake at the model edge (the model is not under test); the
broker, HTTP and the official openai client are real.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.shared import ErrorObject
from pydantic import BaseModel

from serving.backends.base import BackendError, Generation
from serving.backends.scripted import ScriptedBackend
from services.gateway import protocol
from services.gateway.chat import ChatStream, create_chat_completion
from services.gateway.context import Caller

REPLY = "Red, orange and yellow — three colours of the rainbow."
CHAT = {"model": "flywheel-chat", "messages": [{"role": "user", "content": "Name three colours of the rainbow."}]}


def extras(obj, path: str = "") -> list[str]:
    """Every field the official model did not know, anywhere in ``obj``."""
    if isinstance(obj, BaseModel):
        found = [f"{path}.{k}" for k in (obj.model_extra or {})]
        for name in type(obj).model_fields:
            found += extras(getattr(obj, name), f"{path}.{name}")
        return found
    if isinstance(obj, list):
        return [e for i, x in enumerate(obj) for e in extras(x, f"{path}[{i}]")]
    return []


def strict(model: type[BaseModel], raw: dict, allowed_extra: frozenset[str] = frozenset()):
    """``raw`` validated as the official ``model``: no unknown field, nothing lost or changed."""
    obj = model.model_validate(raw)
    assert set(extras(obj)) <= allowed_extra, f"fields {model.__name__} does not define: {extras(obj)}"
    assert obj.model_dump(exclude_unset=True, mode="json") == raw
    return obj


def headers(gw, role: str = "chat") -> dict:
    return {"Authorization": f"Bearer {gw.tokens[role]}"}


def sse_events(gw, body: dict) -> list[str]:
    """The ``data:`` payloads of a streamed answer, as sent."""
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=headers(gw)) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        request_id = resp.headers["x-request-id"]
        text = resp.read().decode()
    frames = text.split("\n\n")
    assert frames[-1] == ""  # every event ends with a blank line
    assert all(f.startswith("data: ") for f in frames[:-1])
    payloads = [f[len("data: "):] for f in frames[:-1]]
    chunks = [json.loads(p) for p in payloads if p != "[DONE]"]
    assert all(c["id"] == request_id for c in chunks if "error" not in c)  # the header names the request
    return payloads


def assemble(chunks: list[ChatCompletionChunk], n: int):
    """Texts and finish reasons per draft, the usage, and the ids seen."""
    texts, reasons, usage = [""] * n, [None] * n, None
    for chunk in chunks:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    return texts, reasons, usage


@pytest.mark.parametrize("n", [1, 2])
def test_raw_answers_and_chunks_are_openai_types_and_agree(scripted_gateway, n):
    gw = scripted_gateway
    backend = gw.gw.backend._inner
    backend.enqueue(*[REPLY] * n)
    resp = httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "n": n}, headers=headers(gw))
    assert resp.status_code == 200
    plain = strict(ChatCompletion, resp.json())
    assert [c.index for c in plain.choices] == list(range(n))
    assert all(c.message.content == REPLY and c.finish_reason == "stop" for c in plain.choices)
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    backend.enqueue(*[REPLY] * n)
    payloads = sse_events(gw, {**CHAT, "n": n, "stream": True, "stream_options": {"include_usage": True}})
    assert payloads[-1] == "[DONE]"
    chunks = [strict(ChatCompletionChunk, json.loads(p)) for p in payloads[:-1]]
    assert all(c.choices for c in chunks[:-1]) and not chunks[-1].choices  # usage comes last, alone
    assert [c.choices[0].delta.role for c in chunks[:n]] == ["assistant"] * n
    texts, reasons, usage = assemble(chunks, n)
    assert texts == [c.message.content for c in plain.choices]
    assert reasons == [c.finish_reason for c in plain.choices]
    assert usage == plain.usage
    assert {c.model for c in chunks} == {plain.model} and {c.system_fingerprint for c in chunks} == {plain.system_fingerprint}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id != plain.id  # one request id per request


def test_official_client_streams_what_it_gets_whole(scripted_gateway):
    gw = scripted_gateway
    client = gw.client()
    backend = gw.gw.backend._inner
    backend.enqueue(REPLY)
    whole = client.chat.completions.create(**CHAT, max_tokens=5)
    backend.enqueue(REPLY)
    chunks = list(client.chat.completions.create(**CHAT, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    texts, reasons, usage = assemble(chunks, 1)
    assert texts[0] == whole.choices[0].message.content and texts[0] != REPLY  # cut at 5 tokens
    assert reasons[0] == whole.choices[0].finish_reason == "length"
    assert usage.completion_tokens == whole.usage.completion_tokens == 5
    # Without include_usage no chunk carries usage (the key is absent, not null).
    backend.enqueue(REPLY)
    payloads = sse_events(gw, {**CHAT, "stream": True})
    assert all("usage" not in json.loads(p) for p in payloads[:-1])


def test_errors_and_model_list_are_openai_types(scripted_gateway):
    gw = scripted_gateway
    for body, status in [({**CHAT, "model": "gpt-9"}, 404), ({**CHAT, "temperature": 9}, 400),
                         ({**CHAT, "tools": [{"type": "function"}]}, 400)]:
        resp = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers(gw))
        assert resp.status_code == status
        assert set(resp.json()) == {"error"}
        strict(ErrorObject, resp.json()["error"])
    resp = httpx.get(gw.url + "/v1/models", headers=headers(gw))
    (card,) = resp.json()["data"]
    assert resp.json()["object"] == "list"
    assert strict(Model, card, allowed_extra=frozenset({".versions"})).id == "flywheel-chat"


class _FailsMidway(ScriptedBackend):
    """A model edge that breaks after the first piece of its answer."""

    def submit(self, request):
        gen = Generation(request.n)
        gen.put(0, "Red, ")
        gen.fail(BackendError("the model process died", 502))
        return gen


def test_a_failure_mid_stream_is_an_openai_error_event(settings, start_gateway):
    gw = start_gateway(settings, _FailsMidway())
    payloads = sse_events(gw, {**CHAT, "stream": True})
    assert payloads[-1] != "[DONE]"  # an error ends the stream
    chunks = [strict(ChatCompletionChunk, json.loads(p)) for p in payloads[:-1]]
    assert assemble(chunks, 1)[0] == ["Red, "]
    error = json.loads(payloads[-1])
    assert set(error) == {"error"}
    assert strict(ErrorObject, error["error"]).code == "backend_error"
    with pytest.raises(openai.APIError, match="the model process died"):
        list(gw.client().chat.completions.create(**CHAT, stream=True))


def test_serving_logic_answers_without_http(scripted_gateway):
    """The views are thin: the serving logic takes a parsed request and a caller and
    returns protocol models, for any caller that is not Flask."""
    gateway = scripted_gateway.gw
    backend = gateway.backend._inner
    req = protocol.ChatCompletionRequest.model_validate({**CHAT, "user": "ana", "metadata": {"session_id": "s-1"}})
    backend.enqueue(REPLY)
    answer = create_chat_completion(gateway, req, Caller(app="tests"))
    assert isinstance(answer, protocol.ChatCompletion)
    strict(ChatCompletion, answer.model_dump(mode="json"))
    backend.enqueue(REPLY)
    stream = create_chat_completion(gateway, req.model_copy(update={"stream": True}), Caller(app="tests"))
    assert isinstance(stream, ChatStream)
    assert (stream.ctx.session_id, stream.ctx.app, stream.ctx.version) == ("s-1", "tests", "base")
    assert stream.ctx.user_id.startswith("u_") and "ana" not in stream.ctx.user_id
    payloads = [e.removeprefix("data: ").strip() for e in stream.events]
    chunks = [ChatCompletionChunk.model_validate_json(p) for p in payloads[:-1]]
    assert assemble(chunks, 1)[0] == [answer.choices[0].message.content]


def test_protocol_models_use_the_official_field_names():
    """Our response models name only fields the official types define (plus the documented
    ``versions`` on a model card), so clients parse everything we send."""
    pairs = [
        (protocol.ChatCompletion, ChatCompletion),
        (protocol.ChatCompletionChoice, openai.types.chat.chat_completion.Choice),
        (protocol.ChatCompletionMessage, openai.types.chat.ChatCompletionMessage),
        (protocol.UsageInfo, openai.types.CompletionUsage),
        (protocol.ChatCompletionChunk, ChatCompletionChunk),
        (protocol.DeltaMessage, openai.types.chat.chat_completion_chunk.ChoiceDelta),
        (protocol.ChatCompletionChunkChoice, openai.types.chat.chat_completion_chunk.Choice),
        (protocol.ErrorInfo, ErrorObject),
    ]
    for ours, theirs in pairs:
        assert set(ours.model_fields) <= set(theirs.model_fields), ours.__name__
        assert ours.model_config.get("extra") == "forbid", ours.__name__
    assert set(protocol.ModelCard.model_fields) - set(Model.model_fields) == {"versions"}
