"""Errors in OpenAI's error format: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import math

from flask import jsonify
from pydantic import ValidationError

from serving.backends.base import BackendError, PromptTooLong
from services.gateway.protocol import ErrorInfo, ErrorResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump(mode="json")

    def response(self):
        resp = jsonify(self.body())
        resp.status_code = self.status
        resp.headers.update(self.headers)
        return resp


def param_of(loc: tuple) -> str:
    """('messages', 0, 'role') -> 'messages[0].role', as OpenAI names parameters."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _in_param(part) -> bool:
    """Whether a part of pydantic's error location names a field (validator and union tags,
    a dict key's ``[key]`` marker, do not)."""
    return not (isinstance(part, str) and (part.startswith(("function-", "union-")) or part == "[key]"))


def from_validation(error: ValidationError, prefix: tuple = ()) -> APIError:
    first = error.errors()[0]
    loc = prefix + tuple(x for x in first["loc"] if _in_param(x))
    param = param_of(loc) or None
    msg = first["msg"]
    if first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    elif first["type"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: '{param}'."
    else:
        message = f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."
    more = error.error_count() - 1
    if more:
        message += f" ({more} more problem{'s' if more > 1 else ''} in this request.)"
    return APIError(400, message, param=param, code="invalid_value" if first["type"] != "missing" else "missing_required_parameter")


def unauthorized(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")


def forbidden(message: str) -> APIError:
    return APIError(403, message, type="permission_error", code="insufficient_permissions")


def not_found(message: str, code: str = "not_found", param: str | None = None) -> APIError:
    return APIError(404, message, type="invalid_request_error", code=code, param=param)


def too_large(message: str, param: str | None = None) -> APIError:
    """413 for a request whose event would be over ``events.max_event_bytes``."""
    return APIError(413, message, param=param, code="event_too_large")


def rate_limited(message: str, retry_after_s: float) -> APIError:
    """429 as OpenAI sends it (type ``requests``, code ``rate_limit_exceeded``), with the
    whole seconds to wait in ``Retry-After`` (the openai client honours it when it retries)."""
    return APIError(429, message, type="requests", code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


def backend_error(status: int, message: str) -> APIError:
    return APIError(status, message, type="server_error" if status == 502 else "service_unavailable",
                    code="backend_error" if status == 502 else "backend_unavailable")


def from_backend(e: BackendError) -> APIError:
    """A backend failure as the client sees it: a prompt too long is the client's 400,
    the rest keep the backend's 502/503."""
    if isinstance(e, PromptTooLong):
        return APIError(400, str(e), param="messages", code="context_length_exceeded")
    if e.status == 400:
        return APIError(400, f"The model backend refused the request: {e}", param=e.param, code="invalid_request")
    return backend_error(e.status if e.status in (502, 503) else 502, f"The model backend failed: {e}")
