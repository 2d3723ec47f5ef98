"""The curation funnel: how many candidates each stage kept, per task type, and why the
others left. Built from the candidates themselves (each dropped one names its stage and
reason), so the funnel and the table can never disagree."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

from training.curation.candidate import Candidate

__all__ = ["STAGES", "build_funnel", "reason_kind"]

STAGES = ("mine", "clean", "raters", "task_types", "dedup", "select")


def reason_kind(reason: str | None) -> str:
    """The rule part of a drop reason: "refusal: the response ..." -> "refusal";
    "near-duplicate of 12 (cos=0.93)" -> "near-duplicate"."""
    if not reason:
        return "unknown"
    head = reason.split(":", 1)[0]
    return head.split(" of ", 1)[0].split(" (", 1)[0].strip()


def build_funnel(candidates: Iterable[Candidate], stages: Iterable[str] = STAGES, **extra) -> dict:
    """``{"stages": [{stage, in, out, dropped: {kind: n}}...], "by_task_type": {type: {stage:
    remaining}}, "dropped_by_task_type": {type: {"stage/kind": n}}, "examples": {stage:
    {kind: a reason}}, **extra}``. A candidate dropped at
    stage s counts in s's ``in`` but not in its ``out``; ``mine``'s out is every candidate."""
    stages = list(stages)
    order = {s: i for i, s in enumerate(stages)}
    candidates = list(candidates)
    dropped_at: dict[str, Counter] = defaultdict(Counter)
    examples: dict[str, dict[str, str]] = defaultdict(dict)
    remaining = [0] * len(stages)
    by_type: dict[str, list[int]] = defaultdict(lambda: [0] * len(stages))
    why_by_type: dict[str, Counter] = defaultdict(Counter)
    for c in candidates:
        dropped = c.status == "dropped"
        last = order.get(c.stage, len(stages)) if dropped else len(stages)
        if dropped:
            kind = reason_kind(c.drop_reason)
            dropped_at[c.stage][kind] += 1
            examples[c.stage].setdefault(kind, c.drop_reason or "")
            why_by_type[c.task_type or "unclassified"][f"{c.stage}/{kind}"] += 1
        row = by_type[c.task_type or "unclassified"]
        for i in range(min(last, len(stages))):
            remaining[i] += 1
            row[i] += 1
    out = []
    previous = len(candidates)
    for i, s in enumerate(stages):
        out.append({"stage": s, "in": previous, "out": remaining[i], "dropped": dict(dropped_at[s].most_common())})
        previous = remaining[i]
    return {
        "stages": out,
        "by_task_type": {t: dict(zip(stages, row)) for t, row in sorted(by_type.items())},
        "dropped_by_task_type": {t: dict(why_by_type[t].most_common()) for t in sorted(why_by_type)},
        "examples": {s: examples[s] for s in stages if examples.get(s)},
        **extra,
    }
