"""The gateway's HTTP edge: one blueprint of thin views. Each view checks the API key,
parses the body into its protocol model, calls one function of the serving logic
(``chat``, ``feedback``, ``ingest``) and answers with that function's protocol model;
errors leave as OpenAI error JSON through the handlers below."""

from __future__ import annotations

import json
import logging
import time

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, stream_with_context
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from services.gateway import metrics as gm
from services.gateway.auth import allowed
from services.gateway.chat import ChatStream, create_chat_completion
from services.gateway.context import Caller
from services.gateway.errors import APIError, forbidden, from_validation, unauthorized
from services.gateway.limits import Lease, ReleasingIterator
from services.gateway.feedback import record_feedback
from services.gateway.gateway import Gateway
from services.gateway.ingest import ingest_events
from services.gateway.openapi import openapi
from services.gateway.protocol import ChatCompletionRequest, EventsRequest, FeedbackRequest
from streams.schemas import MAX_ID_CHARS, MAX_NAME_CHARS

log = logging.getLogger(__name__)

bp = Blueprint("gateway", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def _gateway() -> Gateway:
    return current_app.extensions["flywheel"]


def _header(name: str, limit: int) -> str | None:
    """A header recorded on events, refused (400) past what the event schema holds."""
    value = request.headers.get(name)
    if value is not None and len(value) > limit:
        raise APIError(400, f"Invalid value for header '{name}': at most {limit} characters (got {len(value)}).",
                       param=name, code="invalid_header")
    return value or None


def _authorize(gw: Gateway, action: str) -> Caller:
    """Check the bearer key for ``action``; the caller it identifies, with its headers."""
    caller = Caller(session_id=_header("X-Session-Id", MAX_ID_CHARS), app=_header("X-App", MAX_NAME_CHARS))
    if not gw.settings.gateway.auth:
        return caller
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    key = gw.keys.verify(token.strip())
    if key is None:
        raise unauthorized("Incorrect API key provided.")
    if not allowed(key, action):
        raise forbidden(f"This API key (role '{key.role}') may not call {request.path}.")
    return Caller(key_id=key.id, key_role=key.role, session_id=caller.session_id, app=caller.app)


def _parse(model: type[BaseModel]):
    """The JSON body validated as ``model``; validation errors become OpenAI 400s."""
    raw = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw)
    except ValueError:
        raise APIError(400, "We could not parse the JSON body of your request. Send valid JSON with "
                       "'Content-Type: application/json'.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise from_validation(e) from None


def _json(model: BaseModel, status: int = 200):
    return jsonify(model.model_dump(mode="json")), status


def _admit(gw: Gateway, caller: Caller) -> Lease:
    """The caller's place under its key's rate limit and in-flight cap (429 past them)."""
    try:
        return gw.limiter.admit(caller.key_id or f"addr:{request.remote_addr}")
    except APIError as e:
        gw.metrics.rate_limited.labels(getattr(e, "limit", "rate")).inc()
        raise


# -- views ---------------------------------------------------------------------------------

@bp.post("/v1/chat/completions")
def chat_completions():
    gw = _gateway()
    caller = _authorize(gw, "chat")
    lease = _admit(gw, caller)
    try:
        answer = create_chat_completion(gw, _parse(ChatCompletionRequest), caller)
    except BaseException:
        lease.release()
        raise
    if isinstance(answer, ChatStream):  # in flight until the stream ends or the client leaves
        return Response(stream_with_context(ReleasingIterator(answer.events, lease)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Request-Id": answer.ctx.request_id})
    lease.release()
    return _json(answer)


@bp.post("/v1/feedback")
def feedback():
    gw = _gateway()
    caller = _authorize(gw, "feedback")
    lease = _admit(gw, caller)
    try:
        return _json(record_feedback(gw, _parse(FeedbackRequest), caller))
    finally:
        lease.release()


@bp.post("/v1/events")
def events():
    gw = _gateway()
    caller = _authorize(gw, "events")
    lease = _admit(gw, caller)
    try:
        return _json(ingest_events(gw, _parse(EventsRequest), caller))
    finally:
        lease.release()


@bp.get("/v1/models")
def models():
    gw = _gateway()
    lease = _admit(gw, _authorize(gw, "models"))
    try:
        return _json(gw.models())
    finally:
        lease.release()


@bp.get("/healthz")
def healthz():
    body, ok = _gateway().health()
    return jsonify(body), (200 if ok else 503)


@bp.get("/metrics")
def metrics():
    return Response(_gateway().metrics.render(), mimetype=gm.CONTENT_TYPE)


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(openapi(_gateway().settings.gateway.auth))


# -- request metrics -------------------------------------------------------------------------

@bp.before_app_request
def _start_timer():
    g.t0 = time.perf_counter()


@bp.after_app_request
def _count(resp):
    gw = _gateway()
    endpoint = request.url_rule.rule if request.url_rule else "unknown"
    gw.metrics.requests.labels(endpoint, str(resp.status_code)).inc()
    gw.metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("t0", time.perf_counter()))
    return resp


# -- errors, as OpenAI error JSON ------------------------------------------------------------

@bp.app_errorhandler(APIError)
def _api_error(e: APIError):
    return e.response()


@bp.app_errorhandler(RequestEntityTooLarge)
def _too_large(e):
    limit = _gateway().settings.gateway.max_body_bytes
    return APIError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large").response()


@bp.app_errorhandler(HTTPException)
def _http_error(e: HTTPException):
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(e.code, None)
    msg = f"Unrecognized request URL ({request.method} {request.path})." if e.code == 404 else e.description
    return APIError(e.code or 500, msg, code=code).response()


@bp.app_errorhandler(Exception)
def _unexpected(e: Exception):
    log.exception("unhandled error on %s", request.path)
    return APIError(500, "The gateway had an internal error; it was logged.", type="server_error").response()
