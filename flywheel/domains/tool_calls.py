"""An answer that calls tools, as one text: the Hermes form the model writes.

Curation, datasets, the teacher and the evaluation pass answers around as text (a
candidate's ``response``, a DPO ``rejected``, a teacher's sample). An answer that called
tools is written the way the model writes it on the local backend
(``serving/backends/local/tools.py``, docs/tools.md) and vLLM's ``hermes`` tool parser
reads it: its text, if any, then each call as::

    <tool_call>
    {"name":"lookup_order","arguments":{"order_id":"A1234"}}
    </tool_call>

(compact JSON, calls separated by a newline). `render_answer` writes that text from
OpenAI's ``tool_calls``; `parse_answer` reads it back (calls get positional ids
``call_0``...; a block that is not a call stays text). `call_key` is what two calls are
compared by: the function's name and its arguments as canonical JSON (key order and
spacing do not matter).

`check_tool_calls` is the tool-call verifier (`training.labeling.verify.verify_tool_calls`
calls it): each called function offered, its arguments a JSON object valid under the
function's JSON Schema (`jsonschema`), a required or named choice answered with a call,
``parallel_tool_calls: false`` with at most one.

This module is the lowest layer (flywheel/domains): it imports nothing above it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flywheel.domains.domain import Verdict

__all__ = ["NO_PARAMETERS", "TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "arguments_of", "call_key", "check_tool_calls", "compact_json", "make_call", "parse_answer", "parse_call_body",
           "render_answer", "tool_names"]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# The schema of a function declared without parameters: it takes none.
NO_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.DOTALL)


def compact_json(value: Any) -> str:
    """JSON without spaces, as the model writes a call and the parsers re-emit arguments."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def arguments_of(call: Mapping[str, Any]) -> Any:
    """A call's arguments as a value: OpenAI's JSON text parsed (TRL's records hold an
    object already); text that does not parse is returned as it is."""
    arguments = (call.get("function") or {}).get("arguments")
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return {} if arguments is None else arguments


def make_call(name: str, arguments: Mapping[str, Any] | str, call_id: str = "call_0") -> dict:
    """One call in OpenAI's shape (arguments as compact JSON text)."""
    text = arguments if isinstance(arguments, str) else compact_json(dict(arguments))
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def render_answer(content: str | None, calls: Sequence[Mapping[str, Any]] | None) -> str:
    """The answer as the model writes it: the text, then one ``<tool_call>`` block per call."""
    parts = [content] if content else []
    for call in calls or ():
        body = {"name": (call.get("function") or {}).get("name"), "arguments": arguments_of(call)}
        parts.append(f"{TOOL_CALL_OPEN}\n{compact_json(body)}\n{TOOL_CALL_CLOSE}")
    return "\n".join(parts)


def parse_answer(text: str | None, names: Sequence[str] | None = None) -> tuple[str, list[dict]]:
    """``(content, calls)`` of an answer's text: each ``<tool_call>`` block (an unclosed one
    at the end too) whose JSON has a string ``name`` (one of `names`, when given) and object
    ``arguments`` becomes a call; anything else is content. Ids are ``call_<position>``."""
    text = text or ""
    content: list[str] = []
    calls: list[dict] = []
    at = 0
    for block in _BLOCK.finditer(text):
        parsed = parse_call_body(block.group(1).strip())
        if parsed is None or (names is not None and parsed[0] not in names):
            continue
        content.append(text[at:block.start()])
        at = block.end()
        calls.append(make_call(parsed[0], parsed[1], f"call_{len(calls)}"))
    content.append(text[at:])
    return "".join(content).strip(), calls


def parse_call_body(body: str) -> tuple[str, dict] | None:
    """``(name, arguments)`` of one call's JSON (arguments as an object, or as JSON text, or
    under "parameters" as some models write them), or None if it is not a call."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    return (value["name"], arguments) if isinstance(arguments, dict) else None


def call_key(call: Mapping[str, Any]) -> tuple[str | None, str]:
    """What a call is compared by: its function's name and canonical arguments."""
    return (call.get("function") or {}).get("name"), json.dumps(arguments_of(call), sort_keys=True,
                                                                 separators=(",", ":"))


def tool_names(tools: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The function names of OpenAI ``tools``."""
    return [t["function"]["name"] for t in tools or () if isinstance(t.get("function"), Mapping)]


def check_tool_calls(tools: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[str, Any]],
                      tool_choice: str | Mapping[str, Any] | None = None,
                      parallel_tool_calls: bool | None = None) -> Verdict:
    """Check the tool ``calls`` of an answer against the ``tools`` offered (see the module
    docstring). ``tool_choice`` None: OpenAI's default (``auto`` with tools). The score is
    the share of checks passed (one per call for the function, one for its arguments, one
    for the choice), so a sample with right names and wrong arguments ranks above one with
    neither."""
    from jsonschema import Draft202012Validator, exceptions, validators

    functions = {t["function"]["name"]: t["function"] for t in tools if t.get("type", "function") == "function"}
    named = tool_choice["function"]["name"] if isinstance(tool_choice, Mapping) else None
    reasons: list[str] = []
    checks = 1
    if (tool_choice == "required" or named) and not calls:
        reasons.append(f"no tool call, though tool_choice is {named or tool_choice!r}")
    elif tool_choice == "none" and calls:
        reasons.append("a tool call, though tool_choice is 'none'")
    elif parallel_tool_calls is False and len(calls) > 1:
        reasons.append(f"{len(calls)} tool calls, though parallel_tool_calls is false")
    for i, call in enumerate(calls):
        checks += 2
        name = (call.get("function") or {}).get("name")
        function = functions.get(name) if named is None or name == named else None
        if function is None:
            offered = named or ", ".join(functions) or "none"
            reasons.append(f"call {i}: function {name!r} was not offered ({offered})")
            reasons.append(f"call {i}: arguments not checked")
            continue
        try:
            arguments = json.loads((call.get("function") or {}).get("arguments") or "{}")
        except ValueError as e:
            reasons.append(f"call {i} ({name}): arguments are not JSON ({e.msg})")
            continue
        if not isinstance(arguments, dict):
            reasons.append(f"call {i} ({name}): arguments are not a JSON object")
            continue
        schema = function.get("parameters") or NO_PARAMETERS
        try:
            validator = validators.validator_for(schema, default=Draft202012Validator)(schema)
            error = next(iter(sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))), None)
        except exceptions.SchemaError as e:
            reasons.append(f"call {i} ({name}): the function's parameters are not a valid JSON Schema ({e.message})")
            continue
        if error is not None:
            where = "/".join(str(p) for p in error.path)
            reasons.append(f"call {i} ({name}): arguments{f' at {where}' if where else ''}: {error.message}")
    return Verdict(not reasons, max(0.0, 1.0 - len(reasons) / checks), reasons)
