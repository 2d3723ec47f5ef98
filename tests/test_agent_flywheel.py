"""The flywheel side of tool calling (issue 12) on the second simulated app, a support-desk
agent with five tools: its traffic (offline and against a stub gateway), curation (the
tool-calling task type, the verifier), the datasets (TRL's tool format, DPO pairs from
corrected calls, rendered for training as served), the evaluation's tool-call metrics and
gate, and the teachers. Real DuckDB, MiniLM, the bundled model where the point needs it."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter

import pytest
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from flywheel.domains import load_domains
from flywheel.domains.support import SUPPORT_TASK, TOOLS
from flywheel.domains.tool_calls import call_key, make_call, parse_answer, render_answer
from flywheel.settings import Settings
from flywheel.simulate.agent import AGENT_APP, generate_agent_request, judge_call, wrong_call
from flywheel.simulate.sessions import SimulationConfig
from flywheel.simulate.synthetic import synthetic_events
from tests.conftest import free_port, landed_warehouse
from tests.openai_standin import StandIn
from training.evaluation.evaluate import EvalItem, Version, evaluate, items_from_records, tool_call_scores
from training.labeling.verify import verify, verify_answer_calls

AGENT = SimulationConfig(users=20, agent_share=0.5)


# ----------------------------------------------------------------------------- domain and simulator


def test_the_support_domain_declares_its_tool_set_and_checks_calls_against_it():
    loaded = load_domains()
    assert "support" in loaded.names and loaded.task(SUPPORT_TASK).tools == TOOLS
    assert loaded.task_for_tools(TOOLS[:2]).name == SUPPORT_TASK  # a subset of the tool set is the same app
    assert loaded.task_for_tools([{"type": "function", "function": {"name": "get_weather"}}]) is None
    right = render_answer("", [make_call("issue_refund", {"order_id": "B20417", "amount": 25.5, "reason": "damaged"})])
    assert verify(SUPPORT_TASK, [], right).passed
    bad = verify(SUPPORT_TASK, [], right.replace('"damaged"', '"broken"'))
    assert not bad.passed and "reason" in bad.reasons[0]
    assert not verify(SUPPORT_TASK, [], "Let me check that for you.").passed  # no call: the app requires one
    content, calls = parse_answer("ok\n" + right)
    assert content == "ok" and calls[0]["function"]["name"] == "issue_refund"
    assert render_answer(content, calls) == "ok\n" + right


def test_the_stand_in_model_makes_wrong_calls_the_truth_can_tell():
    rng = random.Random(4)
    kinds = Counter()
    for _ in range(200):
        req = generate_agent_request(rng)
        assert judge_call(req.call, req.answer) == (1.0, True)
        wrong = wrong_call(req.call, rng)
        score, correct = judge_call(req.call, wrong)
        assert not correct and score < 1.0
        _, calls = parse_answer(wrong)
        kinds["text" if not calls else "function" if calls[0]["function"]["name"] != req.intent
              else "invalid" if not verify_answer_calls(TOOLS, wrong).passed else "argument"] += 1
    assert set(kinds) == {"text", "function", "invalid", "argument"}, kinds


def test_agent_traffic_carries_tools_and_calls_and_users_correct_wrong_calls():
    interactions, feedback, truth = synthetic_events(80, seed=3, config=AGENT)
    agent = [i for i in interactions if i.tools]
    assert agent and len(agent) < len(interactions)
    for i in agent:
        assert i.app == AGENT_APP and i.tool_choice == "required" and i.params["parallel_tool_calls"] is False
        assert "call" not in json.dumps(i.model_dump(mode="json")["tags"])  # the truth stays out of the traffic
    by_id = {i.request_id: i for i in interactions}
    edits = [f for f in feedback if f.kind == "edit" and f.tool_calls]
    assert edits
    for f in edits:
        t = truth[f.request_id]
        assert t["call"] is not None and not t["drafts_correct"][f.draft]
        assert call_key(f.tool_calls[0]) == call_key(t["call"])  # the corrected call is the true one
        draft_calls = by_id[f.request_id].drafts[f.draft].get("tool_calls") or []
        if draft_calls:  # it corrects the draft's call, keeping its id
            assert f.tool_call_id == f.tool_calls[0]["id"] == draft_calls[0]["id"]
    correct = [c for t in truth.requests.values() if t["call"] for c in t["drafts_correct"]]
    assert 0.2 < sum(correct) / len(correct) < 0.8
    # a session that repeats an earlier request in other words is still the agent's: tools and true call kept
    reworded = [i for i in interactions if truth[i.request_id]["paraphrase_of"]
                and truth[i.request_id]["task_type"] == SUPPORT_TASK]
    assert reworded and all(i.tools and i.app == AGENT_APP and truth[i.request_id]["call"] for i in reworded)
    # the default population has no agent: the analytics assistant's traffic is unchanged
    default = synthetic_events(40, seed=3).interactions
    assert default == synthetic_events(40, seed=3, config=SimulationConfig(agent_share=0)).interactions
    assert not any(i.tools for i in default)


class _AgentStub:
    """A gateway stand-in that answers the agent's requests with a call (right or not) and
    records what the simulator sends."""

    def __init__(self):
        self.chats, self.feedback = [], []
        app = Flask("agent-stub")

        @app.post("/v1/chat/completions")
        def chat():
            body = request.get_json()
            self.chats.append(body)
            rid = f"chatcmpl-{len(self.chats):05d}"
            choices = []
            for i in range(body.get("n") or 1):
                if body.get("tools"):
                    order = body["messages"][-1]["content"].split()[-1].strip("?.!")
                    call = {"id": f"call_{rid}_{i}", "type": "function",
                            "function": {"name": "lookup_order", "arguments": json.dumps({"order_id": order[:6]})}}
                    message = {"role": "assistant", "content": None, "tool_calls": [call]}
                    choices.append({"index": i, "message": message, "finish_reason": "stop"})
                else:
                    choices.append({"index": i, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"})
            return jsonify({"id": rid, "object": "chat.completion", "created": 1, "model": body["model"],
                            "choices": choices, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        @app.post("/v1/feedback")
        def feedback():
            body = request.get_json()
            self.feedback.append(body)
            return jsonify({"id": "fb", "object": "feedback", "request_id": body["request_id"]})

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_run_simulation_sends_the_agents_tools_and_corrected_calls(tmp_path):
    from flywheel.simulate import run_simulation

    stub = _AgentStub()
    try:
        report = run_simulation(stub.url, "k", seed=2, duration_s=None, max_sessions=40, concurrency=2,
                                manifest_path=tmp_path / "m.jsonl", progress=False, config=AGENT)
    finally:
        stub.server.shutdown()
    agent = [c for c in stub.chats if c.get("tools")]
    assert agent and report.agent_drafts >= len(agent) and 0 < report.agent_correct < report.agent_drafts
    for body in agent:
        assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
        assert [t["function"]["name"] for t in body["tools"]] == [t["function"]["name"] for t in TOOLS]
        assert set(body) <= {"model", "messages", "n", "temperature", "max_tokens", "user", "tools", "tool_choice",
                             "parallel_tool_calls"}
    edits = [f for f in stub.feedback if f["kind"] == "edit" and f.get("tool_calls")]
    assert edits and all(f["tool_call_id"].startswith("call_chatcmpl-") and f["text"] is None for f in edits)
    assert all(f["tool_calls"][0]["id"] == f["tool_call_id"] for f in edits)


# ----------------------------------------------------------------------------- curation and datasets


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    from training.curation.pipeline import curate

    settings = Settings(data_dir=str(tmp_path_factory.mktemp("agent"))).replace(
        curation={"watermark_lag_s": 0, "select_total": 400}, review={"auto_approve": False},
        datasets={"include_pending": True, "eval_share": 0.25, "eval_min_per_type": 2, "replay_ratio": 0})
    interactions, feedback, truth = synthetic_events(160, seed=5, config=AGENT)
    conn = landed_warehouse(settings, interactions, feedback)
    result = curate(conn, settings)
    yield conn, result, truth, settings
    conn.close()


def test_curation_types_tool_calls_by_their_tools_and_keeps_the_corrections(curated):
    conn, result, truth, _ = curated
    agent = [c for c in result.candidates if c.tools]
    assert agent and {c.task_type for c in agent} == {SUPPORT_TASK}
    assert SUPPORT_TASK not in {c.task_type for c in result.candidates if not c.tools}  # never by the text
    edits = [c for c in agent if c.response_source == "edit"]
    assert edits
    for c in edits:
        assert c.label == "good"
        assert call_key(parse_answer(c.response)[1][0]) == call_key(truth[c.request_id]["call"])
        assert c.rejected_response is not None and c.rejected_response != c.response
    # a call the verifier refuses is provably bad: never a good label, whatever users said
    refused = [c for c in agent if c.response_source in ("draft", "choice") and c.response
               and not verify_answer_calls(c.tools, c.response, "required").passed]
    assert refused and all(c.label != "good" for c in refused)
    stored = conn.execute(f"SELECT tools, tool_choice FROM candidates WHERE task_type = '{SUPPORT_TASK}' LIMIT 1").fetchone()
    assert json.loads(stored[0]) == [dict(t) for t in TOOLS] and json.loads(stored[1]) == "required"


@pytest.fixture(scope="module")
def dataset(curated):
    from training.datasets.builder import build_dataset
    from training.datasets.snapshot import load_snapshot

    conn, _, _, settings = curated
    return load_snapshot(build_dataset(conn, settings).path)


def test_sft_records_keep_tools_in_trls_format_and_dpo_pairs_come_from_corrected_calls(dataset, curated):
    truth = curated[2]
    sft = [r for r in dataset.sft if r["task_type"] == SUPPORT_TASK]
    assert sft and all(r["tools"] == [dict(t) for t in TOOLS] for r in sft)
    for r in sft:
        answer = r["messages"][-1]
        assert answer["role"] == "assistant" and answer["content"] == ""
        (call,) = answer["tool_calls"]
        assert call["type"] == "function" and isinstance(call["function"]["arguments"], dict)  # TRL: an object
    pairs = [p for p in dataset.dpo if p["task_type"] == SUPPORT_TASK and p["target_source"] == "user-edit"]
    assert pairs
    for p in pairs:
        chosen, rejected = p["chosen"][0], p["rejected"][0]
        assert p["tools"] and chosen.get("tool_calls") and chosen != rejected
        request_id = next(i for i in p["source_ids"] if i.startswith("ev-")).replace("ev-", "chatcmpl-")
        assert call_key(chosen["tool_calls"][0]) == call_key(truth[request_id]["call"])
    evals = [r for r in dataset.eval if r["task_type"] == SUPPORT_TASK]
    assert evals and all(r["tool_choice"] == "required" for r in evals)


def test_training_renders_tool_records_as_the_server_renders_the_request(model_dir):
    """The bundled template has no tools: SFT rows are the Hermes rendering of the local
    backend, the same text vLLM's tool template writes."""
    from pathlib import Path

    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers import AutoTokenizer

    from training.trainers.dpo import dpo_rows
    from training.trainers.sft import sft_rows

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    call = {"type": "function", "function": {"name": "lookup_order", "arguments": {"order_id": "A10234"}}}
    messages = [{"role": "system", "content": "You are the desk."}, {"role": "user", "content": "Where is A10234?"},
                {"role": "assistant", "content": "", "tool_calls": [call]}]
    rec = {"messages": messages, "tools": [dict(t) for t in TOOLS], "task_type": SUPPORT_TASK}
    trained = tok.apply_chat_template(sft_rows([rec])[0]["messages"], tokenize=False)
    template = (Path(__file__).parent.parent / "serving/chat_templates/smollm2_tools.jinja").read_text()
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v, separators=None: json.dumps(v, ensure_ascii=False, separators=separators)
    served = env.from_string(template).render(messages=messages, tools=rec["tools"], add_generation_prompt=False)
    assert trained == served
    assert '<tool_call>\n{"name":"lookup_order","arguments":{"order_id":"A10234"}}\n</tool_call><|im_end|>' in trained
    pair = dpo_rows([{"prompt": messages[:2], "chosen": messages[2:], "tools": rec["tools"],
                      "rejected": [{"role": "assistant", "content": "Sorry."}]}])[0]
    assert "# Tools" in pair["prompt"][0]["content"] and pair["chosen"][0]["content"].startswith("<tool_call>")


# ----------------------------------------------------------------------------- evaluation


class _Scorer:
    def nll(self, version, items):
        import numpy as np

        return np.full(len(items), 1.0)


class _Generator:
    """Answers per version: the right call, or a call with a wrong order id."""

    def __init__(self, right: set[str]):
        self.right = right
        self.seen_tools = []

    def generate(self, version, prompts, *, n=1, temperature=0.0, max_tokens=256, seed=0, tools=None):
        self.seen_tools.append(tools)
        out = []
        for p, offered in zip(prompts, tools or [None] * len(prompts)):
            ref = p[-1]["content"].split()[-1].strip("?.")
            call = make_call("lookup_order", {"order_id": ref if version.name in self.right else "Z99999"})
            out.append([render_answer("", [call])] * n)
        return out


def _lookup_items(k: int) -> list[EvalItem]:
    items = []
    for i in range(k):
        order = f"A{10000 + i}"
        ref = render_answer("", [make_call("lookup_order", {"order_id": order})])
        items.append(EvalItem([{"role": "user", "content": f"Where is my order {order}"}], ref, SUPPORT_TASK,
                              [dict(t) for t in TOOLS], "required"))
    return items


def test_evaluation_reports_tool_call_metrics_with_intervals_and_the_gate_uses_them():
    items = _lookup_items(20)
    settings = Settings().replace(evaluate={"resample_k": 2})
    gen = _Generator(right={"cand"})
    better = evaluate(Version("cand", "/a"), Version("prod", None), items, scorer=_Scorer(), generator=gen,
                      settings=settings, general=[])
    (t,) = better.types
    tc = t.tool_calls
    assert tc["n"] == 20 and tc["name_accuracy"]["candidate"] == tc["name_accuracy"]["production"] == 1.0
    assert tc["arguments_exact"]["candidate"] == 1.0 and tc["arguments_exact"]["production"] == 0.0
    assert tc["arguments_exact"]["ci"][0] > 0 and tc["arguments_valid"]["delta"] == 0.0
    assert better.passed and t.verdict == "better"
    assert gen.seen_tools[0][0] == (items[0].tools, "required")  # answers decoded with the request's tools
    worse = evaluate(Version("cand", "/a"), Version("prod", None), items, scorer=_Scorer(),
                     generator=_Generator(right={"prod"}), settings=settings, general=[])
    assert not worse.passed and any("argument exact-match down" in r for r in worse.gate["reasons"])
    from training.evaluation.evaluate import render_html

    assert "Tool calls" in render_html(worse.to_dict())


def test_tool_call_scores_and_eval_items_from_records():
    rec = {"messages": [{"role": "user", "content": "Where is A10234?"},
                        {"role": "assistant", "content": "", "tool_calls": [
                            {"type": "function", "function": {"name": "lookup_order", "arguments": {"order_id": "A10234"}}}]}],
           "task_type": SUPPORT_TASK, "tools": [dict(t) for t in TOOLS], "tool_choice": "required"}
    (item,) = items_from_records([rec])
    assert parse_answer(item.reference)[1][0]["function"]["arguments"] == '{"order_id":"A10234"}'
    answers = [item.reference, render_answer("", [make_call("cancel_order", {"order_id": "A10234"})]),
               render_answer("", [make_call("lookup_order", {"order_id": "nope"})]), "I can't."]
    s = tool_call_scores([item] * 4, answers)
    assert s["name_accuracy"].tolist() == [1, 0, 1, 0]
    assert s["arguments_exact"].tolist() == [1, 0, 0, 0]
    assert s["arguments_valid"].tolist() == [1, 1, 0, 0]


# ----------------------------------------------------------------------------- teachers


def test_openai_teacher_passes_tools_to_the_endpoint_and_verifies_the_calls():
    from training.chat_client import ChatClient
    from training.labeling.teacher import OpenAITeacher

    def reply(messages, i):
        return [{"name": "lookup_order", "arguments": {"order_id": "A10234" if i else "bad"}}]

    stand = StandIn(reply, free_port()).start()
    try:
        teacher = OpenAITeacher(ChatClient(stand.url, "big"), samples=2)
        answer = teacher.label(SUPPORT_TASK, [{"role": "user", "content": "Where is A10234?"}],
                               tools=[dict(t) for t in TOOLS], tool_choice="required")
    finally:
        stand.stop()
    body = stand.requests[0]
    assert body["tools"] == [dict(t) for t in TOOLS] and body["tool_choice"] == "required"
    assert answer.passed and answer.chosen_index == 1
    assert answer.answer == '<tool_call>\n{"name":"lookup_order","arguments":{"order_id":"A10234"}}\n</tool_call>'
    assert not answer.verdicts[0].passed


def test_local_teacher_decodes_calls_under_the_functions_schemas(model_dir):
    from training.labeling.teacher import LocalTeacher

    teacher = LocalTeacher(model_dir, samples=1, temperature=0.0, max_tokens=40, few_shot=0)
    answer = teacher.label(SUPPORT_TASK, [{"role": "system", "content": "You are the desk."},
                                          {"role": "user", "content": "Please cancel order C30982"}],
                           tools=[dict(t) for t in TOOLS], tool_choice="required")
    assert len(answer.samples) == 1 and answer.passed
    for sample, verdict in zip(answer.samples, answer.verdicts):
        _, calls = parse_answer(sample)
        assert len(calls) == 1 and verdict.passed, (sample, verdict)  # the grammar makes every call valid
    teacher.close()
