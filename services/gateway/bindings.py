"""Who made a request: the gateway remembers, for its most recent requests, the API key and
pseudonymous user that made each one and how many drafts it answered, so feedback on it
can be checked (``gateway.feedback_binding_size`` entries, oldest forgotten first).

A request id is a capability: only the client that made the request saw it. Feedback on
it from another key is answered 404 (as if the id did not exist: nothing says whose it
is), from the same key but another ``user`` 403, and on a draft the answer does not have
400. Feedback that names no user takes the request's, so the stored event is always the
requester's. Batch ingest (``/v1/events``, ingest keys: trusted integrations that record
whole interactions of their own) is held to the user and the draft, not the key.
Requests this gateway does not remember (older ones, another gateway's, a
restart) are accepted here; the warehouse applies the same user binding where feedback is
counted (streams/counted_feedback.py), so they cannot be misattributed there either.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from services.gateway.errors import APIError, forbidden, not_found


@dataclass(frozen=True)
class Binding:
    key_id: str | None  # None when the gateway runs without auth
    user_id: str | None  # pseudonymous; None when the request named no user
    drafts: int  # drafts the request asked for (n)


class RequestBindings:
    """A bounded, thread-safe map request id -> `Binding` (least recently made forgotten first)."""

    def __init__(self, size: int):
        self.size = size
        self._map: OrderedDict[str, Binding] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, key_id: str | None, user_id: str | None, drafts: int) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._map[request_id] = Binding(key_id, user_id, drafts)
            while len(self._map) > self.size:
                self._map.popitem(last=False)

    def get(self, request_id: str) -> Binding | None:
        with self._lock:
            return self._map.get(request_id)

    def __len__(self) -> int:
        return len(self._map)

    def check(self, request_id: str, key_id: str | None, user_id: str | None, draft: int, *,
              check_key: bool = True) -> str | None:
        """The user the feedback is stored under: the request's when the feedback named
        none (``user_id`` None). Raises `APIError` when the request is remembered and the
        feedback comes from another key (404; unless not ``check_key``) or user (403), or
        names a draft it lacks (400)."""
        binding = self.get(request_id)
        if binding is None:
            return user_id
        if check_key and binding.key_id != key_id:
            raise not_found(f"No request '{request_id}' was made with this API key: feedback can only rate the "
                            "requests of the key that made them.", code="request_not_found", param="request_id")
        if user_id is not None and user_id != binding.user_id:
            raise forbidden_user()
        if draft >= binding.drafts:
            raise APIError(400, f"Invalid value for 'draft': request '{request_id}' has {binding.drafts} draft"
                           f"{'s' if binding.drafts != 1 else ''} (0 to {binding.drafts - 1}).", param="draft",
                           code="invalid_value")
        return binding.user_id


def forbidden_user() -> APIError:
    err = forbidden("This feedback names another user than the request it rates: only the user who made a request may "
                    "rate it. Send the same 'user' as the chat request, or none.")
    err.code = "feedback_user_mismatch"
    err.param = "user"
    return err
