"""OpenAPI 3.1 documents of the HTTP services (served at ``/openapi.json``), built from the
same pydantic models the views validate with, so the document cannot drift from the code
(``model_json_schema``; OpenAPI 3.1 takes JSON Schema 2020-12 as pydantic writes it).

Each service lists its operations (``Operation``); ``document`` turns them into paths and
components, and ``uncovered`` names the routes of an app's ``url_map`` the document lacks
(tests/test_openapi.py fails on any, so a new route needs its entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"
JSON = "application/json"


def ref(model: type[BaseModel] | str) -> dict:
    return {"$ref": REF.format(model=model if isinstance(model, str) else model.__name__)}


@dataclass(frozen=True)
class Operation:
    """One method on one path (Flask's rule syntax: ``/api/models/<version>``)."""

    rule: str
    method: str
    summary: str
    body: type[BaseModel] | dict | None = None  # request body: a model (validation schema) or a JSON Schema
    ok: int = 200
    response: type[BaseModel] | dict | None = None  # the success body (JSON)
    media: str = JSON  # the success body's media type
    errors: tuple[int, ...] = ()
    params: tuple[dict, ...] = ()  # query and header parameters
    public: bool = False  # no credentials needed
    extra: dict = field(default_factory=dict)  # merged into the operation object


def openapi_path(rule: str) -> str:
    """``/api/models/<version>`` -> ``/api/models/{version}`` (converters dropped)."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _schema(part: type[BaseModel] | dict | None) -> dict:
    if part is None:
        return {"type": "object"}
    return ref(part) if isinstance(part, type) else part


def document(title: str, version: str, description: str, operations: list[Operation], *,
             models: list[type[BaseModel]], error: type[BaseModel] | dict, security: dict) -> dict:
    """The OpenAPI document of ``operations``; ``models`` go in components (request models in
    their validation form, the rest as serialised), ``error`` is every error's body."""
    request_models = {op.body for op in operations if isinstance(op.body, type)}
    all_models = list(dict.fromkeys([*models, *request_models, *(op.response for op in operations
                                                                  if isinstance(op.response, type))]))
    if isinstance(error, type):
        all_models.append(error)
    _, defs = models_json_schema([(m, "validation" if m in request_models else "serialization") for m in all_models],
                                 ref_template=REF)
    components: dict[str, Any] = dict(defs.get("$defs", {}))
    paths: dict[str, dict] = {}
    for op in operations:
        path = openapi_path(op.rule)
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                  for name in re.findall(r"\{([^}]+)\}", path)]
        responses: dict[str, Any] = {str(op.ok): {"description": op.summary if op.ok < 300 else "redirect",
                                                  "content": {op.media: {"schema": _schema(op.response)}}}}
        for status in sorted(set(op.errors) | ({401, 403} if not op.public else set()) | {500}):
            responses[str(status)] = {"description": _REASONS.get(status, "error"),
                                      "content": {JSON: {"schema": _schema(error)}}}
        item: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op), "responses": responses}
        if params or op.params:
            item["parameters"] = params + list(op.params)
        if op.body is not None:
            # Required unless every field has a default (then an empty body is the defaults).
            required = not isinstance(op.body, type) or bool(op.body.model_json_schema().get("required"))
            item["requestBody"] = {"required": required, "content": {JSON: {"schema": _schema(op.body)}}}
        item["security"] = [] if op.public else [{name: []} for name in security]
        item.update(op.extra)
        paths.setdefault(path, {})[op.method.lower()] = item
    return {"openapi": "3.1.0", "info": {"title": title, "version": version, "description": description},
            "paths": paths, "components": {"schemas": components, "securitySchemes": security}}


def _operation_id(op: Operation) -> str:
    words = re.sub(r"[^a-zA-Z0-9]+", "_", op.rule).strip("_") or "root"
    return f"{op.method.lower()}_{words}"


_REASONS = {400: "invalid request", 401: "no or wrong credentials", 403: "not allowed for these credentials",
            404: "not found", 405: "method not allowed", 409: "busy or conflicting", 413: "too large",
            415: "unsupported media type", 422: "cannot be processed", 429: "rate limited",
            500: "internal error (logged)", 502: "the model backend failed", 503: "unavailable"}


def covered(doc: dict) -> set[tuple[str, str]]:
    """(OpenAPI path, METHOD) pairs the document describes."""
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item}


def uncovered(app: Flask, doc: dict, *, skip=lambda rule: False) -> list[str]:
    """Routes of ``app`` (METHOD rule) the document does not describe; ``skip(rule)`` leaves
    some out (e.g. the console's HTML pages)."""
    have = covered(doc)
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or skip(rule):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if (openapi_path(rule.rule), method) not in have:
                out.append(f"{method} {rule.rule}")
    return out
