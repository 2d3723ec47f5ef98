"""The review queue: decisions travel as review events through the real broker, the
control plane lands them, and they change what the next stage sees."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from flywheel.simulate.sessions import SimulationConfig
from flywheel.simulate.synthetic import emit_synthetic
from streams.producer import EventProducer
from tests.conftest import count, operator_token, query, seed_candidates, wait_for
from training.curation import review
from training.curation.review import ReviewEmitter, ReviewError, ReviewFilter


def _send(settings, events) -> None:
    with ReviewEmitter(settings) as emitter:
        emitter.emit(events)
        assert emitter.flush(30), "the broker did not acknowledge the review events"


def _landed(plane, events) -> None:
    batch = events[0].event_id.split("-")[1]
    wait_for(lambda: query(plane, "SELECT count(*) FROM review_decisions WHERE starts_with(event_id, ?)",
                           [f"rv-{batch}-"])[0][0] == len(events), timeout=30, what="review decisions landed")


def _states(plane) -> dict[str, str]:
    with plane.reader() as cur:
        return review.review_state(cur)


def test_curated_candidates_are_reviewed_through_kafka_and_the_next_stage_sees_it(settings, control_plane):
    """Synthetic traffic lands, a real curation run mines it, decisions land through the
    broker, and `approved_candidates` (what the dataset builder reads) follows them."""
    from training.curation.pipeline import curate

    s = settings.replace(curation={"watermark_lag_s": 0}, review={"auto_approve": False})
    emit_synthetic(s, 60, seed=3, config=SimulationConfig(users=10))
    wait_for(lambda: count(control_plane, "interactions") >= 60, timeout=60, what="interactions landed")
    with control_plane.reader() as cur:
        result = curate(cur, s)
    kept = [c.candidate_id for c in result.kept]
    assert len(kept) >= 4
    assert set(_states(control_plane).values()) == {"pending"}
    with control_plane.reader() as cur:
        assert review.approved_candidates(cur) == []  # nothing reviewed: the next stage sees nothing

    a, b, c, d = kept[:4]
    first = review.make_reviews([a, b], "approve", reviewer="ana")
    _send(s, first)
    _landed(control_plane, first)
    later = (review.make_reviews([b], "reject", reviewer="ben", reason="wrong chart")
             + review.make_reviews([c], "edit", reviewer="ana", edited_response="the corrected answer")
             + review.make_reviews([d], "approve", reviewer="ana"))
    _send(s, later)
    for e in later:
        _landed(control_plane, [e])
    reset = review.make_reviews([d], "reset", reviewer="ana")
    _send(s, reset)
    _landed(control_plane, reset)

    states = _states(control_plane)
    assert (states[a], states[b], states[c], states[d]) == ("approved", "rejected", "edited", "pending")
    with control_plane.reader() as cur:
        approved = {r["candidate_id"]: r for r in review.approved_candidates(cur)}
        assert set(approved) == {a, c}
        assert approved[c]["response"] == "the corrected answer"
        assert approved[c]["original_response"] != "the corrected answer"
        shown = review.get_candidate(cur, b)
        assert [x["action"] for x in shown["decisions"]] == ["approve", "reject"]
        assert shown["reviewer"] == "ben" and shown["reason"] == "wrong chart"
        assert review.count_states(cur)["approved"] == 1
        assert {r["candidate_id"] for r in review.list_candidates(cur, ReviewFilter(state="edited"))} == {c}


def test_invalid_review_events_go_to_the_dlq_with_a_reason(settings, control_plane):
    topic = settings.topic("reviews")
    now = datetime.now(timezone.utc).isoformat()
    base = {"type": "review", "event_id": "x", "candidate_id": "c1", "reviewer": "ana", "created_at": now}
    bad = [
        {**base, "event_id": "e1", "action": "edit"},  # no edited_response
        {**base, "event_id": "e2", "action": "approve", "edited_response": "text"},  # text on approve
        {**base, "event_id": "e3", "action": "maybe"},
        {**base, "event_id": "e4", "action": "approve", "colour": "red"},  # unknown field
    ]
    good = {**base, "event_id": "e5", "action": "approve"}
    producer = EventProducer(settings.bootstrap, settings.data_path / "spool-test")
    try:
        producer.emit_many([(topic, "c1", json.dumps(x).encode()) for x in [*bad, good]] + [(topic, "c1", b"not json")])
        assert producer.flush(30)
    finally:
        producer.close()
    wait_for(lambda: count(control_plane, "dead_letters", "source_topic = ?", [topic]) == 5, timeout=30, what="dead letters")
    assert count(control_plane, "review_decisions") == 1
    reasons = [r[0] for r in query(control_plane, "SELECT reason FROM dead_letters WHERE source_topic = ? ORDER BY \"offset\"",
                                   [topic])]
    assert "edited_response" in reasons[0]
    assert "only 'edit'" in reasons[1]
    assert "action" in reasons[2]
    assert "colour" in reasons[3]
    assert "JSON" in reasons[4] or "json" in reasons[4]


def test_export_then_import_round_trip(settings, control_plane):
    ids = seed_candidates(control_plane, [{"task_type": "data-viz/chart-config"}, {"task_type": "data-viz/chart-config"},
                                {"task_type": "reasoning/math"}, {"status": "dropped"}])
    with control_plane.reader() as cur:
        records = review.list_candidates(cur, full=True)
    out = io.StringIO()
    assert review.export_jsonl(records, out) == 3  # the queue: kept candidates only
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert {x["candidate_id"] for x in lines} == set(ids[:3])
    assert all(x["action"] is None and x["state"] == "pending" and x["messages"] for x in lines)
    lines[0].update(action="approve", reason="fine")
    lines[1].update(action="edit", edited_response='{"chartType": "CHART_LINE"}', reviewer="bo")
    edited = "\n".join(json.dumps(x) for x in lines) + "\n\n"

    with control_plane.reader() as cur:
        known = set(review.select_ids(cur, ReviewFilter(status=None)))
    result = review.read_import(io.StringIO(edited), reviewer="ana", known_ids=known)
    assert result.summary() == {"approve": 1, "edit": 1} and result.skipped == [3]
    _send(settings, result.events)
    _landed(control_plane, result.events)
    states = _states(control_plane)
    assert (states[ids[0]], states[ids[1]], states[ids[2]]) == ("approved", "edited", "pending")
    with control_plane.reader() as cur:
        again = io.StringIO()
        review.export_jsonl(review.list_candidates(cur, ReviewFilter(state="edited"), full=True), again)
        row = json.loads(again.getvalue())
        assert row["edited_response"] == '{"chartType": "CHART_LINE"}' and row["last_reviewer"] == "bo"

    # All or nothing: one bad line stops the import and names every problem.
    broken = [dict(lines[0], action="edit"), dict(lines[2], candidate_id="nope", action="approve"), {"action": "approve"}]
    with pytest.raises(ReviewError) as err:
        review.read_import(io.StringIO("\n".join(json.dumps(x) for x in broken) + "\nnot json\n"), reviewer="ana",
                           known_ids=known)
    message = str(err.value)
    assert "line 1" in message and "edited_response" in message
    assert "line 2: unknown candidate_id 'nope'" in message
    assert "line 3" in message and "line 4: not JSON" in message


def test_auto_rules_decide_pending_candidates_only(settings, control_plane):
    ids = seed_candidates(control_plane, [
        {"label": "good", "label_confidence": 0.95},                      # approve
        {"label": "good", "label_confidence": 0.7},                       # not confident: stays
        {"label": "bad", "label_confidence": 0.97},                       # reject
        {"label": "unknown", "response_source": "edit"},                  # a trusted user's own fix: approve
        {"label": "good", "label_confidence": 0.99},                      # a person rejected it: untouched
        {"label": "good", "label_confidence": 0.99, "status": "dropped"},  # not in the queue
        {"label": "good", "label_confidence": 0.99, "run_id": "run-2"},   # another run
    ])
    with control_plane.reader() as cur:  # its user is one rater cleaning judged reliable (tests/test_feedback_integrity.py)
        cur.execute("UPDATE candidates SET user_trust = 0.95 WHERE candidate_id = ?", [ids[3]])
    human = review.make_reviews([ids[4]], "reject", reviewer="ana")
    _send(settings, human)
    _landed(control_plane, human)

    with control_plane.reader() as cur:
        assert review.auto_approve(cur, settings.replace(review={"auto_approve": False})) == []
        events = review.auto_approve(cur, settings, run_id="run-1", emit=lambda evs: _send(settings, evs))
    assert {(e.candidate_id, e.action) for e in events} == {(ids[0], "approve"), (ids[2], "reject"), (ids[3], "approve")}
    assert all(e.source == "auto" and e.reviewer.startswith("auto:") and e.reason for e in events)
    _landed(control_plane, events)
    states = _states(control_plane)
    assert [states[i] for i in ids] == ["approved", "pending", "rejected", "approved", "rejected", "pending", "pending"]
    # Only some task types.
    only_math = settings.replace(review={"task_types": ["reasoning"]})
    with control_plane.reader() as cur:
        assert review.auto_approve(cur, only_math, emit=lambda evs: None) == []


def test_filters_and_id_prefixes(settings, control_plane):
    ids = seed_candidates(control_plane, [
        {"candidate_id": "abc111", "task_type": "data-viz/chart-config", "label": "good"},
        {"candidate_id": "abc222", "task_type": "data-viz/other", "label": "bad"},
        {"candidate_id": "xyz333", "task_type": "writing/summarize", "label": "good", "run_id": "run-2"},
    ])
    with control_plane.reader() as cur:
        assert review.select_ids(cur, ReviewFilter(task_type="data-viz")) == ids[:2]
        assert review.select_ids(cur, ReviewFilter(task_type="data-viz/chart-config")) == ids[:1]
        assert review.select_ids(cur, ReviewFilter(label="good")) == [ids[0], ids[2]]
        assert review.select_ids(cur, ReviewFilter(run_id="run-2")) == [ids[2]]
        assert review.select_ids(cur, ReviewFilter(label="good", limit=1)) == [ids[0]]
        assert review.resolve_ids(cur, ["xyz", "abc111"]) == ["xyz333", "abc111"]
        with pytest.raises(ReviewError, match="ambiguous"):
            review.resolve_ids(cur, ["abc"])
        with pytest.raises(ReviewError, match="no such candidate"):
            review.resolve_ids(cur, ["nope"])
        with pytest.raises(review.CandidateNotFound):
            review.get_candidate(cur, "nope")
    with pytest.raises(ReviewError, match="unknown review state"):
        ReviewFilter(state="done")
    with pytest.raises(ReviewError, match="needs the edited_response"):
        review.make_reviews(["abc111"], "edit", reviewer="ana")


def test_cli_reviews_through_the_control_plane_api(settings, tmp_path):
    from flywheel.cli import main
    from services.control.plane import ControlPlane

    plane = ControlPlane(settings).start(scheduler=False)
    try:
        ids = seed_candidates(plane, [{"task_type": "data-viz/chart-config", "label": "good"},
                            {"task_type": "data-viz/chart-config", "label": "bad"},
                            {"task_type": "chat/chitchat", "label": "good"}])
        env = {"FLYWHEEL_DATA_DIR": settings.data_dir, "FLYWHEEL_KAFKA__BOOTSTRAP": settings.bootstrap,
               "FLYWHEEL_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
               "FLYWHEEL_CONTROL__PORT": str(settings.control.port)}
        runner = CliRunner()

        def run(*args):
            result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            return result.output

        assert "pending 3" in run("review", "list")
        out = run("review", "approve", "--task-type", "data-viz/chart-config", "--label", "good", "--reviewer", "ana")
        assert "approved 1 candidate(s): landed" in out
        out = run("review", "edit", ids[2][:7], "--response", "Hello! How can I help?")
        assert "edited 1 candidate(s): landed" in out
        shown = json.loads(run("review", "show", ids[2], "--json"))
        assert shown["state"] == "edited" and shown["edited_response"] == "Hello! How can I help?"
        export = tmp_path / "queue.jsonl"
        run("review", "export", "--state", "pending", "-o", str(export))
        rows = [json.loads(x) for x in export.read_text().splitlines()]
        assert [r["candidate_id"] for r in rows] == [ids[1]]
        rows[0]["action"] = "reject"
        export.write_text(json.dumps(rows[0]) + "\n")
        assert "imported 1 candidate(s): landed" in run("review", "import", str(export))
        states = _states(plane)
        assert [states[i] for i in ids] == ["approved", "rejected", "edited"]
        usage = runner.invoke(main, ["review", "approve"], env=env)
        assert usage.exit_code != 0 and "give candidate ids or a filter" in usage.output
        missing = runner.invoke(main, ["review", "show", "nope"], env=env)
        assert missing.exit_code != 0 and "no such candidate" in missing.output
    finally:
        plane.stop(drain=False)


def test_cli_without_a_control_plane_reads_the_file_and_sends_to_kafka(settings, tmp_path):
    """No control plane: reads open DuckDB read-only; decisions go to Kafka and land when
    a control plane starts."""
    from flywheel.cli import main
    from services.control.plane import ControlPlane
    from services.control.migrations import ALL
    from streams.warehouse import apply_migrations, connect

    class _File:  # the file as the control plane leaves it, closed again afterwards
        def __init__(self, conn):
            self.conn = conn

        def reader(self):
            import contextlib

            return contextlib.nullcontext(self.conn)

    conn = connect(settings.db_path)
    apply_migrations(conn, ALL)
    ids = seed_candidates(_File(conn), [{"label": "good"}, {"label": "bad"}])
    conn.close()
    env = {"FLYWHEEL_DATA_DIR": settings.data_dir, "FLYWHEEL_KAFKA__BOOTSTRAP": settings.bootstrap,
           "FLYWHEEL_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix, "FLYWHEEL_CONTROL__PORT": "1"}
    runner = CliRunner()
    listed = runner.invoke(main, ["review", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [json.loads(x)["candidate_id"] for x in listed.output.splitlines()] == ids
    sent = runner.invoke(main, ["review", "reject", "--label", "bad"], env=env)
    assert sent.exit_code == 0, sent.output
    assert "rejected 1 candidate(s): sent to Kafka; no control plane is running" in sent.output
    plane = ControlPlane(settings, serve_api=False).start(scheduler=False)
    try:
        wait_for(lambda: _states(plane)[ids[1]] == "rejected", timeout=30, what="the decision landed")
        assert _states(plane)[ids[0]] == "pending"
    finally:
        plane.stop(drain=False)


def test_api_routes_read_the_queue_and_take_decisions(settings, control_plane):
    from services.control.api import create_api

    ids = seed_candidates(control_plane, [{"task_type": "reasoning/math", "label": "good"}, {"task_type": "reasoning/math"},
                                {"task_type": "chat/chitchat", "label": "good"}])
    client = create_api(settings, control_plane).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {operator_token(settings)}"  # the local admin token
    body = client.get("/api/review/candidates?task_type=reasoning&limit=10").get_json()
    assert [r["candidate_id"] for r in body["data"]] == ids[:2] and body["counts"]["pending"] == 2
    assert client.get("/api/review/ids?label=good").get_json()["ids"] == [ids[0], ids[2]]
    assert client.get("/api/review/candidates/nope").status_code == 404
    assert client.get("/api/review/candidates?state=done").status_code == 400
    answer = client.post("/api/review/decisions", json={"action": "approve", "reviewer": "console",
                                                        "filter": {"task_type": "reasoning/math", "label": "good"}})
    assert answer.status_code == 202, answer.get_json()
    batch = answer.get_json()["batch"]
    wait_for(lambda: client.get(f"/api/review/landed/{batch}").get_json()["landed"] == 1, timeout=30, what="landed")
    shown = client.get(f"/api/review/candidates/{ids[0]}").get_json()
    assert shown["state"] == "approved" and shown["decisions"][0]["source"] == "api"
    bad = client.post("/api/review/decisions", json={"action": "approve", "reviewer": "x", "candidate_ids": ["nope"]})
    assert bad.status_code == 404 and "nope" in bad.get_json()["error"]["message"]
    assert client.post("/api/review/decisions", json={"action": "edit", "reviewer": "x",
                                                      "candidate_ids": [ids[1]]}).status_code == 400
