"""The landing's fast validation (msgspec mirrors of the event models) never accepts a
record pydantic refuses, and reads what pydantic reads from the ones it accepts."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import msgspec
import pytest
from pydantic import ValidationError

from streams.fast_validation import fast_validator
from streams.schemas import EVENT_MODELS, Deployment, Feedback, Interaction, Metrics, Review

NOW = "2026-11-30T23:04:05.123456Z"
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}
VALID: dict[str, list[dict]] = {
    "interaction": [
        {"event_id": "e1", "request_id": "r1", "session_id": "s1", "created_at": NOW, "model_alias": "a",
         "model_version": "base", "messages": [{"role": "user", "content": "hi"}],
         "drafts": [{"index": 0, "content": "hello", "finish_reason": "stop"}]},
        json.loads(Interaction(
            event_id="e2", request_id="r2", session_id="s2", turn=3, user_id="u_1", app="analytics",
            created_at=datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc), model_alias="a", model_version="v7",
            messages=[{"role": "system", "content": "sys", "name": None},
                      {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
                      {"role": "tool", "content": "42", "tool_call_id": "call_1"}],
            drafts=[{"index": 0, "content": "", "finish_reason": "tool_calls", "tool_calls": [TOOL_CALL]}],
            params={"temperature": 0.2, "n": 1, "nested": {"a": [1, None, True]}},
            usage={"prompt_tokens": 3, "completion_tokens": 4}, timing={"total_ms": 5.5, "ttft_ms": 1},
            tags={"task_type": "t", "robustness": ["typo"], "source": "gateway", "labels": {"k": "v"}},
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}, "strict": True}}],
            tool_choice={"type": "function", "function": {"name": "lookup"}},
            response_format={"type": "json_object"}).model_dump_json()),
        {"schema_version": 1, "event_id": "e3", "request_id": "r3", "session_id": "s3",
         "created_at": "2026-01-02T03:04:05+08:00", "model_alias": "a", "model_version": "b", "status": "error",
         "error": {"type": "timeout", "message": "slow", "status": 504}, "messages": [{"role": "user", "content": "x"}]},
    ],
    "feedback": [
        {"event_id": "f1", "request_id": "r1", "kind": "thumb", "value": -1, "created_at": NOW},
        {"event_id": "f2", "request_id": "r1", "kind": "rating", "value": 5, "created_at": NOW, "draft": 1,
         "user_id": "u", "session_id": "s", "app": "x", "comment": "ok", "tool_call_id": "call_1"},
        {"event_id": "f3", "request_id": "r1", "kind": "edit", "text": "better", "tool_calls": [TOOL_CALL],
         "created_at": "2026-11-30T23:04:05-05:30"},
        {"event_id": "f4", "request_id": "r1", "kind": "copy", "created_at": "2026-11-30T23:04:05Z"},
    ],
    "dead_letter": [{"event_id": "t:0:1", "source_topic": "t", "partition": 0, "offset": 1, "key": None,
                     "reason": "bad", "payload": "{", "created_at": NOW}],
    "deployment": [json.loads(Deployment(event_id="d1", alias="a", candidate="c", production="p", action="advance",
                                         status="canary", weights={"c": 0.1, "p": 0.9}, reason="r",
                                         created_at=datetime.now(timezone.utc)).model_dump_json())],
    "metrics": [json.loads(Metrics(event_id="m1", alias="a", model_version="v", window_start=datetime.now(timezone.utc),
                                   window_s=60, requests=3, latency_buckets={"12": 3}, worker="w",
                                   created_at=datetime.now(timezone.utc)).model_dump_json())],
    "review": [json.loads(Review(event_id="v1", candidate_id="c", action="edit", edited_response="x", reviewer="me",
                                 created_at=datetime.now(timezone.utc)).model_dump_json()),
               {"event_id": "v2", "candidate_id": "c", "action": "approve", "reviewer": "auto:x", "created_at": NOW}],
}

# Values tried in place of every field, at every depth: the other JSON types, boundaries of
# the constraints, spellings msgspec and pydantic might read differently.
REPLACEMENTS = [None, True, False, 0, 1, -1, 2, 1.0, 1.5, -0.0, 2**64, "", "x", "x" * 129, "x" * 257, "\u00e9" * 128,
                "\U0001F600" * 129, [], [{}], {}, {"x": 1}, "ok", "error", "thumb", "edit", "user", "function",
                "2026-11-30T23:04:05Z", "2026-11-30T23:04:05", "2026-11-30 23:04:05Z", "2026-02-30T00:00:00Z",
                "2026-11-30T23:04:05.1234567Z", "2026-11-30T23:04:60Z", "2026-11-30T24:00:00Z", "2026-11-30T23:04:05+24:00",
                "2026-11-30T23:04:05-00:00", "2026-11-30T23:04:05.1+01:00", "0000-01-01T00:00:00Z", "1700000000",
                "\u0661\u0669\u0667\u0660-01-01T00:00:00Z"]
RAW_TEXT = ['{"x":NaN}', '{"x":Infinity}', '{"x":1e400}', '{"x":"\\ud800"}', '{"x":"a\\u0000"}']


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _set(doc, path, value):
    import copy

    doc = copy.deepcopy(doc)
    target = doc
    for p in path[:-1]:
        target = target[p]
    if value is _DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DROP = object()


def _variants(doc):
    """``doc`` with each field (at every depth) dropped, replaced, or given an extra key."""
    yield json.dumps(doc)
    for path in _paths(doc):
        if not path:
            continue
        for value in [_DROP, *REPLACEMENTS]:
            yield json.dumps(_set(doc, path, value))
    for path in _paths(doc):
        node = doc
        for p in path:
            node = node[p]
        if isinstance(node, dict):
            yield json.dumps(_set(doc, (*path, "unexpected"), 1))
            for raw in RAW_TEXT:
                text = json.dumps(_set(doc, (*path, "x"), 0))
                yield text.replace('"x": 0', raw[1:-1].replace('"x":', '"x": '))
    text = json.dumps(doc)
    yield text + "x"
    yield "\ufeff" + text
    yield text.replace('"event_id": ', '"event_id": "dup", "event_id": ', 1)
    yield text.replace('"event_id": ', '"event_id": "dup", "event_id": ', 1).replace(', "event_id": "dup"', "")


def _plain(value):
    if isinstance(value, msgspec.Struct):
        return {k: _plain(v) for k, v in msgspec.structs.asdict(value).items() if v is not msgspec.UNSET}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def test_every_event_model_has_a_mirror():
    """A schema change the mirror cannot reproduce would silently slow the landing down to
    pydantic alone: name it here instead."""
    assert {name: fast_validator(model) is not None for name, model in EVENT_MODELS.items()} == \
        {name: True for name in EVENT_MODELS}


@pytest.mark.parametrize("name", sorted(VALID))
def test_the_mirror_accepts_only_what_pydantic_accepts_and_reads_the_same_values(name):
    model = EVENT_MODELS[name]
    check = fast_validator(model)
    accepted = refused = disagreed = 0
    for text in {t: None for doc in VALID[name] for t in _variants(doc)}:
        raw = text.encode("utf-8", "surrogatepass")
        fast = check(raw)
        try:
            event = model.model_validate_json(raw)
        except (ValidationError, ValueError):
            assert fast is None, f"the mirror accepted what pydantic refuses: {text[:300]}"
            refused += 1
            continue
        if fast is None:
            disagreed += 1  # pydantic decides: slower, not wrong
            continue
        accepted += 1
        assert _plain(fast) == event.model_dump(), text[:300]
    assert accepted >= len(VALID[name]) and refused > accepted
    assert disagreed <= refused  # the mirror vouches for most valid records


def test_valid_records_are_vouched_for_by_the_mirror():
    for name, docs in VALID.items():
        check = fast_validator(EVENT_MODELS[name])
        for doc in docs:
            assert check(json.dumps(doc).encode()) is not None, (name, doc)


def test_the_model_validators_run_on_the_mirror():
    check = fast_validator(Feedback)
    base = {"event_id": "f", "request_id": "r", "created_at": NOW}
    assert check(json.dumps({**base, "kind": "thumb", "value": 1}).encode()) is not None
    assert check(json.dumps({**base, "kind": "thumb", "value": 4}).encode()) is None
    i = fast_validator(Interaction)
    v1 = {**VALID["interaction"][0], "schema_version": 1}
    assert i(json.dumps(v1).encode()) is not None
    v1["messages"] = [{"role": "tool", "content": "x", "tool_call_id": "c"}]
    assert i(json.dumps(v1).encode()) is None  # version 1 has no tool results
    with pytest.raises(ValidationError, match="schema_version 1 has no messages"):
        Interaction.model_validate_json(json.dumps(v1))


def test_a_model_the_mirror_cannot_reproduce_gets_none():
    """Fail closed: a rule the translation does not know leaves pydantic to validate it all."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    strict = ConfigDict(strict=True, extra="forbid")

    class Checked(BaseModel):
        model_config = strict
        x: int

        @model_validator(mode="after")
        def _positive(self):
            return self

    class Nested(BaseModel):
        model_config = strict
        inner: Checked

    class Pattern(BaseModel):
        model_config = strict
        s: str = Field(pattern="^a")

    class Lax(BaseModel):
        x: int

    class LaxField(BaseModel):
        model_config = strict
        x: Annotated[int, Field(strict=False)]

    class FieldValidated(BaseModel):
        model_config = strict
        x: int

        @field_validator("x")
        @classmethod
        def _x(cls, v):
            return v

    assert fast_validator(Checked) is not None
    for model in (Nested, Pattern, Lax, LaxField, FieldValidated):
        assert fast_validator(model) is None, model.__name__
