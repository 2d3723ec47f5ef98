"""What is stored about people, and how each stored field is made safe first.

Every field of the events the gateway stores (interactions, feedback) and of the dead
letters the landing keeps has one rule in `RULES`; `Privacy` applies them, and a test
checks that every schema field has one. docs/privacy.md lists them.

- ``kept``: numbers, enums, times, and ids the gateway makes itself.
- ``redact``: free text goes through the `Redactor`: PII becomes typed placeholders.
- ``redact_json``: every string of a JSON value, keys and values, is redacted (params:
  stop strings, a response_format schema; tags: task type, labels).
- ``messages``/``drafts``/``error``: the text parts of these (content, name, message,
  type) are redacted; roles, indices, finish reasons and statuses are kept. Tool calls in
  messages and drafts (``tool_calls``): the function's name is redacted as text, its
  ``arguments`` as JSON (:meth:`Privacy.redact_arguments`), a call's id and a tool
  result's ``tool_call_id`` by the ``identifier`` rule (so feedback naming a call still
  finds it). A tool's result is a ``tool`` message: its content is redacted as any other.
- ``tool_calls`` (feedback): the corrected calls, as in drafts.
- ``identifier``: an id a client may choose (session, request, event ids) is kept as sent,
  so that it still joins, unless the redactor finds PII in it; then it becomes ``h_`` and
  24 hex digits of HMAC-SHA256(salt, id). The same id always gives the same value, so
  feedback still finds its request while the raw value is gone. An id of the form the
  gateway makes (``chatcmpl-``, ``ev-``, ``fb-``, ``sess-``... and 32 hex digits: a random
  UUID) is kept as it is: about one in 800 holds ten digits in a row, which the phone
  rule would take, and the client must find its request under the id it was given.
- ``pseudonym``: a user id becomes ``u_`` and 24 hex digits of HMAC-SHA256(salt, id). A
  value that already has this form (the gateway's own pseudonym) is kept.

The salt (`user_salt`): ``privacy.user_salt`` when set. Left unset (or set to the old
public development value) it is generated once per data directory, DATA_DIR/user_salt,
mode 0600, but only in the local default setup, recognised by the embedded broker
(``kafka.bootstrap`` empty): with an external broker several gateways may share the topics
and must share one secret salt, so a gateway refuses to start without one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from flywheel.errors import ConfigError
from flywheel.settings import Settings
from streams.redact import Redactor
from streams.schemas import DeadLetter, Feedback, Interaction

log = logging.getLogger(__name__)

__all__ = ["PUBLIC_SALTS", "RULES", "SALT_FILE", "Privacy", "user_salt"]

#: Salts anyone can read (the empty one, the development default of earlier releases):
#: they count as "not set".
PUBLIC_SALTS = frozenset({"", "flywheel-dev-salt"})
#: The generated salt's file in the data directory.
SALT_FILE = "user_salt"

_PSEUDONYM = re.compile(r"u_[0-9a-f]{24}")
#: The ids `streams.schemas.new_id` makes: a short prefix and a random UUID's 32 hex digits
#: (tool call ids: ``call_`` and 32 hex digits).
_OWN_ID = re.compile(r"[a-z]{1,16}[-_][0-9a-f]{32}")

#: One rule per field of each stored event (see the module docstring).
RULES: dict[type[BaseModel], dict[str, str]] = {
    Interaction: {
        "type": "kept", "schema_version": "kept", "event_id": "identifier", "request_id": "identifier",
        "session_id": "identifier", "turn": "kept", "user_id": "pseudonym", "app": "redact", "created_at": "kept",
        "model_alias": "redact", "model_version": "redact", "messages": "messages", "drafts": "drafts",
        "params": "redact_json", "usage": "kept", "timing": "kept", "status": "kept", "error": "error",
        "tags": "redact_json", "tools": "redact_json", "tool_choice": "redact_json", "response_format": "redact_json",
    },
    Feedback: {
        "type": "kept", "schema_version": "kept", "event_id": "identifier", "request_id": "identifier",
        "draft": "kept", "kind": "kept", "value": "kept", "text": "redact", "user_id": "pseudonym",
        "session_id": "identifier", "app": "redact", "created_at": "kept", "comment": "redact",
        "tool_call_id": "identifier", "tool_calls": "tool_calls",
    },
    # The landing keeps what it could not read; the key, reason and payload are redacted
    # as text (the landing has no salt, and a dead letter's key joins nothing).
    DeadLetter: {
        "type": "kept", "schema_version": "kept", "event_id": "kept", "source_topic": "kept", "partition": "kept",
        "offset": "kept", "key": "redact", "reason": "redact", "payload": "redact", "created_at": "kept",
    },
}


class Privacy:
    """Pseudonymises users and makes each stored field safe by its rule. ``redactor`` None
    (``privacy.redact = false``) keeps text as it is; pseudonyms are always made.
    ``salt`` None: no pseudonyms or hashed identifiers (the landing, which needs neither)."""

    def __init__(self, redactor: Redactor | None, salt: bytes | None = None):
        self.redactor = redactor
        self._salt = salt
        self._apply: dict[str, Callable[[Any], Any]] = {
            "kept": lambda v: v,
            "redact": self.redact,
            "redact_json": self.redact_json,
            "identifier": self.identifier,
            "pseudonym": lambda v: v if v is None or _PSEUDONYM.fullmatch(v) else self.pseudonym(v),
            "messages": lambda ms: [self._message(m) for m in ms],
            "drafts": lambda ds: [self._with_calls({**d, "content": self.redact(d["content"])}) for d in ds],
            "tool_calls": lambda cs: cs and self.tool_calls(cs),
            "error": lambda e: e and {**e, "type": self.redact(e["type"]), "message": self.redact(e["message"])},
        }

    @classmethod
    def from_settings(cls, settings: Settings, *, with_salt: bool = True) -> "Privacy":
        p = settings.privacy
        redactor = Redactor(p.kinds, p.extra_patterns) if p.redact else None
        return cls(redactor, user_salt(settings) if with_salt else None)

    # -- single values ------------------------------------------------------------------
    def redact(self, text: str | None) -> str | None:
        return self.redactor.redact(text) if self.redactor and text else text

    def redact_json(self, value: Any) -> Any:
        """Every string of a JSON value redacted, keys included; numbers and booleans kept."""
        if self.redactor is None:
            return value
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, dict):
            return {self.redactor.redact(k) if isinstance(k, str) else k: self.redact_json(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_json(v) for v in value]
        return value

    def redact_arguments(self, text: str) -> str:
        """A tool call's ``arguments`` (JSON text) made safe: every string of the JSON value,
        keys included, is redacted, and a number whose digits the redactor takes (a card
        number sent as a number) becomes its placeholder; the text is kept as written when
        nothing changes. Text that is not JSON is redacted as text."""
        if self.redactor is None or not text:
            return text
        try:
            value = json.loads(text)
        except ValueError:
            return self.redactor.redact(text)
        safe = self._redact_values(value)
        return text if safe == value else json.dumps(safe, ensure_ascii=False, separators=(",", ":"))

    def _redact_values(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, dict):
            return {self.redactor.redact(k): self._redact_values(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redact_values(v) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            digits = json.dumps(value)
            safe = self.redactor.redact(digits)
            return value if safe == digits else safe
        return value

    def tool_calls(self, calls: list[dict]) -> list[dict]:
        """Tool calls made safe: the id as an identifier, the name as text, the arguments as JSON."""
        return [{**c, "id": self.identifier(c["id"]),
                 "function": {"name": self.redact(c["function"]["name"]),
                              "arguments": self.redact_arguments(c["function"]["arguments"])}} for c in calls]

    def _with_calls(self, item: dict) -> dict:
        if item.get("tool_calls"):
            item["tool_calls"] = self.tool_calls(item["tool_calls"])
        return item

    def _message(self, m: dict) -> dict:
        out = {**m, **{k: self.redact(m[k]) for k in ("content", "name") if m.get(k)}}
        if m.get("tool_call_id"):
            out["tool_call_id"] = self.identifier(m["tool_call_id"])
        return self._with_calls(out)

    def _hash(self, prefix: str, value: str) -> str:
        if self._salt is None:
            raise RuntimeError("this Privacy has no salt: build it with Privacy.from_settings(settings)")
        return prefix + hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()[:24]

    def pseudonym(self, user: str | None) -> str | None:
        """``u_`` + 24 hex digits of HMAC-SHA256(salt, user); None for no user."""
        return self._hash("u_", user) if user else None

    def identifier(self, value: str | None) -> str | None:
        """``value`` as it is, or ``h_`` + its keyed hash when it holds PII."""
        if not value or self.redactor is None or _OWN_ID.fullmatch(value) or self.redactor.redact(value) == value:
            return value
        return self._hash("h_", value)

    # -- events -------------------------------------------------------------------------
    def interaction(self, event: Interaction) -> Interaction:
        return self.scrub(event)

    def feedback(self, event: Feedback) -> Feedback:
        return self.scrub(event)

    def dead_letter(self, event: DeadLetter) -> DeadLetter:
        return self.scrub(event)

    def scrub(self, event: BaseModel) -> Any:
        """A copy of ``event`` with each field made safe by its rule, validated again (a
        placeholder can be longer than what it replaced). A field with no rule is
        redacted as JSON: a new field is never stored raw by omission."""
        rules = RULES[type(event)]
        data = {name: self._apply[rules.get(name, "redact_json")](value) for name, value in event.model_dump().items()}
        return type(event).model_validate(data)


def user_salt(settings: Settings) -> bytes:
    """The pseudonym salt: ``privacy.user_salt`` when set; in the local default setup
    (embedded broker) one generated for the data directory; otherwise a `ConfigError`."""
    configured = settings.privacy.user_salt.get_secret_value()
    if configured not in PUBLIC_SALTS:
        return configured.encode()
    if settings.kafka.bootstrap:
        raise ConfigError(
            "privacy.user_salt is not set (or is the public development salt) and the broker is external "
            f"(kafka.bootstrap={settings.kafka.bootstrap}): pseudonymous user ids made with a public salt can be "
            "reversed by anyone with a list of user names, and gateways sharing a broker must share one salt. Set "
            "FLYWHEEL_PRIVACY__USER_SALT to a long random secret, the same for every gateway "
            "(e.g. `openssl rand -hex 32`). Only the local default setup (kafka.bootstrap empty: the embedded "
            "broker) generates one per data directory.")
    return _salt_of_data_dir(settings.data_path / SALT_FILE)


def _salt_of_data_dir(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name, then linked into place: a process starting
        # at the same time reads the first salt written, never a half-written or second one.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                log.info("generated the pseudonym salt of this data directory: %s", path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    salt = path.read_text().strip()
    if not salt:
        raise ConfigError(f"the pseudonym salt file {path} is empty; delete it to generate a new one "
                          "(pseudonyms of users seen so far will change)")
    if path.stat().st_mode & 0o077:
        log.warning("the pseudonym salt file %s is readable by other users; chmod 600 it", path)
    return salt.encode()
