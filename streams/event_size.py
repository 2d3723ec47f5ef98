"""The size cap on one serialised event (``events.max_event_bytes``), and the rule that
makes an oversized chat answer fit rather than lose its interaction.

Kafka refuses a record over the broker's ``message.max.bytes`` (Apache Kafka: 1,048,588
bytes by default) and kafka-python refuses one over its ``max_request_size`` before it
even tries. A record refused for good can never be delivered, so the cap is enforced
where the event is made: a request whose event would be too large is refused before any
work (413), and only the model's drafts, which nobody can size in advance, are cut.

Truncation rule (``fit_interaction``): when an interaction serialises to more than the
cap, the drafts are cut from their ends, longest first, down to a common length that makes
the whole event fit ("water-filling": a short draft is never cut while a longer one could
be), at a character boundary; the event gets ``tags.labels.truncated = "drafts"`` and
``tags.labels.truncated_chars`` (how many characters were cut in all). The prompt is
never cut: if it alone is over the cap, the interaction cannot fit (the gateway refuses
such requests before generation).
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from flywheel.errors import FlywheelError
from streams.schemas import Interaction

__all__ = ["EventTooLarge", "encode", "fit_interaction", "json_size"]


class EventTooLarge(FlywheelError):
    """An event whose serialised form is over ``events.max_event_bytes``."""

    def __init__(self, kind: str, size: int, limit: int):
        super().__init__(f"the {kind} event would be {size:,} bytes once serialised, over the limit of {limit:,} bytes "
                         "(events.max_event_bytes)")
        self.kind = kind
        self.size = size
        self.limit = limit


def json_size(value) -> int:
    """Bytes of ``value`` as compact JSON (UTF-8, non-ASCII unescaped, as pydantic writes it)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def encode(event: BaseModel, limit: int) -> bytes:
    """The event as it goes to Kafka; raises `EventTooLarge` over ``limit`` bytes."""
    data = event.model_dump_json().encode()
    if len(data) > limit:
        raise EventTooLarge(getattr(event, "type", type(event).__name__), len(data), limit)
    return data


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose JSON string is at most ``max_bytes``."""
    if json_size(text) <= max_bytes:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # binary search on characters: escapes and UTF-8 make bytes per char vary
        mid = (lo + hi + 1) // 2
        if json_size(text[:mid]) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def fit_interaction(event: Interaction, limit: int) -> tuple[Interaction, bytes]:
    """``event`` and its bytes, its drafts cut by the module's rule when it is over ``limit``.
    Raises `EventTooLarge` when even drafts cut to nothing do not make it fit."""
    data = event.model_dump_json().encode()
    if len(data) <= limit or not event.drafts:
        if len(data) > limit:
            raise EventTooLarge("interaction", len(data), limit)
        return event, data
    sizes = [json_size(d["content"]) for d in event.drafts]
    labels = dict((event.tags or {}).get("labels") or {})
    labels.update(truncated="drafts", truncated_chars="0")
    tags_growth = json_size({**event.tags, "labels": labels}) - json_size(event.tags)
    budget = limit - (len(data) - sum(sizes)) - tags_growth - 64  # 64: digits of truncated_chars, rounding
    if budget < 2 * len(sizes):  # not even empty strings ("") fit
        raise EventTooLarge("interaction", len(data) - sum(sizes) + 2 * len(sizes), limit)
    # Water-filling: the largest common level L with sum(min(size, L)) <= budget.
    lo, hi = 2, max(sizes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(s, mid) for s in sizes) <= budget:
            lo = mid
        else:
            hi = mid - 1
    drafts, cut_chars = [], 0
    for d, size in zip(event.drafts, sizes):
        content = d["content"] if size <= lo else _cut(d["content"], lo)
        cut_chars += len(d["content"]) - len(content)
        drafts.append({**d, "content": content})
    labels["truncated_chars"] = str(cut_chars)
    fitted = event.model_copy(update={"drafts": drafts, "tags": {**event.tags, "labels": labels}})
    data = fitted.model_dump_json().encode()
    if len(data) > limit:  # cannot happen by construction; refuse rather than send what the broker refuses
        raise EventTooLarge("interaction", len(data), limit)
    return fitted, data
