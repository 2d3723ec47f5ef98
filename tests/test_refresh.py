"""One turn of the flywheel through a running control plane: simulated traffic landed,
then `POST /api/refresh` mines, builds a dataset, trains a candidate (a real job, a few
steps), evaluates it (a real job) and, if the gate passes, starts a canary. A second turn
on the same data stops: nothing new to train on."""

from __future__ import annotations

import json

import pytest

from flywheel.simulate.synthetic import synthetic_events
from tests.conftest import query, wait_for
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
                          "dpo.args.max_steps=1", "dpo.args.max_length=256"]},
                      evaluate={"max_tokens": 8, "resample_k": 1})
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    plane = ControlPlane(s).start()
    try:
        interactions, feedback, _ = synthetic_events(160, seed=5)
        with plane.reader() as cur:
            land_events(cur, interactions, feedback)
        run_id = plane.refresh.start()["run_id"]

        def status_of(rid: str) -> str:
            rows = query(plane, "SELECT status FROM refresh_runs WHERE run_id = ?", [rid])
            return rows[0][0] if rows else "running"

        wait_for(lambda: status_of(run_id) != "running" and not plane.refresh.running, timeout=900, interval=2,
                 what="the flywheel turn")
        status, steps, candidate, passed, reason = query(
            plane, "SELECT status, steps, candidate, passed, reason FROM refresh_runs WHERE run_id = ?", [run_id])[0]
        steps = json.loads(steps)
        names = [st["name"] for st in steps]
        assert names[:4] == ["mine", "dataset", "train", "evaluate"], steps
        assert all(st["status"] == "done" for st in steps[:4]), steps
        assert query(plane, "SELECT status, dataset IS NOT NULL FROM model_versions WHERE version = ?",
                     [candidate])[0][1]
        assert query(plane, "SELECT count(*) FROM evaluations WHERE candidate = ?", [candidate])[0][0] == 1
        if passed:
            assert status == "finished" and names[-1] == "canary"
            state, rollout_status = query(plane, "SELECT state, status FROM rollouts WHERE alias = ?", [s.model.alias])[0]
            assert json.loads(state)["candidate"] == candidate and rollout_status == "progressing"
        else:
            assert status == "stopped" and "gate rejected" in reason

        # Same data again: the dataset version is unchanged and already trained.
        again = plane.refresh.start()["run_id"]
        wait_for(lambda: status_of(again) != "running" and not plane.refresh.running, timeout=300, interval=1,
                 what="the second turn")
        status2, reason2 = query(plane, "SELECT status, reason FROM refresh_runs WHERE run_id = ?", [again])[0]
        assert (status2, reason2) == ("stopped", "no new data since the last trained dataset")
    finally:
        plane.stop(drain=False)
