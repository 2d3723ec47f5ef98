"""Recording feedback on an answer (POST /v1/feedback): redacted, pseudonymised, bound to
the request id the client got in its answer, and emitted as a ``feedback`` event. On an
answer that called tools, ``tool_call_id`` points at one call and an ``edit`` may carry the
corrected calls (docs/tools.md)."""

from __future__ import annotations

from pydantic import ValidationError

from services.gateway.context import Caller
from services.gateway.errors import from_validation
from services.gateway.gateway import Gateway
from services.gateway.protocol import FeedbackAccepted, FeedbackRequest
from streams.schemas import Feedback, new_id, utcnow


def record_feedback(gw: Gateway, body: FeedbackRequest, caller: Caller) -> FeedbackAccepted:
    """Emit ``body`` as a feedback event. The event schema's rules (a thumb is ±1, an edit
    has text...) come back as OpenAI 400s; feedback on a request this gateway served is
    refused from another key (404) or user (403) and takes the request's user when it
    names none (services/gateway/bindings.py)."""
    try:
        event = Feedback(
            event_id=new_id("fb-"), request_id=body.request_id, draft=body.draft, kind=body.kind,
            value=body.value, text=body.text, user_id=gw.pseudonym(body.user),
            session_id=body.session_id or caller.session_id, app=caller.app or gw.settings.gateway.app,
            created_at=utcnow(), comment=body.comment, tool_call_id=body.tool_call_id,
            tool_calls=[c.model_dump(mode="json") for c in body.tool_calls] if body.tool_calls else None,
        )
        event = gw.privacy.feedback(event)  # every stored field made safe (streams/privacy.py)
    except ValidationError as e:
        raise from_validation(e) from None
    user_id = gw.bindings.check(body.request_id, caller.key_id, event.user_id, event.draft)
    if user_id != event.user_id:
        event = event.model_copy(update={"user_id": user_id})
    gw.emit([(gw.topics["feedback"], event.request_id, event)])
    return FeedbackAccepted(id=event.event_id, request_id=event.request_id, kind=event.kind)
