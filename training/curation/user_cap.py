"""The per-user cap of a curation run: no user's requests may be more than
``curation.max_user_share`` of the candidates the run keeps (but every user may keep
``curation.user_share_floor``), so one client that floods the gateway with requests and
edits cannot make the training set its own.

The cap is the water level ``c`` at which a user holding ``c`` candidates is exactly the
share of what everyone keeps once capped: the largest ``c`` with
``c <= share * sum(min(n_u, c))``. (A cap on the share of the *uncapped* total would let a
flood through: one user with 1,000 of 1,100 candidates, capped to 10 % of 1,100, would still
be 110 of 210.) Users over it keep their best-scored candidates; the rest are dropped at
``select`` with the reason ``user-cap``. A request that named no user counts under its
session.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping

from training.curation.candidate import Candidate

__all__ = ["apply_user_cap", "user_cap"]


def user_cap(counts: Mapping[str, int], share: float, floor: int) -> int | None:
    """The most candidates one user may keep (module docstring), or None when nobody is over it."""
    if not counts or share >= 1:
        return None
    top = max(counts.values())
    lo, hi = 0, top  # f(c) = share * sum(min(n, c)) - c is concave with f(0) = 0: the c with f >= 0 are [0, c*]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid <= share * sum(min(n, mid) for n in counts.values()):
            lo = mid
        else:
            hi = mid - 1
    cap = max(lo, floor)
    return cap if cap < top else None


def apply_user_cap(cands: list[Candidate], share: float, floor: int, score: Callable[[Candidate], float]) -> dict:
    """Drop the kept candidates of users over the cap, keeping each one's best by ``score``
    (then the newest); the figures for the funnel."""
    by_user: dict[str, list[Candidate]] = defaultdict(list)
    for c in cands:
        if c.kept:
            by_user[c.user_id or f"session:{c.session_id}"].append(c)
    cap = user_cap({u: len(cs) for u, cs in by_user.items()}, share, floor)
    if cap is None:
        return {"cap": None, "users_capped": 0, "dropped": 0}
    dropped = capped = 0
    for user, cs in by_user.items():
        if len(cs) <= cap:
            continue
        capped += 1
        ranked = sorted(cs, key=lambda c: (score(c), c.created_at), reverse=True)
        for c in ranked[cap:]:
            c.drop("select", f"user-cap: this user has {len(cs)} kept candidates in the run, over the cap of {cap} "
                   f"(curation.max_user_share {share:g} of the kept ones, at least curation.user_share_floor {floor})")
            dropped += 1
    return {"cap": cap, "users_capped": capped, "dropped": dropped}
