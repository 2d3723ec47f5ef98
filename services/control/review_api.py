"""Review routes of the control plane (/api/review/...): reads for `flywheel review` and
the console, and decisions made over HTTP (source "api"), produced to Kafka like any
other review event and landed by this plane."""

from __future__ import annotations

from flask import Flask, jsonify, request

from flywheel.settings import Settings
from services.console import reviewing
from services.control.auth import current_operator, require_role, requires
from services.control.errors import error_json
from services.control.protocol import ReviewDecision, parse
from training.curation import review


def init_app(app: Flask, settings: Settings, plane) -> None:
    @app.errorhandler(review.ReviewError)
    def _review_error(e: review.ReviewError):
        return error_json(str(e), e.status)

    def _filter() -> review.ReviewFilter:
        try:
            flt = review.ReviewFilter.from_mapping(request.args.to_dict())
        except ValueError as e:  # e.g. limit=abc
            raise review.ReviewError(f"bad filter: {e}") from None
        if not 0 <= flt.offset < 2**62 or (flt.limit is not None and not 1 <= flt.limit < 2**62):
            raise review.ReviewError("bad filter: limit must be at least 1 and offset at least 0 (both below 2**62)")
        return flt

    @app.get("/api/review/candidates")
    def review_candidates():
        flt = _filter()
        full = request.args.get("full") in ("1", "true")
        with plane.reader() as cur:
            return jsonify({"data": review.list_candidates(cur, flt, full=full), "counts": review.count_states(cur, flt)})

    @app.get("/api/review/ids")
    def review_ids():
        with plane.reader() as cur:
            return jsonify({"ids": review.select_ids(cur, _filter())})

    @app.get("/api/review/resolve")
    def review_resolve():
        given = [i for i in (request.args.get("ids") or "").split(",") if i]
        with plane.reader() as cur:
            return jsonify({"ids": review.resolve_ids(cur, given)})

    @app.get("/api/review/candidates/<candidate_id>")
    def review_candidate(candidate_id: str):
        with plane.reader() as cur:
            return jsonify(review.get_candidate(cur, candidate_id))

    @app.get("/api/review/candidates/<candidate_id>/similar")
    def review_similar(candidate_id: str):
        """The nearest candidates by prompt vector (the console's find-similar), most similar first."""
        k = request.args.get("k", default=8, type=int)
        with plane.reader() as cur:
            review.get_candidate(cur, candidate_id)  # 404 for an unknown one
            return jsonify({"data": reviewing.similar(cur, candidate_id, max(1, min(k, 100)))})

    @app.get("/api/review/conflicts")
    def review_conflicts():
        """Candidates whose reviewers' votes disagree, with the votes, and the agreement figures."""
        with plane.reader() as cur:
            return jsonify({"data": reviewing.conflicts(cur), "agreement": reviewing.agreement_stats(cur)})

    @app.get("/api/review/landed/<batch>")
    def review_landed(batch: str):
        with plane.reader() as cur:
            return jsonify({"batch": batch, "landed": review.landed_count(cur, batch)})

    @app.post("/api/review/decisions")
    @requires("reviewer")
    def review_decide():
        """Decisions on named candidates need a reviewer; by filter (approve-all and the
        like: every candidate a filter picks) an admin. ``reviewer`` defaults to the name of
        the operator token; the audit log keeps the token either way."""
        data = parse(ReviewDecision)
        if not data.candidate_ids:
            require_role("admin")
        reviewer = (data.reviewer or "").strip() or current_operator().name
        flt = data.filter.model_dump(exclude_none=True) if data.filter else {}
        with plane.reader() as cur:
            ids = data.candidate_ids or review.select_ids(cur, review.ReviewFilter.from_mapping(flt))
            known = set(review.review_state(cur, ids))
        missing = [i for i in ids if i not in known]
        if missing:
            raise review.CandidateNotFound(f"unknown candidate ids: {', '.join(missing[:10])}")
        events = review.make_reviews(ids, data.action, reviewer=reviewer, reason=data.reason,
                                     edited_response=data.edited_response, source="api")
        topic = settings.topic("reviews")
        plane.producer.emit_many([(topic, e.candidate_id, e) for e in events])
        batch = events[0].event_id.split("-")[1] if events else None
        return jsonify({"batch": batch, "decisions": len(events)}), 202
