"""Verifiers: chart configurations against the prompt's lists, generic checks elsewhere."""

from __future__ import annotations

import copy
import json
import random

import pytest

from flywheel.simulate import charts
from flywheel.simulate.tasks import make_task
from training.labeling.verify import CHART_TASK, chart_target, extract_json, has_verifier, verify


def _requests(n: int, seed: int = 7):
    rng = random.Random(seed)
    return [charts.generate_request(rng) for _ in range(n)]


def _messages(request) -> list[dict]:
    return [{"role": "user", "content": charts.build_prompt(request.schema, request.text)}]


def test_ground_truth_configs_pass():
    for request in _requests(300):
        verdict = verify(CHART_TASK, _messages(request), charts.dump_config(request.truth))
        assert verdict.passed, (request.truth, verdict.reasons)
        assert verdict.score == 1.0


def test_pretty_printed_and_fenced_json_pass_but_prose_does_not():
    request = _requests(1)[0]
    msgs = _messages(request)
    pretty = json.dumps(request.truth, indent=2)
    assert verify(CHART_TASK, msgs, pretty).passed
    assert verify(CHART_TASK, msgs, f"```json\n{pretty}\n```").passed
    prose = verify(CHART_TASK, msgs, f"Here is the chart: {pretty} Hope it helps!")
    assert not prose.passed and "text around the JSON" in prose.reasons
    assert 0 < prose.score < 1
    # The training target is always the bare compact JSON.
    assert chart_target(f"Sure!\n```json\n{pretty}\n```") is None or json.loads(chart_target(pretty)) == request.truth
    assert json.loads(chart_target(f"Here is the chart: {pretty} Hope it helps!")) == request.truth


def _mutations(truth: dict, schema: charts.DatasetSchema) -> dict[str, str]:
    """Named broken drafts of a correct configuration (as answer texts)."""
    out = {}
    wrong_field = copy.deepcopy(truth)
    wrong_field["chartFields"]["metrics"] = ["Totally made up metric"]
    out["unknown metric"] = charts.dump_config(wrong_field)
    wrong_dim = copy.deepcopy(truth)
    wrong_dim["chartFields"]["dimensions"] = ["Galaxy"]
    wrong_dim["mainAxis"] = "Galaxy"
    out["unknown dimension"] = charts.dump_config(wrong_dim)
    extra = copy.deepcopy(truth)
    extra["colour"] = "blue"
    out["extra key"] = charts.dump_config(extra)
    no_range = copy.deepcopy(truth)
    no_range["chartTimeFilter"] = {"granularity": "month"}
    out["time filter without a range"] = charts.dump_config(no_range)
    bad_type = copy.deepcopy(truth)
    bad_type["chartType"] = "CHART_RADAR"
    out["chart type"] = charts.dump_config(bad_type)
    axis = copy.deepcopy(truth)
    axis["mainAxis"] = next(d for d in schema.all_dimensions if d not in truth["chartFields"]["dimensions"])
    out["mainAxis not among dimensions"] = charts.dump_config(axis)
    bad_sort = copy.deepcopy(truth)
    bad_sort["sort"] = {"metric": truth["chartFields"]["metrics"][0], "sort": "UP"}
    out["sort shape"] = charts.dump_config(bad_sort)
    out["invalid JSON"] = charts.dump_config(truth)[:-1]
    out["trailing comma"] = charts.dump_config(truth)[:-1] + ",}"
    out["empty"] = ""
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_broken_drafts_fail_with_a_reason(seed):
    for request in _requests(20, seed):
        msgs = _messages(request)
        for name, draft in _mutations(request.truth, request.schema).items():
            verdict = verify(CHART_TASK, msgs, draft)
            assert not verdict.passed, name
            assert verdict.reasons, name
            assert verdict.score < 1.0


def test_names_must_come_from_the_prompt_not_another_schema():
    retail, marketing = charts.get_schema("retail_sales"), charts.get_schema("marketing")
    truth = {"chartType": "CHART_COLUMN", "chartFields": {"dimensions": ["Region"], "metrics": ["Sales"]}, "mainAxis": "Region"}
    assert verify(CHART_TASK, [{"role": "user", "content": charts.build_prompt(retail, "sales by region")}], json.dumps(truth)).passed
    verdict = verify(CHART_TASK, [{"role": "user", "content": charts.build_prompt(marketing, "sales by region")}], json.dumps(truth))
    assert not verdict.passed
    assert any("'Region'" in r for r in verdict.reasons) and any("'Sales'" in r for r in verdict.reasons)


def test_followup_turn_uses_the_lists_of_the_first_prompt():
    rng = random.Random(5)
    request = charts.generate_request(rng)
    follow = charts.generate_followup(rng, request)
    msgs = _messages(request) + [
        {"role": "assistant", "content": charts.dump_config(request.truth)},
        {"role": "user", "content": charts.build_followup_prompt(follow.text)},
    ]
    assert verify(CHART_TASK, msgs, charts.dump_config(follow.truth)).passed
    bad = copy.deepcopy(follow.truth)
    bad["chartFields"]["metrics"] = ["Nope"]
    assert not verify(CHART_TASK, msgs, charts.dump_config(bad)).passed


def test_agrees_with_the_simulators_own_judgement():
    """On drafts made from ground truth (correct ones and broken ones), whatever the
    simulator judges correct the verifier passes, and what the verifier rejects for a
    name or shape the simulator never judges correct. Agreement is counted."""
    agree = total = 0
    for request in _requests(40, 11):
        msgs = _messages(request)
        drafts = {"truth": charts.dump_config(request.truth), **_mutations(request.truth, request.schema)}
        for name, draft in drafts.items():
            verdict = verify(CHART_TASK, msgs, draft)
            correct = charts.is_correct(charts.parse_config(draft), request.truth)
            agree += verdict.passed == correct
            total += 1
            if name in ("extra key", "trailing comma"):
                # The simulator ignores unknown keys and repairs trailing commas; a training
                # target must need neither, so the verifier is stricter here.
                assert correct and not verdict.passed
                continue
            assert verdict.passed == correct, (name, verdict.reasons)
    assert agree == total - 2 * 40


def test_extract_json_problems():
    assert extract_json('{"a": 1}') == ({"a": 1}, None)
    value, problem = extract_json("no json here")
    assert value is None and problem.startswith("invalid JSON")
    value, problem = extract_json('{"chartType": "TABLE_DETAIL", "chartFields": {"dimensions": [], "metrics": ["x"]},}')
    assert value is None and problem.startswith("invalid JSON")


def test_generic_verifiers():
    rng = random.Random(3)
    for task_type in ("writing/rewrite", "qa/analytics-concepts", "chat/chitchat", "reasoning/math", "writing/summarize"):
        assert has_verifier(task_type)
        msgs = make_task(rng, task_type, messy_rate=0).messages
        assert not verify(task_type, msgs, "").passed
        assert not verify(task_type, msgs, "I'm sorry, I can't help with that.").passed
        looped = verify(task_type, msgs, "The revenue went up by 12. " * 10)
        assert not looped.passed and any("repet" in r for r in looped.reasons)
        assert not verify(task_type, msgs, "Le chiffre d'affaires est en hausse et la marge est stable pour le trimestre.").passed
    math = make_task(rng, "reasoning/math", messy_rate=0).messages
    assert verify("reasoning/math", math, "First add the units, then multiply: the total is 4,350.").passed
    missing = verify("reasoning/math", math, "You add them up and multiply by the price.")
    assert not missing.passed and "math: no numeric answer" in missing.reasons
    summary = make_task(rng, "writing/summarize", messy_rate=0).messages
    assert verify("writing/summarize", summary, "Revenue grew thanks to the enterprise plan.").passed
    assert not verify("writing/summarize", summary, summary[0]["content"] + " Indeed.").passed
    # Unknown task types get the generic checks.
    assert not has_verifier("something/else")
    assert verify("something/else", math, "A fine answer to the question.").passed
    assert not verify("something/else", math, None).passed


def test_tool_calls_are_verified_against_the_tools_offered():
    """#12: the called function was offered, its arguments validate against its JSON Schema
    (jsonschema), required calls are present, parallel_tool_calls false means one call."""
    from training.labeling.verify import verify_tool_calls

    city = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": city}},
             {"type": "function", "function": {"name": "ping"}}]

    def call(name, arguments):
        return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}

    ok = verify_tool_calls(tools, [call("get_weather", '{"city": "Paris", "days": 2}'), call("ping", "{}")])
    assert ok.passed and ok.score == 1.0 and ok.reasons == []
    bad = verify_tool_calls(tools, [call("get_weather", '{"city": "Paris", "days": 0}')], "required")
    assert not bad.passed and bad.reasons == ["call 0 (get_weather): arguments at days: 0 is less than the minimum of 1"]
    assert 0 < bad.score < 1
    assert verify_tool_calls(tools, [call("get_mood", "{}")]).reasons[0] == \
        "call 0: function 'get_mood' was not offered (get_weather, ping)"
    assert "not JSON" in verify_tool_calls(tools, [call("get_weather", "{city: Paris")]).reasons[0]
    assert verify_tool_calls(tools, [call("ping", '{"x": 1}')]).reasons[0].startswith("call 0 (ping): arguments")
    assert verify_tool_calls(tools, [], "required").reasons == ["no tool call, though tool_choice is 'required'"]
    named = {"type": "function", "function": {"name": "ping"}}
    assert not verify_tool_calls(tools, [call("get_weather", '{"city": "Paris"}')], named).passed
    assert verify_tool_calls(tools, [call("ping", "{}")], named).passed
    two = [call("ping", "{}"), call("ping", "{}")]
    assert verify_tool_calls(tools, two, parallel_tool_calls=False).reasons == [
        "2 tool calls, though parallel_tool_calls is false"]
    assert verify_tool_calls(tools, [], "auto").passed and not verify_tool_calls(tools, two, "none").passed
