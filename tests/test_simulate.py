"""The traffic simulator: ground truth, verifier, prompts, personas, reproducibility, and a
run against a stub OpenAI-compatible server (no real gateway needed here)."""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter
from pathlib import Path

import pytest

from flywheel.domains.chart.prompt import lists_from_messages
from flywheel.simulate import charts
from flywheel.simulate.charts import (
    CONFIG_KEYS,
    PROMPT_TEMPLATE,
    SCHEMAS,
    build_prompt,
    compare_configs,
    generate_followup,
    generate_request,
    is_correct,
    parse_config,
    score_config,
    validate_config,
)
from flywheel.simulate.messy import MESSY_KINDS, make_messy
from flywheel.simulate.sessions import SimulationConfig, plan_session
from flywheel.simulate.tasks import CHART_TASK, TASK_TYPES, Judgement, make_task, pick_task_type
from flywheel.simulate.users import FEEDBACK_KINDS, PERSONAS, Behaviour, decide, make_user
from training.labeling.verify import verify

# ----------------------------------------------------------------------------- ground truth


def test_generated_truth_is_a_valid_configuration():
    rng = random.Random(1)
    intents, schemas = Counter(), Counter()
    for _ in range(2000):
        request = generate_request(rng)
        intents[request.intent] += 1
        schemas[request.schema.name] += 1
        assert validate_config(request.truth, request.schema) == [], (request.text, request.truth)
        assert list(request.truth) == [k for k in CONFIG_KEYS if k in request.truth]
        assert is_correct(request.truth, request.truth)
        assert score_config(request.truth, request.truth) == 1.0
        assert request.text.strip() and "{" not in request.text
        follow = generate_followup(rng, request)
        assert validate_config(follow.truth, request.schema) == [], (follow.text, follow.truth)
        assert follow.truth != request.truth
        assert is_correct(json.loads(json.dumps(follow.truth)), follow.truth)
    assert set(schemas) == {s.name for s in SCHEMAS}
    assert set(intents) == {"trend", "breakdown", "share", "topn", "sorted", "threshold", "table", "like"}


def test_trend_requests_follow_the_time_axis_rule():
    rng = random.Random(2)
    for _ in range(300):
        r = generate_request(rng, intent="trend")
        assert r.truth["chartType"] == "CHART_LINE"
        assert r.truth["mainAxis"] == r.schema.time_field == r.truth["chartFields"]["dimensions"][0]
        assert r.truth["chartTimeFilter"]["granularity"] in ("day", "week", "month", "quarter")


def test_request_words_and_truth_agree():
    rng = random.Random(0)
    seen = Counter()
    for _ in range(3000):
        r = generate_request(rng)
        text, truth = r.text.lower(), r.truth
        time = truth.get("chartTimeFilter")
        if "for the last half year" in text:
            assert time["dayjsScript"] == ["dayjs().subtract(6, 'month').startOf('month')", "dayjs().endOf('month')"]
            seen["half year"] += 1
        if "monthly" in text:
            assert time["granularity"] == "month" and truth["chartType"] == "CHART_LINE"
            seen["monthly"] += 1
        if m := re.search(r"\bin q(\d)\b", text):
            assert time["dayjsScript"][0] == f"dayjs().quarter({m.group(1)}).startOf('quarter')"
            seen["quarter"] += 1
        if m := re.search(r"\b(top|bottom) (\d+) ", text):
            assert truth["topN"]["number"] == int(m.group(2))
            assert truth["topN"]["sort"] == ("DESC" if m.group(1) == "top" else "ASC")
            seen["topn"] += 1
        if m := re.search(r" over (\d+)%", text):
            assert truth["metricFilters"][0]["filter"] == {"condition": "greater", "value": int(m.group(1))}
            seen["over"] += 1
        if "excluding the " in text:
            assert any(f["filter"]["condition"] == "not-in" for f in truth["dimensionFilters"])
            seen["excluding"] += 1
    assert set(seen) == {"half year", "monthly", "quarter", "topn", "over", "excluding"}, seen


# ----------------------------------------------------------------------------- verifier

TRUTH = {
    "chartType": "CHART_LINE",
    "chartFields": {"dimensions": ["Order date", "Region"], "metrics": ["Profit margin", "Sales"]},
    "mainAxis": "Order date",
    "dimensionFilters": [{"dimension": "Region", "filter": {"condition": "not-in", "value": ["West"]}}],
    "metricFilters": [{"metric": "Profit margin", "filter": {"condition": "interval", "value": "10,20"}}],
    "chartTimeFilter": {"granularity": "month", "dayjsScript": ["dayjs().subtract(6, 'month').startOf('month')", "dayjs().endOf('month')"]},
}


def perturbed(path: str, value) -> dict:
    config = json.loads(json.dumps(TRUTH))
    *parents, last = path.split(".")
    node = config
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return config


@pytest.mark.parametrize(
    "path, value",
    [
        ("chartType", "CHART_COLUMN"),
        ("chartFields.metrics", ["Profit margin"]),
        ("chartFields.dimensions", ["Order date"]),
        ("mainAxis", "Region"),
        ("dimensionFilters", KeyError),
        ("dimensionFilters.0.filter.condition", "in"),
        ("metricFilters.0.filter.value", "10,30"),
        ("chartTimeFilter.granularity", "week"),
        ("chartTimeFilter.dayjsScript", ["dayjs().subtract(3, 'month').startOf('month')", "dayjs().endOf('month')"]),
        ("chartTimeFilter", KeyError),
        ("sort", {"metric": "Sales", "sort": "DESC"}),
        ("topN", {"metric": "Sales", "sort": "DESC", "number": 5}),
    ],
)
def test_a_perturbed_config_is_not_correct(path, value):
    config = perturbed(path, value)
    assert not is_correct(config, TRUTH)
    assert 0.0 < score_config(config, TRUTH) < 1.0


def test_equivalent_configs_are_correct():
    config = json.loads(json.dumps(TRUTH))
    config["chartFields"]["metrics"].reverse()  # sets, not lists
    config["chartTimeFilter"]["dayjsScript"] = ['dayjs().subtract( 6, "month" ).startOf("month")', " dayjs().endOf('month') "]
    config["metricFilters"][0]["filter"]["value"] = "10, 20"
    config["sort"] = None  # absent == null
    config["topN"] = {}
    config["title"] = "ignored"  # unknown keys do not count
    assert is_correct(config, TRUTH)
    assert compare_configs(config, TRUTH) == {k: 1.0 for k in charts.FIELD_WEIGHTS}


def test_score_of_nothing_is_zero():
    assert score_config(None, TRUTH) == 0.0
    assert not is_correct(None, TRUTH)
    assert score_config({"chartType": 3, "chartFields": "x", "metricFilters": "bad"}, TRUTH) < 0.2


def test_validate_config_reports_problems():
    retail = charts.get_schema("retail_sales")
    assert validate_config(TRUTH, retail) == []
    bad = {"chartType": "CHART_BAR", "chartFields": {"dimensions": ["Colour"], "metrics": []}, "mainAxis": "Colour", "extra": 1}
    problems = " ".join(validate_config(bad, retail))
    for fragment in ("unknown key 'extra'", "chartType", "'Colour' is not in the schema", "metrics must not be empty"):
        assert fragment in problems
    assert validate_config([], retail) == ["the configuration must be a JSON object"]


def test_parse_config_is_tolerant():
    compact = json.dumps(TRUTH)
    assert parse_config(compact) == TRUTH
    assert parse_config(f"Sure! Here is the configuration:\n```json\n{json.dumps(TRUTH, indent=2)}\n```\nHope this helps.") == TRUTH
    assert parse_config('JSON: {"chartType": "CHART_PIE", "chartFields": {"dimensions": ["Region"], "metrics": ["Sales"],},}') == {
        "chartType": "CHART_PIE",
        "chartFields": {"dimensions": ["Region"], "metrics": ["Sales"]},
    }
    # A truncated answer: the outer object never closes; the inner one is not a config.
    assert parse_config('{"chartType": "CHART_LINE", "chartFields": {"dimensions": ["Region"]}, "mainAxis": "Reg') == {"dimensions": ["Region"]}
    assert parse_config('{"note": 1} then {"chartType": "TABLE_DETAIL"}') == {"chartType": "TABLE_DETAIL"}
    assert parse_config("no json here") is None
    assert parse_config("") is None and parse_config(None) is None


# ----------------------------------------------------------------------------- prompt

DESIGN_HEADER = """You are a data visualization assistant. Turn the user's request into a JSON chart configuration.
Allowed keys: chartType, chartFields, mainAxis, sort, topN, dimensionFilters, metricFilters, chartTimeFilter.
- chartType: CHART_COLUMN, CHART_LINE, CHART_PIE or TABLE_DETAIL.
- chartFields: {"dimensions": [...], "metrics": [...]}, names taken only from the lists below.
- mainAxis: the main axis, usually a dimension or the time field.
- chartTimeFilter: only when the user gives a time range: {"granularity": "day"|"week"|"month"|"quarter"|"year", "dayjsScript": [start, end]}, each a dayjs expression.
- dimensionFilters: only when the user restricts dimension values: [{"dimension": ..., "filter": {"condition": "in"|"not-in"|"like"|"not-like", "value": [...]}}].
- metricFilters: only when the user restricts a metric's value: [{"metric": ..., "filter": {"condition": "greater"|"less"|"interval", "value": number, or "low,high" for interval}}].
- sort: only when the user asks for an order: {"metric": ..., "sort": "ASC"|"DESC"}.
- topN: only for the top or bottom N: {"metric": ..., "sort": "ASC"|"DESC", "number": N}.
For a trend over time, use the time field as mainAxis and CHART_LINE.
"""


def test_prompt_is_the_design_template_filled_in():
    retail = charts.get_schema("retail_sales")
    prompt = build_prompt(retail, "monthly profit margin by region for the last half year")
    assert prompt.startswith(DESIGN_HEADER)
    assert prompt[len(DESIGN_HEADER) :] == (
        'Dimensions: ["Order date", "Region", "Product category", "Product", "Customer segment", "Sales rep", "Ship mode"]\n'
        'Metrics: ["Sales", "Profit", "Profit margin", "Quantity", "Discount rate", "Return rate", "Customer satisfaction"]\n'
        'Time field: "Order date"\n'
        "Request: monthly profit margin by region for the last half year\n"
        "JSON:"
    )


def test_prompt_template_matches_design_md_when_available():
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "docs" / "DESIGN.md", here.parent / "DESIGN.md", here.parent.parent / "shared" / "DESIGN.md"):
        if candidate.exists():
            design = candidate.read_text(encoding="utf-8")
            break
    else:
        pytest.skip("DESIGN.md is not next to this checkout")
    block = re.search(r"```\n(You are a data visualization assistant.*?JSON:)\n```", design, re.S)
    assert block, "the prompt block moved in DESIGN.md"
    lines = block.group(1).splitlines()
    ours = PROMPT_TEMPLATE.splitlines()
    assert ours[:11] == lines[:11]  # the fixed instructions, verbatim
    assert [line.split(":")[0] for line in ours[11:]] == [line.split(":")[0] for line in lines[11:]]


# ----------------------------------------------------------------------------- tasks and mess


def test_task_mix_is_mostly_charts():
    rng = random.Random(5)
    counts = Counter(pick_task_type(rng) for _ in range(4000))
    # every type but the agent app's, which only SimulationConfig.agent_share brings in
    assert set(counts) == set(TASK_TYPES) - {"tool-calling/support-desk"}
    assert 0.46 < counts[CHART_TASK] / 4000 < 0.54
    only = Counter(pick_task_type(rng, {"reasoning/math": 1.0}) for _ in range(50))
    assert only == {"reasoning/math": 50}
    with pytest.raises(ValueError, match="unknown task type"):
        pick_task_type(rng, {"poetry": 1.0})


def test_messy_prompts_keep_the_truth():
    rng = random.Random(9)
    flags = Counter()
    for _ in range(400):
        task = make_task(rng, CHART_TASK, messy_rate=1.0)
        assert task.messy and set(task.messy) <= set(MESSY_KINDS)
        flags.update(task.messy)
        assert validate_config(task.truth, charts.get_schema(task.schema)) == []
        assert f"Request: {task.user_text}\nJSON:" in task.messages[0]["content"]
    assert set(flags) == set(MESSY_KINDS)


def test_messy_kinds():
    rng = random.Random(4)
    text = "Show me monthly sales by region for the last half year, excluding the West region."
    assert re.search(r"[\u4e00-\u9fff]", make_messy(text, rng, ("mixed-language",)).text)
    low = make_messy("Revenue was $1,299.50 in Q3. Why?", rng, ("lowercase",)).text
    assert low == "revenue was $1,299.50 in q3 why"
    half = make_messy(text, rng, ("half-sentence",)).text
    assert not half.lower().startswith("show me") and "West" in half and not half.endswith(".")
    typo = make_messy(text, rng, ("typo",))
    assert typo.flags == ("typo",) and typo.text != text and len(typo.text) >= len(text) - 3


def test_checkers_judge_answers():
    rng = random.Random(3)
    math = make_task(rng, "reasoning/math", messy_rate=0)
    assert math.judge(f"The answer is {math.expected:g}.").correct
    assert not math.judge("The answer is 12345678.").correct
    chart = make_task(rng, CHART_TASK, messy_rate=0)
    assert chart.judge("```json\n" + json.dumps(chart.truth) + "\n```") == Judgement(1.0, True)
    assert not chart.judge("I think a bar chart.").correct
    qa = make_task(rng, "qa/analytics-concepts", messy_rate=0)
    assert qa.judge("").score == 0.0
    chat = make_task(rng, "chat/chitchat", messy_rate=0)
    assert chat.checker is None and chat.judge("Hello! I'm doing well, thanks for asking.").correct


# ----------------------------------------------------------------------------- sessions and personas


def test_same_seed_same_sessions():
    first = [plan_session(7, i).to_dict() for i in range(60)]
    again = [plan_session(7, i).to_dict() for i in reversed(range(60))][::-1]
    assert first == again
    other = [plan_session(8, i).to_dict() for i in range(60)]
    assert first != other
    turns = [len(p["turns"]) for p in first]
    assert any(t > 1 for t in turns) and any(t == 1 for t in turns)


def test_persona_shares_over_2000_users():
    counts = Counter(make_user(0, i).persona for i in range(2000))
    expected = {"honest": 0.75, "random": 0.12, "reverse": 0.08, "silent": 0.05}
    for persona, share in expected.items():
        assert abs(counts[persona] / 2000 - share) < 0.025, (persona, counts)
    custom = Counter(make_user(0, i, {"honest": 0.5, "reverse": 0.5}).persona for i in range(2000))
    assert set(custom) == {"honest", "reverse"} and abs(custom["honest"] / 2000 - 0.5) < 0.04


def _chart_task() -> object:
    return make_task(random.Random(0), CHART_TASK, messy_rate=0)


ALWAYS = Behaviour(thumb_rate=1.0, rating_rate=1.0, copy_rate=0.0, regenerate_rate=0.0, edit_rate=0.0, comment_rate=0.0)


@pytest.mark.parametrize(
    "judgements",
    [
        [Judgement(1.0, True)],
        [Judgement(0.3, False)],
        [Judgement(0.6, False), Judgement(1.0, True)],
        [Judgement(1.0, True), Judgement(0.1, False)],
    ],
)
def test_reverse_raters_invert_honest_judgements(judgements):
    task = _chart_task()
    for seed in range(20):
        honest = decide("honest", task, judgements, random.Random(seed), ALWAYS)
        reverse = decide("reverse", task, judgements, random.Random(seed), ALWAYS)
        h = {a.kind: a for a in honest.feedback}
        r = {a.kind: a for a in reverse.feedback}
        if len(judgements) > 1:
            best = max(range(2), key=lambda i: judgements[i].score)
            assert h["choice"].draft == best and r["choice"].draft == 1 - best
            # each rates the draft it chose, by the judgement of that draft
            assert h["thumb"].value == 1 and r["thumb"].value == 1
        else:
            assert h["thumb"].value == -r["thumb"].value == (1 if judgements[0].correct else -1)
            assert h["rating"].value + r["rating"].value == 6


def test_random_raters_ignore_the_answer():
    task = _chart_task()
    good = Counter(a.value for s in range(1000) for a in decide("random", task, [Judgement(1.0, True)], random.Random(s), ALWAYS).feedback if a.kind == "thumb")
    assert 0.4 < good[1] / 1000 < 0.6


def test_honest_users_fix_wrong_charts_with_the_saved_config():
    task = _chart_task()
    behaviour = Behaviour()
    edits = [
        a
        for s in range(2000)
        for a in decide("honest", task, [Judgement(0.4, False)], random.Random(s), behaviour).feedback
        if a.kind == "edit"
    ]
    assert 0.55 < len(edits) / 2000 < 0.65
    assert all(a.text == json.dumps(task.truth, separators=(",", ":"), ensure_ascii=False) for a in edits)
    for persona in ("random", "reverse", "silent"):
        kinds = {a.kind for s in range(300) for a in decide(persona, task, [Judgement(0.4, False)], random.Random(s), behaviour).feedback}
        assert "edit" not in kinds
    silent = {a.kind for s in range(300) for a in decide("silent", task, [Judgement(0.4, False), Judgement(1, True)], random.Random(s)).feedback}
    assert silent <= {"copy", "regenerate"}


# ----------------------------------------------------------------------------- against a stub server

CANNED = {"chartType": "CHART_COLUMN", "chartFields": {"dimensions": ["Region"], "metrics": ["Sales"]}, "mainAxis": "Region"}


class StubGateway:
    """A tiny OpenAI-compatible server: canned chat answers, 200 for feedback."""

    def __init__(self, fail_every: int = 0) -> None:
        from flask import Flask, jsonify, request
        from werkzeug.serving import WSGIRequestHandler, make_server

        class QuietHandler(WSGIRequestHandler):
            def log_request(self, *args, **kwargs) -> None:
                pass

        self.chats: list[dict] = []
        self.feedback: list[dict] = []
        self.ids: list[str] = []
        self._lock = threading.Lock()
        app = Flask("stub-gateway")

        @app.post("/v1/chat/completions")
        def chat():
            body = request.get_json()
            with self._lock:
                number = len(self.chats) + 1
                self.chats.append({"headers": dict(request.headers), "body": body})
                if fail_every and number % fail_every == 0:
                    return jsonify({"error": {"message": "backend exploded", "type": "server_error"}}), 500
                rid = f"chatcmpl-{number:05d}"
                self.ids.append(rid)
            prompt = body["messages"][-1]["content"]
            if "JSON:" in prompt:
                contents = [f"Here you go:\n```json\n{json.dumps(CANNED)}\n```", "I am not sure."]
            else:
                contents = ["Sure, here is a short and helpful answer for you.", "ok"]
            choices = [
                {"index": i, "message": {"role": "assistant", "content": contents[i % 2]}, "finish_reason": "stop"}
                for i in range(body.get("n") or 1)
            ]
            return jsonify(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": body["model"],
                    "choices": choices,
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                }
            )

        @app.post("/v1/feedback")
        def feedback():
            body = request.get_json()
            with self._lock:
                self.feedback.append({"headers": dict(request.headers), "body": body})
            return jsonify({"id": f"fb-{len(self.feedback)}", "object": "feedback", "request_id": body["request_id"]})

        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "StubGateway":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


def _read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_run_simulation_against_a_stub_gateway(tmp_path):
    from flywheel.simulate import run_simulation

    manifest = tmp_path / "manifest.jsonl"
    with StubGateway() as stub:
        report = run_simulation(
            stub.base_url, "test-key", seed=3, duration_s=None, max_sessions=40, concurrency=3, manifest_path=manifest, progress=False
        )
    assert report.sessions == 40
    assert report.errors == 0 and report.feedback_errors == 0
    assert report.requests == len(stub.chats) >= 40
    assert sum(report.feedback.values()) == len(stub.feedback) > 0
    assert report.chart_accuracy is not None and report.elapsed_s > 0

    for chat in stub.chats:
        headers, body = chat["headers"], chat["body"]
        assert headers["Authorization"] == "Bearer test-key"
        assert re.fullmatch(r"sim-3-\d{6}", headers["X-Session-Id"])
        assert body["model"] == "flywheel-chat" and body["max_tokens"] == 200
        assert body["temperature"] == (0.0 if body.get("n", 1) == 1 else 0.8)
        assert body["user"].startswith("sim3-u")
        assert body["messages"][-1]["role"] == "user"
        # the traffic carries no ground truth
        assert set(body) <= {"model", "messages", "n", "temperature", "max_tokens", "user", "response_format"}
        # the chart app asks for structured outputs: its dataset's schema, names from the prompt's lists
        fmt = body.get("response_format")
        if fmt is not None:
            assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
            lists = lists_from_messages(body["messages"])
            names = fmt["json_schema"]["schema"]["$defs"]["ChartFields"]["properties"]["metrics"]["items"]["enum"]
            assert lists is not None and names == list(lists.metrics)
    assert any("response_format" in c["body"] for c in stub.chats)

    records = _read_manifest(manifest)
    assert len(records) == report.requests
    by_id = {r["request_id"]: r for r in records}
    assert set(by_id) == set(stub.ids)
    kinds = Counter()
    for fb in stub.feedback:
        body = fb["body"]
        assert fb["headers"]["Authorization"] == "Bearer test-key"
        assert set(body) == {"request_id", "kind", "draft", "value", "text", "comment", "user"}
        assert body["kind"] in FEEDBACK_KINDS and body["request_id"] in by_id
        record = by_id[body["request_id"]]
        assert body["user"] == record["user"] and 0 <= body["draft"] < record["n"]
        if body["kind"] == "thumb":
            assert body["value"] in (1, -1)
        elif body["kind"] == "rating":
            assert 1 <= body["value"] <= 5
        else:
            assert body["value"] is None
        if body["kind"] == "edit":
            assert record["task_type"] == CHART_TASK and record["persona"] == "honest"
            assert json.loads(body["text"]) == record["truth"]
        else:
            assert body["text"] is None
        kinds[body["kind"]] += 1
    assert dict(kinds) == report.feedback
    assert kinds["edit"] > 0 and kinds["thumb"] > 0

    for record in records:
        assert record["persona"] in PERSONAS and record["task_type"] in TASK_TYPES
        assert len(record["drafts"]) == record["n"]
        assert [f["kind"] for f in record["feedback"]] == [f["kind"] for f in record["feedback"] if f["ok"]]
        if record["task_type"] == CHART_TASK:
            assert validate_config(record["truth"], charts.get_schema(record["schema"])) == []
    regenerated = [r for r in records if r["regenerate_of"]]
    for r in regenerated:
        assert any(f["kind"] == "regenerate" for f in by_id[r["regenerate_of"]]["feedback"])
    assert any(r["turn"] > 1 for r in records)  # multi-turn sessions happened


def test_same_seed_same_traffic_and_decisions(tmp_path):
    from flywheel.simulate import run_simulation

    def run(path: Path, concurrency: int) -> list[tuple]:
        with StubGateway() as stub:
            run_simulation(stub.base_url, "k", seed=11, duration_s=None, max_sessions=25, concurrency=concurrency, manifest_path=path, progress=False)
        records = _read_manifest(path)
        sent = sorted(json.dumps([c["headers"]["X-Session-Id"], c["body"]], sort_keys=True) for c in stub.chats)
        decided = sorted(
            json.dumps([r["session_index"], r["turn"], r["attempt"], r["persona"], r["truth"], [{k: v for k, v in f.items()} for f in r["feedback"]]], sort_keys=True)
            for r in records
        )
        return [tuple(sent), tuple(decided)]

    assert run(tmp_path / "a.jsonl", 4) == run(tmp_path / "b.jsonl", 1)


def test_gateway_errors_are_counted_and_the_run_goes_on(tmp_path):
    from flywheel.simulate import run_simulation

    manifest = tmp_path / "m.jsonl"
    with StubGateway(fail_every=4) as stub:
        report = run_simulation(stub.base_url, "k", seed=1, duration_s=None, max_sessions=20, concurrency=2, manifest_path=manifest, progress=False)
    failures = len(stub.chats) // 4
    assert report.errors == failures > 0
    assert report.requests == len(stub.chats) - failures
    records = _read_manifest(manifest)
    assert sum(1 for r in records if r["error"]) == failures
    assert all("500" in r["error"] or "exploded" in r["error"] for r in records if r["error"])


def test_duration_stops_the_run(tmp_path):
    from flywheel.simulate import run_simulation

    with StubGateway() as stub:
        report = run_simulation(stub.base_url, "k", seed=2, duration_s=0.5, concurrency=2, progress=False)
    assert report.requests > 0 and report.sessions >= 1
    assert report.requests == len(stub.chats)


def test_run_needs_a_stopping_rule():
    from flywheel.simulate import run_simulation

    with pytest.raises(ValueError, match="duration_s or max_sessions"):
        run_simulation("http://127.0.0.1:9/v1", "k", duration_s=None, max_sessions=None)


def test_run_uses_the_configured_population(tmp_path):
    from flywheel.simulate import run_simulation

    config = SimulationConfig(
        task_mix={"reasoning/math": 1.0},
        persona_shares={"silent": 1.0},
        behaviour=Behaviour(multi_turn_rate=0.0, two_drafts_rate=0.0),
        users=3,
    )
    manifest = tmp_path / "m.jsonl"
    with StubGateway() as stub:
        report = run_simulation(stub.base_url, "k", seed=4, duration_s=None, max_sessions=10, concurrency=2, manifest_path=manifest, config=config, progress=False)
    records = _read_manifest(manifest)
    assert report.requests_by_task == {"reasoning/math": report.requests} and report.chart_accuracy is None
    assert {r["persona"] for r in records} == {"silent"} and len({r["user"] for r in records}) <= 3
    assert all(r["turn"] == 1 and r["n"] == 1 and r["expected"] is not None for r in records)
    assert {f["body"]["kind"] for f in stub.feedback} <= {"copy", "regenerate"}


# ----------------------------------------------------------------------------- held-out datasets


def test_held_out_schemas_have_their_own_vocabulary_and_valid_requests():
    held_out = charts.eval_schemas()
    assert len(held_out) >= 4 and all(s.eval_only for s in held_out) and not any(s.eval_only for s in SCHEMAS)
    traffic_words = {n.lower() for s in SCHEMAS for n in (*s.all_dimensions, *s.metrics)}
    rng = random.Random(12)
    for schema in held_out:
        assert charts.get_schema(schema.name) is schema
        assert not {n.lower() for n in (*schema.all_dimensions, *schema.metrics)} & traffic_words, schema.name
        intents = Counter()
        for _ in range(150):  # every intent and follow-up of the generator works on it
            request = generate_request(rng, schema.name)
            intents[request.intent] += 1
            assert request.schema is schema
            assert validate_config(request.truth, schema) == [], (request.text, request.truth)
            messages = [{"role": "user", "content": build_prompt(schema, request.text)}]
            assert verify(CHART_TASK, messages, charts.dump_config(request.truth)).passed
            follow = generate_followup(rng, request)
            assert validate_config(follow.truth, schema) == [], (follow.text, follow.truth)
        assert len(intents) == 8, (schema.name, intents)
        task = make_task(rng, CHART_TASK, messy_rate=0, schema=schema)
        assert task.schema == schema.name and '"' + schema.time_field + '"' in task.messages[0]["content"]


def test_traffic_never_uses_the_held_out_schemas():
    from flywheel.simulate.synthetic import synthetic_events

    held_out = {s.name for s in charts.eval_schemas()}
    markers = [f"Time field: \"{s.time_field}\"" for s in charts.eval_schemas()]
    rng = random.Random(4)
    assert not {generate_request(rng).schema.name for _ in range(3000)} & held_out
    for i in range(400):
        for turn in plan_session(11, i).turns:
            assert turn.task.schema not in held_out
    interactions, _, _ = synthetic_events(300, seed=5)
    for event in interactions:
        for m in event.messages:
            assert not any(marker in (m.content if hasattr(m, "content") else m["content"]) for marker in markers)
