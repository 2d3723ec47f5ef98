"""The scheduled loop as an operator runs it: schedules checked when the settings load, the
real APScheduler job driving a whole turn to the canary, the after-N-feedback trigger, and
a turn a killed control plane left `running` reconciled when it starts again."""

from __future__ import annotations

import json
import time

import pytest

from flywheel.errors import ConfigError
from flywheel.settings import Settings, load_settings
from flywheel.simulate.synthetic import synthetic_events
from streams.landing import land_events
from tests.conftest import count, operator_token, query, wait_for


def _as_operator(s, path: str):
    """A request to the control plane with the local admin token its first start wrote."""
    import urllib.request

    return urllib.request.Request(f"{s.control_url}{path}", headers={"Authorization": f"Bearer {operator_token(s)}"})


@pytest.mark.parametrize("line, message", [
    ("61 * * * *", "higher than the maximum value"),
    ("0 3 * *", "Wrong number of fields"),
    ("every day", "Wrong number of fields"),
    ("0 3 * * funday", "refresh.cron"),
])
def test_a_bad_cron_expression_is_rejected_when_settings_load(line, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(None, env={"FLYWHEEL_REFRESH__CRON": line})
    assert "refresh.cron" in str(caught.value) and "crontab line" in str(caught.value)


def test_one_schedule_at_a_time_and_the_old_interval_still_works():
    assert load_settings(None, env={"FLYWHEEL_REFRESH__CRON": "0  3 * * mon-fri"}).refresh.cron == "0 3 * * mon-fri"
    with pytest.raises(ConfigError, match="set one schedule, not cron and interval_min"):
        load_settings(None, env={"FLYWHEEL_REFRESH__CRON": "0 3 * * *", "FLYWHEEL_REFRESH__INTERVAL_MIN": "30"})
    assert load_settings(None, env={"FLYWHEEL_REFRESH__INTERVAL_H": "2"}).refresh.every_min == 120  # deprecated, honoured
    assert Settings().refresh.every_min == 0  # no schedule by default: turns on request


def test_the_refresh_runner_installs_the_schedule_it_is_given():
    from apscheduler.schedulers.background import BackgroundScheduler

    from services.control.refresh import RefreshRunner

    for refresh, expected in [({"cron": "30 2 * * *"}, {"refresh": "cron"}),
                              ({"interval_min": 90, "after_feedback": 50},
                               {"refresh": "interval[1:30:00]", "refresh-after-feedback": "interval[0:01:00]"}),
                              ({"interval_h": 6}, {"refresh": "interval[6:00:00]"}), ({}, {})]:
        scheduler = BackgroundScheduler(timezone="UTC")
        runner = RefreshRunner(Settings().replace(refresh=refresh), plane=None)
        runner.install(scheduler)
        jobs = {job.id: str(job.trigger) for job in scheduler.get_jobs()}
        assert set(jobs) == set(expected), refresh
        assert all(jobs[name].startswith(kind) for name, kind in expected.items()), jobs
        assert runner.schedule()["next_run_at"] is None  # not started


def test_a_turn_left_running_by_a_crash_is_failed_when_the_control_plane_starts(settings):
    from services.control.migrations import ALL
    from services.control.plane import ControlPlane
    from services.control.turn import INTERRUPTED, RefreshRun, Step, save_run
    from streams.warehouse import apply_migrations, connect

    # What a control plane killed during training leaves behind.
    settings.data_path.mkdir(parents=True, exist_ok=True)
    with connect(settings.db_path) as conn:
        apply_migrations(conn, ALL)
        run = RefreshRun("ref-crashed", steps=[Step("mine", "done", "curation run c1", duration_s=3.0), Step("train")])
        save_run(conn, run)
        save_run(conn, RefreshRun("ref-earlier", status="stopped", reason="too little data"))

    plane = ControlPlane(settings, serve_api=False).start(scheduler=False)
    try:
        status, reason, steps = query(plane, "SELECT status, reason, steps FROM refresh_runs WHERE run_id = ?",
                                      ["ref-crashed"])[0]
        steps = json.loads(steps)
        assert status == "failed" and reason == INTERRUPTED and "control plane stopped" in reason
        assert [(st["name"], st["status"]) for st in steps] == [("mine", "done"), ("train", "failed")]
        assert steps[1]["detail"] == INTERRUPTED and steps[1]["finished_at"]
        assert steps[0]["detail"] == "curation run c1"  # a finished step keeps its outcome
        # Nothing else is touched.
        assert query(plane, "SELECT status, reason FROM refresh_runs WHERE run_id = 'ref-earlier'")[0] == (
            "stopped", "too little data")
    finally:
        plane.stop(drain=False)


def test_after_n_feedback_events_a_turn_starts_and_not_before(settings):
    """The real scheduler checks the count every half second; N-1 new events start
    nothing, the N-th starts one turn, and the count starts again from that turn."""
    from services.control.plane import ControlPlane

    s = settings.replace(refresh={"after_feedback": 5, "check_s": 0.5})
    _, feedback, _ = synthetic_events(60, seed=11)
    assert len(feedback) >= 10
    plane = ControlPlane(s, serve_api=False).start()
    try:
        def land(events) -> None:
            with plane.reader() as cur:
                land_events(cur, (), events)

        def turns() -> int:
            return count(plane, "refresh_runs")

        land(feedback[:4])
        time.sleep(2.0)  # four checks
        assert turns() == 0 and not plane.refresh.running

        land(feedback[4:5])
        wait_for(lambda: turns() == 1, timeout=10, interval=0.2, what="a turn after 5 feedback events")
        # No interactions landed: the turn mines nothing and stops before training.
        wait_for(lambda: not plane.refresh.running, timeout=300, interval=0.5, what="the turn to end")
        assert query(plane, "SELECT status FROM refresh_runs")[0][0] in ("stopped", "finished")

        land(feedback[5:9])  # four since that turn started
        time.sleep(2.0)
        assert turns() == 1
        land(feedback[9:10])
        wait_for(lambda: turns() == 2, timeout=10, interval=0.2, what="a second turn after 5 more")
        wait_for(lambda: not plane.refresh.running, timeout=300, interval=0.5, what="the second turn to end")
    finally:
        plane.scheduler.pause()
        plane.stop(drain=False)


@pytest.mark.slow
def test_the_scheduler_drives_a_whole_turn_to_the_canary(tmp_path, broker):
    """The real APScheduler job (every 3 s) starts a turn on landed traffic: mine, dataset,
    a one-step training job, an evaluation job, and a canary, because the gate asks for
    nothing (tests/test_refresh.py has the same turn rejected by a gate that asks for the
    impossible). Every stage records its duration; the API and the console show them."""
    import urllib.request

    from services.control.plane import ControlPlane
    from streams.topics import ensure_topics, topic_names
    from tests.conftest import make_settings

    s = make_settings(tmp_path, broker.bootstrap,
                      curation={"watermark_lag_s": 0}, datasets={"include_pending": True},
                      review={"auto_approve": False}, training={"dpo": False},
                      # A learning rate of 0 keeps the candidate's answers the production model's:
                      # the gate's outcome depends on the gate's settings alone.
                      refresh={"interval_min": 0.05, "min_sft_records": 5, "train_overrides": [
                          "sft.args.max_steps=1", "sft.args.max_length=256", "sft.args.eval_steps=1000",
                          "sft.args.learning_rate=0.0"]},
                      evaluate={"max_tokens": 8, "resample_k": 1, "max_loss_increase": 1e9, "max_pass_rate_drop": 1.0,
                                "max_forgetting": 1e9})
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    interactions, feedback, _ = synthetic_events(160, seed=5)
    plane = ControlPlane(s)
    try:
        with plane.reader() as cur:
            land_events(cur, interactions, feedback)
        assert count(plane, "refresh_runs") == 0
        plane.start()  # nobody asks for a turn: the scheduler starts it

        def first() -> tuple | None:
            rows = query(plane, "SELECT run_id, status FROM refresh_runs ORDER BY started_at LIMIT 1")
            return rows[0] if rows else None

        wait_for(lambda: first() is not None, timeout=30, interval=0.5, what="the scheduler to start a turn")
        run_id = first()[0]
        wait_for(lambda: first()[1] != "running", timeout=900, interval=2, what="the scheduled turn")
        plane.scheduler.pause()  # no further turns while the test looks
        wait_for(lambda: not plane.refresh.running, timeout=300, interval=0.5, what="any later turn to end")

        with urllib.request.urlopen(_as_operator(s, f"/api/refresh/{run_id}"), timeout=30) as resp:
            run = json.loads(resp.read())
        assert run["status"] == "finished", run
        assert [st["name"] for st in run["steps"]] == ["mine", "dataset", "train", "evaluate", "canary"], run
        assert all(st["status"] == "done" and st["duration_s"] is not None and st["finished_at"]
                   for st in run["steps"]), run
        assert run["steps"][2]["duration_s"] > 0 and run["passed"] is True
        candidate = run["candidate"]

        # The canary: a rollout in progress and the candidate taking traffic.
        state, rollout_status = query(plane, "SELECT state, status FROM rollouts WHERE alias = ?", [s.model.alias])[0]
        assert json.loads(state)["candidate"] == candidate and rollout_status == "progressing"
        with plane.reader() as cur:
            routes = {r.version: r.weight for r in plane.registry(cur).routing_table().routes[s.model.alias]}
        assert routes[candidate] > 0, routes

        with urllib.request.urlopen(_as_operator(s, "/api/refresh?limit=5"), timeout=30) as resp:
            listing = json.loads(resp.read())
        assert listing["schedule"]["interval_min"] == 0.05 and listing["data"][-1]["run_id"] == run_id
        with urllib.request.urlopen(_as_operator(s, "/console/"), timeout=30) as resp:
            page = resp.read().decode()
        assert run_id in page and "stages (time)" in page and "train " in page
    finally:
        plane.stop(drain=False)
