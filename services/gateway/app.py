"""The gateway: an OpenAI-compatible Flask app that serves the model and emits events.

Routes stay thin: validate, call the backend or the producer, translate errors. Every
interaction and feedback is redacted and pseudonymised *before* it is emitted; emitting
only appends to the local spool (see streams.producer), so a down broker never slows a
request. The response ``id`` of a chat completion is the request id feedback refers to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, g, jsonify, request, stream_with_context
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from flywheel.settings import Settings
from serving.backends.base import Backend, BackendError, GenerationRequest, PromptTooLong, SamplingParams
from serving.routing import Router, RoutingError, RoutingTable
from services.gateway import metrics as gm
from services.gateway.auth import KeyStore, allowed
from services.gateway.errors import APIError, backend_error, forbidden, from_validation, not_found, unauthorized
from services.gateway.protocol import ChatCompletionRequest, EventsRequest, FeedbackRequest
from streams.producer import EventProducer
from streams.redact import Redactor
from streams.schemas import Feedback, Interaction, new_id, utcnow
from streams.spool import SpoolFull
from streams.topics import topic_names

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """The long-lived objects of one gateway, kept in ``app.extensions["flywheel"]``."""

    settings: Settings
    backend: Backend
    producer: EventProducer
    keys: KeyStore
    redactor: Redactor | None
    topics: dict[str, str]
    router: Router  # alias -> weighted versions, sticky per user; follows the control plane
    metrics: gm.GatewayMetrics

    def pseudonym(self, user: str | None) -> str | None:
        if not user:
            return None
        return "u_" + hmac.new(self.settings.privacy.user_salt.encode(), user.encode(), hashlib.sha256).hexdigest()[:24]

    def redact(self, text: str) -> str:
        return self.redactor.redact(text) if self.redactor else text

    def emit(self, items: list[tuple[str, str | None, object]]) -> None:
        try:
            self.producer.emit_many(items)
        except SpoolFull as e:
            raise APIError(503, str(e), type="service_unavailable", code="event_spool_full") from None
        for topic, _, _ in items:
            self.metrics.events.labels(topic).inc()

    def close(self, drain_timeout: float = 10.0) -> None:
        """Stop: drain the spool to Kafka for up to ``drain_timeout`` (the rest stays on disk)."""
        self.router.close()
        self.producer.close(drain_timeout=drain_timeout)
        self.backend.close()


def create_app(settings: Settings, *, backend: Backend | None = None, producer: EventProducer | None = None,
               keys: KeyStore | None = None) -> Flask:
    """Build the gateway. ``backend``/``producer``/``keys`` default to those the settings
    describe; tests and benchmarks pass their own."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.gateway.max_body_bytes
    app.json.sort_keys = False
    if backend is None:
        from serving.backends import make_backend

        backend = make_backend(settings)
    if producer is None:
        producer = EventProducer.from_settings(settings, client_id="gateway")
    redactor = None
    if settings.privacy.redact:
        redactor = Redactor(settings.privacy.kinds, settings.privacy.extra_patterns)
    gw = Gateway(
        settings=settings,
        backend=backend,
        producer=producer,
        keys=keys if keys is not None else KeyStore.load(settings.keys_path),
        redactor=redactor,
        topics=topic_names(settings),
        router=_make_router(settings, backend),
        metrics=gm.GatewayMetrics(producer, backend),
    )
    app.extensions["flywheel"] = gw
    _register(app, gw)
    if settings.gateway.routing_poll_s > 0:
        gw.router.follow(f"{settings.control_url}/api/routing", settings.gateway.routing_poll_s)
    return app


def _make_router(settings: Settings, backend: Backend) -> Router:
    def prepare(table: RoutingTable) -> None:
        """Load the adapters a table routes to before any request can be routed there."""
        for version, path in table.adapters.items():
            if version not in backend.versions():
                load = getattr(backend, "load_adapter", None)
                if load is None:
                    raise RoutingError(f"the {backend.name} backend cannot load adapter {version!r}")
                load(version, Path(path))
        served = set(backend.versions())
        missing = sorted({v for alias in table.routes for v in table.versions(alias)} - served)
        if missing:
            raise RoutingError(f"the backend does not serve {', '.join(missing)}")

    default = RoutingTable.single(settings.model.alias, settings.model.version)
    return Router(default, cache_path=settings.data_path / "routing_cache.json", prepare=prepare)


def _authorize(gw: Gateway, action: str) -> str | None:
    """Check the bearer key for ``action``; return the key id (None when auth is off)."""
    if not gw.settings.gateway.auth:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    key = gw.keys.verify(token.strip())
    if key is None:
        raise unauthorized("Incorrect API key provided.")
    if not allowed(key, action):
        raise forbidden(f"This API key (role '{key.role}') may not call {request.path}.")
    return key.id


def _json_body() -> dict:
    raw = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw)
    except ValueError:
        raise APIError(400, "We could not parse the JSON body of your request. Send valid JSON with "
                       "'Content-Type: application/json'.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def _parse(model):
    """The JSON body validated as ``model``; validation errors become OpenAI 400s."""
    try:
        return model.model_validate(_json_body())
    except ValidationError as e:
        raise from_validation(e) from None


def _register(app: Flask, gw: Gateway) -> None:
    s = gw.settings

    @app.before_request
    def _start_timer():
        g.t0 = time.perf_counter()

    @app.after_request
    def _count(resp):
        endpoint = request.url_rule.rule if request.url_rule else "unknown"
        gw.metrics.requests.labels(endpoint, str(resp.status_code)).inc()
        gw.metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("t0", time.perf_counter()))
        return resp

    @app.errorhandler(APIError)
    def _api_error(e: APIError):
        return e.response()

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e):
        return APIError(413, f"Request body too large: the limit is {s.gateway.max_body_bytes} bytes.",
                        code="request_too_large").response()

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(e.code, None)
        msg = f"Unrecognized request URL ({request.method} {request.path})." if e.code == 404 else e.description
        return APIError(e.code or 500, msg, code=code).response()

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error on %s", request.path)
        return APIError(500, "The gateway had an internal error; it was logged.", type="server_error").response()

    # -- chat ----------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    def chat_completions():
        _authorize(gw, "chat")
        req = _parse(ChatCompletionRequest)
        bad = req.unsupported()
        if bad:
            raise APIError(400, f"'{bad}' is not supported by this gateway.", param=bad, code="unsupported_parameter")
        table = gw.router.table  # one table for the whole request, even if a new one arrives
        if req.model not in table.routes:
            raise not_found(f"The model '{req.model}' does not exist. Available: {', '.join(table.routes)}.",
                            code="model_not_found", param="model")
        if req.n > s.gateway.max_n:
            raise APIError(400, f"Invalid value for 'n': at most {s.gateway.max_n}.", param="n", code="invalid_value")
        max_tokens = req.max_completion_tokens or req.max_tokens or s.model.default_max_tokens
        if max_tokens > s.gateway.max_tokens_limit:
            raise APIError(400, f"Invalid value for 'max_tokens': at most {s.gateway.max_tokens_limit}.",
                           param="max_tokens", code="invalid_value")
        messages = tuple({"role": m.role, "content": m.text()} for m in req.messages)
        params = SamplingParams(temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens,
                                stop=tuple(req.stop or ()), seed=req.seed)
        meta = req.metadata or {}
        session_id = request.headers.get("X-Session-Id") or meta.get("session_id") or new_id("sess-")
        user_id = gw.pseudonym(req.user)
        version = table.choose(req.model, user_id or session_id)  # sticky per user, else per session
        ctx = {
            "request_id": f"chatcmpl-{uuid.uuid4().hex}",
            "session_id": session_id,
            "app": request.headers.get("X-App") or meta.get("app") or s.gateway.app,
            "user_id": user_id,
            "task_type": meta.get("task_type"),
            "created": int(time.time()),
            "created_at": utcnow(),
            "version": version,
        }
        record = {"temperature": req.temperature, "top_p": req.top_p, "max_tokens": max_tokens, "n": req.n,
                  "stop": list(req.stop or []), "seed": req.seed, "stream": req.stream}
        try:
            gen = gw.backend.submit(GenerationRequest(messages=messages, params=params, n=req.n, version=version))
        except BackendError as e:
            _emit_interaction(gw, ctx, req, messages, record, None, error=e)
            raise _as_api_error(e) from None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return Response(stream_with_context(_stream(gw, ctx, req, messages, record, gen, include_usage)),
                            mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Request-Id": ctx["request_id"]})
        try:
            drafts = gen.collect()
        except BackendError as e:
            _emit_interaction(gw, ctx, req, messages, record, gen, error=e)
            raise _as_api_error(e) from None
        _emit_interaction(gw, ctx, req, messages, record, gen, drafts=drafts)
        usage = _usage(gen)
        gw.metrics.tokens.labels("completion").inc(usage["completion_tokens"])
        return jsonify({
            "id": ctx["request_id"],
            "object": "chat.completion",
            "created": ctx["created"],
            "model": req.model,
            "system_fingerprint": f"{gw.backend.name}:{version}",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": reason}
                for i, (text, reason) in enumerate(drafts)
            ],
            "usage": usage,
        })

    # -- feedback ------------------------------------------------------------------
    @app.post("/v1/feedback")
    def feedback():
        _authorize(gw, "feedback")
        body = _parse(FeedbackRequest)
        try:
            event = Feedback(
                event_id=new_id("fb-"), request_id=body.request_id, draft=body.draft, kind=body.kind,
                value=body.value, text=gw.redact(body.text) if body.text is not None else None,
                user_id=gw.pseudonym(body.user), session_id=body.session_id or request.headers.get("X-Session-Id"),
                app=request.headers.get("X-App") or s.gateway.app, created_at=utcnow(),
                comment=gw.redact(body.comment) if body.comment is not None else None,
            )
        except ValidationError as e:
            raise from_validation(e) from None
        gw.emit([(gw.topics["feedback"], event.request_id, event)])
        return jsonify({"id": event.event_id, "object": "feedback", "request_id": event.request_id,
                        "kind": event.kind, "status": "accepted"})

    # -- batch ingest --------------------------------------------------------------
    @app.post("/v1/events")
    def events():
        _authorize(gw, "events")
        body = _parse(EventsRequest)
        if len(body.events) > s.gateway.max_batch_events:
            raise APIError(413, f"Too many events in one batch: at most {s.gateway.max_batch_events}.",
                           param="events", code="batch_too_large")
        results, accepted = [], []
        for i, item in enumerate(body.events):
            try:
                event = _ingest_item(gw, item)
            except ValidationError as e:
                err = from_validation(e, prefix=("events", i))
                results.append({"index": i, "status": "rejected", "error": {"message": err.message, "param": err.param}})
                continue
            except ValueError as e:
                results.append({"index": i, "status": "rejected", "error": {"message": str(e), "param": f"events[{i}]"}})
                continue
            topic = gw.topics["interactions" if event.type == "interaction" else "feedback"]
            key = event.session_id if event.type == "interaction" else event.request_id
            accepted.append((topic, key, event))
            results.append({"index": i, "status": "accepted", "event_id": event.event_id})
        if accepted:
            gw.emit(accepted)
        return jsonify({"object": "list", "accepted": len(accepted), "rejected": len(body.events) - len(accepted),
                        "data": results})

    # -- models, health, metrics ---------------------------------------------------
    @app.get("/v1/models")
    def models():
        _authorize(gw, "models")
        table = gw.router.table
        return jsonify({"object": "list", "data": [
            {"id": alias, "object": "model", "created": 0, "owned_by": "flywheel",
             "versions": {r.version: r.weight for r in routes}}
            for alias, routes in table.routes.items()
        ]})

    @app.get("/healthz")
    def healthz():
        stats = gw.producer.stats()
        backend = gw.backend.health()
        ok = backend.get("ok", False)
        status = "down" if not ok else ("degraded" if stats["broker_up"] is False else "ok")
        return jsonify({"status": status, "backend": backend, "events": stats}), (200 if ok else 503)

    @app.get("/metrics")
    def metrics():
        return Response(gw.metrics.render(), mimetype=gm.CONTENT_TYPE)


def _as_api_error(e: BackendError) -> APIError:
    if isinstance(e, PromptTooLong):
        return APIError(400, str(e), param="messages", code="context_length_exceeded")
    if e.status == 400:
        return APIError(400, f"The model backend refused the request: {e}", code="invalid_request")
    return backend_error(e.status if e.status in (502, 503) else 502, f"The model backend failed: {e}")


def _usage(gen) -> dict:
    completion = sum(gen.completion_tokens)
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": completion,
            "total_tokens": gen.prompt_tokens + completion}


def _emit_interaction(gw: Gateway, ctx: dict, req: ChatCompletionRequest, messages, params: dict, gen,
                      drafts: list[tuple[str, str]] | None = None, error: Exception | None = None) -> None:
    now = time.monotonic()
    timing = {"total_ms": round((now - gen.created) * 1000, 3) if gen else 0.0}
    if gen is not None and gen.first_token_at is not None:
        timing["ttft_ms"] = round((gen.first_token_at - gen.created) * 1000, 3)
    tags = {"source": "gateway"}
    if ctx["task_type"]:
        tags["task_type"] = ctx["task_type"]
    event = Interaction(
        event_id=new_id("ev-"),
        request_id=ctx["request_id"],
        session_id=ctx["session_id"],
        turn=max(1, sum(1 for m in messages if m["role"] == "user")),
        user_id=ctx["user_id"],
        app=ctx["app"],
        created_at=ctx["created_at"],
        model_alias=req.model,
        model_version=ctx["version"],
        messages=[{"role": m["role"], "content": gw.redact(m["content"])} for m in messages],
        drafts=[{"index": i, "content": gw.redact(t), "finish_reason": r} for i, (t, r) in enumerate(drafts or [])],
        params=params,
        usage={"prompt_tokens": gen.prompt_tokens if gen else 0,
               "completion_tokens": sum(gen.completion_tokens) if gen else 0},
        timing=timing,
        status="error" if error is not None else "ok",
        error={"type": type(error).__name__, "message": str(error), "status": getattr(error, "status", None)} if error else None,
        tags=tags,
    )
    try:
        gw.emit([(gw.topics["interactions"], event.session_id, event)])
    except APIError:
        # The answer is already computed; a full spool must not turn it into an error, but
        # the loss is counted and logged loudly (the spool bound is the operator's choice).
        gw.metrics.events_lost.inc()
        log.error("event spool full: interaction %s was not recorded", event.request_id)


def _stream(gw: Gateway, ctx: dict, req: ChatCompletionRequest, messages, params: dict, gen, include_usage: bool):
    base = {"id": ctx["request_id"], "object": "chat.completion.chunk", "created": ctx["created"], "model": req.model,
            "system_fingerprint": f"{gw.backend.name}:{ctx['version']}"}

    def sse(choices, **extra) -> str:
        return "data: " + json.dumps({**base, "choices": choices, **extra}, ensure_ascii=False) + "\n\n"

    texts = [""] * req.n
    reasons: list[str | None] = [None] * req.n
    finished = False
    try:
        for i in range(req.n):
            yield sse([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
        for d in gen:
            texts[d.index] += d.text
            if d.text:
                yield sse([{"index": d.index, "delta": {"content": d.text}, "logprobs": None, "finish_reason": None}])
            if d.finish_reason:
                reasons[d.index] = d.finish_reason
                yield sse([{"index": d.index, "delta": {}, "logprobs": None, "finish_reason": d.finish_reason}])
        if include_usage:
            yield sse([], usage=_usage(gen))
        yield "data: [DONE]\n\n"
        finished = True
        gw.metrics.tokens.labels("completion").inc(sum(gen.completion_tokens))
        _emit_interaction(gw, ctx, req, messages, params, gen, drafts=list(zip(texts, [r or "stop" for r in reasons])))
    except BackendError as e:
        finished = True
        err = _as_api_error(e)
        yield "data: " + json.dumps(err.body()) + "\n\n"
        _emit_interaction(gw, ctx, req, messages, params, gen, error=e)
    finally:
        if not finished:  # the client went away mid-stream
            gen.cancel()
            _emit_interaction(gw, ctx, req, messages, params, gen,
                              error=BackendError("client disconnected before the answer was complete", 499))


def _ingest_item(gw: Gateway, item: dict):
    """Validate one ingest item into an event: fills event_id/created_at when absent,
    pseudonymises a raw ``user``, redacts every text field."""
    if not isinstance(item, dict):
        raise ValueError("each event must be a JSON object")
    kind = item.get("type")
    if kind not in ("interaction", "feedback"):
        raise ValueError("each event needs 'type': 'interaction' or 'feedback'")
    data = dict(item)
    data.setdefault("event_id", new_id("ev-" if kind == "interaction" else "fb-"))
    data.setdefault("created_at", utcnow().isoformat())
    if "user" in data:
        user = data.pop("user")
        if not isinstance(user, str):
            raise ValueError("'user' must be a string")
        data["user_id"] = gw.pseudonym(user)
    if kind == "interaction":
        data.setdefault("tags", {"source": "ingest"})
        event = Interaction.model_validate_json(json.dumps(data))
        return event.model_copy(update={
            "messages": [{**m, "content": gw.redact(m["content"])} for m in event.messages],
            "drafts": [{**d, "content": gw.redact(d["content"])} for d in event.drafts],
        })
    event = Feedback.model_validate_json(json.dumps(data))
    return event.model_copy(update={
        "text": gw.redact(event.text) if event.text is not None else None,
        "comment": gw.redact(event.comment) if event.comment is not None else None,
    })
