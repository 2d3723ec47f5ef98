"""Mining: landed interactions and feedback -> one candidate per request, incrementally.

A run reads what landed after the watermark (``landed_at`` of interactions and feedback,
up to ``now - lag``: a landing transaction still open when the run starts carries an
earlier ``landed_at``, and the lag lets it commit first). Every session touched by new
events (a new turn, or late feedback on an old one) is re-assembled from all its events
up to the new watermark, so a candidate always reflects everything known about it and
keeps its id (sha1 of session id and turn) across runs.

Assembly, in DuckDB SQL:

- a turn asked several times (regenerations) collapses to its last attempt; the earlier
  attempt's first draft becomes the rejected answer when nothing better is known;
- the response is the best answer known: the user's `edit` (the saved correction)
  outranks the chosen draft (`choice`), which outranks draft 0;
- `rejected_response` is what the user moved away from: the edited draft, the draft not
  chosen, or the regenerated answer (pairs for DPO later);
- feedback is aggregated per request (thumbs, ratings, choices, edits, regenerations,
  copies) and every event id is kept for lineage; only the feedback that counts
  (streams/counted_feedback.py: the requester's own, one per request, kind and draft,
  the latest), so a flood of thumbs on one answer is one thumb;
- in multi-turn candidates an earlier answer the user corrected is replaced by the
  correction in the history (tag ``history-corrected``);
- a request that offered tools (issue 12) keeps them (`Candidate.tools`, `tool_choice`);
  its answers are written with their calls in the Hermes text form
  (`flywheel.domains.tool_calls.render_answer`): a draft's text and ``tool_calls``, an
  edit's corrected ``tool_calls`` (with its ``text``, if any).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from flywheel.domains.tool_calls import render_answer
from streams.counted_feedback import counted_feedback
from training.curation.candidate import Candidate, Feedback

__all__ = ["MineResult", "Window", "mine", "mining_window", "prompt_of", "save_watermark"]

WATERMARK = "landed"


@dataclass(frozen=True)
class Window:
    """What a run reads: events landed in (start, end]; start None means from the beginning."""

    start: datetime | None
    end: datetime


@dataclass
class MineResult:
    window: Window
    candidates: list[Candidate]
    sessions: int
    events: int  # interactions + feedback landed in the window
    # feedback whose request has not landed (yet): not mined now; its session is mined
    # by the run after its interaction lands (new feedback or not, the session is new then)
    orphan_feedback: int = 0


def mining_window(conn, lag_s: float = 5.0, *, full: bool = False) -> Window:
    """The window of the next run: from the stored watermark (or the beginning with
    `full`) to ``now - lag_s``."""
    row = conn.execute("SELECT landed_at FROM curation_watermarks WHERE name = ?", [WATERMARK]).fetchone()
    end = conn.execute("SELECT now() - to_microseconds(CAST(? * 1e6 AS BIGINT))", [float(lag_s)]).fetchone()[0]
    start = None if (full or row is None) else row[0]
    if start is not None and start > end:
        end = start  # the clock went back or the lag grew: read nothing rather than re-read
    return Window(start, end)


def save_watermark(conn, window: Window, run_id: str) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO curation_watermarks (name, landed_at, run_id, updated_at) VALUES (?, ?, ?, now())",
        [WATERMARK, window.end, run_id],
    )


_MINE_SQL = """
WITH
new_sessions AS (
    SELECT session_id FROM interactions WHERE landed_at > $start AND landed_at <= $end
    UNION
    SELECT i.session_id FROM feedback f JOIN interactions i ON i.request_id = f.request_id
    WHERE f.landed_at > $start AND f.landed_at <= $end
),
attempts AS (
    SELECT i.*, row_number() OVER (PARTITION BY i.session_id, i.turn ORDER BY i.created_at DESC, i.event_id DESC) AS rank_desc,
           count(*) OVER (PARTITION BY i.session_id, i.turn) AS n_attempts
    FROM interactions i SEMI JOIN new_sessions s ON i.session_id = s.session_id
    WHERE i.landed_at <= $end
),
fb AS (
    SELECT * EXCLUDE (rater) FROM {counted}
),
fb_req AS (
    SELECT request_id,
        count(*) FILTER (kind = 'thumb' AND value = 1) AS thumbs_up,
        count(*) FILTER (kind = 'thumb' AND value = -1) AS thumbs_down,
        list(value ORDER BY created_at) FILTER (kind = 'rating') AS ratings,
        list(draft ORDER BY created_at) FILTER (kind = 'choice') AS choices,
        count(*) FILTER (kind = 'edit') AS edits,
        count(*) FILTER (kind = 'regenerate') AS regenerations,
        count(*) FILTER (kind = 'copy') AS copies,
        arg_max(text, created_at) FILTER (kind = 'edit') AS edit_text,
        arg_max(CAST(tool_calls AS VARCHAR), created_at) FILTER (kind = 'edit') AS edit_calls,
        arg_max(draft, created_at) FILTER (kind = 'edit') AS edit_draft,
        arg_max(draft, created_at) FILTER (kind = 'choice') AS chosen_draft,
        list(event_id ORDER BY created_at) AS event_ids
    FROM fb GROUP BY request_id
),
turns AS (
    SELECT session_id, turn,
        list(event_id ORDER BY created_at) AS interaction_ids,
        list(request_id ORDER BY created_at) AS request_ids,
        -- the answer the user regenerated away from (the attempt just before the last)
        arg_max(drafts->>'$[0].content', created_at) FILTER (rank_desc = 2) AS regenerated_answer,
        arg_max(CAST(drafts->'$[0].tool_calls' AS VARCHAR), created_at) FILTER (rank_desc = 2) AS regenerated_calls,
        sum(regen.regenerations) AS regenerate_events
    FROM attempts a LEFT JOIN (SELECT request_id, regenerations FROM fb_req) regen USING (request_id)
    GROUP BY session_id, turn
),
all_fb_ids AS (
    SELECT a.session_id, a.turn, flatten(list(r.event_ids)) AS feedback_ids
    FROM attempts a JOIN fb_req r USING (request_id) GROUP BY a.session_id, a.turn
)
SELECT
    sha1(a.session_id || ':' || a.turn) AS candidate_id,
    a.created_at, a.session_id, a.request_id, a.user_id, a.app, a.model_version, a.turn,
    CASE WHEN a.turn > 1 THEN 'multi' ELSE 'single' END AS kind,
    CAST(a.messages AS VARCHAR) AS messages,
    a.status AS request_status, CAST(a.error AS VARCHAR) AS request_error, json_array_length(a.drafts) AS n_drafts,
    CASE WHEN r.edit_text IS NOT NULL OR r.edit_calls IS NOT NULL THEN 'edit' WHEN r.chosen_draft IS NOT NULL THEN 'choice'
         WHEN json_array_length(a.drafts) > 0 THEN 'draft' END AS response_source,
    CASE WHEN r.edit_text IS NOT NULL OR r.edit_calls IS NOT NULL THEN r.edit_draft WHEN r.chosen_draft IS NOT NULL THEN r.chosen_draft
         WHEN json_array_length(a.drafts) > 0 THEN 0 END AS response_draft,
    CASE WHEN r.edit_text IS NOT NULL THEN r.edit_text
         WHEN r.chosen_draft IS NOT NULL THEN json_extract_string(a.drafts, '$[' || r.chosen_draft || '].content')
         ELSE a.drafts->>'$[0].content' END AS response,
    CASE WHEN r.edit_text IS NOT NULL OR r.edit_calls IS NOT NULL
              THEN json_extract_string(a.drafts, '$[' || coalesce(r.edit_draft, 0) || '].content')
         WHEN r.chosen_draft IS NOT NULL AND json_array_length(a.drafts) > 1
              THEN json_extract_string(a.drafts, '$[' || CASE WHEN r.chosen_draft = 0 THEN 1 ELSE 0 END || '].content')
         ELSE t.regenerated_answer END AS rejected_response,
    coalesce(r.thumbs_up, 0) AS thumbs_up, coalesce(r.thumbs_down, 0) AS thumbs_down,
    coalesce(r.ratings, []) AS ratings, coalesce(r.choices, []) AS choices, coalesce(r.edits, 0) AS edits,
    greatest(coalesce(t.regenerate_events, 0), a.n_attempts - 1) AS regenerations,
    coalesce(r.copies, 0) AS copies,
    t.interaction_ids, coalesce(af.feedback_ids, []) AS feedback_ids, t.request_ids,
    coalesce(a.tags->>'task_type', NULL) AS sender_task_type,
    coalesce(CAST(a.tags->'robustness' AS VARCHAR), '[]') AS sender_robustness,
    CAST(a.tools AS VARCHAR) AS tools, CAST(a.tool_choice AS VARCHAR) AS tool_choice,
    CAST(a.drafts AS VARCHAR) AS drafts_json, r.edit_calls, r.edit_text, r.chosen_draft, t.regenerated_calls
FROM attempts a
JOIN turns t ON t.session_id = a.session_id AND t.turn = a.turn
LEFT JOIN fb_req r ON r.request_id = a.request_id
LEFT JOIN all_fb_ids af ON af.session_id = a.session_id AND af.turn = a.turn
WHERE a.rank_desc = 1
ORDER BY a.created_at, a.session_id, a.turn
""".replace("{counted}", counted_feedback("attempts", "f.landed_at <= $end"))

_EVENTS_SQL = """
SELECT (SELECT count(*) FROM interactions WHERE landed_at > $start AND landed_at <= $end)
     + (SELECT count(*) FROM feedback WHERE landed_at > $start AND landed_at <= $end),
       (SELECT count(*) FROM feedback f WHERE f.landed_at > $start AND f.landed_at <= $end
          AND NOT EXISTS (SELECT 1 FROM interactions i WHERE i.request_id = f.request_id))
"""


def prompt_of(messages: list[dict]) -> str:
    """The user's side of the conversation as one text: the user turns, in order."""
    return "\n".join(m.get("content") or "" for m in messages if m.get("role") == "user")


def mine(conn, window: Window) -> MineResult:
    """Assemble the candidates of every session with events in `window` (see the module
    docstring), with what mining knows filled in (messages, response, feedback, lineage...)."""
    conn.execute("SET enable_progress_bar = false")  # the caller shows progress; DuckDB's bar would garble it
    params = {"start": window.start or datetime(1970, 1, 1).astimezone(), "end": window.end}
    events, orphans = conn.execute(_EVENTS_SQL, params).fetchone()
    cur = conn.execute(_MINE_SQL, params)
    columns = [d[0] for d in cur.description]
    candidates = []
    sessions = set()
    for row in cur.fetchall():
        r = dict(zip(columns, row))
        sessions.add(r["session_id"])
        ratings = list(r["ratings"] or [])
        feedback = Feedback(
            thumbs_up=r["thumbs_up"], thumbs_down=r["thumbs_down"], ratings=ratings,
            mean_rating=round(sum(ratings) / len(ratings), 3) if ratings else None,
            choices=list(r["choices"] or []), edits=r["edits"], regenerations=int(r["regenerations"]),
            copies=r["copies"],
        )
        robustness = json.loads(r["sender_robustness"] or "[]")
        candidates.append(Candidate(
            candidate_id=r["candidate_id"], created_at=r["created_at"], session_id=r["session_id"],
            request_id=r["request_id"], user_id=r["user_id"], app=r["app"], model_version=r["model_version"],
            kind=r["kind"], turn=r["turn"], messages=json.loads(r["messages"]), response=r["response"],
            response_source=r["response_source"], response_draft=r["response_draft"],
            rejected_response=r["rejected_response"], feedback=feedback,
            source_event_ids=list(r["interaction_ids"]) + list(r["feedback_ids"]),
            tags=[f"messy:{x}" for x in robustness] if isinstance(robustness, list) else [],
            request_ids=list(r["request_ids"]), request_status=r["request_status"], request_error=r["request_error"],
            n_drafts=r["n_drafts"], sender_task_type=r["sender_task_type"],
        ))
        if r["tools"] is not None or '"tool_calls"' in (r["drafts_json"] or "") or r["edit_calls"] is not None:
            _with_calls(candidates[-1], r)
    _corrected_history(candidates)
    return MineResult(window=window, candidates=candidates, sessions=len(sessions), events=events,
                      orphan_feedback=orphans)


def _with_calls(c: Candidate, r: dict) -> None:
    """A request with tools or calls: its tools and tool_choice, and the response and
    rejected answer with their calls (Hermes text form; see the module docstring), as the
    SQL chose them (edit > choice > draft 0; the edited, not chosen or regenerated one)."""
    c.tools = json.loads(r["tools"]) if r["tools"] else None
    c.tool_choice = json.loads(r["tool_choice"]) if r["tool_choice"] else None
    drafts = json.loads(r["drafts_json"] or "[]")

    def draft(k: int | None) -> str | None:
        if k is None or not 0 <= k < len(drafts):
            return None
        return render_answer(drafts[k].get("content") or "", drafts[k].get("tool_calls"))

    if c.response_source == "edit":
        fixed = json.loads(r["edit_calls"]) if r["edit_calls"] else None
        c.response = render_answer(r["edit_text"] or "", fixed) if fixed else r["edit_text"]
        c.rejected_response = draft(c.response_draft or 0)
    elif c.response_source == "choice":
        c.response = draft(r["chosen_draft"])
        c.rejected_response = draft(1 if r["chosen_draft"] == 0 else 0) if len(drafts) > 1 else c.rejected_response
    elif c.response_source == "draft":
        c.response = draft(0)
    if c.response_source != "edit" and r["regenerated_calls"] and c.rejected_response is not None and (
            c.response_source != "choice" or len(drafts) < 2):
        c.rejected_response = render_answer(c.rejected_response, json.loads(r["regenerated_calls"]))


def _corrected_history(candidates: list[Candidate]) -> None:
    """In multi-turn candidates, an earlier answer the user corrected (an `edit`) replaces
    the draft in the history: the user went on from the corrected configuration, and
    the model should learn the follow-up from a right history, not a wrong one."""
    edited = {(c.session_id, c.turn): c.response for c in candidates if c.response_source == "edit"}
    if not edited:
        return
    for c in candidates:
        if c.turn < 2:
            continue
        k = 0
        for m in c.messages:
            if m.get("role") == "assistant":
                k += 1
                if m.get("tool_calls"):
                    continue  # a call in the history is the call the tool answered: it stays
                fix = edited.get((c.session_id, k))
                if fix is not None and m.get("content") != fix:
                    m["content"] = fix
                    if "history-corrected" not in c.tags:
                        c.tags.append("history-corrected")
