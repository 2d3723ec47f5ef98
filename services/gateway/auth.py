"""Bearer API keys with roles, stored hashed, compared in constant time.

Keys are random 32-byte tokens (``fw-<role>-<urlsafe>``), so a plain SHA-256 is a safe
hash (no dictionary to attack). The store keeps only hashes; the plain key is shown once
when created (``flywheel keys create``).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from services.credentials import holder, token_digest

if TYPE_CHECKING:
    from flywheel.settings import Settings

# What each role may call.
ROLES = {"chat": {"chat", "feedback", "models"}, "ingest": {"events", "models"}, "admin": {"chat", "feedback", "events", "models"}}


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    hash: str
    created_at: str
    name: str = ""


class KeyStore:
    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    @classmethod
    def load(cls, path: Path) -> "KeyStore":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return cls([])
        return cls([ApiKey(**k) for k in data.get("keys", [])])

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # a leftover would keep its own mode
        # Created with mode 600, never readable by others, not even between write and chmod.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(json.dumps({"keys": [k.__dict__ for k in self.keys]}, indent=2))
        os.replace(tmp, path)

    def create(self, role: str, name: str = "") -> str:
        """Add a key; return the plain token (the only time it exists outside the client)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        token = f"fw-{role}-{secrets.token_urlsafe(32)}"
        key_id = f"key_{secrets.token_hex(6)}"
        self.keys.append(ApiKey(key_id, role, token_digest(token), datetime.now(timezone.utc).isoformat(), name))
        return token

    def revoke(self, key_id: str) -> bool:
        before = len(self.keys)
        self.keys = [k for k in self.keys if k.id != key_id]
        return len(self.keys) < before

    def verify(self, token: str) -> ApiKey | None:
        """The key matching ``token``. Every stored hash is compared, in constant time each,
        so the answer's timing says nothing about which key (or how much of one) matched."""
        return holder(token, self.keys, lambda key: key.hash)


def allowed(key: ApiKey, action: str) -> bool:
    return action in ROLES.get(key.role, set())


# -- keys for the local stack ------------------------------------------------------------
DEV_KEYS_FILE = "dev_api_keys.json"


def dev_keys_path(data_path: Path) -> Path:
    """Where `flywheel up` keeps the plain local keys: DATA_DIR/dev_api_keys.json."""
    return Path(data_path) / DEV_KEYS_FILE


def ensure_dev_keys(settings: Settings) -> dict[str, str]:
    """For the local stack: a chat and an ingest key, created once, their plain values kept
    in DATA_DIR/dev_api_keys.json for the simulator and for you. The file is created with
    mode 600, so the keys are never readable by others, not even for a moment."""
    path = dev_keys_path(settings.data_path)
    if path.exists():
        return json.loads(path.read_text())
    store = KeyStore.load(settings.keys_path)
    plain = {role: store.create(role, name="dev") for role in ("chat", "ingest")}
    store.save(settings.keys_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(json.dumps(plain, indent=2))
    return plain


def dev_key(settings: Settings, role: str) -> str | None:
    """The local stack's plain key for ``role``, if `flywheel up` made one."""
    path = dev_keys_path(settings.data_path)
    return json.loads(path.read_text()).get(role) if path.exists() else None
