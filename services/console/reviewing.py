"""What a reviewer sees beside a candidate, and the queues of the review desk.

Beside each candidate (`context`): the model's answer and the correction when there is one
(the user's own ``edit`` feedback, or a reviewer's edit), a word diff between them, the
verifier's verdict with its reasons for each (training/labeling/verify.py), the teacher's
suggestion when a teacher call on the same prompt was recorded (``teacher_calls``), the task
type's guidelines from its domain (flywheel/domains), and the reviewers' votes.

Votes and agreement: every person's decision counts as a vote (``auto`` rule decisions do
not); a reviewer's latest decision is their vote and a ``reset`` withdraws it. Two or more
votes agree when they all keep the answer (approve or edit) or all reject it; otherwise the
candidate is in conflict. A decision whose reason starts with `SETTLED` (the desk's
conflicts queue sends it so) settles the conflict: votes before it no longer count, and the
candidate's state is that decision, as always the latest.

Queues of the desk (`queue_ids`): ``pending`` (no decision yet), ``second`` (decided by one
person who is not you: a second opinion), ``conflicts`` (votes disagree).

Find similar (`similar`): the nearest candidates by cosine similarity of the prompt vectors
curation stored (``candidate_vectors``), to decide a group in one action.

Read-only SQL on a DuckDB cursor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime

from services.console.textdiff import changed_share, diff_ops
from training.curation import review

log = logging.getLogger(__name__)

SETTLED = "conflict settled"
QUEUES = ("pending", "second", "conflicts")
DESK_LIMIT = 200
KEEP = frozenset({"approve", "edit"})


# ----------------------------------------------------------------------------- one candidate


def answers(rec: dict) -> dict:
    """The model's answer and the correction of it, if any: the user's own edit (the
    candidate's response came from ``edit`` feedback) or a reviewer's edit (state edited)."""
    user_edit = rec.get("response_source") == "edit"
    model_answer = rec.get("rejected_response") if user_edit else rec.get("response")
    user_correction = rec.get("response") if user_edit else None
    reviewer_edit = rec.get("edited_response") if rec.get("state") == "edited" else None
    correction, by = (reviewer_edit, f"reviewer {rec.get('reviewer') or ''}".strip()) if reviewer_edit else (
        (user_correction, "the user") if user_correction else (None, None))
    return {"model_answer": model_answer, "user_correction": user_correction, "reviewer_edit": reviewer_edit,
            "correction": correction, "correction_by": by}


def verdicts(rec: dict, found: dict, domains=None) -> list[dict]:
    """The verifier's verdict on the model's answer and on the correction (when there is one)."""
    from training.labeling.verify import has_verifier, verify

    own = has_verifier(rec.get("task_type"), domains=domains)
    out = []
    for label, answer in (("model answer", found["model_answer"]), ("correction", found["correction"])):
        if label == "correction" and not answer:
            continue
        v = verify(rec.get("task_type"), rec.get("messages") or [], answer, domains=domains)
        out.append({"of": label, "own_verifier": own, **v.to_dict()})
    return out


def teacher_suggestion(cur, messages: list[dict]) -> dict | None:
    """The latest recorded teacher call on exactly this prompt: its chosen answer, whether it
    passed the verifiers, and how many samples it drew."""
    if not messages:
        return None
    last = messages[-1].get("content")
    rows = cur.execute("SELECT call_id, created_at, kind, model, prompt, samples, verdicts, chosen, answer, passed, error "
                       "FROM teacher_calls WHERE json_extract_string(prompt, '$[#-1].content') = ? "
                       "ORDER BY created_at DESC LIMIT 20", [last]).fetchall()
    for call_id, at, kind, model, prompt, samples, verdicts_, chosen, answer, passed, error in rows:
        if json.loads(prompt) != messages:
            continue
        checks = json.loads(verdicts_)
        return {"call_id": call_id, "created_at": at.isoformat() if isinstance(at, datetime) else str(at),
                "kind": kind, "model": model, "answer": answer, "passed": passed, "error": error,
                "samples": len(json.loads(samples)),
                "reasons": (checks[chosen].get("reasons") if chosen is not None and chosen < len(checks) else []) or []}
    return None


def guidelines(task_type: str | None, domains=None) -> dict | None:
    """What the task type's domain tells a reviewer: its description and guidelines, the
    domain's judging rubric, whether it has a verifier and an output schema of its own."""
    from flywheel.domains import active_domains

    loaded = domains or active_domains()
    task = loaded.task(task_type)
    if task is None:
        return None
    domain = loaded.domain_of(task_type)
    return {"task_type": task.name, "description": task.type.description, "guidelines": task.type.guidelines,
            "domain": domain.name if domain else None, "rubric": loaded.rubric(task_type),
            "verifier": task.verifier is not None, "schema": task.output_schema is not None,
            "example": ({"user": task.examples[0].user, "assistant": task.examples[0].assistant}
                        if task.examples else None)}


def votes(decisions: list[dict]) -> tuple[list[dict], dict | None]:
    """(the votes that count, the settling decision if any) from a candidate's decisions,
    oldest first (as `review.get_candidate` gives them)."""
    human = [d for d in decisions if d.get("source") != "auto"]
    settled = None
    for k in range(len(human) - 1, -1, -1):
        if str(human[k].get("reason") or "").startswith(SETTLED):
            settled, human = human[k], human[k + 1:]
            break
    latest: dict[str, dict] = {}
    for d in human:
        latest[d["reviewer"]] = d
    return [d for d in latest.values() if d["action"] != "reset"], settled


def agreement(counted: list[dict]) -> str:
    """none, single, agree or conflict."""
    if not counted:
        return "none"
    if len(counted) == 1:
        return "single"
    return "agree" if len({d["action"] in KEEP for d in counted}) == 1 else "conflict"


def context(cur, rec: dict, domains=None) -> dict:
    """Everything the review card shows beside a candidate (`rec`: `review.get_candidate`)."""
    found = answers(rec)
    ops = diff_ops(found["model_answer"], found["correction"]) if found["correction"] else []
    counted, settled = votes(rec.get("decisions") or [])
    try:
        teacher = teacher_suggestion(cur, rec.get("messages") or [])
    except Exception as e:  # noqa: BLE001 - the card shows without it; the reason is logged
        log.warning("console: cannot read the teacher calls: %s", e)
        teacher = None
    return {**found, "diff": ops, "changed": changed_share(ops) if ops else 0.0,
            "verdicts": verdicts(rec, found, domains), "teacher": teacher,
            "guidelines": guidelines(rec.get("task_type"), domains), "votes": counted, "settled": settled,
            "agreement": agreement(counted)}


# ----------------------------------------------------------------------------- similar


def similar(cur, candidate_id: str, k: int = 8) -> list[dict]:
    """The `k` candidates nearest to `candidate_id` by prompt vector (cosine similarity,
    vectors of the same width), most similar first, with their state. Empty when the
    candidate has no vector (dropped before dedup, or mined before vectors were kept)."""
    cur.execute("""
        WITH q AS (SELECT vector FROM candidate_vectors WHERE candidate_id = $id)
        SELECT v.candidate_id, list_cosine_similarity(v.vector, q.vector) AS similarity, c.task_type, c.label,
               c.prompt_text, coalesce(r.edited_response, c.response) AS response, r.state, c.status
        FROM candidate_vectors v, q
        JOIN candidates c ON c.candidate_id = v.candidate_id
        JOIN candidate_review r ON r.candidate_id = v.candidate_id
        WHERE v.candidate_id <> $id AND len(v.vector) = len(q.vector)
        ORDER BY similarity DESC, v.candidate_id LIMIT $k""", {"id": candidate_id, "k": int(k)})
    names = [d[0] for d in cur.description]
    return [{**dict(zip(names, row)), "similarity": round(float(row[1]), 4)} for row in cur.fetchall()]


# ----------------------------------------------------------------------------- queues


_VOTES = f"""
WITH d AS (
    SELECT candidate_id, reviewer, action, reason, created_at, landed_at, kafka_offset, event_id
    FROM review_decisions WHERE source <> 'auto'),
settled AS (
    SELECT candidate_id, max(created_at) AS at FROM d WHERE starts_with(coalesce(reason, ''), '{SETTLED}') GROUP BY 1),
latest AS (
    SELECT d.* FROM d LEFT JOIN settled s USING (candidate_id) WHERE s.at IS NULL OR d.created_at > s.at
    QUALIFY row_number() OVER (PARTITION BY d.candidate_id, d.reviewer
                               ORDER BY d.created_at DESC, d.landed_at DESC, d.kafka_offset DESC NULLS LAST,
                                        d.event_id DESC) = 1),
votes AS (SELECT * FROM latest WHERE action <> 'reset'),
tally AS (
    SELECT candidate_id, count(*) AS n, count(DISTINCT action = 'reject') AS sides, any_value(reviewer) AS someone
    FROM votes GROUP BY 1)"""


def queue_ids(cur, queue: str, flt: review.ReviewFilter, reviewer: str | None = None,
              limit: int = DESK_LIMIT) -> list[str]:
    """The candidates of a desk queue (see the module docstring) that `flt` picks, oldest first."""
    if queue not in QUEUES:
        raise review.ReviewError(f"unknown queue {queue!r}; use one of {', '.join(QUEUES)}")
    if queue == "pending":
        return review.select_ids(cur, dataclasses.replace(flt, state="pending", limit=limit))
    where, params = flt.where()
    cond = "t.n = 1 AND t.someone <> ?" if queue == "second" else "t.n >= 2 AND t.sides > 1"
    extra = [reviewer or ""] if queue == "second" else []
    rows = cur.execute(f"""{_VOTES}
        SELECT c.candidate_id FROM candidates c JOIN candidate_review r USING (candidate_id)
        JOIN tally t USING (candidate_id) WHERE {cond} AND {where}
        ORDER BY c.created_at, c.candidate_id LIMIT {int(limit)}""", extra + params).fetchall()
    return [r[0] for r in rows]


def conflicts(cur, limit: int = 200) -> list[dict]:
    """Candidates whose votes disagree, oldest first, with the votes."""
    cur.execute(f"""{_VOTES}
        SELECT c.candidate_id, c.task_type, c.prompt_text, r.state,
               list(struct_pack(reviewer := v.reviewer, action := v.action, reason := v.reason,
                                at := v.created_at) ORDER BY v.created_at) AS votes
        FROM tally t JOIN votes v USING (candidate_id) JOIN candidates c USING (candidate_id)
        JOIN candidate_review r USING (candidate_id)
        WHERE t.n >= 2 AND t.sides > 1
        GROUP BY c.candidate_id, c.task_type, c.prompt_text, r.state, c.created_at
        ORDER BY c.created_at, c.candidate_id LIMIT {int(limit)}""")
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        rec = dict(zip(names, row))
        rec["votes"] = [{**v, "at": v["at"].isoformat() if isinstance(v["at"], datetime) else v["at"]}
                        for v in rec["votes"]]
        out.append(rec)
    return out


def agreement_stats(cur) -> dict:
    """Over candidates two or more people decided: how many agree, how many are in conflict,
    the agreement rate, and how many conflicts were settled."""
    both, agree, conflict = cur.execute(f"""{_VOTES}
        SELECT count(*) FILTER (WHERE n >= 2), count(*) FILTER (WHERE n >= 2 AND sides = 1),
               count(*) FILTER (WHERE n >= 2 AND sides > 1) FROM tally""").fetchone()
    settled = cur.execute(f"""{_VOTES} SELECT count(*) FROM settled""").fetchone()[0]
    return {"double_reviewed": both, "agree": agree, "conflict": conflict, "settled": settled,
            "rate": agree / both if both else None}
