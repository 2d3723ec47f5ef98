"""Which landed feedback counts: the one definition that the rollout analysis
(serving/rollout/windows.py) and curation (training/curation/mine.py, pipeline.py) read.

Feedback is landed as it was sent; it counts only when

- **it is the requester's**: it names the user of the request it rates, or no user (then
  it is taken as the requester's; the gateway fills the user in for requests it
  remembers). Feedback naming another user than the request's never counts, so changing
  ``user`` cannot rate someone else's answers, wherever the feedback came from;
- **its draft exists**: a draft index below the number of drafts the request answered
  with (draft 0 of a failed request, which has none), so one request cannot yield
  unbounded distinct feedback by naming drafts it does not have;
- **it is the latest of its kind**: one row per (request, kind, draft), the latest
  (``created_at``, then the Kafka position: one request's feedback is keyed by its id, so
  it shares one partition and its offsets are the order it arrived in). Two hundred thumbs
  on one answer count once, with the last value sent; a changed rating replaces the old.

Each row also gets its ``rater``: the request's user, or ``session:<id>`` for a request
that named none, which per-user caps group by.
"""

from __future__ import annotations

__all__ = ["counted_feedback"]


def counted_feedback(interactions: str = "interactions", where: str = "true") -> str:
    """A parenthesised SQL subquery of the feedback that counts (module docstring) on the
    requests of ``interactions`` (a table, view or CTE name with request_id, user_id,
    session_id and drafts): every ``feedback`` column, and ``rater``. ``where`` filters
    the feedback rows first (they are ``f``; e.g. ``f.landed_at <= $end``)."""
    return f"""(
        SELECT * EXCLUDE (_latest) FROM (
            SELECT f.*, coalesce(i.user_id, 'session:' || i.session_id) AS rater,
                row_number() OVER (PARTITION BY f.request_id, f.kind, f.draft
                                   ORDER BY f.created_at DESC, f.kafka_partition DESC NULLS LAST,
                                            f.kafka_offset DESC NULLS LAST, f.event_id DESC) AS _latest
            FROM feedback f JOIN {interactions} i ON i.request_id = f.request_id
            WHERE ({where}) AND (f.user_id IS NULL OR f.user_id = i.user_id)
                AND f.draft < greatest(1, coalesce(json_array_length(i.drafts), 0))
        ) WHERE _latest = 1
    )"""
