"""Typed context of a request: who called (from the HTTP edge) and, for a chat completion,
how the gateway resolved it (ids, routing, times). It travels from the route through the
serving logic to the interaction event, in place of a dict of loose keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Caller:
    """What the edge knows about the caller before reading the body."""

    key_id: str | None = None  # None when the gateway runs without auth
    key_role: str | None = None
    session_id: str | None = None  # the X-Session-Id header
    app: str | None = None  # the X-App header


@dataclass(frozen=True)
class RequestContext:
    """One chat completion as resolved by the gateway."""

    request_id: str  # the response ``id``; feedback refers to it
    session_id: str  # header, else metadata, else a new one
    app: str  # header, else metadata, else ``gateway.app``
    user_id: str | None  # pseudonymous (never the raw ``user``)
    key_id: str | None
    key_role: str | None
    alias: str  # the public model name the client asked for
    version: str  # the model version the router chose for this user or session
    system_fingerprint: str  # "<backend>:<version>"
    task_type: str | None  # from metadata, when the client knows it
    created: int  # unix seconds, the response's ``created``
    created_at: datetime  # the interaction's ``created_at``
