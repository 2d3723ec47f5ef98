"""What the gateway's API keys and the control plane's operator tokens have in common: a
token is stored only as its SHA-256 digest, and a sent token is checked against a stored
digest in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token: what the key and operator files keep instead of it."""
    return hashlib.sha256(token.encode()).hexdigest()


def matches(token: str, stored_digest: str) -> bool:
    """Whether ``token`` is the one whose digest was stored (constant-time comparison)."""
    return hmac.compare_digest(token_digest(token), stored_digest)


def holder(token: str, holders: Iterable[T], digest_of: Callable[[T], str]) -> T | None:
    """The holder whose stored digest matches ``token``. Every stored digest is compared, in
    constant time each, so the answer's timing says nothing about which one (or how much of
    one) matched."""
    wanted, found = token_digest(token), None
    for item in holders:
        if hmac.compare_digest(wanted, digest_of(item)):
            found = item
    return found
