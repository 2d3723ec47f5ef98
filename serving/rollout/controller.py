"""The rollout state machine: a candidate climbs canary weights on passing analyses and is
promoted, or is rolled back on failing ones (in the manner of Flagger and Argo Rollouts).

Pure functions over frozen dataclasses: every transition takes a state and ``now`` and
returns ``(new_state, Decision)``. The control plane reads the windows from the warehouse,
calls :func:`~serving.rollout.analysis.analyse` and :func:`advance` once per
``analysis_interval_s``, applies ``decision.weights`` to the alias's routes and records the
decision as a deployment event.

How a rollout moves (``RolloutPolicy`` defaults in brackets)::

    start ──► progressing at steps[0] (5 %)
    progressing + pass          ──► next step; passing the step before 100 % promotes
    progressing + fail          ──► hold; the failure_threshold-th (2nd) fail rolls back
    progressing + inconclusive  ──► hold; never advances. After max_inconclusive (10) at one
                                    step the rollout is *stalled*: on_stall decides whether
                                    it keeps holding and says so in every decision
                                    ("hold", default), pauses for an operator ("pause")
                                    or rolls back ("rollback")
    paused                      ──► ignores verdicts (each is answered with a "hold")
    manual: pause, resume, promote, rollback (also of a promoted rollout: back to the
    previous production at once)
    promoted / rolled_back      ──► terminal: anything else raises RolloutError

Failures count over the whole rollout, not per step: a candidate that fails now and then
is suspect even if it passes in between. Inconclusive intervals count per step and reset
when the step changes or an operator resumes.

Weights are percent (floats, as in :class:`serving.routing.Route`), the candidate listed
first, so raising its weight only moves users from production to the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from serving.rollout.analysis import AnalysisPolicy, Verdict

Status = Literal["progressing", "paused", "promoted", "rolled_back"]
Action = Literal["start", "hold", "advance", "promote", "rollback", "pause", "resume"]
OnStall = Literal["hold", "pause", "rollback"]
STATUSES: tuple[str, ...] = ("progressing", "paused", "promoted", "rolled_back")
TERMINAL: tuple[str, ...] = ("promoted", "rolled_back")


class RolloutError(ValueError):
    """A rollout transition or policy that is not allowed; the message says what to do instead."""


@dataclass(frozen=True)
class RolloutPolicy:
    #: Canary weights in percent, strictly increasing, ending at 100. Passing the analysis
    #: at the step before 100 promotes; there is no analysis at 100 % (nothing to compare with).
    steps: tuple[float, ...] = (5, 25, 50, 100)
    #: How often the control plane analyses and calls :func:`advance` (see :func:`analysis_due`).
    analysis_interval_s: float = 60
    #: Failed analyses (over the whole rollout) that roll back.
    failure_threshold: int = 2
    #: Inconclusive analyses one step may see before the rollout counts as stalled.
    max_inconclusive: int = 10
    #: What a stalled rollout does: keep holding and report it, pause, or roll back.
    #: Never promote: an inconclusive analysis is never a pass.
    on_stall: OnStall = "hold"
    analysis: AnalysisPolicy = field(default_factory=AnalysisPolicy)

    def __post_init__(self):
        steps = tuple(float(s) for s in self.steps)
        if len(steps) < 2 or steps[-1] != 100 or not all(0 < a < b for a, b in zip(steps, steps[1:])):
            raise RolloutError(
                f"steps must be at least two strictly increasing weights in (0, 100] ending at 100, got {self.steps}")
        object.__setattr__(self, "steps", steps)
        if self.analysis_interval_s <= 0:
            raise RolloutError(f"analysis_interval_s must be positive, got {self.analysis_interval_s}")
        if self.failure_threshold < 1 or self.max_inconclusive < 1:
            raise RolloutError("failure_threshold and max_inconclusive must be at least 1")
        if self.on_stall not in ("hold", "pause", "rollback"):
            raise RolloutError(f"on_stall must be 'hold', 'pause' or 'rollback', got {self.on_stall!r}")


@dataclass(frozen=True)
class Decision:
    """What the controller decided, ready to apply (``weights``) and to record as an event."""

    action: Action
    #: The alias's weights after the decision: version -> percent, candidate first.
    weights: dict[str, float]
    reason: str
    #: Counters after the decision and, when a verdict was judged, its checks.
    figures: dict = field(default_factory=dict)
    at: datetime | None = None

    def to_dict(self) -> dict:
        return {"action": self.action, "weights": dict(self.weights), "reason": self.reason,
                "figures": self.figures, "at": self.at.isoformat() if self.at else None}


@dataclass(frozen=True)
class RolloutState:
    alias: str
    candidate: str
    #: The version serving the rest of the alias's traffic (the candidate, once promoted).
    production: str
    #: The version ``production`` replaced, kept for an instant rollback after promotion.
    previous_production: str | None
    status: Status
    step_index: int
    canary_weight: float
    failures: int
    inconclusive: int
    started_at: datetime
    updated_at: datetime
    #: When the current step began: a caller may analyse windows since then instead of
    #: per interval, to pile up evidence at a step.
    step_started_at: datetime
    analyses: int = 0
    last_decision: Decision | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def weights(self) -> dict[str, float]:
        """The alias's weights in this state (candidate first while it shares traffic)."""
        if self.terminal:  # promoted: the candidate is production now; rolled back: the old one
            return {self.production: 100.0}
        return _split(self.candidate, self.production, self.canary_weight)

    def stalled(self, policy: RolloutPolicy) -> bool:
        return self.status in ("progressing", "paused") and self.inconclusive >= policy.max_inconclusive


def _split(candidate: str, production: str, weight: float) -> dict[str, float]:
    return {candidate: float(weight), production: 100.0 - float(weight)}


def _figures(state: RolloutState, policy: RolloutPolicy, verdict: Verdict | None = None) -> dict:
    figures = {
        "step": state.step_index + 1, "steps": len(policy.steps), "canary_weight": state.canary_weight,
        "failures": state.failures, "failure_threshold": policy.failure_threshold,
        "inconclusive": state.inconclusive, "max_inconclusive": policy.max_inconclusive,
        "analyses": state.analyses,
    }
    if verdict is not None:
        figures["verdict"] = verdict.outcome
        figures["checks"] = [c.to_dict() for c in verdict.checks]
    return figures


def _decide(state: RolloutState, policy: RolloutPolicy, action: Action, reason: str, now: datetime,
            verdict: Verdict | None = None, **changes) -> tuple[RolloutState, Decision]:
    new = replace(state, updated_at=now, **changes)
    decision = Decision(action, new.weights, reason, _figures(new, policy, verdict), now)
    return replace(new, last_decision=decision), decision


def _refuse_terminal(state: RolloutState, what: str) -> None:
    if state.terminal:
        raise RolloutError(
            f"cannot {what} the rollout of {state.candidate!r} on {state.alias!r}: it is already "
            f"{state.status.replace('_', ' ')}; start a new rollout instead")


def _pct(w: float) -> str:
    return f"{w:g}%"


# --------------------------------------------------------------------------- transitions


def start(alias: str, candidate: str, production: str, policy: RolloutPolicy, now: datetime
          ) -> tuple[RolloutState, Decision]:
    """Begin a rollout: the candidate gets ``policy.steps[0]`` percent of the alias's traffic."""
    if not alias or not candidate or not production:
        raise RolloutError("alias, candidate and production must be non-empty version names")
    if candidate == production:
        raise RolloutError(f"{candidate!r} is already production on {alias!r}; nothing to roll out")
    state = RolloutState(
        alias=alias, candidate=candidate, production=production, previous_production=None,
        status="progressing", step_index=0, canary_weight=policy.steps[0], failures=0, inconclusive=0,
        started_at=now, updated_at=now, step_started_at=now)
    return _decide(state, policy, "start",
                   f"Started the canary of {candidate!r} on {alias!r} at {_pct(policy.steps[0])} "
                   f"against production {production!r}.", now)


def advance(state: RolloutState, verdict: Verdict, policy: RolloutPolicy, now: datetime
            ) -> tuple[RolloutState, Decision]:
    """Act on one interval's verdict (call once per ``analysis_interval_s``)."""
    _refuse_terminal(state, "analyse")
    if state.status == "paused":
        return _decide(state, policy, "hold",
                       f"Paused at {_pct(state.canary_weight)}: the {verdict.outcome} verdict was ignored; "
                       "resume the rollout to act on analyses again.", now, verdict)
    analyses = state.analyses + 1
    if verdict.outcome == "fail":
        failures = state.failures + 1
        if failures >= policy.failure_threshold:
            return _rolled_back(state, policy, now, verdict, failures=failures, analyses=analyses,
                                reason=f"Rolled back: {failures} failed analyses reached the threshold of "
                                       f"{policy.failure_threshold}. {verdict.reason}")
        return _decide(state, policy, "hold",
                       f"Holding at {_pct(state.canary_weight)} after failed analysis {failures} of "
                       f"{policy.failure_threshold} allowed. {verdict.reason}", now, verdict,
                       failures=failures, analyses=analyses)
    if verdict.outcome == "pass":
        nxt = state.step_index + 1
        if nxt == len(policy.steps) - 1:
            return _promoted(state, policy, now, verdict, analyses=analyses,
                             reason=f"Promoted {state.candidate!r} to production on {state.alias!r}: the analysis "
                                    f"at {_pct(state.canary_weight)} passed, the last step before 100%. {verdict.reason}")
        return _decide(state, policy, "advance",
                       f"Advanced from {_pct(state.canary_weight)} to {_pct(policy.steps[nxt])}: the analysis "
                       f"passed. {verdict.reason}", now, verdict,
                       step_index=nxt, canary_weight=policy.steps[nxt], inconclusive=0, step_started_at=now,
                       analyses=analyses)
    # Inconclusive: never a pass.
    inconclusive = state.inconclusive + 1
    if inconclusive < policy.max_inconclusive:
        return _decide(state, policy, "hold",
                       f"Holding at {_pct(state.canary_weight)}: analysis inconclusive ({inconclusive} of "
                       f"{policy.max_inconclusive} at this step). {verdict.reason}", now, verdict,
                       inconclusive=inconclusive, analyses=analyses)
    stalled = (f"Stalled at {_pct(state.canary_weight)}: {inconclusive} inconclusive analyses at this step "
               f"(limit {policy.max_inconclusive}).")
    if policy.on_stall == "rollback":
        return _rolled_back(state, policy, now, verdict, inconclusive=inconclusive, analyses=analyses,
                            reason=f"Rolled back. {stalled} {verdict.reason}")
    if policy.on_stall == "pause":
        return _decide(state, policy, "pause",
                       f"Paused. {stalled} An operator should resume, promote or roll back. {verdict.reason}",
                       now, verdict, status="paused", inconclusive=inconclusive, analyses=analyses)
    return _decide(state, policy, "hold",
                   f"{stalled} Still holding; needs more feedback or an operator. {verdict.reason}",
                   now, verdict, inconclusive=inconclusive, analyses=analyses)


def _promoted(state, policy, now, verdict=None, *, reason: str, **changes):
    return _decide(state, policy, "promote", reason, now, verdict, status="promoted",
                   production=state.candidate, previous_production=state.production,
                   step_index=len(policy.steps) - 1, canary_weight=100.0, **changes)


def _rolled_back(state, policy, now, verdict=None, *, reason: str, **changes):
    return _decide(state, policy, "rollback", reason, now, verdict, status="rolled_back", canary_weight=0.0, **changes)


def pause(state: RolloutState, policy: RolloutPolicy, now: datetime, reason: str = "paused by an operator"
          ) -> tuple[RolloutState, Decision]:
    """Freeze the rollout at its current weights; verdicts are ignored until :func:`resume`."""
    _refuse_terminal(state, "pause")
    if state.status == "paused":
        raise RolloutError(f"the rollout of {state.candidate!r} on {state.alias!r} is already paused")
    return _decide(state, policy, "pause", f"Paused at {_pct(state.canary_weight)}: {reason}.", now,
                   status="paused")


def resume(state: RolloutState, policy: RolloutPolicy, now: datetime, reason: str = "resumed by an operator"
           ) -> tuple[RolloutState, Decision]:
    """Let a paused rollout act on analyses again; the step's inconclusive count starts over."""
    _refuse_terminal(state, "resume")
    if state.status != "paused":
        raise RolloutError(f"the rollout of {state.candidate!r} on {state.alias!r} is not paused")
    return _decide(state, policy, "resume", f"Resumed at {_pct(state.canary_weight)}: {reason}.", now,
                   status="progressing", inconclusive=0)


def promote(state: RolloutState, policy: RolloutPolicy, now: datetime, reason: str = "promoted by an operator"
            ) -> tuple[RolloutState, Decision]:
    """Skip the remaining steps: 100% to the candidate, which becomes production."""
    _refuse_terminal(state, "promote")
    return _promoted(state, policy, now, reason=f"Promoted {state.candidate!r} to production on {state.alias!r} "
                                                 f"from {_pct(state.canary_weight)}: {reason}.")


def rollback(state: RolloutState, policy: RolloutPolicy, now: datetime, reason: str = "rolled back by an operator"
             ) -> tuple[RolloutState, Decision]:
    """100% back to production at once. Also undoes a promotion: the previous production
    serves everything again (the one transition a promoted rollout allows)."""
    if state.status == "promoted" and state.previous_production:
        return _decide(state, policy, "rollback",
                       f"Rolled back the promotion of {state.candidate!r} on {state.alias!r}: "
                       f"{state.previous_production!r} serves production again; {reason}.", now,
                       status="rolled_back", production=state.previous_production,
                       previous_production=state.production, canary_weight=0.0)
    _refuse_terminal(state, "roll back")
    return _rolled_back(state, policy, now, reason=f"Rolled back {state.candidate!r} on {state.alias!r} from "
                                                   f"{_pct(state.canary_weight)}: {reason}.")


def analysis_due(state: RolloutState, policy: RolloutPolicy, now: datetime) -> bool:
    """Whether the control plane should analyse and :func:`advance` now."""
    return state.status == "progressing" and (now - state.updated_at).total_seconds() >= policy.analysis_interval_s
