"""Serving a chat completion: check the request against the gateway's limits, resolve the
alias to a model version, submit to the backend, build the answer (or stream it) and emit
the interaction event.

Both answers are built from the same backend iterator (``serving.backends.base.DraftAssembler``
adds up what the stream sends), so they cannot disagree: text, tool calls (``call_`` ids,
``function.arguments`` in pieces, ``finish_reason`` ``tool_calls``) and log-probabilities.
A request is checked before generation: fields between them must agree (a named
``tool_choice`` among ``tools``, a ``tool`` message answering a call), and every optional
feature it asks for must be one the backend honours (``Backend.supports``), else a 400
naming the field. The event is emitted once the answer is complete, failed, or abandoned by
the client; every text in it is redacted and the user pseudonymised first. Emitting only
appends to the local spool (see streams.producer), so a down broker never slows a request.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from serving.backends.base import (
    BackendError,
    DraftAssembler,
    DraftResult,
    Generation,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
)
from services.gateway.context import Caller, RequestContext
from services.gateway.errors import APIError, from_backend, not_found, too_large
from services.gateway.limits import ReleasingIterator
from services.gateway.gateway import Gateway
from services.gateway.protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChoiceLogprobs,
    DeltaFunction,
    DeltaMessage,
    DeltaToolCall,
    FunctionCallOut,
    ToolCallOut,
    UsageInfo,
)
from streams.event_size import EventTooLarge, fit_interaction, json_size
from streams.schemas import MAX_ID_CHARS, MAX_NAME_CHARS, MAX_TEXT_CHARS, Interaction, new_id, utcnow
from streams.spool import Reservation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatStream:
    """A streamed answer: ``events`` yields its server-sent events, ``data: [DONE]`` last.
    Nothing runs until it is iterated; closing it early counts as a client disconnect."""

    ctx: RequestContext
    events: Iterator[str]


@dataclass(frozen=True)
class _Call:
    """One accepted chat request on its way through the backend."""

    gw: Gateway
    ctx: RequestContext
    request: GenerationRequest
    params: dict  # as recorded on the interaction
    reservation: Reservation  # room in the spool for the interaction, held since before generation
    recorded: dict  # tools, tool_choice, response_format: recorded as sent

    def emit(self, gen: Generation | None, drafts: list[DraftResult] | None = None,
             error: Exception | None = None) -> None:
        emit_interaction(self.gw, self.ctx, self.request.messages, self.params, gen, drafts=drafts, error=error,
                         reservation=self.reservation, recorded=self.recorded)


def create_chat_completion(gw: Gateway, req: ChatCompletionRequest, caller: Caller) -> ChatCompletion | ChatStream:
    """Serve ``req``: the finished answer, or a :class:`ChatStream` when ``req.stream``.
    Raises :class:`APIError` for what the client must change or the backend's failure."""
    call = _accept(gw, req, caller)
    try:
        gen = gw.backend.submit(call.request)
    except BackendError as e:
        call.emit(None, error=e)
        raise from_backend(e) from None
    except BaseException:
        call.reservation.release()
        raise
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        # Closed by the server even when never started (the client left first): the room goes back.
        return ChatStream(call.ctx, ReleasingIterator(_stream(call, gen, include_usage), call.reservation))
    try:
        drafts = gen.drafts()
    except BackendError as e:
        call.emit(gen, error=e)
        raise from_backend(e) from None
    except BaseException:
        call.reservation.release()
        raise
    call.emit(gen, drafts=drafts)
    usage = _usage(gen)
    gw.metrics.tokens.labels("completion").inc(usage.completion_tokens)
    ctx = call.ctx
    return ChatCompletion(
        id=ctx.request_id,
        created=ctx.created,
        model=ctx.alias,
        system_fingerprint=ctx.system_fingerprint,
        choices=[ChatCompletionChoice(index=i, message=_message(d), finish_reason=d.finish_reason,
                                      logprobs=ChoiceLogprobs(content=d.logprobs) if req.logprobs else None)
                 for i, d in enumerate(drafts)],
        usage=usage,
    )


def _message(d: DraftResult) -> ChatCompletionMessage:
    """A finished draft as OpenAI's message: no text and tool calls is ``content: null``."""
    calls = [ToolCallOut(id=c["id"], function=FunctionCallOut(**c["function"])) for c in d.tool_calls]
    return ChatCompletionMessage(content=None if calls and not d.text else d.text, tool_calls=calls or None)


def _accept(gw: Gateway, req: ChatCompletionRequest, caller: Caller) -> _Call:
    """Check ``req`` against what this gateway implements and allows, and route it."""
    limits = gw.settings.gateway
    bad = req.unsupported()
    if bad:
        hint = " Use 'tools' and 'tool_choice'." if bad in ("functions", "function_call") else ""
        raise APIError(400, f"'{bad}' is not supported by this gateway.{hint}", param=bad, code="unsupported_parameter")
    wrong = req.inconsistency()
    if wrong:
        raise APIError(400, wrong[1], param=wrong[0], code="invalid_value")
    table = gw.router.table  # one table for the whole request, even if a new one arrives
    if req.model not in table.routes:
        raise not_found(f"The model '{req.model}' does not exist. Available: {', '.join(table.routes)}.",
                        code="model_not_found", param="model")
    if req.n > limits.max_n:
        raise APIError(400, f"Invalid value for 'n': at most {limits.max_n}.", param="n", code="invalid_value")
    max_tokens = req.max_completion_tokens or req.max_tokens or gw.settings.model.default_max_tokens
    if max_tokens > limits.max_tokens_limit:
        raise APIError(400, f"Invalid value for 'max_tokens': at most {limits.max_tokens_limit}.",
                       param="max_tokens", code="invalid_value")
    meta = req.metadata or {}
    for name, limit in (("session_id", MAX_ID_CHARS), ("app", MAX_NAME_CHARS)):
        if len(meta.get(name) or "") > limit:
            raise APIError(400, f"Invalid value for 'metadata.{name}': at most {limit} characters.",
                           param=f"metadata.{name}", code="invalid_value")
    session_id = caller.session_id or meta.get("session_id") or new_id("sess-")
    user_id = gw.pseudonym(req.user)
    version = table.choose(req.model, user_id or session_id)  # sticky per user, else per session
    ctx = RequestContext(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        session_id=session_id,
        app=caller.app or meta.get("app") or limits.app,
        user_id=user_id,
        key_id=caller.key_id,
        key_role=caller.key_role,
        alias=req.model,
        version=version,
        system_fingerprint=f"{gw.backend.name}:{version}",
        task_type=meta.get("task_type"),
        created=int(time.time()),
        created_at=utcnow(),
    )
    request, params, recorded = _generation_request(req, max_tokens, version)
    unsupported = [f for f in request.features() if f not in getattr(gw.backend, "supports", frozenset())]
    if unsupported:
        field = unsupported[0] if unsupported[0] != "tools" or req.tools else "messages"
        raise APIError(400, f"'{field}' is not supported by the {gw.backend.name} backend of this gateway"
                       f"{' (tool calls in the history)' if field == 'messages' else ''}.", param=field,
                       code="unsupported_parameter")
    size = _check_recordable(gw, request.messages, {**params, **recorded}, meta)
    # Room for the interaction, held until it is spooled: a full spool refuses the request here (503),
    # before generation, so an answer is never given without its record.
    reservation = gw.reserve(min(size + req.n * max_tokens * _BYTES_PER_TOKEN, gw.settings.events.max_event_bytes))
    gw.bindings.remember(ctx.request_id, caller.key_id, user_id, req.n)  # feedback on it is checked against these
    return _Call(gw, ctx, request, params, reservation, recorded)


def _generation_request(req: ChatCompletionRequest, max_tokens: int, version: str) -> tuple[GenerationRequest, dict, dict]:
    """What the backend gets, the sampling parameters the interaction records (optional ones
    only when set) and its other recorded fields (tools, tool_choice, response_format as sent)."""
    response_format = req.response_format.as_sent() if req.response_format else None
    logit_bias = tuple(sorted((int(k), float(v)) for k, v in (req.logit_bias or {}).items()))
    params = SamplingParams(temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens,
                            stop=tuple(req.stop or ()), seed=req.seed,
                            response_format=ResponseFormat(**response_format) if response_format else None,
                            presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
                            logit_bias=logit_bias, logprobs=bool(req.logprobs), top_logprobs=req.top_logprobs or 0)
    recorded_params = {"temperature": req.temperature, "top_p": req.top_p, "max_tokens": max_tokens, "n": req.n,
                       "stop": list(req.stop or []), "seed": req.seed, "stream": req.stream}
    for name in ("presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
                 "parallel_tool_calls"):
        value = getattr(req, name)
        if value is not None:
            recorded_params[name] = value
    tools = tuple(t.model_dump(mode="json", exclude_unset=True) for t in req.tools or ())
    tool_choice = req.tool_choice if isinstance(req.tool_choice, str) or req.tool_choice is None else \
        req.tool_choice.model_dump(mode="json")
    recorded = {"tools": list(tools) or None, "tool_choice": tool_choice, "response_format": response_format}
    request = GenerationRequest(messages=tuple(m.as_backend() for m in req.messages), params=params, n=req.n,
                                version=version, tools=tools, tool_choice=tool_choice,
                                parallel_tool_calls=req.parallel_tool_calls)
    return request, recorded_params, {k: v for k, v in recorded.items() if v is not None}


#: What an interaction holds besides its messages, params and drafts (ids, times, usage, tags), generously.
_EVENT_OVERHEAD = 2048
#: Spool room held per token a draft may have (a token is a few characters; JSON escapes some).
#: A longer answer is still recorded while the spool has room beyond what is held.
_BYTES_PER_TOKEN = 16


def _check_recordable(gw: Gateway, messages: tuple[dict, ...], recorded: dict, meta: dict) -> int:
    """Refuse, before generation, a request whose interaction could not be recorded: a
    message over the event schema's per-message cap (400), or a prompt whose event would be
    over ``events.max_event_bytes`` before any draft is added (413). Drafts are cut to fit
    later (streams.event_size). Returns the event's size without drafts."""
    for i, m in enumerate(messages):
        if len(m["content"] or "") > MAX_TEXT_CHARS:
            raise APIError(400, f"Invalid value for 'messages[{i}].content': at most {MAX_TEXT_CHARS:,} characters "
                           f"(got {len(m['content']):,}).", param=f"messages[{i}].content", code="string_above_max_length")
        for k, c in enumerate(m.get("tool_calls") or ()):
            if len(c["function"]["arguments"]) > MAX_TEXT_CHARS:
                raise APIError(400, f"Invalid value for 'messages[{i}].tool_calls[{k}].function.arguments': at most "
                               f"{MAX_TEXT_CHARS:,} characters.", param=f"messages[{i}].tool_calls[{k}].function.arguments",
                               code="string_above_max_length")
    size = json_size(list(messages)) + json_size(recorded) + json_size(meta) + _EVENT_OVERHEAD
    limit = gw.settings.events.max_event_bytes
    if size > limit:
        raise too_large(f"The request is too large to record: its messages take {size:,} bytes as an event, over the "
                        f"limit of {limit:,} bytes (events.max_event_bytes). Send a shorter prompt.", param="messages")
    return size


def _usage(gen: Generation) -> UsageInfo:
    completion = sum(gen.completion_tokens)
    return UsageInfo(prompt_tokens=gen.prompt_tokens, completion_tokens=completion,
                     total_tokens=gen.prompt_tokens + completion)


def _sse(data: dict, ensure_ascii: bool = True) -> str:
    return "data: " + json.dumps(data, ensure_ascii=ensure_ascii) + "\n\n"


def _stream(call: _Call, gen: Generation, include_usage: bool) -> Iterator[str]:
    ctx, n = call.ctx, call.request.n

    def chunk(choices: list[ChatCompletionChunkChoice], usage: UsageInfo | None = None) -> str:
        c = ChatCompletionChunk(id=ctx.request_id, created=ctx.created, model=ctx.alias,
                                system_fingerprint=ctx.system_fingerprint, choices=choices, usage=usage)
        return _sse(c.model_dump(mode="json"), ensure_ascii=False)

    drafts = DraftAssembler(n)
    with_logprobs = call.request.params.logprobs
    finished = False
    try:
        for i in range(n):
            yield chunk([ChatCompletionChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
        for d in gen:
            drafts.add(d)
            logprobs = ChoiceLogprobs(content=list(d.logprobs)) if with_logprobs and d.logprobs else None
            if d.text or d.tool_calls or logprobs:
                delta = DeltaMessage(content=d.text or None, tool_calls=[
                    DeltaToolCall(index=t.index, id=t.id, type="function" if t.id else None,
                                  function=DeltaFunction(name=t.name, arguments=t.arguments if t.id or t.arguments else None))
                    for t in d.tool_calls] or None)
                yield chunk([ChatCompletionChunkChoice(index=d.index, delta=delta, logprobs=logprobs)])
            if d.finish_reason:
                yield chunk([ChatCompletionChunkChoice(index=d.index, delta=DeltaMessage(), finish_reason=d.finish_reason)])
        if include_usage:
            yield chunk([], usage=_usage(gen))
        yield "data: [DONE]\n\n"
        finished = True
        call.gw.metrics.tokens.labels("completion").inc(sum(gen.completion_tokens))
        call.emit(gen, drafts=drafts.drafts)
    except BackendError as e:
        finished = True
        yield _sse(from_backend(e).body())
        call.emit(gen, error=e)
    finally:
        if not finished:  # the client went away mid-stream
            gen.cancel()
            call.emit(gen, error=BackendError("client disconnected before the answer was complete", 499))


def emit_interaction(gw: Gateway, ctx: RequestContext, messages: tuple[dict, ...], params: dict,
                     gen: Generation | None, drafts: list[DraftResult] | None = None,
                     error: Exception | None = None, reservation: Reservation | None = None,
                     recorded: dict | None = None) -> None:
    """Record one chat completion (answered or failed) as an ``interaction`` event. It never
    fails the request (the answer is already computed): drafts too large for the event are
    cut (streams.event_size); an event that still cannot be spooled (spool full, invalid) is
    counted in ``flywheel_events_lost{reason}`` and logged."""
    try:
        event = gw.privacy.interaction(_interaction(gw, ctx, messages, params, gen, drafts, error, recorded or {}))
        event, data = fit_interaction(event, gw.settings.events.max_event_bytes)
        if event.tags.get("labels", {}).get("truncated"):
            log.warning("interaction %s: drafts cut by %s characters to fit events.max_event_bytes",
                        event.request_id, event.tags["labels"]["truncated_chars"])
        gw.emit([(gw.topics["interactions"], event.session_id, data)], reservation)
    except Exception as e:  # noqa: BLE001 - after the answer nothing may turn into a 500 or a broken stream
        reason = ("spool_full" if isinstance(e, APIError) and e.status == 503 else
                  "too_large" if isinstance(e, EventTooLarge) or (isinstance(e, APIError) and e.status == 413) else
                  "invalid" if isinstance(e, ValidationError) else "error")
        gw.metrics.events_lost.labels(reason).inc()
        log.error("interaction %s was not recorded (%s): %s", ctx.request_id, reason, e,
                  exc_info=reason == "error")
    finally:
        if reservation is not None:
            reservation.release()  # a no-op once the event used it


def _stored_message(m: dict) -> dict:
    """A history message as the event holds it: text content ("" for an assistant turn that
    only called tools) and the tool fields when set."""
    out = {"role": m["role"], "content": m["content"] or ""}
    for key in ("name", "tool_calls", "tool_call_id"):
        if m.get(key):
            out[key] = m[key]
    return out


def _stored_draft(i: int, d: DraftResult) -> dict:
    out = {"index": i, "content": d.text, "finish_reason": d.finish_reason}
    if d.tool_calls:
        out["tool_calls"] = d.tool_calls
    return out


def _interaction(gw: Gateway, ctx: RequestContext, messages: tuple[dict, ...], params: dict,
                 gen: Generation | None, drafts: list[DraftResult] | None, error: Exception | None,
                 recorded: dict) -> Interaction:
    now = time.monotonic()
    timing = {"total_ms": round((now - gen.created) * 1000, 3) if gen else 0.0}
    if gen is not None and gen.first_token_at is not None:
        timing["ttft_ms"] = round((gen.first_token_at - gen.created) * 1000, 3)
    tags = {"source": "gateway"}
    if ctx.task_type:
        tags["task_type"] = ctx.task_type
    return Interaction(
        event_id=new_id("ev-"),
        request_id=ctx.request_id,
        session_id=ctx.session_id,
        turn=max(1, sum(1 for m in messages if m["role"] == "user")),
        user_id=ctx.user_id,
        app=ctx.app,
        created_at=ctx.created_at,
        model_alias=ctx.alias,
        model_version=ctx.version,
        messages=[_stored_message(m) for m in messages],  # redacted with the rest (privacy)
        drafts=[_stored_draft(i, d) for i, d in enumerate(drafts or [])],
        params=params,
        **recorded,
        usage={"prompt_tokens": gen.prompt_tokens if gen else 0,
               "completion_tokens": sum(gen.completion_tokens) if gen else 0},
        timing=timing,
        status="error" if error is not None else "ok",
        error={"type": type(error).__name__, "message": str(error), "status": getattr(error, "status", None)} if error else None,
        tags=tags,
    )
