"""The gateway's OpenAPI document (GET /openapi.json): every route of ``routes``, with the
request and response bodies of ``protocol`` (the models the views validate with)."""

from __future__ import annotations

from functools import lru_cache

from services.gateway.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    FeedbackAccepted,
    FeedbackRequest,
    ModelList,
)
from services.openapi import Operation, document, openapi_path, ref
from streams.schemas import MAX_ID_CHARS, MAX_NAME_CHARS, Feedback, Interaction

#: Headers recorded on events (refused with 400 past the event schema's limits).
HEADERS = (
    {"name": "X-Session-Id", "in": "header", "required": False, "description": "Session the request belongs to.",
     "schema": {"type": "string", "maxLength": MAX_ID_CHARS}},
    {"name": "X-App", "in": "header", "required": False, "description": "Name of the calling application.",
     "schema": {"type": "string", "maxLength": MAX_NAME_CHARS}},
)

OPERATIONS = [
    Operation("/v1/chat/completions", "POST", "Create a chat completion (OpenAI's API); recorded as an interaction.",
              body=ChatCompletionRequest, response=ChatCompletion, params=HEADERS,
              errors=(400, 404, 413, 429, 502, 503)),
    Operation("/v1/feedback", "POST", "Record feedback on an answer (its 'id' is the request_id).",
              body=FeedbackRequest, response=FeedbackAccepted, params=HEADERS, errors=(400, 403, 404, 413, 429, 503)),
    Operation("/v1/events", "POST", "Ingest interactions and feedback recorded elsewhere; each item is validated "
              "on its own.", body=EventsRequest, response=EventsResponse, params=HEADERS, errors=(400, 413, 429, 503)),
    Operation("/v1/models", "GET", "The public model aliases and the versions each routes to.", response=ModelList,
              params=HEADERS, errors=(429,)),
    Operation("/healthz", "GET", "Health: backend, event spool and sender (503 when the backend is down).",
              public=True),
    Operation("/metrics", "GET", "Prometheus metrics.", media="text/plain", response={"type": "string"}, public=True),
    Operation("/openapi.json", "GET", "This document.", public=True),
]


def _ingest_item(model) -> tuple[dict, dict]:
    """An ingest item: the event's schema, where ``event_id`` and ``created_at`` may be left
    to the gateway and a raw ``user`` is pseudonymised (services/gateway/ingest.py). Its
    nested parts are named ``Event*`` (streams.schemas has its own ``ErrorInfo``)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/Event{model}")
    defs = {f"Event{name}": part for name, part in schema.pop("$defs", {}).items()}
    schema["required"] = [f for f in schema.get("required", []) if f not in ("event_id", "created_at")]
    schema["properties"] = {**schema["properties"], "user": {"type": "string"}}
    return schema, defs


@lru_cache(maxsize=4)
def openapi(auth: bool = True) -> dict:
    """The document; ``auth`` False (``gateway.auth`` off) drops the credentials."""
    security = {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key (`flywheel keys create`)."}}
    doc = document("Flywheel gateway", "1", "OpenAI-compatible chat completions that record traffic and feedback "
                   "for the data flywheel. Errors use OpenAI's format.", OPERATIONS,
                   models=[ChatCompletionChunk], error=ErrorResponse, security=security if auth else {})
    schemas = doc["components"]["schemas"]
    items = []
    for model in (Interaction, Feedback):
        schemas[f"{model.__name__}Ingest"], defs = _ingest_item(model)
        schemas.update(defs)
        items.append(ref(f"{model.__name__}Ingest"))
    schemas["EventsRequest"]["properties"]["events"]["items"] = {"anyOf": items}
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    chat["content"]["text/event-stream"] = {"schema": {  # one server-sent event (with stream: true)
        "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}},
        "description": "Each event's data is a ChatCompletionChunk as JSON; the last one is '[DONE]'."}}
    if not auth:
        for op in OPERATIONS:
            item = doc["paths"][openapi_path(op.rule)][op.method.lower()]
            item["security"] = []
            item["responses"].pop("401", None)
            if 403 not in op.errors:
                item["responses"].pop("403", None)
    return doc
