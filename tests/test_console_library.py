"""The console's reading and drawing helpers without a browser: charts (what they draw,
what they escape), the word diff, reviewers' votes, the time range and the evaluation lines
over versions (a DuckDB file with the migrations)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from services.console import overview, reviewing
from services.console.charts import Bar, Series, bar_chart, line_chart, nice_ticks
from services.console.textdiff import changed_share, diff_ops
from services.control.migrations import ALL
from streams.warehouse import apply_migrations, connect


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0, 37) == [0, 10, 20, 30, 40]
    assert nice_ticks(5, 5)[0] <= 5 <= nice_ticks(5, 5)[-1]


def test_a_line_chart_draws_each_value_and_escapes_names():
    svg = line_chart([Series("<script>x</script>", [(0, 1.0), (60, 2.0), (120, None), (180, 3.0)])],
                     title="t & u", chart_id="c")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "t &amp; u" in svg
    assert svg.count('class="point"') == 3 and svg.count('class="line"') == 1  # the gap splits the line
    empty = line_chart([Series("a", [(0, None)])], title="nothing", empty="no data here")
    assert "empty" in empty and "no data here" in empty and "<svg" not in empty
    bars = bar_chart([Bar("train", 500.0, "done", note="8m20s"), Bar("mine", 5.0, "failed")], title="stages")
    assert bars.count('class="bar') == 2 and "8m20s" in bars


def test_the_diff_compares_json_pretty_printed_and_text_by_words():
    ops = diff_ops('{"chartType":"CHART_PIE","topN":3}', '{"chartType": "CHART_LINE", "topN": 3}')
    assert ("del", "CHART_PIE") in ops and ("ins", "CHART_LINE") in ops
    assert all("topN" not in t for op, t in ops if op != "eq")  # unchanged keys stay equal
    assert diff_ops("the cat sat", "the dog sat") == [("eq", "the "), ("del", "cat"), ("ins", "dog"), ("eq", " sat")]
    assert changed_share(diff_ops("same", "same")) == 0.0


def _decision(reviewer, action, reason=None, source="api"):
    return {"reviewer": reviewer, "action": action, "reason": reason, "source": source}


def test_votes_are_each_persons_latest_decision_until_a_settlement():
    decided = [_decision("auto:approve", "approve", source="auto"), _decision("ana", "approve"), _decision("bob", "reject")]
    counted, settled = reviewing.votes(decided)
    assert [v["reviewer"] for v in counted] == ["ana", "bob"] and settled is None
    assert reviewing.agreement(counted) == "conflict"
    counted, _ = reviewing.votes(decided + [_decision("bob", "edit")])  # bob changed his mind: an edit keeps it too
    assert reviewing.agreement(counted) == "agree"
    counted, _ = reviewing.votes(decided + [_decision("bob", "reset")])  # a reset withdraws the vote
    assert reviewing.agreement(counted) == "single"
    counted, settled = reviewing.votes(decided + [_decision("cy", "reject", f"{reviewing.SETTLED}: wrong number")])
    assert counted == [] and settled["reviewer"] == "cy" and reviewing.agreement(counted) == "none"


def test_answers_tell_the_model_answer_from_the_corrections():
    user_edit = reviewing.answers({"response_source": "edit", "response": "fixed", "rejected_response": "model",
                                   "state": "pending"})
    assert (user_edit["model_answer"], user_edit["correction"], user_edit["correction_by"]) == ("model", "fixed", "the user")
    reviewed = reviewing.answers({"response_source": "draft", "response": "model", "state": "edited",
                                  "edited_response": "better", "reviewer": "ana"})
    assert (reviewed["model_answer"], reviewed["correction"], reviewed["correction_by"]) == ("model", "better", "reviewer ana")
    assert reviewing.answers({"response_source": "draft", "response": "model", "state": "approved"})["correction"] is None


@pytest.fixture
def db(tmp_path):
    conn = connect(tmp_path / "db.duckdb")
    apply_migrations(conn, ALL)
    yield conn
    conn.close()


def test_the_time_range_picks_a_bucket_for_at_most_72_points(db):
    now = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    assert overview.span_of(db, "1h", now).bucket_s == 60
    assert overview.span_of(db, "24h", now).bucket_s == 1800
    assert overview.span_of(db, "30d", now).bucket_s == 12 * 3600
    assert overview.span_of(db, "all", now).start == now - timedelta(hours=1)  # nothing landed yet
    with pytest.raises(ValueError, match="unknown range"):
        overview.span_of(db, "2y", now)


def test_evaluation_lines_follow_the_registry_order_and_fill_the_base_from_production(db, tmp_path):
    from training.evaluation.evaluate import record_evaluation

    for v, t in (("base", 0), ("v1", 1), ("v2", 2)):
        db.execute("INSERT INTO model_versions (version, base_model, status, created_at) VALUES (?, 'm', 'candidate', ?)",
                   [v, datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(hours=t)])
    for cand, prod, c, p in (("v2", "v1", 0.8, 0.6), ("v1", "base", 0.6, 0.3)):  # recorded out of order
        folder = tmp_path / f"{cand}-vs-{prod}"
        folder.mkdir()
        types = [{"task_type": "math", "pass_rate": {"candidate": c, "production": p}, "judge": {"win_rate": 0.7}}]
        (folder / "report.json").write_text(json.dumps({"types": types}))
        record_evaluation(db, {"candidate": cand, "production": prod, "overall": {}, "gate": {"passed": True, "reasons": []},
                               "created_at": datetime.now(timezone.utc).isoformat()}, folder)
    lines = overview.evaluation_lines(db)
    assert lines["versions"] == ["base", "v1", "v2"]
    assert lines["types"]["math"]["verifier pass"] == [0.3, 0.6, 0.8]
    assert lines["types"]["math"]["judge win rate"] == pytest.approx([0.3, 0.7, 0.7])
    assert len(overview.evaluation_charts(lines)) == 1
