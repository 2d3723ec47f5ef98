"""Rollouts run by the control plane: figures from the warehouse, decisions applied to
the registry and routing table, every decision landed as a deployment event.

Synthetic traffic per analysis interval goes through the real landing path; the clock is
passed in, so an interval takes no wall time."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from serving.registry import Registry, RegistryError
from services.control.plane import ControlPlane
from streams.landing import Record
from streams.schemas import Feedback, Interaction
from streams.topics import topic_names
from tests.conftest import count, query, record_gate, wait_for

ALIAS = "flywheel-chat"


@pytest.fixture
def plane(settings, tmp_path):
    s = settings.replace(rollout={"analysis_interval_s": 60, "failure_threshold": 2})
    plane = ControlPlane(s, serve_api=False).start(scheduler=False)
    with plane.reader() as cur:
        reg = Registry(cur, models_dir=s.data_path / "models", base_model="SmolLM2-135M-Instruct", alias=ALIAS,
                       base_model_dir=lambda: tmp_path, check=lambda base, adapter: None)
        src = tmp_path / "adapter"
        src.mkdir()
        (src / "adapter_config.json").write_text("{}")
        reg.register("cand-1", src)
    record_gate(plane, "cand-1")  # its evaluation passed: a rollout may start
    yield plane
    plane.stop(drain=False)


def traffic(plane, rng, start: datetime, version: str, requests: int, negative: float, offset: list[int]) -> None:
    """``requests`` interactions of ``version`` in the minute after ``start``, each with a thumb
    (down with probability ``negative``), landed through the real lander."""
    topics = topic_names(plane.settings)
    records = []
    for i in range(requests):
        n = offset[0] = offset[0] + 1
        at = start + timedelta(seconds=rng.uniform(0, 59))
        inter = Interaction(event_id=f"ev-{n}", request_id=f"r-{n}", session_id=f"s-{n}", created_at=at,
                            model_alias=ALIAS, model_version=version, messages=[{"role": "user", "content": "q"}],
                            drafts=[{"index": 0, "content": "a"}], timing={"total_ms": rng.uniform(200, 400)})
        fb = Feedback(event_id=f"fb-{n}", request_id=f"r-{n}", kind="thumb", value=-1 if rng.random() < negative else 1,
                      created_at=at + timedelta(seconds=1))
        records += [Record(topics["interactions"], 0, n, None, inter.model_dump_json().encode()),
                    Record(topics["feedback"], 0, n, None, fb.model_dump_json().encode())]
    plane.landing.lander.land(records)


def run(plane, candidate_negative: float, intervals: int = 20) -> list[str]:
    rng, offset = random.Random(7), [0]
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    actions = [plane.rollouts.start(ALIAS, "cand-1", now=t0)["last_decision"]["action"]]
    for k in range(intervals):
        start = t0 + timedelta(seconds=60 * k)
        weight = plane.rollouts.status(ALIAS)["canary_weight"]
        traffic(plane, rng, start, "cand-1", int(8 * weight) + 200, candidate_negative, offset)
        traffic(plane, rng, start, "base", int(8 * (100 - weight)) + 200, 0.20, offset)
        actions += [d.action for d in plane.rollouts.tick(now=start + timedelta(seconds=60))]
        if plane.rollouts.status(ALIAS)["status"] != "progressing":
            break
    return actions


def test_a_worse_candidate_is_rolled_back_and_every_decision_lands(plane):
    actions = run(plane, candidate_negative=0.45)
    assert actions[0] == "start" and actions[-1] == "rollback"
    assert actions.count("rollback") == 1 and len(actions) <= 1 + 2 + 3  # within the failure threshold
    with plane.reader() as cur:
        reg = plane.registry(cur)
        assert reg.get("cand-1").status == "rolled_back" and reg.get("base").status == "production"
        table = reg.routing_table()
        assert [(r.version, r.weight) for r in table.routes[ALIAS] if r.weight] == [("base", 100.0)]
    plane.producer.flush(30)
    wait_for(lambda: count(plane, "deployments") == len(actions), timeout=30, what="the deployment events to land")
    rows = query(plane, "SELECT action, reason, figures FROM deployments ORDER BY created_at")
    assert [r[0] for r in rows] == actions
    assert "negative" in rows[-1][1].lower() or "fail" in rows[-1][1].lower()
    assert "negative_feedback" in rows[-1][2]  # the figures the decision used
    with pytest.raises(RegistryError, match="already rolled back"):
        plane.rollouts.act(ALIAS, "promote")


def test_an_equal_candidate_is_promoted_through_every_step(plane):
    actions = run(plane, candidate_negative=0.20)
    assert actions[-1] == "promote" and "rollback" not in actions
    assert actions.count("advance") == 2  # 5% -> 25% -> 50%, then promote
    with plane.reader() as cur:
        reg = plane.registry(cur)
        assert reg.get("cand-1").status == "production"
        assert reg.get("base").status == "retired"  # kept for an instant rollback
        routes = reg.routing_table().routes[ALIAS]
        assert [(r.version, r.weight) for r in routes if r.weight] == [("cand-1", 100.0)]
    # The instant rollback after promotion puts the previous production back.
    back = plane.rollouts.act(ALIAS, "rollback", reason="customers complain")
    assert back["weights"] == {"base": 100.0}
    with plane.reader() as cur:
        assert plane.registry(cur).get("base").status == "production"
