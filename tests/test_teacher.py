"""The teacher: OpenAI-compatible kind against the real gateway, local kind on the real
small model with constrained decoding, best-of-N, final answers, corrections first, audit."""

from __future__ import annotations

import json
import random

import pytest

from flywheel.simulate import charts
from flywheel.simulate.tasks import make_task
from services.control.migrations import ALL
from streams.warehouse import apply_migrations, connect
from tests.conftest import free_port
from tests.openai_standin import StandIn
from training.chat_client import ChatClient
from training.errors import TeacherError
from training.labeling.teacher import (
    LocalTeacher,
    OpenAITeacher,
    Target,
    TeacherAudit,
    best_target,
    choose_best,
    final_answer,
    make_teacher,
)
from training.labeling.verify import CHART_TASK, Verdict, verify


def _chart_task(seed: int = 1):
    return make_task(random.Random(seed), CHART_TASK, messy_rate=0)


def test_final_answer_strips_reasoning():
    assert final_answer("<think>2+2 is 4</think>The answer: 4") == "The answer: 4"
    assert final_answer("First 3 x 4 = 12, then add 3.\nFinal answer: 15") == "15"
    assert final_answer("We compute... the answer is 42") == "42"
    assert final_answer("Just a plain reply.") == "Just a plain reply."
    config = {"chartType": "CHART_COLUMN", "chartFields": {"dimensions": ["Region"], "metrics": ["Sales"]}, "mainAxis": "Region"}
    reasoning = f"The user wants sales per region, so a column chart.\nFinal answer:\n```json\n{json.dumps(config, indent=2)}\n```"
    assert final_answer(reasoning, CHART_TASK) == charts.dump_config(config)
    assert final_answer(f"Sure! {json.dumps(config)} Enjoy.", CHART_TASK) == charts.dump_config(config)


def test_choose_best_prefers_passing_then_score_then_first():
    v = [Verdict(False, 0.9, ["x"]), Verdict(True, 1.0), Verdict(True, 1.0), Verdict(False, 0.2, ["y"])]
    assert choose_best(v) == 1
    assert choose_best([Verdict(False, 0.3, ["a"]), Verdict(False, 0.6, ["b"]), Verdict(False, 0.6, ["c"])]) == 1
    assert choose_best([]) is None


def test_corrections_outrank_the_teacher():
    assert best_target({"review_action": "edit", "edited_response": "fixed by an operator", "response_source": "edit",
                        "response": "fixed by the user"}) == Target("fixed by an operator", "operator-edit")
    assert best_target({"state": "edited", "edited_response": "op", "response": "x"}) == Target("op", "operator-edit")
    assert best_target({"response_source": "edit", "response": "fixed by the user"}) == Target("fixed by the user", "user-edit")
    assert best_target({"response_source": "choice", "response": "a draft"}) is None
    assert best_target({"review_action": "approve", "edited_response": None, "response_source": "draft", "response": "d"}) is None


def _gateway_teacher(gw, db=None, **kw) -> OpenAITeacher:
    client = ChatClient(f"{gw.url}/v1", gw.settings.model.alias, api_key=gw.tokens["chat"], retries=2,
                        timeout_s=30, price_prompt_per_1k=1.0, price_completion_per_1k=2.0)
    return OpenAITeacher(client, audit=TeacherAudit(conn=db) if db is not None else None, **kw)


def test_openai_teacher_through_the_gateway_retries_and_picks_a_passing_sample(scripted_gateway, tmp_path):
    task = _chart_task()
    good = charts.dump_config(task.truth)
    wrong = dict(task.truth, chartFields={"dimensions": ["Planet"], "metrics": task.truth["chartFields"]["metrics"]})
    backend = scripted_gateway.app.extensions["flywheel"].backend
    backend.fail_next(503)  # the first request (n=3) fails: the teacher retries
    backend.enqueue("lost with the failed request", "lost with the failed request")
    backend.enqueue("I think this is it: " + json.dumps(wrong), f"Step by step: a chart. Final answer: {good}", "no idea")

    db = connect(tmp_path / "t.duckdb")
    apply_migrations(db, ALL)
    teacher = _gateway_teacher(scripted_gateway, db, samples=3, temperature=0.8)
    answer = teacher.label(CHART_TASK, task.messages)
    assert answer.chosen_index == 1 and answer.passed
    assert answer.answer == good  # the reasoning is gone
    assert [v.passed for v in answer.verdicts] == [False, True, False]
    assert teacher.tally["retries"] == 1 and teacher.tally["requests"] == 1
    assert teacher.tally["prompt_tokens"] > 0 and teacher.tally["cost"] > 0
    assert answer.source == f"teacher:openai:{scripted_gateway.settings.model.alias}"
    row = db.execute("SELECT kind, task_type, chosen, answer, passed, samples, verdicts, prompt FROM teacher_calls").fetchall()
    assert len(row) == 1
    kind, task_type, chosen, stored, passed, samples, verdicts, prompt = row[0]
    assert (kind, task_type, chosen, stored, passed) == ("openai", CHART_TASK, 1, good, True)
    assert len(json.loads(samples)) == 3 and json.loads(verdicts)[0]["passed"] is False
    assert json.loads(prompt) == task.messages
    db.close()


def test_openai_teacher_many_in_parallel_keeps_order(scripted_gateway):
    rng = random.Random(4)
    tasks = [make_task(rng, "reasoning/math", messy_rate=0) for _ in range(6)]
    scripted_gateway.app.extensions["flywheel"].backend.enqueue(*["Add them up.\nFinal answer: 42"] * 12)
    teacher = _gateway_teacher(scripted_gateway, samples=2, concurrency=3)
    done = []
    answers = teacher.label_many([(t.task_type, t.messages) for t in tasks], progress=done.append)
    assert [a.answer for a in answers] == ["42"] * 6
    assert sorted(done) == list(range(1, 7))
    assert teacher.tally["requests"] == 6
    # In order, whatever finishes first: a stand-in that answers with the prompt's length.
    server = StandIn(lambda messages, i: f"Final answer: {len(messages[-1]['content'])}", free_port()).start()
    try:
        echo = OpenAITeacher(ChatClient(server.url, "m", concurrency=3), concurrency=3, samples=1)
        got = echo.label_many([(t.task_type, t.messages) for t in tasks])
        assert [a.answer for a in got] == [str(len(t.messages[-1]["content"])) for t in tasks]
    finally:
        server.stop()


def test_a_teacher_that_keeps_failing_is_an_error_and_is_audited(tmp_path):
    server = StandIn(lambda messages, i: "ok", free_port()).start()
    try:
        server.fail_next(503, times=6)
        audit = tmp_path / "audit.jsonl"
        client = ChatClient(server.url, "big-model", retries=2)
        teacher = OpenAITeacher(client, audit=TeacherAudit(path=audit), samples=2)
        with pytest.raises(TeacherError, match="failed after 3 attempt"):
            teacher.label("chat/chitchat", [{"role": "user", "content": "hi"}])
        assert len(server.requests) == 3
        assert teacher.label_many([("chat/chitchat", [{"role": "user", "content": "hello"}])]) == [None]
        lines = [json.loads(x) for x in audit.read_text().splitlines()]
        assert len(lines) == 2 and all("503" in x["error"] or "stand-in" in x["error"] for x in lines)
        # A 400 is not retried.
        server.fail_next(400)
        with pytest.raises(TeacherError, match="after 1 attempt.*BadRequest"):
            teacher.label("chat/chitchat", [{"role": "user", "content": "hi"}])
        assert len(server.requests) == 7
        assert client.tally.to_dict()["failures"] == 3
    finally:
        server.stop()


def test_make_teacher_from_settings(settings, tmp_path):
    with pytest.raises(TeacherError, match="teacher.base_url"):
        make_teacher(settings.replace(teacher={"kind": "openai", "model": "m"}))
    server = StandIn(lambda messages, i: f"sample {i}. Final answer: 7", free_port()).start()
    try:
        s = settings.replace(teacher={"kind": "openai", "base_url": server.url, "model": "m", "samples": 3})
        teacher = make_teacher(s)
        answer = teacher.label("reasoning/math", [{"role": "user", "content": "What is 3 + 4?"}])
        assert answer.answer == "7" and answer.passed and len(answer.samples) == 3
        assert server.requests[0]["n"] == 3
        audit = settings.data_path / "teacher_calls.jsonl"
        assert json.loads(audit.read_text().splitlines()[0])["answer"] == "7"
    finally:
        server.stop()


# ----------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def local_teacher(model_dir):
    teacher = LocalTeacher(model_dir, few_shot=1, constrained=True, samples=2, temperature=0.8, max_tokens=110, seed=3)
    yield teacher
    teacher.close()


@pytest.mark.slow
def test_local_teacher_constrained_output_is_schema_json_with_the_prompts_names(local_teacher):
    rng = random.Random(21)
    for _ in range(2):  # two prompts, two samples each
        task = make_task(rng, CHART_TASK, messy_rate=0)
        schema = charts.get_schema(task.schema)
        answer = local_teacher.label(CHART_TASK, task.messages)
        assert len(answer.samples) == 2
        for sample in answer.samples:
            config = json.loads(sample)  # every constrained sample is bare JSON
            assert charts.validate_config(config, schema) == [], sample
            names = set(config["chartFields"]["dimensions"]) | {config["mainAxis"]}
            assert names <= set(schema.all_dimensions)
            assert set(config["chartFields"]["metrics"]) <= set(schema.metrics)
            assert config["mainAxis"] in config["chartFields"]["dimensions"]
        # best-of-N: when some sample passes the verifier, the chosen one does.
        passing = [verify(CHART_TASK, task.messages, s).passed for s in answer.samples]
        assert answer.verdicts[answer.chosen_index].passed == any(passing)
        assert answer.tokens["prompt"] > 0 and answer.tokens["completion"] > 0
    assert local_teacher.stats["dead_ends"] == 0


@pytest.mark.slow
def test_local_teacher_few_shot_draws_at_random_from_the_pool(model_dir):
    teacher = LocalTeacher(model_dir, few_shot=3, seed=1)
    task = _chart_task(2)
    drawn = {json.dumps(teacher.prompt_messages(CHART_TASK, task.messages)[:6]) for _ in range(5)}
    assert len(drawn) > 1  # different examples on different calls
    msgs = teacher.prompt_messages(CHART_TASK, task.messages)
    assert len(msgs) == 7 and msgs[-1] == task.messages[-1]
    for shot in msgs[1:6:2]:
        config = json.loads(shot["content"])
        assert charts.validate_config(config) == []
