"""Tools through the gateway (#12): ``tools``, ``tool_choice``, ``parallel_tool_calls``, tool
turns in the history, ``logprobs`` and the penalties.

- The official ``openai`` client runs tool-calling conversations (call -> result -> answer),
  streaming and not, through the real gateway on the local backend with the real small
  model: ``required`` and a named function decode under a grammar (so the call is
  well-formed and its arguments validate against the function's schema, checked with
  ``jsonschema``), ``auto`` may answer in text. The interactions land with their tools,
  tool_choice, calls and tool results; feedback can correct a call.
- What goes out is OpenAI's protocol: raw answers and chunks validate against
  ``openai.types.chat`` with no field left over, streamed = non-streamed.
- Malformed tool requests get 400s naming the field; a feature the backend cannot honour
  gets a 400 naming it.
- The ``openai`` backend passes everything on and brings the upstream's calls back.
- Events of the old version still land; the new columns are filled.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from serving.backends.base import GenerationRequest
from serving.backends.local.tools import CallParser, render_messages
from serving.backends.openai_server import OpenAIServerBackend
from streams.schemas import Feedback, Interaction
from tests.conftest import free_port, query, wait_for
from tests.openai_standin import StandIn
from tests.test_gateway_errors import assert_error, post
from tests.test_gateway_protocol import headers, sse_events, strict

MODEL = "flywheel-chat"
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
        "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                            "parameters": CITY}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The local time in a city.",
                                         "parameters": CITY}}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {"get_weather": CITY, "get_time": CITY}


def answer(client, stream: bool, **kw):
    """``(content, [(id, name, arguments)], finish_reason)`` of one answer, streamed or not;
    a streamed answer is added up as OpenAI documents it (a call's id and name in its first
    piece, the arguments in the pieces after)."""
    if not stream:
        r = client.chat.completions.create(model=MODEL, temperature=0, **kw)
        m = r.choices[0].message
        return m.content, [(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or []], \
            r.choices[0].finish_reason
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model=MODEL, temperature=0, stream=True, **kw):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for piece in choice.delta.tool_calls or []:
                if piece.index not in calls:
                    assert piece.id.startswith("call_") and piece.type == "function" and piece.function.name
                    calls[piece.index] = [piece.id, piece.function.name, ""]
                else:
                    assert piece.id is None and piece.function.name is None  # later pieces only add arguments
                calls[piece.index][2] += piece.function.arguments or ""
            finish = choice.finish_reason or finish
    return content or None, [tuple(calls[k]) for k in sorted(calls)], finish


def without_ids(result):
    content, calls, finish = result
    return content, [(name, args) for _, name, args in calls], finish


def assert_valid_calls(calls, offered=("get_weather", "get_time")):
    assert calls
    for call_id, name, arguments in calls:
        assert call_id.startswith("call_") and name in offered
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


# ------------------------------------------------------- the real model, the official client


def test_required_and_named_choices_decode_calls_under_the_schema(model_gateway):
    client = model_gateway.client()
    required = dict(messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=40)
    whole = answer(client, False, **required)
    content, calls, finish = whole
    assert content is None and finish == "tool_calls" and len(calls) == 1, whole
    assert_valid_calls(calls)
    assert without_ids(answer(client, True, **required)) == without_ids(whole)  # streamed = whole; greedy

    named = dict(messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
                 max_tokens=40)
    content, calls, finish = whole = answer(client, False, **named)
    assert content is None and finish == "stop" and [c[1] for c in calls] == ["get_time"], whole  # OpenAI says "stop" here
    assert_valid_calls(calls)
    assert without_ids(answer(client, True, **named)) == without_ids(whole)


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_calling_conversation_lands_with_its_tools_and_calls(model_gateway, control_plane, stream):
    client = model_gateway.client()
    # Turn 1: the model must call a tool.
    content, calls, finish = answer(client, stream, messages=ASK, tools=TOOLS, tool_choice="required",
                                    parallel_tool_calls=False, max_tokens=40, user="ada")
    assert finish == "tool_calls"
    assert_valid_calls(calls)
    (call_id, name, arguments), = calls
    # Turn 2: the tool's result goes back; the model answers (auto: in text, or with another call).
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
                   {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
               {"role": "tool", "tool_call_id": call_id, "content": '{"city": "Paris", "sky": "sunny", "celsius": 21}'}]
    content2, calls2, finish2 = answer(client, stream, messages=history, tools=TOOLS, max_tokens=12, user="ada")
    assert (content2 and not calls2) or calls2, (content2, calls2)
    assert finish2 in ("stop", "length", "tool_calls")
    if calls2:
        assert_valid_calls(calls2)

    wait_for(lambda: len(query(control_plane, "SELECT 1 FROM interactions")) == 2, what="two interactions")
    rows = query(control_plane, "SELECT schema_version, tools, tool_choice, messages, drafts, params FROM interactions "
                 "ORDER BY created_at")
    (v1, tools1, choice1, messages1, drafts1, params1), (v2, tools2, choice2, messages2, drafts2, _) = rows
    assert v1 == v2 == 2
    assert json.loads(tools1) == json.loads(tools2) == TOOLS
    assert json.loads(choice1) == "required" and choice2 is None  # not set: recorded as absent
    assert json.loads(params1)["parallel_tool_calls"] is False
    (draft,) = json.loads(drafts1)
    assert draft["finish_reason"] == "tool_calls" and draft["content"] == ""
    assert draft["tool_calls"] == [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]
    stored = json.loads(messages2)
    assert stored[1] == {"role": "assistant", "content": "", "tool_calls": draft["tool_calls"]}
    assert stored[2]["role"] == "tool" and stored[2]["tool_call_id"] == call_id and "sunny" in stored[2]["content"]

    # Feedback can correct the call: an edit with the call as it should have been.
    request_id = query(control_plane, "SELECT request_id FROM interactions ORDER BY created_at")[0][0]
    fixed = [{"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}]
    resp = post(model_gateway, "/v1/feedback", {"request_id": request_id, "kind": "edit", "tool_calls": fixed,
                                                "tool_call_id": call_id, "user": "ada"})
    assert resp.status_code == 200, resp.text
    wait_for(lambda: query(control_plane, "SELECT 1 FROM feedback"), what="the edit")
    (kind, text, tool_call_id, tool_calls), = query(control_plane, "SELECT kind, text, tool_call_id, tool_calls "
                                                    "FROM feedback")
    assert (kind, text, tool_call_id, json.loads(tool_calls)) == ("edit", None, call_id, fixed)


def test_auto_answers_in_text_and_sampling_fields_are_honoured(model_gateway):
    client = model_gateway.client()
    # auto: the model may answer in text (it does here); the answer is OpenAI's plain message.
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=8,
                                       logprobs=True, top_logprobs=2)
    choice = r.choices[0]
    assert choice.message.tool_calls is None and choice.message.content and choice.finish_reason == "length"
    entries = choice.logprobs.content
    assert len(entries) == r.usage.completion_tokens == 8
    assert b"".join(bytes(e.bytes) for e in entries) == choice.message.content.encode()
    for e in entries:  # greedy: the chosen token is the likeliest
        assert len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob == e.logprob >= e.top_logprobs[1].logprob
    # Streamed: the same entries, in pieces.
    streamed = [c for chunk in client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0,
                                                              max_tokens=8, logprobs=True, top_logprobs=2, stream=True)
                for ch in chunk.choices if ch.logprobs for c in ch.logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]
    # logit_bias -100 on the first token changes it; penalties change a greedy answer that repeats itself.
    first = entries[0]
    token_id = model_gateway.gw.backend.tokenizer.convert_tokens_to_ids(
        model_gateway.gw.backend.tokenizer.convert_ids_to_tokens(
            model_gateway.gw.backend.tokenizer(first.token, add_special_tokens=False)["input_ids"])[0])
    biased = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=3,
                                            logit_bias={str(token_id): -100}, logprobs=True)
    assert biased.choices[0].logprobs.content[0].token != first.token
    count = [{"role": "user", "content": "Write the word apple ten times."}]
    plain = client.chat.completions.create(model=MODEL, messages=count, temperature=0, max_tokens=12)
    penalised = client.chat.completions.create(model=MODEL, messages=count, temperature=0, max_tokens=12,
                                               frequency_penalty=2.0, presence_penalty=1.0)
    assert penalised.choices[0].message.content != plain.choices[0].message.content
    # A token id past the vocabulary is refused before generation.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3, logit_bias={"99999999": 5})
    assert e.value.body["param"] == "logit_bias"


# ------------------------------------------------------- protocol, scripted model edge


CALLS = [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"city": "Paris"}}]


def test_tool_call_answers_and_chunks_are_openai_types_and_agree(scripted_gateway):
    gw = scripted_gateway
    backend = gw.gw.backend._inner
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS}
    backend.enqueue(CALLS)
    resp = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers(gw))
    assert resp.status_code == 200, resp.text
    plain = strict(ChatCompletion, resp.json())
    message = plain.choices[0].message
    assert message.content is None and plain.choices[0].finish_reason == "tool_calls"
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == \
        [("function", c["name"], c["arguments"]) for c in CALLS]
    assert all(c.id.startswith("call_") for c in message.tool_calls)

    backend.enqueue(CALLS)
    payloads = sse_events(gw, {**body, "stream": True})
    chunks = [strict(ChatCompletionChunk, json.loads(p)) for p in payloads[:-1]]
    pieces = [t for c in chunks for ch in c.choices for t in ch.delta.tool_calls or []]
    assert len(pieces) == 6  # per call: id, type and name (arguments ""), then the arguments in two pieces
    assert all(p.function.arguments == "" and p.function.name for p in pieces[::3])
    assert all(p.id is None and p.type is None and p.function.name is None for k, p in enumerate(pieces) if k % 3)
    streamed = {}
    for p in pieces:
        streamed.setdefault(p.index, ["", ""])
        streamed[p.index][0] += p.function.name or ""
        streamed[p.index][1] += p.function.arguments
    assert [tuple(v) for _, v in sorted(streamed.items())] == \
        [(c.function.name, c.function.arguments) for c in message.tool_calls]
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]


BAD_TOOL_REQUESTS = [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_mood"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "sometimes", "tools": TOOLS}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "paramters": {}}}]}, "tools[0].function.paramters"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": TOOLS, "messages": [*ASK, {"role": "tool", "content": "21 degrees"}]}, "messages[1]"),
    ({"tools": TOOLS, "messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "21"}]},
     "messages[1].tool_call_id"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": []}]}, "messages[1].tool_calls"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[0]"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"logit_bias": {"50256": 101}}, "logit_bias.50256"),
    ({"functions": [{"name": "f"}]}, "functions"),
]


def test_malformed_tool_requests_are_400s_naming_the_field(scripted_gateway):
    gw = scripted_gateway
    for extra, param in BAD_TOOL_REQUESTS:
        assert_error(post(gw, "/v1/chat/completions", {"model": MODEL, "messages": ASK, **extra}), 400, param=param)
    assert_error(post(gw, "/v1/chat/completions", {"model": MODEL, "messages": ASK, "logit_bias": {"abc": 1}}), 400)
    # A field the backend cannot honour: named, never ignored (the scripted backend has no logprobs or penalties).
    for extra, param in (({"logprobs": True}, "logprobs"), ({"frequency_penalty": 0.5}, "frequency_penalty"),
                         ({"logit_bias": {"5": 1}}, "logit_bias")):
        err = assert_error(post(gw, "/v1/chat/completions", {"model": MODEL, "messages": ASK, **extra}), 400,
                           param=param, code="unsupported_parameter")
        assert "scripted backend" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        gw.client().chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                            tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.body["param"] == "tool_choice" and "get_weather" in e.value.body["message"]
    # The answer of a call, sent back as the client holds it (content null), is accepted.
    gw.gw.backend._inner.enqueue("It is sunny.")
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    assert gw.client().chat.completions.create(model=MODEL, messages=history, tools=TOOLS).choices[0].message.content \
        == "It is sunny."


# ------------------------------------------------------- the openai backend passes everything on


@pytest.mark.parametrize("stream", [False, True])
def test_openai_backend_passes_tools_through(settings, start_gateway, stream):
    def reply(messages, i):
        return "It is sunny in Paris." if messages[-1]["role"] == "tool" else CALLS

    upstream = StandIn(reply, free_port()).start()
    backend = OpenAIServerBackend(upstream.url, model="upstream-model")
    try:
        client = start_gateway(settings, backend).client()
        sent = dict(messages=ASK, tools=TOOLS, tool_choice="auto", parallel_tool_calls=True, max_tokens=50,
                    logprobs=True, top_logprobs=1, presence_penalty=0.5, frequency_penalty=0.25, logit_bias={"42": -5})
        content, calls, finish = answer(client, stream, **sent)
        assert content is None and finish == "tool_calls"
        assert calls == [(f"call_standin_0_{k}", c["name"], json.dumps(c["arguments"])) for k, c in enumerate(CALLS)]
        body = upstream.requests[-1]
        for key in ("tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "presence_penalty",
                    "frequency_penalty", "logit_bias"):
            assert body[key] == sent[key], key
        history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
                       {"id": calls[0][0], "type": "function", "function": {"name": calls[0][1], "arguments": calls[0][2]}}]},
                   {"role": "tool", "tool_call_id": calls[0][0], "content": "sunny"}]
        r = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, logprobs=True, stream=False)
        assert r.choices[0].message.content == "It is sunny in Paris." and r.choices[0].logprobs.content[0].token == "x"
        assert upstream.requests[-1]["messages"] == history  # the history goes on as sent
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5)
        assert not {"tools", "tool_choice", "logprobs", "logit_bias"} & set(upstream.requests[-1])
    finally:
        backend.close()
        upstream.stop()


# ------------------------------------------------------- prompt format and parsing, no model


def test_tools_and_tool_turns_are_rendered_in_the_hermes_format():
    history = (
        {"role": "system", "content": "Be brief."}, *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "10:00"})
    out = render_messages(GenerationRequest(messages=history, tools=tuple(TOOLS)))
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n# Tools\n") and json.dumps(WEATHER) in out[0]["content"]
    assert out[2]["content"] == ('<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>\n'
                                 '<tool_call>\n{"name":"get_time","arguments":{"city":"Paris"}}\n</tool_call>')
    assert out[3]["content"] == "<tool_response>\nsunny\n</tool_response>\n<tool_response>\n10:00\n</tool_response>"
    # tool_choice none: no tools in the prompt; no tools at all: the messages as they were.
    assert "# Tools" not in render_messages(GenerationRequest(messages=history, tools=tuple(TOOLS), tool_choice="none"))[0]["content"]
    assert render_messages(GenerationRequest(messages=tuple(ASK))) == ASK


def test_the_vllm_chat_template_renders_what_the_local_backend_renders(model_dir):
    """serving/chat_templates/smollm2_tools.jinja (docker-compose's vLLM ``--chat-template``)
    gives the prompt the local backend builds, so either serves a model the same text.
    vLLM hands a call's arguments to templates as an object."""
    from transformers import AutoTokenizer

    from tests.conftest import REPO

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = (REPO / "serving" / "chat_templates" / "smollm2_tools.jinja").read_text()
    history = [{"role": "system", "content": "Be brief."}, *ASK,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                   {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"city":"Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
               {"role": "tool", "tool_call_id": "call_2", "content": "10:00"},
               {"role": "assistant", "content": "Sunny, 10:00."}, {"role": "user", "content": "thanks"}]

    def as_vllm(messages):
        return [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                                     for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]

    for messages, tools in ((history, TOOLS), (history[1:], TOOLS), (history, None), (ASK, None), (ASK, TOOLS)):
        local = tokenizer.apply_chat_template(render_messages(GenerationRequest(messages=tuple(messages),
                                                                                tools=tuple(tools or ()))),
                                              tokenize=False, add_generation_prompt=True)
        served = tokenizer.apply_chat_template(as_vllm(messages), tools=tools, chat_template=template, tokenize=False,
                                               add_generation_prompt=True)
        assert served == local


def feed_in_pieces(parser: CallParser, text: str, size: int = 1):
    content, calls = "", []
    for k in range(0, len(text), size):
        c, pieces = parser.feed(text[k:k + size])
        content, calls = content + c, calls + pieces
    c, pieces = parser.feed("", final=True)
    return content + c, calls + pieces


def joined(calls):
    out = {}
    for p in calls:
        out.setdefault(p.index, [p.id, p.name, ""])
        out[p.index][2] += p.arguments
    return [tuple(v) for _, v in sorted(out.items())]


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_calls_are_parsed_out_of_free_text(size):
    ids = iter(f"call_{k}" for k in range(100))

    def parse(text, parallel=True):
        return feed_in_pieces(CallParser(["get_weather", "get_time"], forced=False, parallel=parallel,
                                         new_id=lambda: next(ids)), text, size)

    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name":"get_time","parameters":{"city":"Rome"}}</tool_call>\n')
    content, calls = parse(text)
    assert content == "Let me check."
    assert [(n, a) for _, n, a in joined(calls)] == [("get_weather", '{"city":"Paris"}'), ("get_time", '{"city":"Rome"}')]
    assert [n for _, n, _ in joined(parse(text, parallel=False)[1])] == ["get_weather"]  # at most one call
    # Not a call of an offered tool, or not JSON: plain text, as written.
    for bad in ('<tool_call>\n{"name": "get_mood", "arguments": {}}\n</tool_call>', "<tool_call>{oops</tool_call> done",
                "a < b and <tool_ca", "plain text  \n"):
        assert parse(bad) == (bad, [])
    # An unclosed call at the end of the draft is still a call.
    assert [n for _, n, _ in joined(parse('<tool_call>\n{"name":"get_time","arguments":{"city":"Oslo"}}')[1])] == ["get_time"]


def test_forced_calls_stream_their_arguments_as_they_are_decoded():
    ids = iter(["call_a", "call_b"])
    parser = CallParser(["get_weather"], forced=True, new_id=lambda: next(ids))
    text = ('<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name":"get_weather","arguments":{"city":"Ro}}"}}\n</tool_call>')
    pieces = []
    for ch in text:
        content, calls = parser.feed(ch)
        assert content == ""
        pieces += calls
    pieces += parser.feed("", final=True)[1]
    assert joined(pieces) == [("call_a", "get_weather", '{"city":"Paris"}'), ("call_b", "get_weather", '{"city":"Ro}}"}')]
    assert len([p for p in pieces if p.index == 0 and p.arguments]) > 5  # the arguments arrive in many pieces
    # Cut by max_tokens mid-arguments: what was decoded.
    cut = CallParser(["get_weather"], forced=True)
    assert joined(feed_in_pieces(cut, '<tool_call>\n{"name":"get_weather","arguments":{"city":"Par')[1])[0][1:] == \
        ("get_weather", '{"city":"Par')


# ------------------------------------------------------- events: the new version, the old one still lands


def test_old_and_new_interactions_land_and_v1_cannot_carry_tool_fields():
    from pydantic import ValidationError

    from streams.landing import Lander, Record
    from streams.migrations import MIGRATIONS
    from streams.warehouse import apply_migrations, connect

    now = datetime.now(timezone.utc).isoformat()
    base = {"type": "interaction", "request_id": "r", "session_id": "s", "created_at": now, "model_alias": "m",
            "model_version": "v", "messages": ASK, "drafts": [{"index": 0, "content": "sunny"}]}
    fmt = {"type": "json_object"}
    old = {**base, "event_id": "old", "schema_version": 1, "params": {"response_format": fmt}}
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    new = {**base, "event_id": "new", "schema_version": 2, "tools": TOOLS, "tool_choice": "required",
           "response_format": fmt, "drafts": [{"index": 0, "content": "", "finish_reason": "tool_calls",
                                               "tool_calls": [call]}]}
    with pytest.raises(ValidationError, match="schema_version 1 has no"):
        Interaction.model_validate_json(json.dumps({**new, "schema_version": 1}))
    with pytest.raises(ValidationError, match="schema_version 1 has no"):
        Feedback.model_validate_json(json.dumps({"event_id": "f", "request_id": "r", "kind": "thumb", "value": 1,
                                                 "created_at": now, "schema_version": 1, "tool_call_id": "call_1"}))

    # A database from before the tools: its rows get the response_format column from their params.
    conn = connect(":memory:")
    apply_migrations(conn, MIGRATIONS[:-1])
    conn.execute("""INSERT INTO interactions (event_id, schema_version, request_id, session_id, turn, app, created_at,
                    model_alias, model_version, messages, drafts, params, status, tags)
                    VALUES ('before', 1, 'r0', 's', 1, 'a', now(), 'm', 'v', '[]', '[]', ?, 'ok', '{}')""",
                 [json.dumps({"response_format": fmt})])
    assert apply_migrations(conn, MIGRATIONS) == ["m008_tool_calls"]
    lander = Lander(conn, {"interactions": "i", "feedback": "f", "dlq": "d"})
    bad_v1 = {**new, "event_id": "bad", "schema_version": 1}
    result = lander.land([Record("i", 0, k, None, json.dumps(e).encode()) for k, e in enumerate((old, new, bad_v1))])
    assert result.landed["interactions"] == 2 and len(result.dead) == 1
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT event_id, schema_version, tools, tool_choice, response_format, drafts FROM interactions").fetchall()}
    assert rows["before"][3] is not None and json.loads(rows["before"][3]) == fmt
    assert rows["old"][:3] == (1, None, None) and json.loads(rows["old"][3]) == fmt
    v, tools, choice, response_format, drafts = rows["new"]
    assert (v, json.loads(tools), json.loads(choice), json.loads(response_format)) == (2, TOOLS, "required", fmt)
    assert json.loads(drafts)[0]["tool_calls"] == [call]


def test_flywheel_schema_documents_version_2():
    from click.testing import CliRunner

    from flywheel.cli import main

    result = CliRunner().invoke(main, ["schema", "--event", "interaction"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["properties"]["schema_version"]["enum"] == [1, 2] and schema["properties"]["schema_version"]["default"] == 2
    assert {"tools", "tool_choice", "response_format"} <= set(schema["properties"])
    assert "tool_calls" in schema["$defs"]["Draft"]["properties"] and "tool_call_id" in schema["$defs"]["Message"]["properties"]
    feedback = json.loads(CliRunner().invoke(main, ["schema", "--event", "feedback"]).output)
    assert {"tool_call_id", "tool_calls"} <= set(feedback["properties"])
