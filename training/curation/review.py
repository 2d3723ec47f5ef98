"""The review queue: what operators (and rules) decided about curation candidates.

A decision is a ``review`` event (`streams.schemas.Review`) produced to the ``reviews``
topic and landed by the control plane into ``review_decisions`` (the control plane stays
the only DuckDB writer). A candidate's state is its latest decision: approve -> approved,
reject -> rejected, edit -> edited (with the corrected response), reset -> pending; no
decision -> pending. The view ``candidate_review`` (migration ``m250_candidate_review`` in
`training.migrations`) gives it per candidate; `approved_candidates` is what the dataset
builder reads.

Auto rules (the ``review`` settings section) let the scheduled refresh run without a
person: after each curation run, pending candidates with a confident good label (or the
own edit of a user rater cleaning trusts, ``approve_edits_min_trust``) are approved and
confident bad ones rejected, as ``auto`` decisions. They never touch a candidate a person
has decided.

Everything reading here takes a DuckDB connection (read-only is enough); producing goes
through `ReviewEmitter` (`streams.emitter.TopicEmitter` on the ``reviews`` topic, with its
own spool under the data dir).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from streams.emitter import EmitterBusy, TopicEmitter
from streams.schemas import Review, new_id
from training.errors import TrainingError

log = logging.getLogger(__name__)

__all__ = [
    "ACTIONS",
    "STATES",
    "CandidateNotFound",
    "ImportResult",
    "ReviewEmitter",
    "ReviewError",
    "ReviewFilter",
    "approved_candidates",
    "auto_approve",
    "auto_decisions",
    "count_states",
    "export_jsonl",
    "get_candidate",
    "landed_count",
    "list_candidates",
    "make_reviews",
    "read_import",
    "resolve_ids",
    "review_state",
    "select_ids",
]

STATES = ("pending", "approved", "rejected", "edited")
ACTIONS = ("approve", "reject", "edit", "reset")
ACTION_STATE = {"approve": "approved", "reject": "rejected", "edit": "edited", "reset": "pending"}
LABELS = ("good", "bad", "unknown")


class ReviewError(TrainingError):
    """A review request that cannot be carried out (bad filter, unknown candidate, bad file)."""

    status = 400


class CandidateNotFound(ReviewError):
    status = 404


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReviewFilter:
    """Which candidates: ``task_type`` matches a type or a whole group (``data-viz``);
    ``status`` the curation status (kept by default; None: all); ``candidate_ids`` limits to
    those. None means any."""

    task_type: str | None = None
    state: str | None = None
    run_id: str | None = None
    label: str | None = None
    status: str | None = "kept"
    candidate_ids: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise ReviewError(f"unknown review state {self.state!r}; use one of {', '.join(STATES)}")
        if self.label is not None and self.label not in LABELS:
            raise ReviewError(f"unknown label {self.label!r}; use one of {', '.join(LABELS)}")
        if self.status is not None and self.status not in ("kept", "dropped"):
            raise ReviewError(f"unknown curation status {self.status!r}; use kept or dropped (or none for all)")
        if self.limit is not None and self.limit < 1:
            raise ReviewError("limit must be at least 1")

    def where(self) -> tuple[str, list]:
        clauses, params = ["true"], []
        if self.task_type:
            clauses.append("(c.task_type = ? OR c.task_type LIKE ?)")
            params += [self.task_type, self.task_type.rstrip("/") + "/%"]
        if self.state:
            clauses.append("r.state = ?")
            params.append(self.state)
        if self.run_id:
            clauses.append("c.run_id = ?")
            params.append(self.run_id)
        if self.label:
            clauses.append("coalesce(c.label, 'unknown') = ?")
            params.append(self.label)
        if self.status:
            clauses.append("c.status = ?")
            params.append(self.status)
        if self.candidate_ids:
            clauses.append("list_contains(?, c.candidate_id)")
            params.append(list(self.candidate_ids))
        return " AND ".join(clauses), params

    @classmethod
    def from_mapping(cls, data: dict) -> "ReviewFilter":
        """From query parameters / CLI options (strings); empty values mean any."""
        def opt(key):
            v = data.get(key)
            return None if v in (None, "", "all", "any") else v

        ids = data.get("candidate_ids") or ()
        if isinstance(ids, str):
            ids = tuple(i for i in ids.split(",") if i)
        limit = opt("limit")
        status = data.get("status", "kept")
        return cls(task_type=opt("task_type"), state=opt("state"), run_id=opt("run_id") or opt("run"),
                   label=opt("label"), status=None if status in (None, "", "all", "any") else status,
                   candidate_ids=tuple(ids), limit=int(limit) if limit is not None else None,
                   offset=int(data.get("offset") or 0))

    def to_params(self) -> dict:
        out = {k: v for k, v in (("task_type", self.task_type), ("state", self.state), ("run_id", self.run_id),
                                 ("label", self.label), ("limit", self.limit)) if v is not None}
        out["status"] = self.status or "all"
        if self.candidate_ids:
            out["candidate_ids"] = ",".join(self.candidate_ids)
        if self.offset:
            out["offset"] = self.offset
        return out


_SUMMARY = """c.candidate_id, c.run_id, c.created_at, c.task_type, c.task_confidence, c.label, c.label_confidence,
    c.status, c.drop_reason, c.response_source, c.kind, c.tags, c.prompt_text, c.response, r.state, r.edited_response,
    r.reviewer, r.decided_at, r.reason, c.user_trust"""
_FULL = _SUMMARY + """, c.session_id, c.request_id, c.user_id, c.app, c.model_version, c.messages,
    c.rejected_response, c.feedback, c.language, c.stage, c.dedup_group, c.golden_score, c.hardness, c.source_event_ids"""
_JSON = ("tags", "messages", "feedback", "source_event_ids")


def _rows(cur, columns: str, flt: ReviewFilter, order: str = "c.created_at, c.candidate_id") -> list[dict]:
    where, params = flt.where()
    sql = f"SELECT {columns} FROM candidates c JOIN candidate_review r USING (candidate_id) WHERE {where} ORDER BY {order}"
    if flt.limit is not None:
        sql += f" LIMIT {int(flt.limit)}"
    if flt.offset:
        sql += f" OFFSET {int(flt.offset)}"
    cur.execute(sql, params)
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        rec = dict(zip(names, row))
        for key in _JSON:
            if key in rec and isinstance(rec[key], str):
                rec[key] = json.loads(rec[key])
        for key in ("created_at", "decided_at"):
            if isinstance(rec.get(key), datetime):
                rec[key] = rec[key].isoformat()
        out.append(rec)
    return out


def _require_tables(conn) -> None:
    names = {r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_name IN ('candidates', 'candidate_review')").fetchall()}
    if names != {"candidates", "candidate_review"}:
        raise ReviewError("no curation candidates yet: run `flywheel mine` first (the control plane creates the tables)")


def review_state(conn, candidate_ids: Iterable[str] | None = None) -> dict[str, str]:
    """candidate_id -> state (pending / approved / rejected / edited), for every candidate
    (or those given)."""
    _require_tables(conn)
    if candidate_ids is None:
        rows = conn.execute("SELECT candidate_id, state FROM candidate_review").fetchall()
    else:
        rows = conn.execute("SELECT candidate_id, state FROM candidate_review WHERE list_contains(?, candidate_id)",
                            [list(candidate_ids)]).fetchall()
    return dict(rows)


def list_candidates(conn, flt: ReviewFilter | None = None, *, full: bool = False) -> list[dict]:
    """Candidates with their review state, oldest first; ``full`` adds messages, feedback
    and lineage."""
    _require_tables(conn)
    return _rows(conn.cursor(), _FULL if full else _SUMMARY, flt or ReviewFilter())


def select_ids(conn, flt: ReviewFilter) -> list[str]:
    _require_tables(conn)
    where, params = flt.where()
    sql = f"SELECT c.candidate_id FROM candidates c JOIN candidate_review r USING (candidate_id) WHERE {where} " \
          "ORDER BY c.created_at, c.candidate_id"
    if flt.limit is not None:
        sql += f" LIMIT {int(flt.limit)}"
    return [r[0] for r in conn.execute(sql, params).fetchall()]


def resolve_ids(conn, given: Iterable[str]) -> list[str]:
    """Full candidate ids from ids or unique prefixes (as `flywheel review list` shows them);
    `ReviewError` names the unknown and ambiguous ones."""
    _require_tables(conn)
    out, problems = [], []
    for g in given:
        rows = conn.execute("SELECT candidate_id FROM candidates WHERE starts_with(candidate_id, ?) LIMIT 2", [g]).fetchall()
        exact = conn.execute("SELECT 1 FROM candidates WHERE candidate_id = ?", [g]).fetchone()
        if exact:
            out.append(g)
        elif len(rows) == 1:
            out.append(rows[0][0])
        else:
            problems.append(f"{g!r} ({'no such candidate' if not rows else 'ambiguous: give more characters'})")
    if problems:
        raise CandidateNotFound("cannot resolve " + ", ".join(problems) + "; see `flywheel review list`")
    return list(dict.fromkeys(out))


def count_states(conn, flt: ReviewFilter | None = None) -> dict[str, int]:
    """How many candidates are in each state (with the filter's other conditions)."""
    _require_tables(conn)
    flt = flt or ReviewFilter()
    where, params = flt.where()
    rows = conn.execute(f"SELECT r.state, count(*) FROM candidates c JOIN candidate_review r USING (candidate_id) "
                        f"WHERE {where} GROUP BY 1", params).fetchall()
    return {s: dict(rows).get(s, 0) for s in STATES}


def get_candidate(conn, candidate_id: str) -> dict:
    """One candidate in full, with its review state and every decision (oldest first)."""
    _require_tables(conn)
    rows = _rows(conn.cursor(), _FULL, ReviewFilter(candidate_ids=(candidate_id,), status=None))
    if not rows:
        raise CandidateNotFound(f"no candidate {candidate_id!r}; see `flywheel review list`")
    rec = rows[0]
    cur = conn.execute(
        "SELECT event_id, action, edited_response, reviewer, reason, source, created_at FROM review_decisions "
        "WHERE candidate_id = ? ORDER BY created_at, landed_at, kafka_offset", [candidate_id])
    names = [d[0] for d in cur.description]
    rec["decisions"] = [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(names, r)}
                        for r in cur.fetchall()]
    return rec


def approved_candidates(conn, *, run_id: str | None = None, task_type: str | None = None) -> list[dict]:
    """What the dataset builder trains on: kept candidates a person or a rule approved or
    edited, with ``response`` replaced by the reviewer's edit where there is one (the
    original stays in ``original_response``)."""
    out = []
    for state in ("approved", "edited"):
        for rec in list_candidates(conn, ReviewFilter(state=state, run_id=run_id, task_type=task_type), full=True):
            rec["original_response"] = rec["response"]
            if rec["state"] == "edited" and rec.get("edited_response"):
                rec["response"] = rec["edited_response"]
            out.append(rec)
    out.sort(key=lambda r: (r["created_at"], r["candidate_id"]))
    return out


def landed_count(conn, batch: str) -> int:
    """Decisions of a batch (event ids ``rv-<batch>-...``) landed so far."""
    return conn.execute("SELECT count(*) FROM review_decisions WHERE starts_with(event_id, ?)",
                        [f"rv-{batch}-"]).fetchone()[0]


# ----------------------------------------------------------------------------- deciding


def new_batch() -> str:
    return new_id()[:16]


def make_reviews(candidate_ids: Iterable[str], action: str, *, reviewer: str, reason: str | None = None,
                 edited_response: str | None = None, source: str = "cli", batch: str | None = None,
                 now: datetime | None = None) -> list[Review]:
    """One review event per candidate. Event ids are ``rv-<batch>-<n>`` so a caller can
    tell when the whole batch has landed (`landed_count`)."""
    if action not in ACTIONS:
        raise ReviewError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    batch = batch or new_batch()
    now = now or datetime.now(timezone.utc)
    try:
        return [Review(event_id=f"rv-{batch}-{n:06d}", candidate_id=cid, action=action, reviewer=reviewer,
                       reason=reason, edited_response=edited_response if action == "edit" else None, source=source,
                       created_at=now) for n, cid in enumerate(candidate_ids)]
    except ValidationError as e:
        from streams.landing import validation_reason

        raise ReviewError(f"invalid review: {validation_reason(e)}") from None


def auto_decisions(rows: Iterable[dict], rules, *, now: datetime | None = None) -> list[Review]:
    """The auto rules over pending candidates (dicts with candidate_id, label,
    label_confidence, response_source, task_type, user_trust); see `auto_approve`."""
    cfg = getattr(rules, "review", rules)
    types = tuple(cfg.task_types or ())
    approve, reject = [], []
    for r in rows:
        cid, task_type, source = r["candidate_id"], r.get("task_type") or "", r.get("response_source")
        label, conf = r.get("label") or "unknown", float(r.get("label_confidence") or 0.0)
        if types and not any(task_type == t or task_type.startswith(t.rstrip("/") + "/") for t in types):
            continue
        # An edit's label is "good" because its user wrote it (training.curation.pipeline): it
        # vouches for no more than that user, so only the user's trust can approve it.
        trust = float(r.get("user_trust") or 0.0)
        if label == "good" and conf >= cfg.approve_min_confidence and source != "edit":
            approve.append((cid, f"auto: label good (confidence {conf:.2f} >= {cfg.approve_min_confidence})"))
        elif cfg.approve_edits and source == "edit" and label != "bad" and trust >= cfg.approve_edits_min_trust:
            approve.append((cid, f"auto: the answer is the correction of a trusted user (trust "
                                 f"{trust:.2f} >= {cfg.approve_edits_min_trust})"))
        elif cfg.reject_bad and label == "bad" and conf >= cfg.reject_min_confidence:
            reject.append((cid, f"auto: label bad (confidence {conf:.2f} >= {cfg.reject_min_confidence})"))
    batch, now = new_batch(), now or datetime.now(timezone.utc)
    decided = [("approve", x) for x in approve] + [("reject", x) for x in reject]
    return [Review(event_id=f"rv-{batch}-{n:06d}", candidate_id=cid, action=action, reviewer=f"auto:{action}",
                   reason=reason, source="auto", created_at=now) for n, (action, (cid, reason)) in enumerate(decided)]


def auto_approve(conn, rules, *, run_id: str | None = None, emit: Callable[[list[Review]], Any] | None = None,
                 now: datetime | None = None) -> list[Review]:
    """Decisions of the auto rules for pending, kept candidates (of ``run_id`` if given).

    ``rules``: the ``review`` settings section, or the whole settings object. Approve: a
    good label with confidence >= ``approve_min_confidence``, or (``approve_edits``) an
    answer that is the user's own edit unless its label is bad, from a user whose rater
    trust is at least ``approve_edits_min_trust`` (an untrusted user's edit waits for a
    person: edits become training targets). Reject (``reject_bad``): a
    bad label with confidence >= ``reject_min_confidence``. Only ``task_types`` if set.
    Nothing when ``auto_approve`` is off. The events are returned; they are produced with
    ``emit`` if given, else, when ``rules`` is the whole settings object, through a
    `ReviewEmitter` (waiting until Kafka acknowledged them)."""
    cfg = getattr(rules, "review", rules)
    if not cfg.auto_approve:
        return []
    rows = list_candidates(conn, ReviewFilter(state="pending", run_id=run_id))
    events = auto_decisions(rows, cfg, now=now)
    if events:
        if emit is not None:
            emit(events)
        elif hasattr(rules, "review"):
            with ReviewEmitter(rules) as emitter:
                emitter.emit(events)
                if not emitter.flush(cfg.wait_landed_s):
                    log.warning("%d auto review decisions wait in %s for Kafka", emitter.depth, emitter.spool_dir)
        else:
            raise ReviewError("auto_approve needs `emit` or the whole settings object to produce its decisions")
        approved = sum(e.action == "approve" for e in events)
        log.info("auto review: %d approved, %d rejected of %d pending", approved, len(events) - approved, len(rows))
    return events


# ----------------------------------------------------------------------------- producing


class ReviewEmitter(TopicEmitter):
    """Produces review events to the ``reviews`` topic (key: candidate id), spooling under
    ``DATA_DIR/spool-review`` (see `streams.emitter.TopicEmitter`); a spool held by another
    process for longer than ``lock_timeout`` is a `ReviewError`."""

    def __init__(self, settings, lock_timeout: float = 60.0):
        super().__init__(settings, "reviews", lambda e: e.candidate_id, name="review", lock_timeout=lock_timeout)

    def __enter__(self) -> "ReviewEmitter":
        try:
            super().__enter__()
        except EmitterBusy as e:
            raise ReviewError(str(e)) from None
        return self


# ----------------------------------------------------------------------------- files


_EXPORT_KEYS = ("candidate_id", "run_id", "task_type", "label", "label_confidence", "status", "state", "messages",
                "response", "response_source", "rejected_response", "edited_response")


def export_jsonl(records: Iterable[dict], out: IO[str]) -> int:
    """Write candidates (from `list_candidates(full=True)`) as JSONL for review elsewhere:
    one object per line with the conversation, the response and the current state, plus
    empty ``action`` / ``reason`` fields to fill in (approve, reject, edit with
    ``edited_response``, reset) before `read_import`; a ``reviewer`` field may name who
    decided a line."""
    n = 0
    for rec in records:
        line = {k: rec.get(k) for k in _EXPORT_KEYS}
        line.update(last_reviewer=rec.get("reviewer"), last_decided_at=rec.get("decided_at"), action=None, reason=None)
        out.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        n += 1
    return n


@dataclass
class ImportResult:
    events: list[Review] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # line numbers without an action
    batch: str = ""

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.events:
            counts[e.action] = counts.get(e.action, 0) + 1
        return counts


def read_import(lines: Iterable[str], *, reviewer: str, known_ids: set[str] | None = None,
                source: str = "import", now: datetime | None = None) -> ImportResult:
    """Review events from a JSONL file of decisions (the export with ``action`` filled in;
    ``reviewer`` on a line overrides the default). Lines without an action are skipped and
    reported. All or nothing: any invalid line raises `ReviewError` naming every bad line
    (up to 20), and no event is made."""
    result = ImportResult(batch=new_batch())
    errors: list[str] = []
    now = now or datetime.now(timezone.utc)
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError as e:
            errors.append(f"line {lineno}: not JSON ({e})")
            continue
        if not isinstance(rec, dict):
            errors.append(f"line {lineno}: expected a JSON object")
            continue
        action = rec.get("action")
        if action in (None, ""):
            result.skipped.append(lineno)
            continue
        cid = rec.get("candidate_id")
        if known_ids is not None and cid not in known_ids:
            errors.append(f"line {lineno}: unknown candidate_id {cid!r}")
            continue
        try:
            result.events.append(Review(
                event_id=f"rv-{result.batch}-{len(result.events):06d}", candidate_id=cid, action=action,
                edited_response=rec.get("edited_response") if action == "edit" else None,
                reviewer=rec.get("reviewer") or reviewer, reason=rec.get("reason"), source=source,
                created_at=now))
        except ValidationError as e:
            from streams.landing import validation_reason

            errors.append(f"line {lineno}: {validation_reason(e)}")
    if errors:
        more = f" (+{len(errors) - 20} more)" if len(errors) > 20 else ""
        raise ReviewError("the import file has invalid lines; nothing was imported:\n  " + "\n  ".join(errors[:20]) + more)
    return result


@contextlib.contextmanager
def open_text(path: str | Path, mode: str = "r") -> Iterator[IO[str]]:
    """A file, or stdin/stdout for ``-``."""
    import sys

    if str(path) == "-":
        yield sys.stdin if "r" in mode else sys.stdout
    else:
        with open(path, mode, encoding="utf-8") as f:
            yield f
