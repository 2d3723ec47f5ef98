"""One turn of the flywheel through a running control plane: simulated traffic landed,
then `POST /api/refresh` mines, builds a dataset, trains a candidate (a real job, a few
steps) and evaluates it (a real job) against a gate that asks for the impossible (every
task type's reference loss down by a million nats a token), so the candidate never gets a
canary; tests/test_scheduler.py has the same turn, started by the scheduler, passing a gate
that asks for nothing and reaching the canary. A second turn on the same data stops:
nothing new to train on."""

from __future__ import annotations

import json
import re

import pytest

from flywheel.simulate.synthetic import synthetic_events
from tests.conftest import query, wait_for_turn
from streams.landing import land_events


@pytest.mark.slow
def test_a_flywheel_turn_trains_evaluates_and_records_every_step(tmp_path, broker):
    from services.control.plane import ControlPlane
    from streams.topics import ensure_topics, topic_names
    from tests.conftest import make_settings

    s = make_settings(tmp_path, broker.bootstrap,
                      curation={"watermark_lag_s": 0}, datasets={"include_pending": True},
                      review={"auto_approve": False},
                      refresh={"min_sft_records": 5, "train_overrides": [
                          "sft.args.max_steps=2", "sft.args.max_length=256", "sft.args.eval_steps=1000",
                          "dpo.args.max_steps=1", "dpo.args.max_length=640"]},
                      evaluate={"max_tokens": 8, "resample_k": 1, "max_loss_increase": -1e6})
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    plane = ControlPlane(s).start()
    try:
        interactions, feedback, _ = synthetic_events(160, seed=5)
        with plane.reader() as cur:
            land_events(cur, interactions, feedback)
        run_id = plane.refresh.start()["run_id"]
        wait_for_turn(plane, run_id, timeout=900)
        status, steps, candidate, passed, reason = query(
            plane, "SELECT status, steps, candidate, passed, reason FROM refresh_runs WHERE run_id = ?", [run_id])[0]
        steps = json.loads(steps)
        assert [st["name"] for st in steps] == ["mine", "dataset", "train", "evaluate"], steps
        assert all(st["status"] == "done" and st["duration_s"] is not None and not st["progress"] for st in steps), steps
        assert query(plane, "SELECT status, dataset IS NOT NULL FROM model_versions WHERE version = ?",
                     [candidate])[0] == ("candidate", True)
        assert query(plane, "SELECT count(*) FROM evaluations WHERE candidate = ?", [candidate])[0][0] == 1

        # The gate said no: the candidate never gets a canary, nor any traffic.
        assert passed is False and status == "stopped" and f"the gate rejected {candidate}" in reason
        assert "reference loss up" in reason and steps[-1]["detail"].startswith("failed: ")
        assert query(plane, "SELECT count(*) FROM rollouts WHERE alias = ?", [s.model.alias])[0][0] == 0
        with plane.reader() as cur:
            routes = {r.version: r.weight for r in plane.registry(cur).routing_table().routes.get(s.model.alias, ())}
        assert routes.get(candidate, 0) == 0 and sum(routes.values()) == 100, routes

        # Same data again: the dataset version is unchanged and already trained.
        again = plane.refresh.start()["run_id"]
        wait_for_turn(plane, again, timeout=300)
        status2, reason2 = query(plane, "SELECT status, reason FROM refresh_runs WHERE run_id = ?", [again])[0]
        assert (status2, reason2) == ("stopped", "no new data since the last trained dataset")
    finally:
        plane.stop(drain=False)


def test_flywheel_refresh_shows_each_stage_with_its_duration(settings):
    """`flywheel refresh` follows the turn it started: each stage as it starts, then its
    status, duration and detail. Nothing landed, so the turn stops before training."""
    from click.testing import CliRunner

    from flywheel.cli import main
    from services.control.plane import ControlPlane

    plane = ControlPlane(settings).start(scheduler=False)
    try:
        env = {"FLYWHEEL_CONTROL__PORT": str(settings.control.port), "FLYWHEEL_DATA_DIR": settings.data_dir}
        result = CliRunner().invoke(main, ["refresh"], env=env)
        assert result.exit_code == 0, result.output
        out = " ".join(result.output.split())  # as printed, less the wrapping at the console's width
        assert out.index("▶ mine") < out.index("▶ dataset"), out
        assert re.search(r"mine\s+done\s+\d+\.\ds\s+curation run \S+: 0 kept of 0", out), out
        assert re.search(r"dataset\s+skipped\s+\d+\.\ds\s+\S", out), out
        assert re.search(r"refresh ref-\S+ \(started .+\): stopped in \d+\.\ds \(no dataset to train on\)", out), out

        listed = CliRunner().invoke(main, ["refresh", "--list"], env=env)
        assert listed.exit_code == 0, listed.output
        listed_out = " ".join(listed.output.split())
        assert "schedule: none (turns run on request)" in listed_out and "no dataset to train on" in listed_out
    finally:
        plane.stop(drain=False)
