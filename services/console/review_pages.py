"""Review routes of the console: the queue (a filtered list for bulk decisions), the
keyboard desk (one candidate at a time, the next already loaded), the conflicts between
reviewers, a candidate's page and the card fragment the desk loads. Reads only; decisions
are POSTs to /api/review/decisions from static/console.js."""

from __future__ import annotations

from flask import Blueprint, g, request

from services.console import reviewing
from training.curation import review

REVIEW_PAGE = 50


def register(bp: Blueprint, plane, page, safe) -> None:
    @bp.get("/review")
    def review_queue():
        args = {k: v for k, v in request.args.items() if v}  # as shown in the form and the next-page link
        args.setdefault("state", "pending")
        args.setdefault("limit", str(REVIEW_PAGE))
        query = {k: v for k, v in args.items() if not (k == "state" and v == "all")}
        try:
            flt = review.ReviewFilter.from_mapping(query)
        except (ValueError, review.ReviewError) as e:
            return page("review.html", error=f"bad filter: {e}", rows=[], counts={}, args=args, stats=None), 400
        with plane.reader() as cur:
            try:
                rows = review.list_candidates(cur, flt)
                counts = review.count_states(cur, review.ReviewFilter.from_mapping(
                    {k: v for k, v in query.items() if k not in ("state", "limit", "offset")}))
            except review.ReviewError as e:
                return page("review.html", error=str(e), rows=[], counts={}, args=args, stats=None)
            stats = safe(lambda: reviewing.agreement_stats(cur), "reviewer agreement", {})
        return page("review.html", error=None, rows=rows, counts=counts, args=args, limit=flt.limit,
                    offset=flt.offset, stats=stats)

    @bp.get("/review/desk")
    def review_desk():
        """One candidate at a time, keyboard first. ``queue``: pending, second (decided by one
        other person) or conflicts; the other arguments filter as on the queue page."""
        args = {k: v for k, v in request.args.items() if v}
        queue = args.get("queue", "pending")
        reviewer = args.get("reviewer") or g.operator.name
        try:
            flt = review.ReviewFilter.from_mapping({k: v for k, v in args.items() if k in (
                "task_type", "label", "run_id")})
            with plane.reader() as cur:
                ids = reviewing.queue_ids(cur, queue, flt, reviewer)
                first = _card_context(cur, ids[0]) if ids else None
        except review.ReviewError as e:
            return page("message.html", title="Cannot open the desk", message=str(e)), e.status
        return page("desk.html", ids=ids, queue=queue, queues=reviewing.QUEUES, args=args, card=first,
                    reviewer=reviewer, settled=reviewing.SETTLED)

    @bp.get("/review/conflicts")
    def review_conflicts():
        with plane.reader() as cur:
            rows = safe(lambda: reviewing.conflicts(cur), "conflicts")
            stats = safe(lambda: reviewing.agreement_stats(cur), "reviewer agreement", {})
        return page("conflicts.html", rows=rows, stats=stats)

    def card_page(candidate_id: str, template: str):
        with plane.reader() as cur:
            try:
                card = _card_context(cur, candidate_id)
            except review.ReviewError as e:
                return page("message.html", title="No such candidate", message=str(e)), e.status
        return page(template, c=card["c"], card=card)

    @bp.get("/review/<candidate_id>")
    def candidate(candidate_id: str):
        return card_page(candidate_id, "candidate.html")

    @bp.get("/review/<candidate_id>/card")
    def candidate_card(candidate_id: str):
        """The review card alone (HTML), for the desk to load ahead."""
        return card_page(candidate_id, "_card.html")


def _card_context(cur, candidate_id: str) -> dict:
    rec = review.get_candidate(cur, candidate_id)
    return {"c": rec, "x": reviewing.context(cur, rec)}

