"""Tool calls on the local backend: the prompt format, the grammar of a forced call, and the
calls parsed out of each draft as it streams.

The bundled model's chat template (SmolLM2, ChatML) knows nothing of tools, so the backend
renders them itself, in the Hermes format that Qwen2.5's template writes and vLLM's
``hermes`` tool parser reads (``--tool-call-parser hermes``): a model fine-tuned on what this
backend serves can move to vLLM unchanged.

Prompt (:func:`render_messages`). When the request offers tools and ``tool_choice`` is not
``none``, the system message (the client's own first, if any) ends with::

    # Tools

    You may call one or more functions to assist with the user query.

    You are provided with function signatures within <tools></tools> XML tags:
    <tools>
    {"type": "function", "function": {"name": "get_weather", "description": ..., "parameters": {...}}}
    </tools>

    For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call>

(one tool per line, as ``json.dumps`` writes it). In the history, an assistant turn that
called tools is its text (if any), then each call as
``<tool_call>\\n{"name":"get_weather","arguments":{"city":"Paris"}}\\n</tool_call>``
(compact JSON: what the grammar below makes the model write), calls separated by a newline;
the results, the ``tool`` messages that follow it, become one ``user`` turn of
``<tool_response>\\n...\\n</tool_response>`` blocks, in order. With ``tool_choice: none``
the tools are left out of the prompt (the model answers in text) and the history is
rendered the same way.

Decoding (:func:`tool_grammar`). ``tool_choice`` ``required`` or a named function: every
draft is decoded under an llguidance Lark grammar whose only sentences are tool calls in
the format above, each call's JSON one of the offered functions (``{"name": <const>,
"arguments": <its parameters' JSON Schema>}``, a function without ``parameters`` takes
``{}``), compact (no optional whitespace, so a raw newline can only end the JSON). One call
for a named function or ``parallel_tool_calls: false``; otherwise one to
:data:`MAX_CALLS`, one per line. Every call is therefore well-formed and its arguments
validate against the function's schema. ``auto``: free decoding, or, with a
``response_format`` JSON Schema, a grammar that allows either calls or that document.
The grammar is compiled by ``grammar.Grammars`` like a ``response_format``'s (cached, a
400 naming ``tools[i].function.parameters`` when llguidance cannot use a schema).

Parsing (:class:`CallParser`, wired in by :class:`ToolCallGeneration`). The engine emits
text; each draft's text goes through a parser before the gateway sees it:

- forced calls (grammar): streamed as OpenAI streams them: a first piece with the call's
  id (``call_`` and 32 hex digits) and name, then the ``arguments`` text as it is decoded;
- ``auto``: text before a ``<tool_call>`` is content (streamed, a prefix of the tag held
  back); a ``<tool_call>...</tool_call>`` block (or an unclosed one at the end) whose JSON
  has a ``name`` among the offered tools and ``arguments`` (or ``parameters``) that are a
  JSON object becomes a call; any other block is kept as plain content (a parse failure is
  never an error). Whitespace around calls is dropped. With ``parallel_tool_calls: false``
  calls after the first are dropped.

A draft that made calls finishes with ``tool_calls`` (``stop`` for a named function, as
OpenAI and vLLM answer); ``length`` stays ``length``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flywheel.domains.tool_calls import NO_PARAMETERS, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, compact_json, parse_call_body
from serving.backends.base import Generation, GenerationRequest, ToolCallDelta
from serving.backends.local.grammar import JSON_OPTIONS, Constraint

#: Most calls one draft may make under a forced grammar (``parallel_tool_calls`` on): a
#: bound, so that a small model repeating itself stops.
MAX_CALLS = 8

TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex}"


# -- the prompt --------------------------------------------------------------------------------

def tools_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(dict(t), ensure_ascii=False) for t in tools))


def render_call(call: Mapping[str, Any]) -> str:
    """One call of the history, as the model writes one."""
    function = call["function"]
    try:
        arguments = json.loads(function["arguments"]) if function["arguments"].strip() else {}
    except ValueError:
        arguments = function["arguments"]  # kept as the client sent it
    return f"{TOOL_CALL_OPEN}\n{compact_json({'name': function['name'], 'arguments': arguments})}\n{TOOL_CALL_CLOSE}"


def render_messages(request: GenerationRequest) -> list[dict]:
    """The request's messages as the model's plain chat template takes them (see the module
    docstring). A request without tools or tool turns gets its messages back as they were."""
    messages = [dict(m) for m in request.messages]
    tools = request.tools if request.effective_tool_choice != "none" else ()
    if not tools and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return [{"role": m["role"], "content": m["content"] or ""} for m in messages]
    out: list[dict] = []
    if tools:
        block = tools_prompt(tools)
        if messages and messages[0]["role"] == "system":
            first = messages.pop(0)
            block = f"{first['content']}\n\n{block}" if first["content"] else block
        out.append({"role": "system", "content": block})
    for m in messages:
        if m["role"] == "tool":
            result = f"<tool_response>\n{m['content'] or ''}\n</tool_response>"
            if out and out[-1].get("_results"):
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result, "_results": True})
        elif m.get("tool_calls"):
            parts = [m["content"]] if m.get("content") else []
            parts += [render_call(c) for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            out.append({"role": m["role"], "content": m["content"] or ""})
    return [{"role": m["role"], "content": m["content"]} for m in out]


# -- the grammar -------------------------------------------------------------------------------

def _call_schema(function: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one call of ``function``: its name, and arguments under its
    parameters' schema (whose ``$defs`` move to the root, where its ``$ref`` s point)."""
    params = dict(function.get("parameters") or NO_PARAMETERS)
    defs = {k: params.pop(k) for k in ("$defs", "definitions") if k in params}
    params.pop("$schema", None)
    return {"x-guidance": dict(JSON_OPTIONS), "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False, **defs}


def named_function(tool_choice) -> str | None:
    if isinstance(tool_choice, Mapping):
        return tool_choice["function"]["name"]
    return None


def tool_grammar(request: GenerationRequest, response_schema: Mapping[str, Any] | None) -> Constraint | None:
    """The grammar a request's drafts decode under because of its tools: forced calls for
    ``required`` or a named function, calls or the ``response_format`` document for
    ``auto`` with one; None when the tools ask for no grammar."""
    choice = request.effective_tool_choice
    if not request.tools or choice == "none" or (choice == "auto" and response_schema is None):
        return None
    name = named_function(choice)
    functions = [t["function"] for t in request.tools if name is None or t["function"]["name"] == name]
    alternatives = " | ".join(f"f{i}" for i in range(len(functions)))
    single = name is not None or request.parallel_tool_calls is False
    calls = "call" if single else f'call ("\\n" call){{0,{MAX_CALLS - 1}}}'
    lines = [f"start: {calls}" if choice != "auto" else
             f"start: {calls} | %json {compact_json({'x-guidance': dict(JSON_OPTIONS), **response_schema})}",
             f'call: "{TOOL_CALL_OPEN}\\n" ({alternatives}) "\\n{TOOL_CALL_CLOSE}"']
    lines += [f"f{i}: %json {compact_json(_call_schema(f))}" for i, f in enumerate(functions)]
    index = {t["function"]["name"]: i for i, t in enumerate(request.tools)}
    return Constraint("lark", "\n".join(lines) + "\n", param="tools",
                      parts=tuple((f"tools[{index[f['name']]}].function.parameters", _call_schema(f)) for f in functions))


# -- parsing the drafts ---------------------------------------------------------------------------

def parse_call(body: str) -> tuple[str, str] | None:
    """``(name, arguments as compact JSON)`` of a call's JSON, or None if it is not one."""
    parsed = parse_call_body(body)
    return None if parsed is None else (parsed[0], compact_json(parsed[1]))


def _held(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


_HEADER = re.compile(re.escape(TOOL_CALL_OPEN) + r'\n\{"name":"([^"\\]*)","arguments":')


class CallParser:
    """Splits one draft's text, as it arrives, into content and tool-call pieces
    (:class:`~serving.backends.base.ToolCallDelta`). ``forced``: the draft decodes under
    :func:`tool_grammar`'s forced calls, so its format is certain and arguments stream as
    they come; otherwise calls are parsed block by block (see the module docstring)."""

    def __init__(self, names: Sequence[str], *, forced: bool, parallel: bool = True,
                 new_id: Callable[[], str] = new_call_id):
        self.names = set(names)
        self.forced = forced
        self.parallel = parallel
        self.new_id = new_id
        self.made = 0
        self._buf = ""
        self._in_call = False
        self._ws = ""  # whitespace held back: content only if text follows it
        self._after_call = False
        # forced: the text of the current call from its "<tool_call>", and how much of its arguments went out
        self._sent_args = 0
        self._header_sent = False

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        """The content and call pieces ``text`` completes; ``final`` on the draft's last piece."""
        self._buf += text
        if self.forced:
            return "", self._forced(final)
        content: list[str] = []
        calls: list[ToolCallDelta] = []
        while True:
            if not self._in_call:
                at = self._buf.find(TOOL_CALL_OPEN)
                if at >= 0:
                    self._text(self._buf[:at], content)
                    self._buf, self._in_call = self._buf[at + len(TOOL_CALL_OPEN):], True
                    continue
                keep = 0 if final else _held(self._buf, TOOL_CALL_OPEN)
                self._text(self._buf[:len(self._buf) - keep], content)
                self._buf = self._buf[len(self._buf) - keep:]
                break
            end = self._buf.find(TOOL_CALL_CLOSE)
            if end < 0 and not final:
                break
            body = self._buf if end < 0 else self._buf[:end]
            raw = TOOL_CALL_OPEN + (self._buf if end < 0 else self._buf[:end + len(TOOL_CALL_CLOSE)])
            self._buf = "" if end < 0 else self._buf[end + len(TOOL_CALL_CLOSE):]
            self._in_call = False
            self._call(body, raw, content, calls)
        if final and not self.made:
            content.append(self._ws)
            self._ws = ""
        return "".join(content), calls

    def _text(self, text: str, out: list[str]) -> None:
        if self._after_call:
            text = text.lstrip()
        if not text:
            return
        self._after_call = False
        body = text.rstrip()
        if not body:
            self._ws += text
            return
        out.append(self._ws + body)
        self._ws = text[len(body):]

    def _call(self, body: str, raw: str, content: list[str], calls: list[ToolCallDelta]) -> None:
        parsed = parse_call(body.strip())
        if parsed is None or parsed[0] not in self.names:
            self._text(raw, content)  # not a call of an offered tool: plain text
            return
        self._ws, self._after_call = "", True
        if self.made and not self.parallel:
            return  # parallel_tool_calls false: at most one call
        calls.append(ToolCallDelta(self.made, self.new_id(), parsed[0], ""))
        calls.append(ToolCallDelta(self.made, arguments=parsed[1]))
        self.made += 1

    def _forced(self, final: bool) -> list[ToolCallDelta]:
        out: list[ToolCallDelta] = []
        while True:
            head = _HEADER.search(self._buf)
            if head is None:
                return out
            if not self._header_sent:
                out.append(ToolCallDelta(self.made, self.new_id(), head.group(1), ""))
                self._header_sent = True
            args = self._buf[head.end():]
            end = args.find("\n")  # no raw newline inside compact JSON: the call's line ends here
            if end >= 0:
                whole = args[:end - 1]  # without the call object's closing brace
            elif final:
                whole = args[:-1] if _parses(args[:-1]) else args
            else:
                whole = args[:-1] if args.endswith("}") else args  # that brace may close the call object
            if len(whole) > self._sent_args:
                out.append(ToolCallDelta(self.made, arguments=whole[self._sent_args:]))
                self._sent_args = len(whole)
            if end < 0:
                return out
            self._buf = args[end + 1:]
            self._header_sent, self._sent_args = False, 0
            self.made += 1


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


class ToolCallGeneration(Generation):
    """A :class:`~serving.backends.base.Generation` whose drafts' text goes through a
    :class:`CallParser` each: what the engine puts comes out as content and tool-call
    pieces, and a draft that made calls finishes with ``tool_calls`` (``stop`` for a named
    function). The engine's worker thread calls ``put`` one draft piece at a time."""

    def __init__(self, n: int, parsers: Sequence[CallParser], *, named: bool):
        super().__init__(n)
        self._parsers = list(parsers)
        self._named = named

    def put(self, index: int, text: str, finish_reason: str | None = None, *,
            tool_calls: tuple[ToolCallDelta, ...] = (), logprobs: tuple = ()) -> None:
        parser = self._parsers[index]
        content, calls = parser.feed(text, final=finish_reason is not None)
        if finish_reason == "stop" and parser.made and not self._named:
            finish_reason = "tool_calls"
        if content or calls or logprobs or finish_reason is not None:
            super().put(index, content, finish_reason, tool_calls=tuple(calls), logprobs=logprobs)


def generation_for(request: GenerationRequest, forced: bool) -> Generation:
    """The request's :class:`Generation`: a plain one unless tools are offered (and not
    turned off with ``tool_choice: none``)."""
    choice = request.effective_tool_choice
    if not request.tools or choice == "none":
        return Generation(request.n)
    names = [t["function"]["name"] for t in request.tools]
    parallel = request.parallel_tool_calls is not False
    return ToolCallGeneration(request.n, [CallParser(names, forced=forced, parallel=parallel) for _ in range(request.n)],
                              named=named_function(choice) is not None)


__all__ = ["CallParser", "MAX_CALLS", "ToolCallGeneration", "generation_for", "parse_call", "render_messages",
           "tool_grammar", "tools_prompt"]
