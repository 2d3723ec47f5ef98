"""A curation candidate: one mined request (a session's turn, regenerations collapsed) on
its way through the stages.

Mining creates it (`training.curation.mine`); each stage fills in its part (cleaning the
language and tags, the raters the label, typing the task type, dedup the group, the model
stages golden score and hardness) or drops it with a reason (`Candidate.drop`). The run
writes it as one row of the ``candidates`` table (migration ``m201_candidates``); the
dataset builder reads it back. `Candidate.to_row` and `Candidate.from_row` are the one
place that maps between the two shapes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

__all__ = ["COLUMNS", "JSON_COLUMNS", "Candidate", "Feedback"]


@dataclass(slots=True)
class Feedback:
    """What users said about the request, aggregated by mining over all its attempts'
    feedback events (stored as the ``feedback`` JSON column)."""

    thumbs_up: int = 0
    thumbs_down: int = 0
    ratings: list[int] = field(default_factory=list)  # 1-5, oldest first
    mean_rating: float | None = None  # rounded to 3 places; None without ratings
    choices: list[int] = field(default_factory=list)  # the drafts chosen, oldest first
    edits: int = 0
    regenerations: int = 0  # regenerate events, or extra attempts of the turn
    copies: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Feedback":
        """From the stored JSON object; missing keys take their defaults."""
        data = data or {}
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(slots=True)
class Candidate:
    """One candidate. The fields up to ``user_trust`` are the ``candidates`` columns (see
    migration ``m201_candidates``); the mining facts after them are not stored."""

    # -- what was asked and answered (mining)
    candidate_id: str  # sha1 of session_id and turn: stable across runs when late events arrive
    created_at: datetime  # of the turn's last attempt
    session_id: str
    request_id: str  # the turn's last attempt
    user_id: str | None
    app: str | None
    model_version: str | None
    kind: str  # single | multi
    turn: int
    messages: list[dict]  # up to and including the last user turn (corrected history in multi-turn)
    response: str | None  # the best answer known: the user's edit > the chosen draft > draft 0
    response_source: str | None  # edit | choice | draft
    response_draft: int | None  # the draft the response is or corrects
    rejected_response: str | None  # what the user moved away from (edited, not chosen, regenerated)
    feedback: Feedback
    source_event_ids: list[str]  # lineage: every interaction, then every feedback event id
    tags: list[str] = field(default_factory=list)  # messy:<kind>, robust, hard, history-corrected, task-type:teacher
    run_id: str | None = None  # the curation run that wrote it last
    prompt_text: str | None = None  # the user turns without template boilerplate: what dedup and typing read

    # -- what the stages decided
    status: str = "kept"  # kept | dropped
    stage: str | None = None  # the stage that dropped it
    drop_reason: str | None = None  # "rule: detail"
    label: str | None = None  # good | bad | unknown (the raters' cleaned label)
    label_confidence: float | None = None
    task_type: str | None = None  # group/name, or unknown
    task_confidence: float | None = None
    language: str | None = None  # en | zh | mixed | other | und
    dedup_group: int | None = None  # named after the group's kept member
    golden_score: float | None = None
    hardness: float | None = None
    user_trust: float | None = None  # the rater trust of the user (raters.RaterReport.trust): gates auto-approving edits
    tools: list[dict] | None = None  # the tools the request offered (OpenAI's); None: a request without tools
    tool_choice: Any = None  # the request's tool_choice as sent (None: not set)

    # -- mining facts, not stored
    request_ids: list[str] = field(default_factory=list)  # every attempt of the turn, oldest first
    request_status: str | None = None  # the last attempt's status (ok | error)
    request_error: str | None = None  # its error, as JSON text
    n_drafts: int | None = None
    sender_task_type: str | None = None  # the task type the sender tagged, if any

    @property
    def calls_tools(self) -> bool:
        """Whether the request offered tools (its answers are tool calls, in the Hermes text form)."""
        return bool(self.tools)

    @property
    def kept(self) -> bool:
        return self.status == "kept"

    def drop(self, stage: str, reason: str) -> None:
        """Leave the funnel at ``stage`` because of ``reason`` ("rule: detail")."""
        self.status, self.stage, self.drop_reason = "dropped", stage, reason

    def add_tags(self, *tags: str) -> None:
        """Add tags, keeping the list sorted and without repeats."""
        self.tags = sorted(set(self.tags) | set(tags))

    def to_row(self) -> dict[str, Any]:
        """The ``candidates`` row: one value per column of `COLUMNS`, JSON columns as text."""
        row = {}
        for col in COLUMNS:
            value = getattr(self, col)
            if col in JSON_COLUMNS:
                value = json.dumps(value.to_dict() if isinstance(value, Feedback) else value, ensure_ascii=False)
            row[col] = value
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Candidate":
        """From a ``candidates`` row (a mapping of column names; JSON columns as text or
        parsed). Columns that are not candidate fields (``updated_at``, a join's review
        columns) are ignored."""
        values = {col: row[col] for col in COLUMNS if col in row}
        for col in JSON_COLUMNS:
            if isinstance(values.get(col), str):
                values[col] = json.loads(values[col])
        values["feedback"] = Feedback.from_dict(values.get("feedback"))
        for col in ("messages", "tags", "source_event_ids"):
            values[col] = list(values.get(col) or [])
        return cls(**values)


#: The ``candidates`` columns a curation run writes, in table order.
COLUMNS = (
    "candidate_id", "run_id", "created_at", "session_id", "request_id", "user_id", "app", "model_version", "kind",
    "turn", "messages", "prompt_text", "response", "response_source", "response_draft", "rejected_response",
    "feedback", "label", "label_confidence", "task_type", "task_confidence", "language", "tags", "status", "stage",
    "drop_reason", "dedup_group", "golden_score", "hardness", "source_event_ids", "user_trust", "tools", "tool_choice",
)
#: The columns stored as JSON.
JSON_COLUMNS = frozenset({"messages", "feedback", "tags", "source_event_ids", "tools", "tool_choice"})
