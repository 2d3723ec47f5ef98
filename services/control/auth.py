"""Operator authentication for every route of the control plane and the console.

Who: an API client sends ``Authorization: Bearer <operator token>``; a browser logs in on
/console/login with a token and then carries a signed session cookie (Flask's session, a
secret key per data directory, HttpOnly, SameSite=Strict). The session names the token, so
revoking the token ends the session on its next request.

What each role may do: a route declares its role with ``@requires(role)`` or ``@public``;
one that declares nothing needs ``viewer`` to read (GET/HEAD) and ``admin`` for anything
else, so a new route is never open by accident.

Cross-site requests: every state change from a console session must carry the session's
CSRF token (``X-CSRF-Token`` header or ``csrf_token`` form field); bearer requests are
exempt, since a browser cannot attach that header cross-site. The Host header must be one
of ``control.trusted_hosts`` (Flask's TRUSTED_HOSTS), against DNS rebinding.

Every state-changing request an operator makes is written to the audit log
(services/control/audit.py) after it is answered, refusals included.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import timedelta
from typing import Callable
from urllib.parse import quote

from flask import Flask, g, redirect, request, session

from flywheel.errors import FlywheelError
from flywheel.settings import Settings
from services.control import audit
from services.control.errors import error_json
from services.control.operators import RANK, LiveOperators, Operator, write_private

log = logging.getLogger(__name__)

PUBLIC = "public"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Endpoints whose view functions cannot carry a mark (a blueprint's static files).
PUBLIC_ENDPOINTS = frozenset({"static", "console.static"})
SECRET_KEY_FILE = "console_secret_key"
LOGIN_PATH = "/console/login"


class AuthError(FlywheelError):
    """A request without a valid operator (401) or with too small a role (403)."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status


def requires(role: str) -> Callable:
    """Mark a view: it needs ``role`` (viewer, reviewer, admin) or above."""
    if role not in RANK:
        raise ValueError(f"unknown role {role!r}")

    def mark(view):
        view.operator_role = role
        return view

    return mark


def public(view):
    """Mark a view as open to anyone (health checks, the login page)."""
    view.operator_role = PUBLIC
    return view


def require_role(role: str) -> Operator:
    """Inside a view: the current operator, who must have ``role`` or above (for a rule that
    depends on the body, e.g. approving by filter)."""
    op = g.get("operator")
    if op is None:
        raise AuthError("send an operator token: Authorization: Bearer <token> (`flywheel operators create`)")
    if not op.can(role):
        raise AuthError(f"this needs the {role} role; {op.name!r} is a {op.role}", 403)
    return op


def current_operator() -> Operator | None:
    return g.get("operator")


def required_role(app: Flask, endpoint: str, method: str) -> str:
    """What a request to ``endpoint`` with ``method`` needs: the view's mark, else viewer to
    read and admin to change anything."""
    if endpoint in PUBLIC_ENDPOINTS:
        return PUBLIC
    declared = getattr(app.view_functions.get(endpoint), "operator_role", None)
    if declared:
        return declared
    return "viewer" if method in SAFE_METHODS else "admin"


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok() -> bool:
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    expected = session.get("csrf") or ""
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def secret_key(settings: Settings) -> bytes:
    """The session-signing key of this data directory, made once (mode 600)."""
    path = settings.data_path / SECRET_KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if len(key) < 32:
        key = secrets.token_hex(32)
        write_private(path, key + "\n")
    return key.encode()


def trusted_hosts(settings: Settings) -> list[str]:
    """``control.trusted_hosts`` and ``control.host`` (the address the CLI and the plane's own
    jobs call, 0.0.0.0 included: a rebinding attack names the attacker's domain, never an
    address). Empty settings list: any host."""
    hosts = list(settings.control.trusted_hosts)
    bound = settings.control.host.strip()
    if hosts and bound and ":" not in bound and bound not in hosts:
        hosts.append(bound)
    return hosts


def init_app(app: Flask, settings: Settings, plane, operators: LiveOperators) -> None:
    """Session, trusted hosts, the guard before every request and the audit after each."""
    app.secret_key = secret_key(settings)
    app.config.update(
        # Named by port: cookies ignore ports, and two control planes on one host must not share one.
        SESSION_COOKIE_NAME=f"flywheel_session_{settings.control.port}", SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.control.session_hours),
        TRUSTED_HOSTS=trusted_hosts(settings) or None)
    app.extensions["operators"] = operators
    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.errorhandler(AuthError)
    def _auth_error(e: AuthError):
        kind = "authentication_error" if e.status == 401 else "permission_error"
        resp, _ = error_json(str(e), e.status, type=kind)
        resp.status_code = e.status
        if e.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="flywheel-control"'
        return resp

    def identify() -> tuple[Operator | None, str | None, bool]:
        """(operator, how it came, whether a bearer token was sent and refused)."""
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            op = operators.verify(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
            return op, ("job" if op is not None and op.id.startswith("job") else "token"), op is None
        op_id = session.get("op")
        if op_id:
            op = operators.find(op_id)
            if op is None:  # its token was revoked: the session ends here
                session.pop("op", None)
            return op, "session", False
        return None, None, False

    @app.before_request
    def guard():
        if request.endpoint is None:  # no such route, or an untrusted Host: Flask answers
            return None
        role = required_role(app, request.endpoint, request.method)
        op, via, refused = identify()
        g.operator, g.operator_via = op, via
        if role == PUBLIC:
            return None
        if op is None:
            if refused:
                log.warning("refused an unknown operator token from %s for %s %s", request.remote_addr,
                            request.method, request.path)
                raise AuthError("the operator token is not valid (revoked, or never made here); "
                                "`flywheel operators list` shows the valid ones")
            if request.method in SAFE_METHODS and request.path.startswith("/console"):
                return redirect(f"{LOGIN_PATH}?next={quote(request.full_path.rstrip('?'), safe='/?=&')}")
            raise AuthError("log in: send Authorization: Bearer <operator token> (the local one is in "
                            "DATA_DIR/operator_token; `flywheel operators create` makes others)")
        if via == "session" and request.method not in SAFE_METHODS and not csrf_ok():
            raise AuthError("missing or wrong CSRF token: reload the console page and try again", 403)
        if not op.can(role):
            raise AuthError(f"this needs the {role} role; {op.name!r} is a {op.role}", 403)
        return None

    @app.after_request
    def _audit(resp):
        op = g.get("operator")
        if request.method in SAFE_METHODS or request.endpoint is None or op is None:
            return resp
        detail = request.get_json(silent=True) if request.is_json else (request.form.to_dict() or None)
        try:
            with plane.reader() as cur:
                audit.record(cur, op, request.endpoint, via=g.get("operator_via"), method=request.method,
                             path=request.path, target=(request.view_args or {}).get("version")
                             or (request.view_args or {}).get("alias"), status=resp.status_code, detail=detail)
        except Exception:  # noqa: BLE001 - the change is made; a lost audit row is logged loudly, not a 500
            log.exception("could not write the audit row of %s %s by %s", request.method, request.path, op.name)
        return resp
