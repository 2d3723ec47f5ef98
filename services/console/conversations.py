"""Sessions as the console shows them, the way Langfuse shows traces: a list to search (by
text, user pseudonym, model version, task type, label), and one session's requests in
order with their drafts, the feedback on each, the version that served it, its latency and
the curation candidate it became.

Read-only SQL over the landed ``interactions`` and ``feedback`` and the ``candidates``
curation made of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup

from services.console.charts import Bar, bar_chart

LABELS = ("good", "bad", "unknown")
MAX_LIMIT = 500


class SearchError(ValueError):
    """A search the page cannot run (a bad number, an unknown label)."""


@dataclass(frozen=True)
class SessionFilter:
    q: str | None = None  # text in the prompts or the answers
    user: str | None = None  # a user pseudonym (or its start)
    version: str | None = None
    task_type: str | None = None  # a type, or a whole group (data-viz)
    label: str | None = None  # a candidate of the session has this label
    limit: int = 50
    offset: int = 0

    @classmethod
    def from_mapping(cls, args: Mapping[str, str]) -> "SessionFilter":
        def opt(key: str) -> str | None:
            v = (args.get(key) or "").strip()
            return v or None

        try:
            limit, offset = int(args.get("limit") or 50), int(args.get("offset") or 0)
        except ValueError:
            raise SearchError("limit and offset must be whole numbers") from None
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            raise SearchError(f"limit must be 1..{MAX_LIMIT} and offset at least 0")
        label = opt("label")
        if label is not None and label not in LABELS:
            raise SearchError(f"unknown label {label!r}; use one of {', '.join(LABELS)}")
        return cls(opt("q"), opt("user"), opt("version"), opt("task_type"), label, limit, offset)

    def where(self) -> tuple[str, list]:
        clauses, params = ["true"], []
        if self.q:
            clauses.append("(CAST(i.messages AS VARCHAR) ILIKE ? OR CAST(i.drafts AS VARCHAR) ILIKE ?)")
            params += [f"%{self.q}%"] * 2
        if self.user:
            clauses.append("starts_with(i.user_id, ?)")
            params.append(self.user)
        if self.version:
            clauses.append("i.model_version = ?")
            params.append(self.version)
        if self.task_type:
            clauses.append("(i.task_type = ? OR i.task_type LIKE ? OR i.session_id IN (SELECT session_id FROM candidates "
                           "WHERE task_type = ? OR task_type LIKE ?))")
            params += [self.task_type, self.task_type.rstrip("/") + "/%"] * 2
        if self.label:
            clauses.append("i.session_id IN (SELECT session_id FROM candidates WHERE coalesce(label, 'unknown') = ?)")
            params.append(self.label)
        return " AND ".join(clauses), params


def _iso(v):
    return v.isoformat() if isinstance(v, datetime) else v


def list_sessions(cur, flt: SessionFilter) -> list[dict]:
    """Sessions with a request that matches, latest activity first: user, times, requests,
    turns, versions, mean latency, errors, the first prompt, the feedback counts and the
    task types and labels curation gave their candidates."""
    where, params = flt.where()
    cur.execute(f"""
        WITH sel AS (SELECT DISTINCT i.session_id FROM interactions i WHERE {where})
        SELECT i.session_id, any_value(i.user_id) AS user_id, min(i.created_at) AS started_at,
               max(i.created_at) AS last_at, count(*) AS requests, max(i.turn) AS turns,
               list_sort(list_distinct(list(i.model_version))) AS versions, avg(i.total_ms) AS mean_ms,
               count(*) FILTER (WHERE i.status <> 'ok') AS errors,
               arg_min(json_extract_string(i.messages, '$[#-1].content'), i.created_at) AS first_prompt
        FROM interactions i JOIN sel USING (session_id)
        GROUP BY 1 ORDER BY last_at DESC, i.session_id LIMIT {int(flt.limit)} OFFSET {int(flt.offset)}""", params)
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    if not rows:
        return []
    ids = [r["session_id"] for r in rows]
    fb = {s: (up, down, edits, regen, total) for s, up, down, edits, regen, total in cur.execute("""
        SELECT i.session_id, count(*) FILTER (WHERE f.kind = 'thumb' AND f.value > 0),
               count(*) FILTER (WHERE f.kind = 'thumb' AND f.value < 0), count(*) FILTER (WHERE f.kind = 'edit'),
               count(*) FILTER (WHERE f.kind = 'regenerate'), count(*)
        FROM feedback f JOIN interactions i USING (request_id) WHERE list_contains(?, i.session_id) GROUP BY 1""",
        [ids]).fetchall()}
    # What was asked, as curation read it (the app's boilerplate removed), where there is a candidate.
    cands = {s: (types, labels, asked) for s, types, labels, asked in cur.execute("""
        SELECT session_id, list_sort(list_distinct(list(task_type))), list_sort(list_distinct(list(label))),
               arg_min(prompt_text, turn)
        FROM candidates WHERE list_contains(?, session_id) GROUP BY 1""", [ids]).fetchall()}
    for r in rows:
        up, down, edits, regen, total = fb.get(r["session_id"], (0, 0, 0, 0, 0))
        types, labels, asked = cands.get(r["session_id"], ([], [], None))
        r["first_prompt"] = asked or r["first_prompt"]
        r.update(thumbs_up=up, thumbs_down=down, edits=edits, regenerations=regen, feedback=total,
                 task_types=[t for t in types if t], labels=[x for x in labels if x],
                 started_at=_iso(r["started_at"]), last_at=_iso(r["last_at"]))
    return rows


def filter_choices(cur) -> dict:
    """The versions and task types to offer in the search form."""
    versions = [v for (v,) in cur.execute("SELECT DISTINCT model_version FROM interactions ORDER BY 1").fetchall()]
    types = [t for (t,) in cur.execute("SELECT DISTINCT task_type FROM candidates WHERE task_type IS NOT NULL "
                                       "UNION SELECT DISTINCT task_type FROM interactions WHERE task_type IS NOT NULL "
                                       "ORDER BY 1").fetchall()]
    return {"versions": versions, "task_types": types}


def get_session(cur, session_id: str) -> dict | None:
    """One session: its requests in order, each with its drafts, the feedback on it and the
    curation candidate it became; None when no request of it has landed."""
    cur.execute("""SELECT event_id, request_id, turn, user_id, app, created_at, model_alias, model_version, messages,
                          drafts, params, prompt_tokens, completion_tokens, ttft_ms, total_ms, status, error, tags,
                          task_type
                   FROM interactions WHERE session_id = ? ORDER BY created_at, turn, event_id""", [session_id])
    names = [d[0] for d in cur.description]
    requests = []
    for row in cur.fetchall():
        rec = dict(zip(names, row))
        for key in ("messages", "drafts", "params", "error", "tags"):
            if isinstance(rec.get(key), str):
                rec[key] = json.loads(rec[key])
        rec["created_at"] = _iso(rec["created_at"])
        rec["feedback"], rec["candidate"] = [], None
        requests.append(rec)
    if not requests:
        return None
    by_request = {r["request_id"]: r for r in requests}
    cur.execute("SELECT request_id, draft, kind, value, text, comment, created_at FROM feedback "
                "WHERE list_contains(?, request_id) ORDER BY created_at, event_id", [list(by_request)])
    for request_id, draft, kind, value, text, comment, at in cur.fetchall():
        by_request[request_id]["feedback"].append({"draft": draft, "kind": kind, "value": value, "text": text,
                                                   "comment": comment, "created_at": _iso(at)})
    cur.execute("""SELECT c.candidate_id, c.request_id, c.task_type, c.label, c.label_confidence, c.status, c.drop_reason,
                          r.state FROM candidates c JOIN candidate_review r USING (candidate_id)
                   WHERE c.session_id = ?""", [session_id])
    cnames = [d[0] for d in cur.description]
    for row in cur.fetchall():
        cand = dict(zip(cnames, row))
        if cand["request_id"] in by_request:
            by_request[cand["request_id"]]["candidate"] = cand
    attempts: dict[int, int] = {}
    for r in requests:  # a turn asked again (regenerate) is the same turn's next attempt
        r["attempt"] = attempts.get(r["turn"], 0)
        attempts[r["turn"]] = r["attempt"] + 1
    first = requests[0]
    return {"session_id": session_id, "user_id": first["user_id"], "app": first["app"],
            "started_at": first["created_at"], "last_at": requests[-1]["created_at"], "requests": requests,
            "versions": sorted({r["model_version"] for r in requests})}


def latency_chart(session: dict) -> Markup:
    """Each request's latency as a bar (turn, attempt), coloured by its status."""
    bars = [Bar(f"turn {r['turn']}" + (f" · {r['attempt'] + 1}" if r["attempt"] else ""), float(r["total_ms"] or 0.0),
                "error" if r["status"] != "ok" else "ok",
                title=f"{r['request_id']} · {r['model_version']} · {r['total_ms'] or 0:.0f} ms",
                note=f"{r['total_ms'] or 0:.0f} ms · {r['model_version']}") for r in session["requests"]]
    return bar_chart(bars, title="Latency per request", chart_id="chart-session-latency")
