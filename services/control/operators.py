"""Operator tokens of the control plane and the console, with roles, stored hashed.

Roles are ordered: a viewer reads; a reviewer also takes review decisions; an admin also
changes routing, models, rollouts, datasets, curation and refresh runs, and approves by
filter. Tokens are random 32-byte strings (``fwop-<urlsafe>``), so a plain SHA-256 is a
safe hash (no dictionary to attack); the store keeps only hashes, and a plain token is
shown once, when it is created (`flywheel operators create`).

The store is a JSON file (``control.operators_file``, default DATA_DIR/operators.json)
written with mode 600 from the start. The control plane rereads it when it changes, so a
token created or revoked with the CLI counts at once, without a restart.

On its first start with no token at all, the control plane makes an admin token for the
local operator and writes its plain value to DATA_DIR/operator_token (mode 600): the CLI
sends it, and you paste it into the console's login page.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.errors import ConfigError
from services.credentials import holder, matches, token_digest

if TYPE_CHECKING:
    from flywheel.settings import Settings

#: Roles from least to most trusted; each can do what the ones before it can.
ROLES = ("viewer", "reviewer", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
BOOTSTRAP_NAME = "local-admin"


@dataclass(frozen=True)
class Operator:
    id: str
    name: str
    role: str
    created_at: str
    hash: str = ""

    def can(self, role: str) -> bool:
        """Whether this operator's role is ``role`` or above it."""
        return RANK.get(self.role, -1) >= RANK[role]

    def public(self) -> dict:
        """Everything but the hash."""
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": self.created_at}


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, created with mode 600: never readable by others,
    not even for a moment (the temporary file is made with that mode, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OperatorStore:
    def __init__(self, path: Path, operators: list[Operator]):
        self.path = Path(path)
        self.operators = operators

    @classmethod
    def load(cls, path: Path) -> "OperatorStore":
        try:
            data = json.loads(Path(path).read_text())
            return cls(path, [Operator(**o) for o in data.get("operators", [])])
        except FileNotFoundError:
            return cls(path, [])
        except (ValueError, TypeError, AttributeError) as e:
            raise ConfigError(f"the operator tokens file {path} is not valid ({e}); fix or remove it") from None

    def save(self) -> None:
        write_private(self.path, json.dumps({"operators": [asdict(o) for o in self.operators]}, indent=2))

    def create(self, role: str, name: str) -> tuple[Operator, str]:
        """Add a token; return it with its plain value (the only time that exists here)."""
        if role not in RANK:
            raise ConfigError(f"unknown operator role {role!r}; roles: {', '.join(ROLES)}")
        if not name.strip():
            raise ConfigError("an operator token needs a name (who holds it); it is recorded with every change")
        token = f"fwop-{secrets.token_urlsafe(32)}"
        op = Operator(f"op_{secrets.token_hex(6)}", name.strip(), role, datetime.now(timezone.utc).isoformat(),
                      token_digest(token))
        self.operators.append(op)
        return op, token

    def revoke(self, op_id: str) -> Operator | None:
        found = self.find(op_id)
        if found is not None:
            self.operators = [o for o in self.operators if o.id != op_id]
        return found

    def find(self, op_id: str) -> Operator | None:
        return next((o for o in self.operators if o.id == op_id), None)

    def verify(self, token: str) -> Operator | None:
        """The operator holding ``token``. Every stored hash is compared, each in constant
        time, so the timing says nothing about which token (or how much of one) matched."""
        return holder(token, self.operators, lambda op: op.hash)


class LiveOperators:
    """The store as the control plane sees it: reread when the file changes (a token the
    CLI creates or revokes counts at once), plus tokens that live only in this process
    (the one the plane gives its own training and evaluation jobs)."""

    def __init__(self, path: Path, extra: dict[str, Operator] | None = None):
        self.path = Path(path)
        self.extra = dict(extra or {})  # plain token -> operator
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._store = OperatorStore(self.path, [])

    def _current(self) -> OperatorStore:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._store = OperatorStore.load(self.path) if stamp else OperatorStore(self.path, [])
                self._stamp = stamp
            return self._store

    def verify(self, token: str) -> Operator | None:
        for plain, op in self.extra.items():
            if hmac.compare_digest(token_digest(plain), token_digest(token)):
                return op
        return self._current().verify(token)

    def find(self, op_id: str) -> Operator | None:
        found = self._current().find(op_id)
        return found or next((o for o in self.extra.values() if o.id == op_id), None)


def ensure_bootstrap(settings: Settings) -> Path | None:
    """With no operator token at all: make an admin token, write its plain value to
    DATA_DIR/operator_token (mode 600) and return that path; else None. The file is written
    first: a crash in between leaves a stale file that the next start replaces."""
    store = OperatorStore.load(settings.operators_path)
    if store.operators:
        return None
    op, token = store.create("admin", BOOTSTRAP_NAME)
    write_private(settings.operator_token_path, token + "\n")
    store.save()
    return settings.operator_token_path


def create_operator(settings: Settings, role: str, name: str) -> tuple[Operator, str]:
    store = OperatorStore.load(settings.operators_path)
    made = store.create(role, name)
    store.save()
    return made


def list_operators(settings: Settings) -> list[Operator]:
    return OperatorStore.load(settings.operators_path).operators


def revoke_operator(settings: Settings, op_id: str) -> Operator | None:
    """Revoke a token by id; the local token file goes too when it held that token."""
    store = OperatorStore.load(settings.operators_path)
    op = store.revoke(op_id)
    if op is None:
        return None
    store.save()
    local = settings.operator_token_path
    try:
        if matches(local.read_text().strip(), op.hash):
            local.unlink()
    except FileNotFoundError:
        pass
    return op
