"""Rollout decisions: the canary analysis's statistics, the controller's state machine, and
whole rollouts simulated on synthetic feedback streams (seeded, so every run is the same).

Pure library code: no broker, no DuckDB, no model. Runs in a few seconds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from serving.rollout import (
    AnalysisError,
    AnalysisPolicy,
    Check,
    RolloutError,
    RolloutPolicy,
    Verdict,
    VersionWindow,
    advance,
    analyse,
    analysis_due,
    feedback_counts,
    pause,
    prob_canary_worse,
    promote,
    resume,
    rollback,
    start,
    two_proportion_test,
)
from serving.rollout.analysis import check_error_rate, check_negative_feedback, check_p95_latency

METHODS = ("beta-binomial", "two-proportion")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def fb(negative: int, total: int, *, requests: int | None = None, errors: int = 0, p95: float | None = 300.0
       ) -> VersionWindow:
    """A window with ``negative`` thumbs down out of ``total`` thumbs."""
    return VersionWindow(requests=requests if requests is not None else max(total * 5, 1000), errors=errors,
                         latency_p95_ms=p95, thumbs_down=negative, thumbs_up=total - negative)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


PASS = Verdict("pass", (Check("negative_feedback", "pass", {}, "Fine."),))
FAIL = Verdict("fail", (Check("negative_feedback", "fail", {}, "Much worse."),))
UNSURE = Verdict("inconclusive", (Check("negative_feedback", "inconclusive", {}, "Too little feedback."),))


# --------------------------------------------------------------------------- feedback and windows


def test_negative_feedback_is_defined_in_one_place():
    w = VersionWindow(thumbs_up=10, thumbs_down=3, ratings=(1, 2, 4, 5, 6), regenerations=7,
                      choices_won=8, choices_lost=9, edits=2, copies=11)
    counts = feedback_counts(w)
    # negative: thumbs down, ratings 1-2, regenerations, lost choices, edits
    assert counts.negative == 3 + 1 + 2 + 7 + 9 + 2
    # everything is feedback; a 3-star rating is feedback but not negative
    assert counts.total == counts.negative + 10 + 4 + 5 + 6 + 8 + 11
    assert feedback_counts(VersionWindow()).rate is None


@pytest.mark.parametrize("kwargs", [
    {"thumbs_up": -1}, {"requests": 5, "errors": 6}, {"ratings": (1, 2, 3)}, {"latency_p95_ms": -1.0},
    {"regenerations": 1.5},
])
def test_bad_windows_are_refused(kwargs):
    with pytest.raises(AnalysisError):
        VersionWindow(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"method": "bayes"}, {"pass_probability": 0.96}, {"alpha": 0.5, "pass_alpha": 0.6}, {"delta": -0.1},
    {"min_feedback": 0}, {"max_p95_latency_ratio": 0.9}, {"max_error_rate_ratio": 0.5},
])
def test_bad_analysis_policies_are_refused(kwargs):
    with pytest.raises(AnalysisError):
        AnalysisPolicy(**kwargs)


# --------------------------------------------------------------------------- the statistics


@pytest.mark.parametrize("counts", [
    (8, 40, 152, 760, 0.05), (16, 40, 152, 760, 0.05), (200, 1000, 200, 1000, 0.05),
    (2, 200, 38, 3800, 0.01), (0, 0, 0, 0, 0.05), (3, 5, 1, 5, 0.0), (10, 10, 0, 10, 0.3),
])
def test_posterior_probability_matches_monte_carlo(counts):
    cb, cn, pb, pn, delta = counts
    rng = np.random.default_rng(7)
    n = 400_000
    mc = float(np.mean(rng.beta(1 + cb, 1 + cn - cb, n) - rng.beta(1 + pb, 1 + pn - pb, n) > delta))
    # 4 standard errors of the Monte Carlo estimate, plus a hair for the grid
    assert prob_canary_worse(cb, cn, pb, pn, delta) == pytest.approx(mc, abs=4 * math.sqrt(0.25 / n) + 1e-4)


def test_posterior_probability_matches_scipy_integration():
    stats = pytest.importorskip("scipy.stats")
    integrate = pytest.importorskip("scipy.integrate")
    for cb, cn, pb, pn, delta in [(8, 40, 152, 760, 0.05), (0, 200, 0, 3800, 0.01), (40, 200, 760, 3800, 0.05)]:
        c, p = stats.beta(1 + cb, 1 + cn - cb), stats.beta(1 + pb, 1 + pn - pb)
        ref = integrate.quad(lambda y: p.pdf(y) * c.sf(y + delta), p.ppf(1e-12), p.isf(1e-12), limit=200)[0]
        assert prob_canary_worse(cb, cn, pb, pn, delta) == pytest.approx(ref, abs=1e-5)


def test_two_proportion_test_by_hand():
    t = two_proportion_test(60, 200, 200, 1000, 0.05)
    pc, pp = 61 / 202, 201 / 1002  # Agresti-Caffo: one success and one failure added
    se = math.sqrt(pc * (1 - pc) / 202 + pp * (1 - pp) / 1002)
    z = (pc - pp - 0.05) / se
    assert t["z"] == pytest.approx(z)
    assert t["p_worse"] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert t["p_worse"] + t["p_noninferior"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_clear_cases(method):
    policy = AnalysisPolicy(method=method)
    same = check_negative_feedback(fb(200, 1000), fb(200, 1000), policy)
    worse = check_negative_feedback(fb(200, 500), fb(100, 500), policy)  # 40% vs 20%
    few = check_negative_feedback(fb(2, 10), fb(200, 1000), policy)
    between = check_negative_feedback(fb(14, 50), fb(100, 500), policy)  # 28% vs 20% on 50 events
    assert (same.outcome, worse.outcome, few.outcome, between.outcome) == ("pass", "fail", "inconclusive", "inconclusive")
    assert "fewer than the 30 needed" in few.reason and "canary has 10 feedback events" in few.reason
    assert "40.0% (200/500)" in worse.reason and "20.0% (100/500)" in worse.reason
    assert worse.figures["canary_rate"] == 0.4 and worse.figures["method"] == method


@pytest.mark.parametrize("method", METHODS)
def test_more_feedback_more_confidence(method):
    """At the same observed rates, more feedback moves the evidence away from the middle:
    a canary as good as production towards pass, a clearly worse one towards fail."""
    policy = AnalysisPolicy(method=method, min_feedback=1)
    # the posterior P(worse by more than delta), or its frequentist twin (see analysis.py)
    key = "p_worse_than_delta" if method == "beta-binomial" else "p_noninferior"
    good, bad, outcomes_good, outcomes_bad = [], [], [], []
    for n in (20, 40, 80, 160, 320, 640):
        g = check_negative_feedback(fb(n // 5, n), fb(n // 5, n), policy)  # 20% vs 20%
        b = check_negative_feedback(fb(n * 3 // 10, n), fb(n // 5, n), policy)  # 30% vs 20%
        good.append(g.figures[key])
        bad.append(b.figures[key])
        outcomes_good.append(g.outcome)
        outcomes_bad.append(b.outcome)
    assert all(x > y for x, y in zip(good, good[1:])), good
    assert all(x < y for x, y in zip(bad, bad[1:])), bad
    assert outcomes_good[0] == "inconclusive" and outcomes_good[-1] == "pass"
    assert outcomes_bad[0] == "inconclusive" and outcomes_bad[-1] == "fail"


@pytest.mark.parametrize("method", METHODS)
def test_error_rate_check(method):
    policy = AnalysisPolicy(method=method)
    prod = fb(0, 0, requests=4000, errors=40)  # 1%
    assert check_error_rate(fb(0, 0, requests=2000, errors=20), prod, policy).outcome == "pass"
    bad = check_error_rate(fb(0, 0, requests=200, errors=20), prod, policy)  # 10%
    assert bad.outcome == "fail" and "10.0% (20/200)" in bad.reason and bad.figures["tolerance"] == 0.01
    assert check_error_rate(fb(0, 0, requests=50, errors=0), prod, policy).outcome == "inconclusive"
    # the ratio sets the tolerance once production errs more than the margin
    assert check_error_rate(fb(0, 0, requests=100, errors=0), fb(0, 0, requests=1000, errors=100),
                            policy).figures["tolerance"] == pytest.approx(0.1)


def test_p95_latency_check():
    policy = AnalysisPolicy()
    prod = fb(0, 0, requests=1000, p95=300.0)
    assert check_p95_latency(fb(0, 0, requests=200, p95=420.0), prod, policy).outcome == "pass"
    slow = check_p95_latency(fb(0, 0, requests=200, p95=900.0), prod, policy)
    assert slow.outcome == "fail" and slow.figures["ratio"] == 3.0 and "ratio 3.00 > 1.5" in slow.reason
    assert check_p95_latency(fb(0, 0, requests=200, p95=None), prod, policy).outcome == "inconclusive"
    assert check_p95_latency(fb(0, 0, requests=20, p95=900.0), prod, policy).outcome == "inconclusive"


def test_verdict_passes_only_if_every_check_passes():
    good = fb(200, 1000, requests=5000, errors=50)
    v = analyse(good, good)
    assert v.outcome == "pass" and [c.name for c in v.checks] == ["negative_feedback", "error_rate", "p95_latency"]
    slow = fb(200, 1000, requests=5000, errors=50, p95=1000.0)
    assert analyse(slow, good).outcome == "fail" and "p95 latency" in analyse(slow, good).reason
    no_latency = fb(200, 1000, requests=5000, errors=50, p95=None)
    v = analyse(no_latency, good)
    assert v.outcome == "inconclusive" and v.reason == v.check("p95_latency").reason
    # fail wins over inconclusive
    assert analyse(fb(400, 1000, requests=5000, errors=50, p95=None), good).outcome == "fail"
    assert Verdict.of([]).outcome == "inconclusive"
    json.dumps(v.to_dict())


# --------------------------------------------------------------------------- the controller


def test_start_gives_the_first_step_to_the_candidate_listed_first():
    policy = RolloutPolicy()
    state, d = start("chat", "v2", "v1", policy, at(0))
    assert d.action == "start" and d.weights == {"v2": 5.0, "v1": 95.0} and list(d.weights) == ["v2", "v1"]
    assert state.status == "progressing" and state.canary_weight == 5 and state.last_decision == d
    with pytest.raises(RolloutError, match="already production"):
        start("chat", "v1", "v1", policy, at(0))


@pytest.mark.parametrize("steps", [(5, 25), (5, 25, 50), (25, 5, 100), (0, 100), (100,), (5, 120)])
def test_bad_rollout_policies_are_refused(steps):
    with pytest.raises(RolloutError):
        RolloutPolicy(steps=steps)


def test_passing_analyses_climb_the_steps_and_promote():
    policy = RolloutPolicy()
    state, _ = start("chat", "v2", "v1", policy, at(0))
    seen = []
    for i in range(1, 4):
        state, d = advance(state, PASS, policy, at(i))
        seen.append((d.action, d.weights))
        assert sum(d.weights.values()) == pytest.approx(100)
    assert seen == [("advance", {"v2": 25.0, "v1": 75.0}), ("advance", {"v2": 50.0, "v1": 50.0}),
                    ("promote", {"v2": 100.0})]
    assert state.status == "promoted" and state.production == "v2" and state.previous_production == "v1"
    assert d.figures["verdict"] == "pass" and d.figures["checks"][0]["reason"] == "Fine."
    json.dumps(d.to_dict())


def test_failures_roll_back_at_the_threshold_and_count_over_the_whole_rollout():
    policy = RolloutPolicy(failure_threshold=2)
    state, _ = start("chat", "v2", "v1", policy, at(0))
    state, d = advance(state, FAIL, policy, at(1))
    assert d.action == "hold" and state.failures == 1 and d.weights == {"v2": 5.0, "v1": 95.0}
    state, d = advance(state, PASS, policy, at(2))
    assert d.action == "advance" and state.failures == 1
    state, d = advance(state, FAIL, policy, at(3))
    assert d.action == "rollback" and state.status == "rolled_back"
    assert d.weights == {"v1": 100.0} and state.weights == {"v1": 100.0}
    assert "2 failed analyses" in d.reason and "Much worse." in d.reason


@pytest.mark.parametrize("on_stall", ["hold", "pause", "rollback"])
def test_inconclusive_never_advances_and_stalls(on_stall):
    policy = RolloutPolicy(max_inconclusive=3, on_stall=on_stall)
    state, _ = start("chat", "v2", "v1", policy, at(0))
    for i in range(1, 3):
        state, d = advance(state, UNSURE, policy, at(i))
        assert d.action == "hold" and state.canary_weight == 5 and not state.stalled(policy)
    state, d = advance(state, UNSURE, policy, at(3))
    assert "Stalled at 5%: 3 inconclusive analyses" in d.reason
    expected = {"hold": ("hold", "progressing"), "pause": ("pause", "paused"), "rollback": ("rollback", "rolled_back")}
    assert (d.action, state.status) == expected[on_stall]
    if on_stall == "hold":
        for i in range(4, 20):
            state, d = advance(state, UNSURE, policy, at(i))
            assert d.action == "hold" and "Stalled" in d.reason and state.stalled(policy)
        state, d = advance(state, PASS, policy, at(20))  # feedback arrives at last
        assert d.action == "advance" and state.inconclusive == 0


def test_paused_rollouts_ignore_verdicts_until_resumed():
    policy = RolloutPolicy()
    state, _ = start("chat", "v2", "v1", policy, at(0))
    state, _ = advance(state, UNSURE, policy, at(1))
    state, d = pause(state, policy, at(2), "looking at the transcripts")
    assert d.action == "pause" and "looking at the transcripts" in d.reason and d.weights == {"v2": 5.0, "v1": 95.0}
    with pytest.raises(RolloutError, match="already paused"):
        pause(state, policy, at(2))
    for verdict in (FAIL, FAIL, PASS):
        state, d = advance(state, verdict, policy, at(3))
        assert d.action == "hold" and "ignored" in d.reason and state.status == "paused"
    assert state.failures == 0 and state.step_index == 0 and not analysis_due(state, policy, at(60))
    state, d = resume(state, policy, at(4))
    assert d.action == "resume" and state.status == "progressing" and state.inconclusive == 0
    with pytest.raises(RolloutError, match="not paused"):
        resume(state, policy, at(5))


def test_manual_promote_and_rollback_and_terminal_states():
    policy = RolloutPolicy()
    state, _ = start("chat", "v2", "v1", policy, at(0))
    paused, _ = pause(state, policy, at(1))
    promoted, d = promote(paused, policy, at(2), "the evaluation says so")
    assert d.action == "promote" and d.weights == {"v2": 100.0} and promoted.previous_production == "v1"
    for transition in (pause, resume, promote):
        with pytest.raises(RolloutError, match="already promoted"):
            transition(promoted, policy, at(3))
    with pytest.raises(RolloutError, match="already promoted; start a new rollout"):
        advance(promoted, PASS, policy, at(3))

    # The one move a promoted rollout allows: straight back to the previous production.
    reverted, d = rollback(promoted, policy, at(4))
    assert d.action == "rollback" and d.weights == {"v1": 100.0} and reverted.production == "v1"

    rolled, d = rollback(state, policy, at(1), "a user reported a leak")
    assert d.weights == {"v1": 100.0} and "a user reported a leak" in d.reason
    for done in (rolled, reverted):
        for transition in (pause, resume, promote, rollback):
            with pytest.raises(RolloutError, match="already rolled back"):
                transition(done, policy, at(5))
        with pytest.raises(RolloutError):
            advance(done, PASS, policy, at(5))


def test_analysis_is_due_once_per_interval():
    policy = RolloutPolicy(analysis_interval_s=60)
    state, _ = start("chat", "v2", "v1", policy, at(0))
    assert not analysis_due(state, policy, at(0.5)) and analysis_due(state, policy, at(1))


# --------------------------------------------------------------------------- simulated rollouts
#
# Per interval, the alias gets ~4,000 requests (Poisson), split by the canary weight; one
# request in five yields a feedback event, spread over the feedback kinds. Production has
# 20% negative feedback, 1% errors and a log-normal latency (median 300 ms).

NEG_KINDS = (0.40, 0.10, 0.10, 0.25, 0.10, 0.05)  # thumbs down, 1 star, 2 stars, regen, lost, edit
POS_KINDS = (0.45, 0.10, 0.10, 0.10, 0.10, 0.15)  # thumbs up, 3, 4, 5 stars, won, copy
SEEDS = range(20)


def synthetic_window(rng, requests, *, negative=0.20, feedback=0.20, errors=0.01, latency=1.0) -> VersionWindow:
    n_feedback = rng.binomial(requests, feedback)
    n_negative = rng.binomial(n_feedback, negative)
    down, r1, r2, regen, lost, edits = (int(x) for x in rng.multinomial(n_negative, NEG_KINDS))
    up, r3, r4, r5, won, copies = (int(x) for x in rng.multinomial(n_feedback - n_negative, POS_KINDS))
    p95 = float(np.percentile(rng.lognormal(math.log(300.0), 0.5, requests) * latency, 95)) if requests else None
    return VersionWindow(requests=int(requests), errors=int(rng.binomial(requests, errors)), latency_p95_ms=p95,
                         thumbs_up=up, thumbs_down=down, ratings=(r1, r2, r3, r4, r5), regenerations=regen,
                         choices_won=won, choices_lost=lost, edits=edits, copies=copies)


def simulate(seed: int, policy: RolloutPolicy, max_intervals: int = 30, **candidate):
    rng = np.random.default_rng(seed)
    state, d = start("flywheel-chat", "v2", "v1", policy, T0)
    decisions = [d]
    for i in range(1, max_intervals + 1):
        w = state.canary_weight
        canary = synthetic_window(rng, rng.poisson(4000 * w / 100), **candidate)
        production = synthetic_window(rng, rng.poisson(4000 * (100 - w) / 100))
        state, d = advance(state, analyse(canary, production, policy.analysis), policy, at(i))
        decisions.append(d)
        if state.terminal:
            break
    return state, decisions


def report(name: str, hits: int, runs: int, intervals: list[int]) -> str:
    line = (f"{name}: expected outcome in {hits}/{runs} seeds; intervals to the end: "
            f"median {int(np.median(intervals))}, max {max(intervals)}")
    print(line)
    return line


# Why ">= 19 of 20": over 200 seeds (see the report in the issue) good candidates were
# promoted and 40%-negative ones rolled back in 200/200 runs with both methods. A false
# rollback of a good candidate needs two failed analyses, each ~1% likely at the 5% step
# and far rarer later; a bad one's analyses fail ~60% of the time at 5% and almost always at
# 25%. Seeds are fixed, so the test is deterministic; the one seed of slack absorbs harmless
# numeric changes, while a real regression (a looser test, a controller that passes on
# inconclusive) would cost many seeds.


@pytest.mark.parametrize("method", METHODS)
def test_a_candidate_as_good_as_production_is_promoted_through_every_step(method):
    policy = RolloutPolicy(analysis=AnalysisPolicy(method=method))
    hits, intervals = 0, []
    for seed in SEEDS:
        state, decisions = simulate(seed, policy)
        actions = [d.action for d in decisions]
        climbed = [d.weights.get("v2") for d in decisions if d.action in ("advance", "promote")] == [25, 50, 100]
        hits += state.status == "promoted" and climbed and "rollback" not in actions
        intervals.append(len(decisions) - 1)
    assert hits >= 19, report(f"good candidate ({method})", hits, len(SEEDS), intervals)
    report(f"good candidate ({method})", hits, len(SEEDS), intervals)


@pytest.mark.parametrize("method", METHODS)
def test_a_clearly_worse_candidate_is_rolled_back_at_the_failure_threshold(method):
    policy = RolloutPolicy(analysis=AnalysisPolicy(method=method))
    hits, intervals = 0, []
    for seed in SEEDS:
        state, decisions = simulate(seed, policy, negative=0.40)
        last = decisions[-1]
        hits += (state.status == "rolled_back" and state.failures == policy.failure_threshold
                 and last.action == "rollback" and last.weights == {"v1": 100.0}
                 and last.figures["verdict"] == "fail"
                 and all(d.action != "promote" for d in decisions))
        intervals.append(len(decisions) - 1)
    assert hits >= 19, report(f"40% negative ({method})", hits, len(SEEDS), intervals)
    report(f"40% negative ({method})", hits, len(SEEDS), intervals)
    assert np.median(intervals) <= 5  # two failures, typically at the 5% or 25% step


@pytest.mark.parametrize("method", METHODS)
def test_a_candidate_without_feedback_stays_inconclusive_and_is_never_promoted(method):
    policy = RolloutPolicy(analysis=AnalysisPolicy(method=method), max_inconclusive=10)
    hits = 0
    for seed in SEEDS:
        state, decisions = simulate(seed, policy, feedback=0.005, max_intervals=25)  # ~1 event per interval
        feedback_checks = [c["outcome"] for d in decisions[1:] for c in d.figures["checks"]
                           if c["name"] == "negative_feedback"]
        hits += (state.status != "promoted" and state.step_index == 0
                 and set(feedback_checks) == {"inconclusive"}
                 and "Stalled at 5%" in decisions[-1].reason)
    # Every seed: with ~1 feedback event per interval the check cannot reach 30.
    assert hits == len(SEEDS), report(f"no feedback ({method})", hits, len(SEEDS), [25])
    report(f"no feedback ({method})", hits, len(SEEDS), [25])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fault,check", [({"errors": 0.10}, "error_rate"), ({"latency": 3.0}, "p95_latency")])
def test_errors_or_slowness_roll_back_even_with_good_feedback(method, fault, check):
    policy = RolloutPolicy(analysis=AnalysisPolicy(method=method))
    hits, intervals = 0, []
    for seed in SEEDS:
        state, decisions = simulate(seed, policy, **fault)
        judged = [d for d in decisions if "checks" in d.figures]
        failing = Counter(c["name"] for d in judged for c in d.figures["checks"] if c["outcome"] == "fail")
        hits += (state.status == "rolled_back" and decisions[-1].weights == {"v1": 100.0}
                 and failing[check] == policy.failure_threshold and failing["negative_feedback"] == 0)
        intervals.append(len(decisions) - 1)
    assert hits >= 19, report(f"{check} fault ({method})", hits, len(SEEDS), intervals)
    report(f"{check} fault ({method})", hits, len(SEEDS), intervals)
