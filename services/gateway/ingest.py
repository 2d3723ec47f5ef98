"""Batch ingest (POST /v1/events): chat backends that do not send traffic through the
gateway post their own interactions and feedback. Each item is validated on its own, so
one bad item is reported and never blocks the others; accepted ones are redacted,
pseudonymised and emitted together."""

from __future__ import annotations

import json

from pydantic import ValidationError

from services.gateway.context import Caller
from services.gateway.errors import APIError, from_validation
from services.gateway.gateway import Gateway
from services.gateway.protocol import EventRejection, EventResult, EventsRequest, EventsResponse
from streams.event_size import EventTooLarge, encode
from streams.schemas import Feedback, Interaction, new_id, utcnow


def ingest_events(gw: Gateway, body: EventsRequest, caller: Caller | None = None) -> EventsResponse:
    """Validate and emit each item; feedback on a request this gateway served is checked
    against the user that made it and its drafts (services/gateway/bindings.py; an ingest
    key may record feedback on another key's requests, as it may record interactions)."""
    limit = gw.settings.gateway.max_batch_events
    if len(body.events) > limit:
        raise APIError(413, f"Too many events in one batch: at most {limit}.", param="events", code="batch_too_large")
    results, accepted = [], []
    for i, item in enumerate(body.events):
        try:
            event = ingest_item(gw, item)
        except ValidationError as e:
            err = from_validation(e, prefix=("events", i))
            results.append(EventResult(index=i, status="rejected", error=EventRejection(message=err.message, param=err.param)))
            continue
        except ValueError as e:
            results.append(EventResult(index=i, status="rejected", error=EventRejection(message=str(e), param=f"events[{i}]")))
            continue
        if event.type == "feedback" and caller is not None:
            try:
                user_id = gw.bindings.check(event.request_id, caller.key_id, event.user_id, event.draft, check_key=False)
            except APIError as e:
                results.append(EventResult(index=i, status="rejected", error=EventRejection(
                    message=e.message, param=f"events[{i}].{e.param}" if e.param else f"events[{i}]")))
                continue
            if user_id != event.user_id:
                event = event.model_copy(update={"user_id": user_id})
        try:
            data = encode(event, gw.settings.events.max_event_bytes)
        except EventTooLarge as e:
            results.append(EventResult(index=i, status="rejected", error=EventRejection(message=str(e), param=f"events[{i}]")))
            continue
        topic = gw.topics["interactions" if event.type == "interaction" else "feedback"]
        key = event.session_id if event.type == "interaction" else event.request_id
        accepted.append((topic, key, data))
        results.append(EventResult(index=i, status="accepted", event_id=event.event_id))
    if accepted:
        gw.emit(accepted)
    return EventsResponse(accepted=len(accepted), rejected=len(body.events) - len(accepted), data=results)


def ingest_item(gw: Gateway, item: dict) -> Interaction | Feedback:
    """Validate one ingest item into an event: fills event_id/created_at when absent,
    pseudonymises a raw ``user`` (or ``user_id``) and makes every stored field safe
    (streams/privacy.py)."""
    if not isinstance(item, dict):
        raise ValueError("each event must be a JSON object")
    kind = item.get("type")
    if kind not in ("interaction", "feedback"):
        raise ValueError("each event needs 'type': 'interaction' or 'feedback'")
    data = dict(item)
    data.setdefault("event_id", new_id("ev-" if kind == "interaction" else "fb-"))
    data.setdefault("created_at", utcnow().isoformat())
    if "user" in data:
        user = data.pop("user")
        if not isinstance(user, str):
            raise ValueError("'user' must be a string")
        data["user_id"] = gw.pseudonym(user)
    if kind == "interaction":
        data.setdefault("tags", {"source": "ingest"})
        return gw.privacy.interaction(Interaction.model_validate_json(json.dumps(data)))
    return gw.privacy.feedback(Feedback.model_validate_json(json.dumps(data)))
