"""Structured outputs (``response_format``) through the gateway: decoded under the schema
by the real local backend (SmolLM2-135M-Instruct, llguidance), passed on unchanged by the
``openai`` backend. The official ``openai`` client sends every request; the answers are
checked with the ``jsonschema`` library."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from serving.backends.openai_server import OpenAIServerBackend
from tests.conftest import free_port, query, wait_for
from tests.openai_standin import StandIn
from tests.test_gateway_errors import assert_error, post

MODEL = "flywheel-chat"
ANIMAL = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "colour": {"type": "string", "enum": ["black", "white", "ginger", "grey"]},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
    },
    "required": ["name", "colour", "legs"],
    "additionalProperties": False,
}
AS_ANIMAL = {"type": "json_schema", "json_schema": {"name": "animal", "schema": ANIMAL, "strict": True}}
ASK_ANIMAL = [{"role": "user", "content": "Describe a cat as JSON: its name, colour and number of legs."}]
ASK_OBJECT = [{"role": "user", "content": "Give the capital of France as a JSON object with keys city and country."}]


def create(client, stream: bool = False, **kw):
    """(text, finish_reason) of one answer, streamed or not."""
    if not stream:
        r = client.chat.completions.create(model=MODEL, temperature=0, stream=False, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model=MODEL, temperature=0, stream=True, **kw):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(pieces), finish


def test_json_schema_and_json_object_streaming_and_not(model_gateway, control_plane):
    client = model_gateway.client()
    text, finish = create(client, messages=ASK_ANIMAL, response_format=AS_ANIMAL, max_tokens=60)
    assert finish == "stop", text  # the document ended before max_tokens
    jsonschema.validate(json.loads(text), ANIMAL)
    assert create(client, stream=True, messages=ASK_ANIMAL, response_format=AS_ANIMAL, max_tokens=60) == (text, finish)

    obj, finish = create(client, messages=ASK_OBJECT, response_format={"type": "json_object"}, max_tokens=40)
    assert finish == "stop" and isinstance(json.loads(obj), dict), obj
    assert create(client, stream=True, messages=ASK_OBJECT, response_format={"type": "json_object"},
                  max_tokens=40) == (obj, finish)

    # The interaction records the response_format as sent (its own field since event schema version 2, #12).
    wait_for(lambda: len(query(control_plane, "SELECT 1 FROM interactions")) == 4, what="four interactions")
    formats = sorted(json.dumps(json.loads(f), sort_keys=True)
                     for (f,) in query(control_plane, "SELECT response_format FROM interactions"))
    assert formats == sorted([json.dumps(AS_ANIMAL, sort_keys=True)] * 2 + [json.dumps({"type": "json_object"})] * 2)


def test_max_tokens_before_the_document_ends_is_length(model_gateway):
    text, finish = create(model_gateway.client(), messages=ASK_ANIMAL, response_format=AS_ANIMAL, max_tokens=4)
    assert finish == "length"
    assert text.startswith('{"name":"')


def test_mixed_batch_constrained_and_free(model_gateway):
    """A constrained and a free request decode in one batch; each gets what it gets alone."""
    client = model_gateway.client()
    constrained = dict(messages=ASK_ANIMAL, response_format=AS_ANIMAL, max_tokens=60)
    free = dict(messages=ASK_ANIMAL, max_tokens=30)
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda kw: create(client, **kw), [constrained, free]))
    (text, finish), free_answer = both
    assert finish == "stop"
    jsonschema.validate(json.loads(text), ANIMAL)
    assert both[0] == create(client, **constrained)
    assert free_answer == create(client, **free)
    # Two sampled drafts, each with its own grammar.
    r = client.chat.completions.create(model=MODEL, messages=ASK_OBJECT, response_format={"type": "json_object"},
                                       n=2, temperature=0.8, seed=3, max_tokens=40)
    for choice in r.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:
            assert choice.finish_reason == "length" and choice.message.content.startswith("{")


def test_bad_response_formats_are_400s(model_gateway):
    gw = model_gateway

    def ask(response_format):
        return post(gw, "/v1/chat/completions", {"model": MODEL, "messages": ASK_ANIMAL, "max_tokens": 5,
                                                 "response_format": response_format})

    # Valid JSON Schema that llguidance cannot decode under: refused before generation.
    err = assert_error(ask({"type": "json_schema", "json_schema": {
        "name": "no_not", "schema": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}),
        400, param="response_format")
    assert "not" in err["message"]
    # Not a JSON Schema at all; OpenAI's shapes and limits.
    assert_error(ask({"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "objekt"}}}),
                 400, param="response_format.json_schema.schema")
    assert_error(ask({"type": "json_schema", "json_schema": {"name": "has spaces", "schema": ANIMAL}}),
                 400, param="response_format.json_schema.name")
    assert_error(ask({"type": "json_schema", "json_schema": {"schema": ANIMAL}}),
                 400, param="response_format.json_schema.name")
    assert_error(ask({"type": "json_schema"}), 400, param="response_format")
    assert_error(ask({"type": "yaml"}), 400, param="response_format.type")
    # The official client sees OpenAI's error.
    with pytest.raises(openai.BadRequestError) as e:
        gw.client().chat.completions.create(model=MODEL, messages=ASK_ANIMAL, max_tokens=5, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "colour"}}})
    assert e.value.body["param"] == "response_format"
    # text is plain text, as before.
    text, _ = create(gw.client(), messages=ASK_ANIMAL, response_format={"type": "text"}, max_tokens=5)
    assert text == create(gw.client(), messages=ASK_ANIMAL, max_tokens=5)[0]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_backend_passes_response_format_through(settings, start_gateway, stream):
    upstream = StandIn(lambda messages, i: '{"name":"Tom","colour":"grey","legs":4}', free_port()).start()
    backend = OpenAIServerBackend(upstream.url, model="upstream-model")
    try:
        client = start_gateway(settings, backend).client()
        for response_format in (AS_ANIMAL, {"type": "json_object"}, {"type": "text"}):
            text, finish = create(client, stream=stream, messages=ASK_ANIMAL, response_format=response_format,
                                  max_tokens=60)
            assert (text, finish) == ('{"name":"Tom","colour":"grey","legs":4}', "stop")
            assert upstream.requests[-1]["response_format"] == response_format
        create(client, stream=stream, messages=ASK_ANIMAL, max_tokens=60)
        assert "response_format" not in upstream.requests[-1]
    finally:
        backend.close()
        upstream.stop()
