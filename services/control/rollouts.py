"""Rollouts in the control plane: the pure controller (serving.rollout) driven by figures
from the warehouse, its decisions applied to the registry and the routing table, and
every decision emitted as a ``deployment`` event (Kafka → landed in ``deployments``).

A scheduler tick (APScheduler, every ``rollout.tick_s``) analyses each progressing
rollout once per ``rollout.analysis_interval_s``: candidate vs production over the last
interval, then advance / hold / promote / roll back. Operators act through the JSON API
or `flywheel rollout ...`.

A rollout starts only for a candidate whose latest evaluation passed the gate. An admin
may override that, explicitly and with a reason: the override gets its own row in the
audit log (with the evaluation it overrode), and the deployment event says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from datetime import datetime, timedelta, timezone

import duckdb

from flywheel.settings import Settings
from serving.registry import Registry, RegistryError
from services.control import audit
from serving.rollout import analyse, controller
from serving.rollout.analysis import AnalysisPolicy
from serving.rollout.controller import Decision, RolloutError, RolloutPolicy, RolloutState
from serving.rollout.windows import window_reader
from streams.schemas import Deployment, new_id

log = logging.getLogger(__name__)

MANUAL = {"pause": controller.pause, "resume": controller.resume, "promote": controller.promote,
          "rollback": controller.rollback}


@dataclasses.dataclass(frozen=True)
class GateOverride:
    """An admin's explicit start of a candidate the evaluation gate did not pass."""

    by: object  # services.control.operators.Operator (or None for a process of the plane)
    reason: str


def latest_evaluation(cur: duckdb.DuckDBPyConnection, candidate: str) -> dict | None:
    row = cur.execute("SELECT eval_id, passed, reasons, source, recorded_by FROM evaluations WHERE candidate = ? "
                      "ORDER BY created_at DESC LIMIT 1", [candidate]).fetchone()
    if row is None:
        return None
    return {"eval_id": row[0], "passed": bool(row[1]), "reasons": json.loads(row[2]), "source": row[3],
            "recorded_by": row[4]}


def policy_of(settings: Settings) -> RolloutPolicy:
    rollout = settings.rollout
    return RolloutPolicy(steps=tuple(rollout.steps), analysis_interval_s=rollout.analysis_interval_s,
                         failure_threshold=rollout.failure_threshold,
                         analysis=AnalysisPolicy(min_feedback=rollout.min_feedback, delta=rollout.delta,
                                                 method=rollout.method))


def state_to_json(state: RolloutState) -> str:
    return json.dumps(dataclasses.asdict(state), default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def state_from_json(text: str) -> RolloutState:
    d = json.loads(text)
    for key in ("started_at", "updated_at", "step_started_at"):
        d[key] = datetime.fromisoformat(d[key])
    if d.get("last_decision"):
        dec = d["last_decision"]
        dec["at"] = datetime.fromisoformat(dec["at"])
        d["last_decision"] = Decision(**dec)
    return RolloutState(**d)


class RolloutManager:
    def __init__(self, settings: Settings, plane, producer):
        self.settings = settings
        self.plane = plane
        self.producer = producer
        self.policy = policy_of(settings)
        self.window = window_reader(settings.rollout.source, max_feedback_per_user=settings.rollout.max_feedback_per_user)
        self.topic = settings.topic("deployments")
        self._lock = threading.Lock()

    # -- persistence ---------------------------------------------------------------------
    def _load(self, cur: duckdb.DuckDBPyConnection, alias: str) -> RolloutState | None:
        row = cur.execute("SELECT state FROM rollouts WHERE alias = ?", [alias]).fetchone()
        return state_from_json(row[0]) if row else None

    def _save(self, cur: duckdb.DuckDBPyConnection, state: RolloutState) -> None:
        cur.execute("INSERT OR REPLACE INTO rollouts (alias, state, status, updated_at) VALUES (?, ?, ?, now())",
                    [state.alias, state_to_json(state), state.status])

    # -- operations ----------------------------------------------------------------------
    def start(self, alias: str, candidate: str, now: datetime | None = None, *,
              override: GateOverride | None = None) -> dict:
        """Start the canary of ``candidate``; refused (409) unless its latest evaluation
        passed the gate or an admin ``override``s that, with a reason."""
        now = now or datetime.now(timezone.utc)
        with self._lock, self.plane.reader() as cur:
            registry = self.plane.registry(cur)
            current = self._load(cur, alias)
            if current is not None and not current.terminal:
                raise RegistryError(f"a rollout of {current.candidate!r} on {alias!r} is {current.status}; "
                                    "promote or roll it back first", 409)
            mv = registry.get(candidate)
            if mv.status != "candidate":
                raise RegistryError(f"{candidate!r} is {mv.status}, not a candidate", 409)
            evaluation = latest_evaluation(cur, candidate)
            gate_passed = evaluation is not None and evaluation["passed"]
            if not gate_passed and override is None:
                why = ("it has no evaluation: run `flywheel eval --candidate " + candidate + "`" if evaluation is None
                       else f"its latest evaluation ({evaluation['eval_id']}) failed the gate: "
                            + "; ".join(evaluation["reasons"]))
                raise RegistryError(f"{candidate!r} cannot be rolled out: {why}. An admin may override the gate "
                                    "explicitly (`flywheel rollout start --override-gate --reason ...`).", 409)
            routes = registry.routing_table().routes.get(alias, ())
            serving = [r.version for r in routes if r.weight > 0]
            if len(serving) != 1:
                raise RegistryError(f"{alias!r} is split over {serving}: a rollout starts from one production version", 409)
            state, decision = controller.start(alias, candidate, serving[0], self.policy, now)
            if not gate_passed:
                who = getattr(override.by, "name", None) or "the control plane"
                decision = dataclasses.replace(decision, reason=f"{decision.reason} Evaluation gate overridden by "
                                               f"{who}: {override.reason}")
                state = dataclasses.replace(state, last_decision=decision)
                audit.record(cur, override.by, "rollout.gate_override", via="override", target=candidate,
                             detail={"alias": alias, "reason": override.reason, "evaluation": evaluation})
            self._apply(cur, registry, None, state, decision)
            return self._describe(state)

    def act(self, alias: str, action: str, reason: str | None = None, now: datetime | None = None) -> dict:
        if action not in MANUAL:
            raise RegistryError(f"unknown action {action!r}; one of {', '.join(MANUAL)}")
        now = now or datetime.now(timezone.utc)
        with self._lock, self.plane.reader() as cur:
            state = self._require(cur, alias)
            kwargs = {"reason": reason} if reason else {}
            try:
                new, decision = MANUAL[action](state, self.policy, now, **kwargs)
            except RolloutError as e:
                raise RegistryError(str(e), 409) from None
            self._apply(cur, self.plane.registry(cur), state, new, decision)
            return self._describe(new)

    def status(self, alias: str) -> dict:
        with self.plane.reader() as cur:
            return self._describe(self._require(cur, alias))

    def tick(self, now: datetime | None = None) -> list[Decision]:
        """Analyse every rollout whose interval is due; return the decisions taken."""
        now = now or datetime.now(timezone.utc)
        decisions = []
        with self._lock, self.plane.reader() as cur:
            for (alias,) in cur.execute("SELECT alias FROM rollouts WHERE status = 'progressing'").fetchall():
                state = self._load(cur, alias)
                if not controller.analysis_due(state, self.policy, now):
                    continue
                start = now - timedelta(seconds=self.policy.analysis_interval_s)
                verdict = analyse(self.window(cur, state.candidate, start, now, alias),
                                  self.window(cur, state.production, start, now, alias), self.policy.analysis)
                new, decision = controller.advance(state, verdict, self.policy, now)
                self._apply(cur, self.plane.registry(cur), state, new, decision)
                decisions.append(decision)
        return decisions

    def _require(self, cur: duckdb.DuckDBPyConnection, alias: str) -> RolloutState:
        state = self._load(cur, alias)
        if state is None:
            raise RegistryError(f"no rollout on {alias!r}; start one with `flywheel rollout start`", 404)
        return state

    def _apply(self, cur: duckdb.DuckDBPyConnection, registry: Registry, before: RolloutState | None,
               state: RolloutState, decision: Decision) -> None:
        """Statuses, routing, persisted state, and the deployment event, in that order."""
        if decision.action == "start":
            registry.set_status(state.candidate, "canary")
        elif decision.action == "promote":
            registry.set_status(state.candidate, "production")
            if state.previous_production:
                registry.set_status(state.previous_production, "retired", notes="previous production (rollback target)")
        elif decision.action == "rollback":
            target = next(v for v, w in decision.weights.items() if w == 100)
            registry.set_status(target, "production")
            registry.set_status(state.candidate, "rolled_back", notes=decision.reason[:500])
        if before is None or decision.weights != before.weights:
            registry.set_routes(state.alias, decision.weights, reason=f"rollout {decision.action}: {decision.reason}")
        self._save(cur, state)
        event = Deployment(event_id=new_id("dep-"), alias=state.alias, candidate=state.candidate,
                           production=state.production, action=decision.action, status=state.status,
                           weights=decision.weights, reason=decision.reason,
                           figures=json.loads(json.dumps(decision.figures, default=str)), created_at=decision.at)
        self.producer.emit(self.topic, state.alias, event)
        log.info("rollout %s on %s: %s (%s)", state.candidate, state.alias, decision.action, decision.reason)

    @staticmethod
    def _describe(state: RolloutState) -> dict:
        d = json.loads(state_to_json(state))
        d["weights"] = state.weights
        return d
