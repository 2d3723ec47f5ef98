"""Errors of the control plane's JSON API in OpenAI's format, as the gateway sends them:
``{"error": {"message", "type", "param", "code"}}``. Every API error goes through
``error_json``; ``init_app`` answers Flask's own errors (404, 405, a bad JSON body...) and
anything unexpected the same way (a 500 is logged, never a traceback to the client).
Console pages keep Flask's HTML answers."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

#: The ``code`` of an error that names none, by status.
CODES = {400: "invalid_request", 401: "invalid_operator_token", 403: "insufficient_role", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 413: "request_too_large", 415: "unsupported_media_type",
         422: "unprocessable", 500: "internal_error"}


class BodyError(ValueError):
    """A request body that is not what the route takes (400, naming the field)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_json(message: str, status: int, *, type: str | None = None, param: str | None = None,
               code: str | None = None) -> tuple[Response, int]:
    kind = type or ("server_error" if status >= 500 else "invalid_request_error")
    return jsonify({"error": {"message": message, "type": kind, "param": param,
                              "code": code or CODES.get(status)}}), status


def _is_page() -> bool:
    return request.path.startswith("/console")


def init_app(app: Flask) -> None:
    @app.errorhandler(BodyError)
    def _body_error(e: BodyError):
        return error_json(str(e), 400, param=e.param, code="invalid_value")

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        if _is_page():
            return e
        status = e.code or 500
        message = (f"no route {request.method} {request.path}; the API is described at /openapi.json"
                   if status == 404 else e.description or e.name)
        resp, status = error_json(message, status)
        for name, value in e.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                resp.headers[name] = value
        return resp, status

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        if _is_page():
            return InternalServerError()
        return error_json("the control plane had an internal error; it was logged", 500)
