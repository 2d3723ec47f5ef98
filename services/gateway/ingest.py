"""Batch ingest (POST /v1/events): chat backends that do not send traffic through the
gateway post their own interactions and feedback. Each item is validated on its own, so
one bad item is reported and never blocks the others; accepted ones are redacted,
pseudonymised and emitted together."""

from __future__ import annotations

import json

from pydantic import ValidationError

from services.gateway.errors import APIError, from_validation
from services.gateway.gateway import Gateway
from services.gateway.protocol import EventRejection, EventResult, EventsRequest, EventsResponse
from streams.schemas import Feedback, Interaction, new_id, utcnow


def ingest_events(gw: Gateway, body: EventsRequest) -> EventsResponse:
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
        topic = gw.topics["interactions" if event.type == "interaction" else "feedback"]
        key = event.session_id if event.type == "interaction" else event.request_id
        accepted.append((topic, key, event))
        results.append(EventResult(index=i, status="accepted", event_id=event.event_id))
    if accepted:
        gw.emit(accepted)
    return EventsResponse(accepted=len(accepted), rejected=len(body.events) - len(accepted), data=results)


def ingest_item(gw: Gateway, item: dict) -> Interaction | Feedback:
    """Validate one ingest item into an event: fills event_id/created_at when absent,
    pseudonymises a raw ``user``, redacts every text field."""
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
        event = Interaction.model_validate_json(json.dumps(data))
        return event.model_copy(update={
            "messages": [{**m, "content": gw.redact(m["content"])} for m in event.messages],
            "drafts": [{**d, "content": gw.redact(d["content"])} for d in event.drafts],
        })
    event = Feedback.model_validate_json(json.dumps(data))
    return event.model_copy(update={
        "text": gw.redact(event.text) if event.text is not None else None,
        "comment": gw.redact(event.comment) if event.comment is not None else None,
    })
