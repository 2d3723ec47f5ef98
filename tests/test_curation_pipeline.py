"""The curation run on synthetic traffic: real DuckDB, real MiniLM embeddings, the real
broker and control plane where landing through Kafka is the point (incremental mining,
the API route), `streams.landing.land_events` where the broker adds nothing."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from flywheel.simulate.sessions import SimulationConfig
from flywheel.simulate.synthetic import emit_synthetic, synthetic_events
from services.control.migrations import ALL
from streams.landing import land_events
from streams.warehouse import apply_migrations, connect
from tests.conftest import count, landed_warehouse, operator_token, query, wait_for
from training.curation.pipeline import curate, get_run


def candidates(conn) -> list[dict]:
    cur = conn.execute("SELECT * FROM candidates")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """600 synthetic sessions landed into a DuckDB file and curated once, with a selection
    budget small enough to bind."""
    from flywheel.settings import Settings

    settings = Settings(data_dir=str(tmp_path_factory.mktemp("curation"))).replace(
        curation={"watermark_lag_s": 0, "select_total": 150}, review={"auto_approve": False})
    # 40 users: enough judgements per user for rater cleaning to tell good answers
    interactions, feedback, truth = synthetic_events(600, seed=7, paraphrase_rate=0.15, config=SimulationConfig(users=40))
    conn = landed_warehouse(settings, interactions, feedback)
    result = curate(conn, settings)
    yield conn, result, truth, settings
    conn.close()


def test_every_dropped_candidate_has_a_stage_and_a_reason_and_the_funnel_is_recorded(curated):
    conn, result, truth, _ = curated
    rows = candidates(conn)
    assert len(rows) == len(result.candidates) > 600
    dropped = [r for r in rows if r["status"] == "dropped"]
    assert dropped and all(r["stage"] and r["drop_reason"] for r in dropped)
    assert {r["stage"] for r in dropped} >= {"clean", "dedup", "select"}
    assert all(r["stage"] is None and r["drop_reason"] is None for r in rows if r["status"] == "kept")
    # the planted defects are caught by the rules, each with its own reason
    by_request = {r["request_id"]: r for r in rows}
    caught = 0
    for request_id, t in truth.requests.items():
        row = by_request.get(request_id)
        if row is None or not t["defect"] or row["response_source"] not in ("draft", None):
            continue  # a later attempt, or the user chose/edited another answer
        assert row["status"] == "dropped" and row["stage"] == "clean", (t["defect"], row["drop_reason"])
        if t["defect"] == "model-error" or t["drafts_good"][0]:  # a bad draft may break an earlier rule first
            expected = {"secret": "secret", "garbage-encoding": "garbage-encoding", "model-error": "model-error",
                        "empty": "empty-response"}[t["defect"]]
            assert row["drop_reason"].startswith(expected), (t["defect"], row["drop_reason"])
        caught += 1
    assert caught >= 3

    run = get_run(conn, result.run_id)
    assert run["status"] == "finished" and run["watermark_to"] is not None
    funnel = run["funnel"]
    stages = {s["stage"]: s for s in funnel["stages"]}
    assert list(stages) == ["mine", "clean", "raters", "task_types", "dedup", "select"]
    assert stages["mine"]["out"] == len(rows)
    assert stages["select"]["out"] == sum(r["status"] == "kept" for r in rows)
    for name, st in stages.items():
        assert st["in"] - st["out"] == sum(st["dropped"].values()), name
        assert sum(st["dropped"].values()) == sum(r["stage"] == name for r in dropped), name
    per_type_final = {t: row["select"] for t, row in funnel["by_task_type"].items()}
    kept_types = defaultdict(int)
    for r in rows:
        if r["status"] == "kept":
            kept_types[r["task_type"]] += 1
    assert {t: n for t, n in per_type_final.items() if n} == dict(kept_types)
    assert "threshold" in funnel["dedup"]
    why = funnel["dropped_by_task_type"]
    assert sum(sum(kinds.values()) for kinds in why.values()) == len(dropped)
    assert all("/" in k for kinds in why.values() for k in kinds)  # "stage/kind"


def test_candidates_carry_the_best_answer_feedback_and_lineage(curated):
    conn, _, truth, _ = curated
    rows = candidates(conn)
    edits = [r for r in rows if r["response_source"] == "edit"]
    assert edits
    for r in edits:
        t = truth[r["request_id"]]
        assert json.loads(r["response"]) == t["truth"]  # the user's saved configuration
        assert json.loads(r["feedback"])["edits"] >= 1 and r["label"] == "good"
    for r in rows:
        ids = json.loads(r["source_event_ids"])
        assert any(i.startswith("ev-") for i in ids)
        assert r["kind"] == ("single" if r["turn"] == 1 else "multi")
        messages = json.loads(r["messages"])
        assert messages[-1]["role"] == "user"
        assert sum(m["role"] == "user" for m in messages) == r["turn"]
    regenerated = [r for r in rows if json.loads(r["feedback"])["regenerations"]]
    assert regenerated and all(len([i for i in json.loads(r["source_event_ids"]) if i.startswith("ev-")]) >= 2
                               for r in regenerated)


def test_paraphrased_duplicates_collapse_to_one(curated):
    conn, _, truth, _ = curated
    rows = {r["request_id"]: r for r in candidates(conn)}
    groups = defaultdict(set)
    for request_id, t in truth.requests.items():
        if t["paraphrase_of"] and request_id in rows:
            groups[t["paraphrase_of"]].update({request_id, t["paraphrase_of"]})
    survived_dedup = {r["candidate_id"] for r in rows.values() if r["status"] == "kept" or r["stage"] == "select"}
    reached = 0
    collapsed = 0
    for members in groups.values():
        # members still in the running when dedup saw them
        at_dedup = [rows[m] for m in members if m in rows and (rows[m]["status"] == "kept" or rows[m]["stage"] in ("dedup", "select"))]
        if len(at_dedup) < 2:
            continue
        reached += 1
        survivors = [r for r in at_dedup if r["stage"] != "dedup"]
        if len(survivors) == 1:
            collapsed += 1
        elif not survivors:  # all merged into one equivalent prompt from another session (the task pool repeats)
            named = {re.search(r"duplicate of (\w+)", r["drop_reason"]).group(1) for r in at_dedup}
            kept = {cid for cid in survived_dedup if any(cid.startswith(n) for n in named)}
            collapsed += len(named) == 1 and len(kept) == 1
    assert reached >= 10
    assert collapsed / reached >= 0.9, f"{collapsed} of {reached} paraphrase groups collapsed to one"


def test_every_task_type_survives_selection_within_its_budget(curated):
    conn, result, truth, settings = curated
    rows = candidates(conn)
    at_select = defaultdict(int)
    kept = defaultdict(int)
    for r in rows:
        if r["status"] == "kept" or r["stage"] == "select":
            at_select[r["task_type"]] += 1
        if r["status"] == "kept":
            kept[r["task_type"]] += 1
    assert sum(kept.values()) <= settings.curation.select_total < sum(at_select.values())
    assert set(kept) == set(at_select)  # every type present before selection is present after it
    per_type = result.funnel["select"]["per_type"]
    for t, n in kept.items():
        assert n >= 1
        budget = per_type[t]
        limit = next((budget[k] for k in ("budget", "quota", "target") if k in budget), None)
        if limit is not None:
            assert n <= limit, (t, n, budget)
    # the classifier agrees with the simulator's labels on most kept items
    agree = [truth[r["request_id"]]["task_type"] == r["task_type"] for r in rows if r["status"] == "kept"]
    assert sum(agree) / len(agree) >= 0.8


def test_messy_prompts_with_good_answers_survive_cleaning_and_are_tagged_robust(curated):
    conn, _, truth, _ = curated
    rows = candidates(conn)
    messy_good = []
    for r in rows:
        t = truth[r["request_id"]]
        if t["messy"] and not t["defect"] and r["response_source"] != "edit" and t["drafts_good"][r["response_draft"]]:
            messy_good.append(r)
    assert len(messy_good) >= 20
    assert [r["drop_reason"] for r in messy_good if r["stage"] == "clean"] == []
    robust = [r for r in rows if "robust" in json.loads(r["tags"])]
    assert robust and all(r["label"] == "good" for r in robust)
    tagged = [r for r in messy_good if r["label"] == "good"]
    assert sum("robust" in json.loads(r["tags"]) for r in tagged) / len(tagged) >= 0.6


def test_second_run_through_kafka_reads_only_new_events(settings, control_plane):
    settings = settings.replace(curation={"watermark_lag_s": 0, "select_total": 1000})
    first = synthetic_events(40, seed=11, run_tag="first")
    emit_synthetic(settings, 40, seed=11, run_tag="first")
    wait_for(lambda: count(control_plane, "interactions") == len(first.interactions)
             and count(control_plane, "feedback") == len(first.feedback), what="first batch landed")
    with control_plane.reader() as cur:
        run1 = curate(cur, settings)
    assert run1.funnel["events"] == len(first.interactions) + len(first.feedback)
    n1 = count(control_plane, "candidates")
    assert n1 == len(run1.candidates) > 40

    second = synthetic_events(25, seed=12, run_tag="second")
    emit_synthetic(settings, 25, seed=12, run_tag="second")
    wait_for(lambda: count(control_plane, "interactions") == len(first.interactions) + len(second.interactions)
             and count(control_plane, "feedback") == len(first.feedback) + len(second.feedback), what="second batch landed")
    with control_plane.reader() as cur:
        run2 = curate(cur, settings)
    assert run2.funnel["events"] == len(second.interactions) + len(second.feedback)
    assert run2.funnel["sessions"] == 25
    assert {c.session_id for c in run2.candidates} == {e.session_id for e in second.interactions}
    assert count(control_plane, "candidates", "run_id = ?", [run1.run_id]) == n1
    assert count(control_plane, "candidates") == n1 + len(run2.candidates)
    # nothing new: the third run mines nothing and still records its (empty) funnel
    with control_plane.reader() as cur:
        run3 = curate(cur, settings)
    assert run3.candidates == [] and run3.funnel["events"] == 0
    assert query(control_plane, "SELECT count(*) FROM curation_runs WHERE status = 'finished'")[0][0] == 3


def test_api_route_runs_a_curation_in_the_control_plane(settings, control_plane):
    from services.control.api import create_api

    settings = settings.replace(curation={"watermark_lag_s": 0})
    batch = synthetic_events(20, seed=13, run_tag="api")
    emit_synthetic(settings, 20, seed=13, run_tag="api")
    wait_for(lambda: count(control_plane, "interactions") == len(batch.interactions), what="landed")
    client = create_api(settings, control_plane).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {operator_token(settings)}"  # the local admin token
    started = client.post("/api/curation/runs", json={})
    assert started.status_code == 202
    run_id = started.get_json()["run_id"]
    assert client.post("/api/curation/runs", json={}).status_code in (202, 409)  # one at a time

    def finished():
        body = client.get(f"/api/curation/runs/{run_id}").get_json()
        return body if body["status"] in ("finished", "failed") else None

    body = wait_for(finished, timeout=120, what="curation run")
    assert body["status"] == "finished", body
    assert body["funnel"]["stages"][0]["out"] == count(control_plane, "candidates", "run_id = ?", [run_id])
    listed = client.get("/api/curation/runs").get_json()["data"]
    assert run_id in [r["run_id"] for r in listed]
    assert client.get("/api/curation/runs/nope").status_code == 404

    # `flywheel mine` goes through the running control plane: nothing new landed since
    server = make_server("127.0.0.1", settings.control.port, create_api(settings, control_plane), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from flywheel.cli import main

        env = {"FLYWHEEL_CONTROL__PORT": str(settings.control.port), "FLYWHEEL_DATA_DIR": settings.data_dir}
        result = CliRunner().invoke(main, ["mine", "--json"], env=env)
        assert result.exit_code == 0, result.output
        run = json.loads(result.output[result.output.index("{"):])
        assert run["status"] == "finished" and run["funnel"]["events"] == 0 and run["run_id"] != run_id
        listed = CliRunner().invoke(main, ["mine", "--list"], env=env)
        assert listed.exit_code == 0 and run_id[:12] in listed.output
    finally:
        server.shutdown()
        thread.join(5)


def test_flywheel_mine_without_a_control_plane(tmp_path):
    from flywheel.cli import main

    data = tmp_path / "data"
    interactions, feedback, _ = synthetic_events(30, seed=5)
    conn = connect(data / "flywheel.duckdb")
    apply_migrations(conn, ALL)
    land_events(conn, interactions, feedback)
    conn.close()
    time.sleep(0.01)
    env = {"FLYWHEEL_DATA_DIR": str(data), "FLYWHEEL_CURATION__WATERMARK_LAG_S": "0", "FLYWHEEL_REVIEW__AUTO_APPROVE": "false",
           "FLYWHEEL_CONTROL__PORT": "1"}  # nothing listens there: the CLI opens the file itself
    runner = CliRunner()
    result = runner.invoke(main, ["mine"], env=env)
    assert result.exit_code == 0, result.output
    assert "funnel" in result.output and "select" in result.output
    listed = runner.invoke(main, ["mine", "--list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    runs = json.loads(listed.output)
    assert len(runs) == 1 and runs[0]["status"] == "finished"
    shown = runner.invoke(main, ["mine", "--show", runs[0]["run_id"], "--json"], env=env)
    assert json.loads(shown.output)["funnel"]["stages"][0]["out"] == runs[0]["mined"]
    missing = runner.invoke(main, ["mine", "--show", "nope"], env=env)
    assert missing.exit_code != 0 and "no curation run" in missing.output


def test_a_later_run_drops_prompts_an_earlier_run_kept(tmp_path):
    from flywheel.settings import Settings
    from training.curation.dedup import normalise

    settings = Settings(data_dir=str(tmp_path / "data")).replace(curation={"watermark_lag_s": 0},
                                                                 review={"auto_approve": False})
    conn = connect(settings.db_path)
    apply_migrations(conn, ALL)
    land_events(conn, *list(synthetic_events(40, seed=21, run_tag="x"))[:2])
    run1 = curate(conn, settings)
    land_events(conn, *list(synthetic_events(40, seed=21, run_tag="y"))[:2])  # the same requests from other sessions
    run2 = curate(conn, settings)
    kept1 = {normalise(c.prompt_text) for c in run1.kept}
    repeated = [c for c in run2.candidates if c.stage == "dedup" and c.drop_reason.startswith("exact-duplicate")
                and f"kept by run {run1.run_id}" in c.drop_reason]
    assert repeated and run2.funnel["dedup"]["earlier_runs_exact"] == len(repeated)
    assert not [c for c in run2.kept if normalise(c.prompt_text) in kept1]
    conn.close()


def test_a_later_run_drops_rewordings_of_prompts_an_earlier_run_kept(tmp_path):
    """Run 2 gets run 1's sessions again, each first request reworded (`paraphrase`), ids
    new: the rewordings are dropped against run 1's stored vectors, and they are not exact
    repeats, so only the semantic comparison can catch them."""
    import random

    from flywheel.settings import Settings
    from flywheel.simulate.synthetic import paraphrase
    from training.curation.dedup import normalise

    settings = Settings(data_dir=str(tmp_path / "data")).replace(curation={"watermark_lag_s": 0},
                                                                 review={"auto_approve": False})
    conn = connect(settings.db_path)
    apply_migrations(conn, ALL)
    interactions, feedback, _ = synthetic_events(30, seed=5, run_tag="a", paraphrase_rate=0.0)
    land_events(conn, interactions, feedback)
    run1 = curate(conn, settings)
    assert conn.execute("SELECT count(*) FROM candidate_vectors").fetchone()[0] == len(run1.kept) > 0

    rng = random.Random(3)
    again, reworded = [], set()
    for i in interactions:
        if i.turn != 1:
            continue
        messages = [dict(m) for m in i.messages]
        if "\n" not in messages[-1]["content"]:  # a plain request (not the chart app's prompt): reword it
            messages[-1]["content"] = paraphrase(messages[-1]["content"], rng)
            reworded.add(i.session_id + "b")
        again.append(i.model_copy(update={"event_id": i.event_id + "b", "request_id": i.request_id + "b",
                                          "session_id": i.session_id + "b", "messages": messages}))
    thumbs = [f.model_copy(update={"event_id": f.event_id + "b", "request_id": f.request_id + "b"})
              for f in feedback if f.request_id in {a.request_id[:-1] for a in again}]
    land_events(conn, again, thumbs)
    run2 = curate(conn, settings)

    kept1 = {normalise(c.prompt_text) for c in run1.kept}
    mine = [c for c in run2.candidates if c.session_id in reworded and c.stage != "clean"]
    near = [c for c in mine if "near-duplicate of" in (c.drop_reason or "")
            and f"kept by run {run1.run_id}" in c.drop_reason]
    assert len(mine) >= 8 and all(normalise(c.prompt_text) not in kept1 for c in mine)  # no exact repeats
    assert all(c.stage == "dedup" for c in mine), [(c.prompt_text, c.stage) for c in mine]
    assert len(near) >= len(mine) - 1  # at most one went to within-run dedup instead
    assert run2.funnel["dedup"]["earlier_runs_semantic"] == len(near)
    assert run2.funnel["dedup"]["earlier_vectors"] == len(run1.kept)
    conn.close()


def test_golden_and_hardness_stages_score_the_kept_candidates(tmp_path, model_dir):
    from flywheel.settings import Settings
    from training.curation.select import ModelScorer

    settings = Settings(data_dir=str(tmp_path / "data")).replace(
        curation={"watermark_lag_s": 0, "select_total": 4, "golden": True, "golden_anchors": 2, "hardness": True,
                  "hard_share": 0.25},
        review={"auto_approve": False})
    conn = connect(settings.db_path)
    apply_migrations(conn, ALL)
    land_events(conn, *list(synthetic_events(30, seed=31, config=SimulationConfig(users=10)))[:2])
    result = curate(conn, settings, scorer=ModelScorer(model_dir, max_length=512))
    kept = result.kept
    assert 1 <= len(kept) <= max(4, len({c.task_type for c in kept}))  # every type keeps >= 1
    assert all(c.hardness is not None and c.hardness > 0 for c in kept)
    assert all(c.golden_score is not None and 0 <= c.golden_score <= 1 for c in kept)
    hard = [c for c in kept if "hard" in c.tags]
    assert all(c.label == "good" for c in hard)
    assert all(c.hardness is None and c.golden_score is None for c in result.candidates if c.status == "dropped")
    stored = conn.execute("SELECT count(*) FROM candidates WHERE hardness IS NOT NULL AND golden_score IS NOT NULL").fetchone()[0]
    assert stored == len(kept)
    conn.close()


def test_synthetic_traffic_is_reproducible_and_carries_its_truth():
    from flywheel.simulate.charts import is_correct, parse_config

    a = synthetic_events(300, seed=3)
    b = synthetic_events(300, seed=3)
    assert [e.model_dump_json() for e in a.interactions] == [e.model_dump_json() for e in b.interactions]
    assert [e.model_dump_json() for e in a.feedback] == [e.model_dump_json() for e in b.feedback]
    c = synthetic_events(300, seed=4)
    assert [e.messages for e in c.interactions] != [e.messages for e in a.interactions]

    truth = a.truth
    requests = truth.requests
    assert set(requests) == {e.request_id for e in a.interactions}
    assert set(truth.users.values()) <= {"honest", "random", "reverse", "silent"}
    assert {e.user_id for e in a.interactions} <= set(truth.users)
    kinds = {f.kind for f in a.feedback}
    assert kinds == {"thumb", "rating", "choice", "edit", "regenerate", "copy"}
    assert any(e.turn > 1 for e in a.interactions) and any(len(e.drafts) == 2 for e in a.interactions)
    assert any(t["messy"] for t in requests.values()) and any(t["defect"] for t in requests.values())
    by_id = {e.request_id: e for e in a.interactions}
    paraphrases = [(rid, t) for rid, t in requests.items() if t["paraphrase_of"]]
    assert paraphrases
    for rid, t in paraphrases:
        original = requests[t["paraphrase_of"]]
        assert original["task_type"] == t["task_type"] and original["truth"] == t["truth"]
        assert by_id[rid].messages[-1]["content"] != by_id[t["paraphrase_of"]].messages[-1]["content"]
    for f in a.feedback:
        if f.kind == "edit":  # an honest user's saved configuration: the right one
            assert is_correct(parse_config(f.text), requests[f.request_id]["truth"])
    for rid, t in requests.items():  # the truth's correctness is the verifier's
        e = by_id[rid]
        if t["truth"] is not None and e.drafts:
            assert [is_correct(parse_config(d["content"]), t["truth"]) for d in e.drafts] == t["drafts_correct"]


def test_mining_waits_for_feedback_that_landed_before_its_request(tmp_path):
    from training.curation.mine import mine, mining_window, save_watermark

    interactions, feedback, _ = synthetic_events(20, seed=41)
    rated = {f.request_id for f in feedback if f.kind in ("thumb", "rating")}
    late = next(e for e in interactions if e.request_id in rated)  # its interaction lands late
    conn = connect(tmp_path / "db.duckdb")
    apply_migrations(conn, ALL)
    land_events(conn, [e for e in interactions if e is not late], feedback)
    first = mine(conn, window := mining_window(conn, 0))
    assert first.orphan_feedback == sum(f.request_id == late.request_id for f in feedback) > 0
    assert late.request_id not in {c.request_id for c in first.candidates}
    save_watermark(conn, window, "run-1")
    land_events(conn, [late], [])
    second = mine(conn, mining_window(conn, 0))
    assert second.orphan_feedback == 0
    mined = [c for c in second.candidates if c.request_id == late.request_id]
    assert len(mined) == 1
    fb = mined[0].feedback
    assert fb.thumbs_up + fb.thumbs_down + len(fb.ratings) > 0  # the early feedback is there
    assert {c.session_id for c in second.candidates} == {late.session_id}
    conn.close()


def test_one_curation_run_at_a_time(tmp_path):
    from flywheel.settings import Settings
    from training.curation import pipeline as curation

    settings = Settings(data_dir=str(tmp_path / "data"))
    conn = connect(settings.db_path)
    apply_migrations(conn, ALL)
    with curation._ONE_RUN:  # a run in progress elsewhere in the process
        with pytest.raises(curation.CurationBusy, match="another curation run"):
            curate(conn, settings)
    assert conn.execute("SELECT count(*) FROM curation_runs").fetchone()[0] == 0
    conn.close()
