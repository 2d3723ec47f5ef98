"""Canary analysis: is the candidate worse than production over one analysis window?

Three checks compare the canary's window with production's window of the same interval:

- **negative feedback**: the share of feedback events that are negative (see
  :func:`feedback_counts`) may be at most ``delta`` above production's;
- **error rate**: at most ``max_error_rate_ratio`` times production's, or
  ``error_rate_margin`` above it, whichever is more lenient;
- **p95 latency**: at most ``max_p95_latency_ratio`` times production's (a point estimate
  per window, compared against the ratio; there is no distribution to test).

Both rates are judged by a statistical test, and both must show *positive evidence* that
the canary is within its tolerance to pass: too little data is inconclusive, never a pass.
(Treating "no evidence of harm" as a pass for errors was tried: in simulation it promoted
a candidate with 3x production's error rate in 17% of rollouts; requiring evidence rolls
all of them back, at the cost of a slower first step when errors are common.)

Two statistical methods judge the two rates (negative feedback and errors), chosen by
:attr:`AnalysisPolicy.method`:

``beta-binomial`` (default)
    Each version's rate gets a Beta(1, 1) prior and a Beta(1 + bad, 1 + good) posterior;
    ``P(p_canary - p_production > delta)`` is computed by numeric integration over
    ``scipy.stats.beta`` (no sampling, so the same figures give the same verdict). Above
    ``fail_probability`` the check fails; below ``pass_probability`` it passes.
``two-proportion``
    One-sided z-tests on the Agresti–Caffo adjusted proportions (one success and one
    failure added to each version, which keeps the standard error sane at 0 % or 100 %).
    The check fails when ``H0: p_c - p_p <= delta`` is rejected at ``alpha``, and passes
    when the non-inferiority hypothesis ``H0: p_c - p_p >= delta`` is rejected at
    ``pass_alpha``. Under the normal approximation the second p-value equals the posterior
    probability above, so ``alpha``/``pass_alpha`` mirror ``1 - fail_probability`` and
    ``pass_probability``.

Everything here is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import numpy as np
from scipy import stats

from flywheel.settings import RolloutMethod

Outcome = Literal["pass", "fail", "inconclusive"]
Method = RolloutMethod  # one list: the settings' type (rollout.method)
METHODS: tuple[str, ...] = get_args(Method)
OUTCOMES: tuple[str, ...] = ("pass", "fail", "inconclusive")

#: Names of the checks, in the order a verdict lists them.
CHECK_NAMES = ("negative_feedback", "error_rate", "p95_latency")


class AnalysisError(ValueError):
    """A window or policy that cannot be analysed (negative counts, thresholds out of range)."""


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class VersionWindow:
    """What one version did over one analysis interval (as landed in the warehouse).

    ``ratings`` holds the *counts* of 1, 2, 3, 4 and 5-star ratings, in that order.
    ``choices_won``/``choices_lost``: draft choices where this version's draft was chosen
    or passed over. ``edits`` (the user corrected the answer) and ``copies`` (the user
    copied it) are the project's other feedback kinds; both may stay 0.
    """

    requests: int = 0
    errors: int = 0
    latency_p95_ms: float | None = None
    thumbs_up: int = 0
    thumbs_down: int = 0
    ratings: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    regenerations: int = 0
    choices_won: int = 0
    choices_lost: int = 0
    edits: int = 0
    copies: int = 0

    def __post_init__(self):
        if len(self.ratings) != 5:
            raise AnalysisError(f"ratings must hold 5 counts (1 to 5 stars), got {len(self.ratings)}")
        counts = {
            "requests": self.requests, "errors": self.errors, "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down, "regenerations": self.regenerations,
            "choices_won": self.choices_won, "choices_lost": self.choices_lost,
            "edits": self.edits, "copies": self.copies,
            **{f"ratings[{i + 1}]": n for i, n in enumerate(self.ratings)},
        }
        bad = {k: v for k, v in counts.items() if not isinstance(v, (int, np.integer)) or v < 0}
        if bad:
            raise AnalysisError(f"counts must be non-negative integers, got {bad}")
        if self.errors > self.requests:
            raise AnalysisError(f"errors ({self.errors}) cannot exceed requests ({self.requests})")
        if self.latency_p95_ms is not None and not (self.latency_p95_ms >= 0 and math.isfinite(self.latency_p95_ms)):
            raise AnalysisError(f"latency_p95_ms must be a non-negative number or None, got {self.latency_p95_ms}")

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class FeedbackCounts:
    negative: int
    total: int

    @property
    def rate(self) -> float | None:
        return self.negative / self.total if self.total else None


def feedback_counts(window: VersionWindow) -> FeedbackCounts:
    """The one definition of feedback for rollouts: every signal below is one event.

    ========================  ===========  ============================================
    signal                    negative?    why
    ========================  ===========  ============================================
    thumbs down               yes          explicit dislike
    rating 1 or 2             yes          explicit low rating
    regeneration              yes          the user asked again: the answer did not do
    draft choice lost         yes          the user preferred the other draft
    edit                      yes          the user had to correct the answer
    thumbs up                 no           explicit like
    rating 3, 4 or 5          no           3 is neutral: feedback, but not negative
    draft choice won          no           preferred over the other draft
    copy                      no           the user took the answer away
    ========================  ===========  ============================================

    The negative rate is ``negative / total``. Both versions are measured the same way, so
    the mix of kinds cancels out in the comparison as long as the UI offers both the same
    signals. One response can yield several events (a thumbs down and a regeneration);
    the binomial model treats them as independent, which understates the variance a little.
    """
    w = window
    negative = w.thumbs_down + w.ratings[0] + w.ratings[1] + w.regenerations + w.choices_lost + w.edits
    positive = w.thumbs_up + w.ratings[2] + w.ratings[3] + w.ratings[4] + w.choices_won + w.copies
    return FeedbackCounts(negative=int(negative), total=int(negative + positive))


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class AnalysisPolicy:
    """Thresholds of the canary analysis. Rates and deltas are fractions (0.05 = 5 points).

    Defaults are for a few hundred to a few thousand requests per interval, with feedback
    on roughly one response in five.
    """

    #: Fewer feedback events than this, in either version, and the feedback check is
    #: inconclusive: 30 is where a binomial rate starts to say something.
    min_feedback: int = 30
    #: Tolerated absolute increase of the negative-feedback rate (0.05: 20 % -> 25 % is fine).
    delta: float = 0.05
    method: Method = "beta-binomial"
    #: beta-binomial: fail when P(p_c - p_p > delta) exceeds this ...
    fail_probability: float = 0.95
    #: ... and pass when it is below this (between the two: inconclusive).
    pass_probability: float = 0.2
    #: two-proportion: fail when the test of H0 p_c - p_p <= delta rejects at this level ...
    alpha: float = 0.05
    #: ... and pass when the non-inferiority test (H0 p_c - p_p >= delta) rejects at this one.
    pass_alpha: float = 0.2
    #: Error rate: tolerated is production's rate times this ratio, or plus ``error_rate_margin``,
    #: whichever is larger (so 0.1 % -> 1.1 % is tolerated, and 10 % -> 20 %).
    max_error_rate_ratio: float = 2.0
    error_rate_margin: float = 0.01
    #: p95 latency: the canary's may be at most this multiple of production's.
    max_p95_latency_ratio: float = 1.5
    #: Fewer requests than this, in either version, and the error and latency checks are
    #: inconclusive.
    min_requests: int = 100

    def __post_init__(self):
        if self.method not in METHODS:
            raise AnalysisError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.min_feedback < 1 or self.min_requests < 1:
            raise AnalysisError("min_feedback and min_requests must be at least 1")
        if not 0 <= self.delta < 1:
            raise AnalysisError(f"delta is an absolute rate increase in [0, 1), got {self.delta}")
        if not 0 < self.pass_probability < self.fail_probability < 1:
            raise AnalysisError(
                "need 0 < pass_probability < fail_probability < 1, got "
                f"{self.pass_probability} and {self.fail_probability}")
        if not (0 < self.alpha < 1 and 0 < self.pass_alpha < 1 and self.alpha + self.pass_alpha < 1):
            raise AnalysisError(
                "need alpha and pass_alpha in (0, 1) with alpha + pass_alpha < 1 (else a check could "
                f"pass and fail at once), got {self.alpha} and {self.pass_alpha}")
        if self.max_error_rate_ratio < 1 or self.error_rate_margin < 0:
            raise AnalysisError("max_error_rate_ratio must be >= 1 and error_rate_margin >= 0")
        if self.max_p95_latency_ratio < 1:
            raise AnalysisError(f"max_p95_latency_ratio must be >= 1, got {self.max_p95_latency_ratio}")


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    figures: dict = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one analysis: pass only if every check passes, fail if any fails."""

    outcome: Outcome
    checks: tuple[Check, ...] = ()

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise AnalysisError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    @classmethod
    def of(cls, checks: list[Check] | tuple[Check, ...]) -> "Verdict":
        outcomes = [c.outcome for c in checks]
        if not outcomes:
            return cls("inconclusive", ())
        outcome = "fail" if "fail" in outcomes else "pass" if all(o == "pass" for o in outcomes) else "inconclusive"
        return cls(outcome, tuple(checks))

    @property
    def reason(self) -> str:
        """The reasons that decided the outcome: the failing checks for a fail, the
        unsettled ones for an inconclusive verdict, all of them for a pass."""
        decisive = [c for c in self.checks if c.outcome == self.outcome] if self.outcome != "pass" else list(self.checks)
        return " ".join(c.reason for c in decisive) or f"Analysis {self.outcome}."

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "checks": [c.to_dict() for c in self.checks]}


# --------------------------------------------------------------------------- statistics


def prob_canary_worse(canary_bad: int, canary_n: int, production_bad: int, production_n: int,
                      delta: float, *, cells: int = 4096) -> float:
    """``P(p_c - p_p > delta)`` for independent Beta(1 + bad, 1 + n - bad) posteriors.

    Computed as ``E_p[S_c(p_p + delta)]``, with ``S_c`` the canary posterior's survival
    function (``scipy.stats.beta.sf``, exact): production's posterior is cut into ``cells``
    cells over its mean +- 12 sd (so a narrow posterior gets as many cells as a wide one),
    each weighted by its exact probability mass and evaluated at its midpoint.
    """
    if not (0 <= canary_bad <= canary_n and 0 <= production_bad <= production_n):
        raise AnalysisError("bad counts must lie between 0 and n")
    canary = stats.beta(1.0 + canary_bad, 1.0 + canary_n - canary_bad)
    production = stats.beta(1.0 + production_bad, 1.0 + production_n - production_bad)
    mean, sd = production.mean(), production.std()
    edges = np.linspace(max(0.0, mean - 12 * sd), min(1.0, mean + 12 * sd), cells + 1)
    mass = np.diff(production.cdf(edges))
    mid = (edges[:-1] + edges[1:]) / 2
    return float(min(1.0, max(0.0, np.dot(mass / mass.sum(), canary.sf(mid + delta)))))


def two_proportion_test(canary_bad: int, canary_n: int, production_bad: int, production_n: int,
                        delta: float) -> dict:
    """One-sided z-tests of the difference ``p_c - p_p`` against ``delta``.

    Returns the adjusted difference, its standard error, z, ``p_worse`` (p-value of
    H0 ``p_c - p_p <= delta``: small means the canary is worse by more than delta) and
    ``p_noninferior`` (p-value of H0 ``p_c - p_p >= delta``: small means it is not).
    """
    if not (0 <= canary_bad <= canary_n and 0 <= production_bad <= production_n):
        raise AnalysisError("bad counts must lie between 0 and n")
    pc = (canary_bad + 1) / (canary_n + 2)
    pp = (production_bad + 1) / (production_n + 2)
    se = math.sqrt(pc * (1 - pc) / (canary_n + 2) + pp * (1 - pp) / (production_n + 2))
    z = (pc - pp - delta) / se
    return {"difference": pc - pp, "se": se, "z": z, "p_worse": float(stats.norm.sf(z)),
            "p_noninferior": float(stats.norm.sf(-z))}


def _compare(canary_bad: int, canary_n: int, production_bad: int, production_n: int, delta: float,
             policy: AnalysisPolicy) -> tuple[str, dict, str]:
    """Judge ``p_c - p_p > delta``: ("fail" | "pass" | "unsure", figures, a sentence on the
    evidence). "pass" means evidence that the canary is within ``delta``."""
    if policy.method == "beta-binomial":
        p = prob_canary_worse(canary_bad, canary_n, production_bad, production_n, delta)
        figures = {"p_worse_than_delta": p}
        claim = f"P(canary worse by more than {_pts(delta)}) = {p:.3f}"
        if p > policy.fail_probability:
            return "fail", figures, f"{claim} > {policy.fail_probability:g}"
        if p < policy.pass_probability:
            return "pass", figures, f"{claim} < {policy.pass_probability:g}"
        return "unsure", figures, f"{claim}, between {policy.pass_probability:g} and {policy.fail_probability:g}"
    t = two_proportion_test(canary_bad, canary_n, production_bad, production_n, delta)
    figures = {"z": t["z"], "p_worse": t["p_worse"], "p_noninferior": t["p_noninferior"]}
    claim = f"one-sided z = {t['z']:.2f} against a {_pts(delta)} margin"
    if t["p_worse"] < policy.alpha:
        return "fail", figures, f"{claim}, p = {t['p_worse']:.3g} < alpha {policy.alpha:g} for 'worse by more'"
    if t["p_noninferior"] < policy.pass_alpha:
        return "pass", figures, f"{claim}, p = {t['p_noninferior']:.3g} < {policy.pass_alpha:g} for 'no worse than that'"
    return "unsure", figures, (f"{claim}, p = {t['p_worse']:.3g} for 'worse by more' and "
                               f"{t['p_noninferior']:.3g} for 'no worse than that'")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{100 * x:.1f} points"


# --------------------------------------------------------------------------- checks


def check_negative_feedback(canary: VersionWindow, production: VersionWindow, policy: AnalysisPolicy) -> Check:
    c, p = feedback_counts(canary), feedback_counts(production)
    figures = {
        "method": policy.method, "delta": policy.delta, "min_feedback": policy.min_feedback,
        "canary_negative": c.negative, "canary_feedback": c.total, "canary_rate": c.rate,
        "production_negative": p.negative, "production_feedback": p.total, "production_rate": p.rate,
    }
    rates = (f"Negative feedback: canary {_pct(c.rate)} ({c.negative}/{c.total}) vs production "
             f"{_pct(p.rate)} ({p.negative}/{p.total})")
    short = [f"{who} has {n} feedback events" for who, n in (("canary", c.total), ("production", p.total))
             if n < policy.min_feedback]
    if short:
        return Check("negative_feedback", "inconclusive", figures,
                     f"{rates}; {' and '.join(short)}, fewer than the {policy.min_feedback} needed.")
    verdict, stats, evidence = _compare(c.negative, c.total, p.negative, p.total, policy.delta, policy)
    figures.update(stats)
    if verdict == "fail":
        return Check("negative_feedback", "fail", figures,
                     f"{rates}; {evidence}: the canary is worse by more than the tolerated {_pts(policy.delta)}.")
    if verdict == "pass":
        return Check("negative_feedback", "pass", figures,
                     f"{rates}; {evidence}: the canary is within the tolerated {_pts(policy.delta)}.")
    return Check("negative_feedback", "inconclusive", figures, f"{rates}; {evidence}: not enough evidence either way yet.")


def check_error_rate(canary: VersionWindow, production: VersionWindow, policy: AnalysisPolicy) -> Check:
    pr = production.error_rate
    tolerance = max(policy.error_rate_margin, (policy.max_error_rate_ratio - 1) * (pr or 0.0))
    figures = {
        "method": policy.method, "min_requests": policy.min_requests, "tolerance": tolerance,
        "canary_errors": canary.errors, "canary_requests": canary.requests, "canary_rate": canary.error_rate,
        "production_errors": production.errors, "production_requests": production.requests, "production_rate": pr,
    }
    rates = (f"Error rate: canary {_pct(canary.error_rate)} ({canary.errors}/{canary.requests}) vs production "
             f"{_pct(pr)} ({production.errors}/{production.requests}), tolerated up to {_pts(tolerance)} more")
    short = [f"{who} served {n} requests" for who, n in (("canary", canary.requests), ("production", production.requests))
             if n < policy.min_requests]
    if short:
        return Check("error_rate", "inconclusive", figures,
                     f"{rates}; {' and '.join(short)}, fewer than the {policy.min_requests} needed.")
    verdict, stats, evidence = _compare(canary.errors, canary.requests, production.errors, production.requests,
                                        tolerance, policy)
    figures.update(stats)
    if verdict == "fail":
        return Check("error_rate", "fail", figures, f"{rates}; {evidence}: the canary errs more than tolerated.")
    if verdict == "pass":
        return Check("error_rate", "pass", figures, f"{rates}; {evidence}: within the tolerance.")
    return Check("error_rate", "inconclusive", figures, f"{rates}; {evidence}: not enough evidence either way yet.")


def check_p95_latency(canary: VersionWindow, production: VersionWindow, policy: AnalysisPolicy) -> Check:
    c, p = canary.latency_p95_ms, production.latency_p95_ms
    ratio = None
    if c is not None and p is not None:
        ratio = c / p if p > 0 else (1.0 if c == 0 else math.inf)
    figures = {
        "canary_p95_ms": c, "production_p95_ms": p, "ratio": ratio if ratio is None or math.isfinite(ratio) else None,
        "max_ratio": policy.max_p95_latency_ratio, "min_requests": policy.min_requests,
    }
    if ratio is None:
        missing = " and ".join(w for w, v in (("canary", c), ("production", p)) if v is None)
        return Check("p95_latency", "inconclusive", figures, f"p95 latency: no figure for {missing}.")
    text = f"p95 latency: canary {c:.0f} ms vs production {p:.0f} ms, ratio {ratio:.2f}"
    short = [f"{who} served {n} requests" for who, n in (("canary", canary.requests), ("production", production.requests))
             if n < policy.min_requests]
    if short:
        return Check("p95_latency", "inconclusive", figures,
                     f"{text}; {' and '.join(short)}, fewer than the {policy.min_requests} needed.")
    if ratio > policy.max_p95_latency_ratio:
        return Check("p95_latency", "fail", figures, f"{text} > {policy.max_p95_latency_ratio:g} allowed.")
    return Check("p95_latency", "pass", figures, f"{text} <= {policy.max_p95_latency_ratio:g} allowed.")


def analyse(canary: VersionWindow, production: VersionWindow, policy: AnalysisPolicy | None = None) -> Verdict:
    """Compare the canary's window with production's over the same interval.

    The verdict passes only if every check passes, fails if any check fails, and is
    inconclusive otherwise. Each check carries its figures and a readable reason.
    """
    policy = policy or AnalysisPolicy()
    return Verdict.of([
        check_negative_feedback(canary, production, policy),
        check_error_rate(canary, production, policy),
        check_p95_latency(canary, production, policy),
    ])
