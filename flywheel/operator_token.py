"""The operator token a client of the control plane sends: ``control.token`` when set, else
the local admin token the control plane's first start wrote to DATA_DIR/operator_token.

Used by the CLI, the gateways' routing follower and anything else that calls the control
plane's API; the server side (hashed store, roles, login) is services/control/operators.py
and services/control/auth.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flywheel.settings import Settings


def operator_token(settings: Settings) -> str | None:
    """The token to send, or None when there is none (no setting, no local file yet)."""
    token = settings.control.token.get_secret_value().strip()
    if token:
        return token
    try:
        return settings.operator_token_path.read_text().strip() or None
    except OSError:
        return None


def operator_headers(settings: Settings) -> dict[str, str]:
    """``Authorization: Bearer ...`` for the control plane, read anew each call (a token
    written after this process started, or replaced, is picked up)."""
    token = operator_token(settings)
    return {"Authorization": f"Bearer {token}"} if token else {}
