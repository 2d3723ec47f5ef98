"""Rater cleaning: who rates honestly, who at random, who in reverse; and a cleaned label
per response.

Users' judgements (thumbs, ratings, draft choices, edits) are noisy: some users click at
random, some rate in reverse. We estimate each rater's reliability from agreement with a
reference: the verifiable ground truth where there is any (a chart configuration that
fails the verifier against the prompt's own lists is bad), else the leave-one-out
weighted consensus of the other raters on the same item. Weights are re-estimated a few
rounds (Dawid-Skene with one "coin" per rater): a rater's weight is the log-odds of their
accuracy, so reverse raters get a negative weight (their votes are flipped) and random
raters a weight of zero (excluded).

Chance agreement is Cohen's: a rater who always says "good" agrees with a mostly-"good"
reference often without knowing anything. Status comes from one-sided binomial tests of
the agreements against that chance level:

- ``reliable``: significantly above chance;
- ``reverse``: significantly below chance;
- ``random``: indistinguishable from chance with at least ``min_items`` comparisons, and
  far likelier a coin than a reliable or reverse rater (posterior of a three-kind
  binomial mixture, see `_settle_random`);
- ``unknown``: fewer comparisons than that, or too few to tell a random rater from a
  reliable one (the rater keeps a small weight, shrunk towards chance).

Everything here is pure: lists in, reports out. `judgements_from_feedback` turns landed
feedback rows into judgements; `chart_truth` is the verifier-based ground truth.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from scipy.stats import binom

__all__ = [
    "CleanLabel",
    "answer_groups",
    "Judgement",
    "RaterReport",
    "RaterStats",
    "chart_truth",
    "checkable_truth",
    "clean_labels",
    "detection_scores",
    "judgements_from_feedback",
    "rater_reliability",
]

STATUSES = ("reliable", "random", "reverse", "unknown")


@dataclass(frozen=True)
class Judgement:
    """One rater's verdict on one item (a response): +1 good, -1 bad."""

    rater: str
    item: str
    label: int

    def __post_init__(self) -> None:
        if self.label not in (1, -1):
            raise ValueError(f"a judgement's label is +1 (good) or -1 (bad), not {self.label!r}")


@dataclass(frozen=True)
class RaterStats:
    """How one rater compares with the reference (truth where known, else consensus).

    ``n``: items judged; ``compared``: of those, items with a reference; ``agreement_*``:
    share of agreements with the consensus / the ground truth (None without any);
    ``chance``: Cohen's chance agreement; ``kappa``: (agreement - chance) / (1 - chance);
    ``p_above``/``p_below``: one-sided binomial p-values; ``weight``: the vote weight
    used for clean labels (negative: flipped; zero: excluded)."""

    n: int
    compared: int
    agreements: int
    agreement_consensus: float | None
    agreement_truth: float | None
    chance: float
    kappa: float
    p_above: float
    p_below: float
    status: str
    weight: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RaterReport:
    raters: dict[str, RaterStats]
    rounds: int
    min_items: int
    alpha: float
    truth_items: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def status(self, rater: str) -> str:
        stats = self.raters.get(rater)
        return stats.status if stats else "unknown"

    def weight(self, rater: str) -> float:
        stats = self.raters.get(rater)
        return stats.weight if stats else 0.0

    def trust(self, rater: str | None) -> float:
        """How far ``rater``'s own judgement (an edit, say) can be trusted: the accuracy
        estimated for a rater judged ``reliable`` (the logistic of their vote weight, which
        is the log-odds of that accuracy), else 0: unknown (too few comparisons), random,
        reverse, or never seen."""
        stats = self.raters.get(rater) if rater else None
        if stats is None or stats.status != "reliable":
            return 0.0
        return round(1 / (1 + math.exp(-stats.weight)), 4)

    def to_dict(self) -> dict:
        return {"rounds": self.rounds, "min_items": self.min_items, "alpha": self.alpha,
                "truth_items": self.truth_items, "counts": dict(self.counts),
                "raters": {r: s.to_dict() for r, s in self.raters.items()}}


@dataclass(frozen=True)
class CleanLabel:
    """The cleaned label of an item: good / bad / unknown, and the posterior probability of
    that label (for unknown: of the likelier side). ``source``: truth | votes | none."""

    label: str
    confidence: float
    votes: int = 0
    source: str = "votes"


# ---------------------------------------------------------------------------- judgements


def _dedupe(judgements: Iterable[Judgement]) -> dict[tuple[str, str], int]:
    """One label per (rater, item): the sign of the sum of that rater's labels on the item
    (a rater contradicting themselves on an item says nothing about it)."""
    total: dict[tuple[str, str], int] = defaultdict(int)
    for j in judgements:
        total[(j.rater, j.item)] += j.label
    return {k: (1 if v > 0 else -1) for k, v in total.items() if v != 0}


def judgements_from_feedback(rows: Iterable[Mapping], drafts: Mapping[str, int] | None = None,
                             item_of=None) -> list[Judgement]:
    """Judgements from feedback rows (dicts with request_id, draft, kind, value, user_id).

    thumb ±1; rating >= 4 good, <= 2 bad (3 says nothing); edit: the draft was bad (the
    user had to fix it); choice: the chosen draft good and the others (``drafts``:
    request_id -> number of drafts) bad, used only where that user gave no thumb, rating
    or edit on the same draft (a choice is relative: the better of two wrong answers is
    still wrong). Rows without a user cannot be attributed and are skipped; copies and
    regenerations are left to the miner's aggregates. ``item_of(request_id, draft)`` names
    items (default ``"request_id:draft"``)."""
    item_of = item_of or (lambda request_id, draft: f"{request_id}:{draft}")
    absolute: list[Judgement] = []
    relative: list[Judgement] = []
    for row in rows:
        user = row.get("user_id")
        if not user:
            continue
        kind, value, draft, rid = row.get("kind"), row.get("value"), int(row.get("draft") or 0), row["request_id"]
        if kind == "thumb" and value in (1, -1):
            absolute.append(Judgement(user, item_of(rid, draft), int(value)))
        elif kind == "rating" and value is not None and value != 3:
            absolute.append(Judgement(user, item_of(rid, draft), 1 if value >= 4 else -1))
        elif kind == "edit":
            absolute.append(Judgement(user, item_of(rid, draft), -1))
        elif kind == "choice":
            relative.append(Judgement(user, item_of(rid, draft), 1))
            for other in range(int((drafts or {}).get(rid, 0))):
                if other != draft:
                    relative.append(Judgement(user, item_of(rid, other), -1))
    seen = {(j.rater, j.item) for j in absolute}
    return absolute + [j for j in relative if (j.rater, j.item) not in seen]


def answer_groups(items: Mapping[str, tuple[Sequence[Mapping], str]], task_types: Mapping[str, str] | None = None
                  ) -> dict[str, str]:
    """Groups of equivalent answers for the consensus: the same (normalised) answer to the
    same kind of task. In chat traffic each answer is rated by one person (the one who
    asked), so without groups there is no consensus, only verifiable truth. ``items``:
    item -> (messages, answer); ``task_types``: item -> task type (else one group space)."""
    out = {}
    for item, (_, answer) in items.items():
        norm = " ".join((answer or "").lower().split())
        out[item] = f"{(task_types or {}).get(item, '')}|{hashlib.sha1(norm.encode()).hexdigest()}"
    return out


# ---------------------------------------------------------------------------- ground truth

_LIST_LINE = re.compile(r"^(Dimensions|Metrics|Time field):\s*(.+)$", re.MULTILINE)


def _lists_from_messages(messages: Sequence[Mapping]):
    """The dimension and metric lists a chart-config prompt gives (the latest user turn that
    has them), as the chart domain's PromptLists, or None."""
    from flywheel.domains.chart import PromptLists

    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        found = dict((k, v.strip()) for k, v in _LIST_LINE.findall(m.get("content") or ""))
        if "Dimensions" in found and "Metrics" in found:
            try:
                dims = json.loads(found["Dimensions"])
                metrics = json.loads(found["Metrics"])
                time_field = json.loads(found["Time field"]) if "Time field" in found else (dims[0] if dims else "")
            except (ValueError, IndexError):
                return None
            if not (isinstance(dims, list) and isinstance(metrics, list)):
                return None
            return PromptLists(name="from-prompt", time_field=str(time_field),
                               dimensions=tuple(str(d) for d in dims if d != time_field),
                               metrics=tuple(str(x) for x in metrics))
    return None


def is_obviously_bad(answer: str | None) -> str | None:
    """Why an answer is bad whatever the prompt (empty, degenerate repetition), or None.
    Checkable in production: needs only the answer. (Refusals are not here: a polite
    decline can be the right answer, and cleaning drops unwanted ones with its reason.)"""
    text = (answer or "").strip()
    if not text:
        return "empty"
    words = text.lower().split()
    if len(words) >= 12 and len(set(words)) / len(words) < 0.3:
        return "repetition"
    return None


def checkable_truth(items: Mapping[str, tuple[Sequence[Mapping], str]], chart_items: Iterable[str] = ()) -> dict[str, int]:
    """Ground truth from what prompt and answer prove: obviously bad answers (any task)
    and, for ``chart_items``, chart configurations that fail the verifier (`chart_truth`)."""
    truth = {item: -1 for item, (_, answer) in items.items() if is_obviously_bad(answer)}
    chart = set(chart_items)
    truth.update(chart_truth({i: v for i, v in items.items() if i in chart and i not in truth}))
    return truth


def chart_truth(items: Mapping[str, tuple[Sequence[Mapping], str]]) -> dict[str, int]:
    """Verifiable ground truth for chart-config items: ``item -> (messages, answer)``.

    Only what the prompt and the answer prove: an answer that is not a valid configuration
    over the prompt's own dimension and metric lists is bad (-1). A valid one may still be
    the wrong chart (production has no true configuration), so it gets no truth. Items
    whose prompt carries no lists are skipped."""
    from flywheel.domains.chart import parse_config, validate_config

    truth: dict[str, int] = {}
    for item, (messages, answer) in items.items():
        schema = _lists_from_messages(messages)
        if schema is None:
            continue
        if validate_config(parse_config(answer), schema):
            truth[item] = -1
    return truth


# ---------------------------------------------------------------------------- reliability


def _log_odds(p: float) -> float:
    p = min(max(p, 0.01), 0.99)
    return math.log(p / (1 - p))


def _consensus_sign(score: float) -> int:
    return 1 if score > 1e-9 else (-1 if score < -1e-9 else 0)


def _grouped(judgements: Iterable[Judgement], truth: Mapping[str, int] | None, groups: Mapping[str, str] | None):
    """Judgements and truth keyed by group (equivalent items: the same answer to the same
    prompt, e.g. a dedup group); an item without a group is its own group."""
    if not groups:
        return _dedupe(judgements), dict(truth or {})
    g = lambda item: groups.get(item, item)  # noqa: E731
    labels = _dedupe(Judgement(j.rater, g(j.item), j.label) for j in judgements)
    gtruth: dict[str, int] = {}
    for item, label in (truth or {}).items():
        gtruth[g(item)] = label
    return labels, gtruth


def rater_reliability(judgements: Iterable[Judgement], truth: Mapping[str, int] | None = None, min_items: int = 5,
                      *, groups: Mapping[str, str] | None = None, rounds: int = 5, alpha: float = 0.05,
                      min_posterior: float = 0.8) -> RaterReport:
    """Estimate each rater's reliability (see the module docstring). ``truth``: item ->
    +1/-1 where it is verifiable; those items are compared with the truth instead of the
    consensus. ``groups``: item -> group of equivalent items; the consensus is taken over a
    group (in chat traffic each answer is usually rated by one person only: the one who
    asked). Converges in a few rounds; stops early when no weight changes."""
    if min_items < 1:
        raise ValueError("min_items must be at least 1")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    labels, truth = _grouped(judgements, truth, groups)
    by_item: dict[str, list[tuple[str, int]]] = defaultdict(list)
    by_rater: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (rater, item), label in labels.items():
        by_item[item].append((rater, label))
        by_rater[rater].append((item, label))

    weights = {r: 1.0 for r in by_rater}
    stats: dict[str, RaterStats] = {}
    done_rounds = 0
    for done_rounds in range(1, max(1, rounds) + 1):
        item_score = {i: sum(weights[r] * lab for r, lab in votes) for i, votes in by_item.items()}
        new: dict[str, RaterStats] = {}
        for rater, items in by_rater.items():
            agree_c = n_c = agree_t = n_t = 0
            rater_pos = ref_pos = 0
            for item, label in items:
                if item in truth:
                    ref = truth[item]
                    n_t += 1
                    agree_t += ref == label
                else:
                    ref = _consensus_sign(item_score[item] - weights[rater] * label)  # leave this rater out
                    if ref == 0:
                        continue
                    n_c += 1
                    agree_c += ref == label
                rater_pos += label > 0
                ref_pos += ref > 0
            new[rater] = _stats(len(items), n_c, agree_c, n_t, agree_t, rater_pos, ref_pos, min_items, alpha)
        stats = _settle_random(new, alpha, min_posterior)
        _assign_weights(stats, min_items)
        changed = any(weights[r] != stats[r].weight for r in stats)
        weights = {r: stats[r].weight for r in stats}
        if not changed:
            break
    counts = {s: 0 for s in STATUSES}
    for st in stats.values():
        counts[st.status] += 1
    return RaterReport(raters=stats, rounds=done_rounds, min_items=min_items, alpha=alpha,
                       truth_items=sum(1 for i in by_item if i in truth), counts=counts)


def _stats(n, n_c, agree_c, n_t, agree_t, rater_pos, ref_pos, min_items, alpha) -> RaterStats:
    compared = n_c + n_t
    agreements = agree_c + agree_t
    observed = agreements / compared if compared else 0.5
    # Cohen's chance agreement needs both classes in the reference; with (nearly) one class
    # only, e.g. a rater compared only with verifier truth (which knows bad answers only),
    # chance is a coin's 0.5: a rater who calls every known-bad answer good is then reverse.
    ref_neg = compared - ref_pos
    if compared and min(ref_pos, ref_neg) >= max(2, 0.1 * compared):
        a, b = rater_pos / compared, ref_pos / compared
        chance = a * b + (1 - a) * (1 - b)
    else:
        chance = 0.5
    chance_c = min(max(chance, 1e-6), 1 - 1e-6)
    kappa = (observed - chance_c) / (1 - chance_c)
    p_above = float(binom.sf(agreements - 1, compared, chance_c)) if compared else 1.0  # P(X >= k)
    p_below = float(binom.cdf(agreements, compared, chance_c)) if compared else 1.0  # P(X <= k)
    if compared < min_items:
        status = "unknown"
    elif p_above < alpha and kappa > 0:
        status = "reliable"
    elif p_below < alpha and kappa < 0:
        status = "reverse"
    else:
        status = "random"
    return RaterStats(n=n, compared=compared, agreements=agreements,
                      agreement_consensus=agree_c / n_c if n_c else None,
                      agreement_truth=agree_t / n_t if n_t else None,
                      chance=round(chance, 4), kappa=round(kappa, 4), p_above=p_above, p_below=p_below,
                      status=status, weight=0.0)


def _settle_random(stats: dict[str, RaterStats], alpha: float, min_posterior: float) -> dict[str, RaterStats]:
    """Decide between the three kinds of rater by their posterior, not only by the test
    against chance: a good rater with ten comparisons is not significantly above chance,
    yet far likelier reliable than random. Each kind is a binomial: reliable with the
    pooled accuracy of the raters that pass the test, reverse with the pooled accuracy of
    those significantly below chance (else 1 - reliable), random with the rater's own
    chance agreement; priors are the kinds' shares (a few EM steps). A status needs a
    posterior >= ``min_posterior`` (reliable and reverse also the binomial test); else
    unknown."""
    rated = [s for s in stats.values() if s.status != "unknown"]
    reliable = [s for s in rated if s.status == "reliable"]
    if not reliable:
        return stats
    reverse = [s for s in rated if s.status == "reverse"]
    clip = lambda p: min(max(p, 1e-3), 1 - 1e-3)  # noqa: E731
    p_rel = clip(sum(s.agreements for s in reliable) / sum(s.compared for s in reliable))
    p_rev = clip(sum(s.agreements for s in reverse) / sum(s.compared for s in reverse)) if reverse else 1 - p_rel
    priors = {"reliable": 1 / 3, "random": 1 / 3, "reverse": 1 / 3}
    post: dict[str, dict[str, float]] = {}
    for _ in range(10):
        for rater, s in stats.items():
            if s.status == "unknown":
                continue
            like = {"reliable": binom.logpmf(s.agreements, s.compared, p_rel),
                    "random": binom.logpmf(s.agreements, s.compared, clip(s.chance)),
                    "reverse": binom.logpmf(s.agreements, s.compared, p_rev)}
            top = max(like[k] + math.log(priors[k]) for k in like)
            w = {k: math.exp(like[k] + math.log(priors[k]) - top) for k in like}
            z = sum(w.values())
            post[rater] = {k: v / z for k, v in w.items()}
        if not post:
            return stats
        priors = {k: max(sum(p[k] for p in post.values()) / len(post), 0.01) for k in priors}
    out = {}
    for rater, s in stats.items():
        if rater in post:
            kind, p = max(post[rater].items(), key=lambda kv: kv[1])
            tested = s.status == kind or kind == "random"  # reliable/reverse must also pass their test
            s = RaterStats(**{**s.to_dict(), "status": kind if (p >= min_posterior and tested) else "unknown"})
        out[rater] = s
    return out


def _assign_weights(stats: dict[str, RaterStats], min_items: int) -> None:
    """Weight = log-odds of the rater's (smoothed) accuracy, the one-coin Dawid-Skene vote
    weight. Reliable: positive; reverse: negative (flipped); random: 0; unknown: the
    population's reliable accuracy shrunk towards chance by how few items they have."""
    reliable = [s for s in stats.values() if s.status == "reliable"]
    pooled = (sum(s.agreements for s in reliable) + 1) / (sum(s.compared for s in reliable) + 2) if reliable else 0.7
    for rater, s in stats.items():
        acc = (s.agreements + 1) / (s.compared + 2)  # Laplace smoothing
        if s.status == "reliable":
            w = max(_log_odds(acc), 0.1)
        elif s.status == "reverse":
            w = min(_log_odds(acc), -0.1)
        elif s.status == "random":
            w = 0.0
        else:
            shrink = s.compared / (s.compared + min_items)
            w = 0.5 * _log_odds(0.5 + (pooled - 0.5) * (0.5 + 0.5 * shrink))
        stats[rater] = RaterStats(**{**s.to_dict(), "weight": round(w, 4)})


# ---------------------------------------------------------------------------- labels


def clean_labels(judgements: Iterable[Judgement], report: RaterReport, *, truth: Mapping[str, int] | None = None,
                 groups: Mapping[str, str] | None = None, min_confidence: float = 0.6,
                 reverse: str = "flip") -> dict[str, CleanLabel]:
    """A cleaned label for every judged item (and every ``truth`` item).

    Weighted vote with the report's weights: the posterior log-odds that the item is good
    is the sum of weight x label (one-coin Dawid-Skene, even prior). Random raters weigh
    nothing; reverse raters' votes are flipped (``reverse="flip"``) or dropped
    (``"exclude"``). A verifiable truth wins with confidence 1. Below ``min_confidence``
    the label is ``unknown``. With ``groups`` the votes of a group label each of its items."""
    if reverse not in ("flip", "exclude"):
        raise ValueError("reverse must be 'flip' or 'exclude'")
    judgements = list(judgements)
    labels, truth = _grouped(judgements, truth, groups)
    score: dict[str, float] = defaultdict(float)
    votes: dict[str, int] = defaultdict(int)
    for (rater, item), label in labels.items():
        w = report.weight(rater)
        if w < 0 and reverse == "exclude":
            w = 0.0
        score[item] += w * label
        votes[item] += w != 0
    out: dict[str, CleanLabel] = {}
    for item in set(score) | set(truth):
        if item in truth:
            out[item] = CleanLabel("good" if truth[item] > 0 else "bad", 1.0, votes.get(item, 0), "truth")
            continue
        s = max(min(score[item], 50.0), -50.0)
        p_good = 1 / (1 + math.exp(-s))
        conf = max(p_good, 1 - p_good)
        if votes[item] == 0:
            out[item] = CleanLabel("unknown", 0.5, 0, "none")
        elif conf < min_confidence:
            out[item] = CleanLabel("unknown", round(conf, 4), votes[item])
        else:
            out[item] = CleanLabel("good" if p_good >= 0.5 else "bad", round(conf, 4), votes[item])
    if groups:
        members = {j.item for j in judgements} | set(groups)
        return {item: out[groups.get(item, item)] for item in members if groups.get(item, item) in out}
    return out


def detection_scores(report: RaterReport, planted: Mapping[str, str], *, judged_only: bool = True) -> dict:
    """Precision and recall of detecting planted ``reverse`` and ``random`` raters
    (``planted``: rater -> true persona), per class and for both together ("flagged").
    Raters the report has not seen (no judgements) are left out with ``judged_only``."""
    out = {}
    raters = [r for r in planted if r in report.raters] if judged_only else list(planted)
    for cls in ("reverse", "random", "flagged"):
        def is_cls(status: str) -> bool:
            return status in ("reverse", "random") if cls == "flagged" else status == cls

        predicted = {r for r in raters if is_cls(report.status(r))}
        actual = {r for r in raters if is_cls(planted[r])}
        tp = len(predicted & actual)
        out[cls] = {"precision": tp / len(predicted) if predicted else 1.0,
                    "recall": tp / len(actual) if actual else 1.0,
                    "predicted": len(predicted), "actual": len(actual), "true_positives": tp}
    return out
