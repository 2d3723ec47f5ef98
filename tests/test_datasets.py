"""Dataset versions from curated candidates: stable for the same input, new for a changed
one, every record traced to its events, review decisions obeyed, exports that load with
`datasets` and TRL. Real DuckDB, real MiniLM (through the curation run), real tokenizer."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pytest
from datasets import load_dataset

from flywheel.simulate.synthetic import synthetic_events
from services.control.migrations import ALL
from streams.landing import land_events
from streams.schemas import Review, new_id
from streams.warehouse import apply_migrations, connect
from training.curation.pipeline import curate
from training.datasets.builder import EXPORT_FORMATS, build_dataset, export_dataset, get_dataset, list_datasets, to_format
from training.errors import DatasetError
from training.datasets.snapshot import load_snapshot


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    from flywheel.settings import Settings

    settings = Settings(data_dir=str(tmp_path_factory.mktemp("datasets"))).replace(
        curation={"watermark_lag_s": 0, "select_total": 400, "drop_bad_labels": False},  # bad answers stay for the teacher
        datasets={"include_pending": True})
    interactions, feedback, _truth = synthetic_events(500, seed=3, paraphrase_rate=0.15)
    conn = connect(settings.db_path)
    apply_migrations(conn, ALL)
    land_events(conn, interactions, feedback)
    curate(conn, settings)
    yield conn, settings
    conn.close()


def review(conn, candidate_id: str, action: str, edited: str | None = None) -> None:
    """Land a review decision as the control plane does (the Review event, validated and inserted)."""
    ev = Review(event_id=new_id(), candidate_id=candidate_id, action=action, edited_response=edited, reviewer="test",
                created_at=datetime.now(timezone.utc))
    land_events(conn, reviews=[ev])


def test_same_input_same_version_and_every_record_traces_back_to_events(curated):
    conn, settings = curated
    first = build_dataset(conn, settings)
    again = build_dataset(conn, settings)
    assert first.created and not again.created and again.version == first.version
    assert first.version.startswith("ds-") and first.counts["sft"] > 50 and first.counts["eval"] > 0
    snap = load_snapshot(first.path)
    # Lineage: every training/eval record names a candidate whose source events landed.
    landed = {r[0] for r in conn.execute("SELECT event_id FROM interactions UNION ALL SELECT event_id FROM feedback").fetchall()}
    for rec in snap.sft + snap.dpo + snap.eval:
        if rec.get("target_source") == "replay":
            continue
        assert rec["source_ids"] and set(rec["source_ids"]) <= landed
        assert conn.execute("SELECT count(*) FROM candidates WHERE candidate_id = ? AND status = 'kept'",
                            [rec["candidate_id"]]).fetchone()[0] == 1
    items = conn.execute("SELECT split, count(*) FROM dataset_items WHERE version = ? GROUP BY 1",
                         [first.version]).fetchall()
    assert dict(items) == {k: v for k, v in first.counts.items() if v}
    assert get_dataset(conn, first.version)["counts"] == first.counts
    assert [d["version"] for d in list_datasets(conn)] == [first.version]


def test_splits_targets_and_pairs(curated):
    conn, settings = curated
    snap = load_snapshot(build_dataset(conn, settings).path)
    train_ids = {r["candidate_id"] for r in snap.sft if r.get("candidate_id")}
    eval_ids = {r["candidate_id"] for r in snap.eval}
    assert not train_ids & eval_ids
    group = lambda cid: conn.execute("SELECT dedup_group FROM candidates WHERE candidate_id = ?", [cid]).fetchone()[0]  # noqa: E731
    assert not {group(c) for c in train_ids} & {group(c) for c in eval_ids}  # near-duplicates stay on one side
    # Every task type with enough items is evaluated; replay is mixed in at the ratio.
    from collections import Counter

    sizes = Counter(r["task_type"] for r in snap.sft + snap.eval if r["task_type"] != "general/replay")
    enough = {t for t, n in sizes.items() if n >= 3 * settings.datasets.eval_min_per_type}
    assert enough and enough <= set(snap.task_types("eval"))
    replay = [r for r in snap.sft if r["task_type"] == "general/replay"]
    from training.datasets.builder import read_general

    wanted = math.ceil(settings.datasets.replay_ratio * (len(snap.sft) - len(replay)))
    assert 0 < len(replay) == min(len(read_general()), wanted)
    # Targets: bad answers never are; user corrections are; chart targets pass the verifier.
    from training.labeling.verify import verify

    sources = {r["target_source"] for r in snap.sft}
    assert "user-edit" in sources
    for rec in snap.sft:
        if rec["task_type"] == "data-viz/chart-config":
            assert verify(rec["task_type"], rec["messages"][:-1], rec["messages"][-1]["content"]).passed
        if rec.get("candidate_id"):
            label = conn.execute("SELECT label FROM candidates WHERE candidate_id = ?", [rec["candidate_id"]]).fetchone()[0]
            assert label != "bad" or rec["target_source"] in ("user-edit", "operator-edit", "teacher")
    assert snap.dpo and all(p["chosen"] != p["rejected"] for p in snap.dpo)
    assert {"moved-away"} <= {p["pair_source"] for p in snap.dpo}


def test_review_decisions_change_the_version_and_its_content(curated, tmp_path):
    conn, settings = curated
    before = load_snapshot(build_dataset(conn, settings).path)
    rec = next(r for r in before.sft if r.get("candidate_id"))
    # An operator's edit makes a target even of a candidate nobody rated (unrated answers are not targets).
    in_before = {r.get("candidate_id") for r in before.sft + before.eval}
    other = {"candidate_id": next(cid for (cid,) in conn.execute(
        "SELECT candidate_id FROM candidates WHERE status = 'kept' AND task_type = 'qa/analytics-concepts' "
        "ORDER BY candidate_id").fetchall() if cid not in in_before)}
    review(conn, rec["candidate_id"], "reject")
    review(conn, other["candidate_id"], "edit", "An operator's better answer, in plain English.")
    after_build = build_dataset(conn, settings)
    after = load_snapshot(after_build.path)
    assert after.version != before.version and after_build.created
    ids = {r.get("candidate_id") for r in after.sft + after.eval}
    assert rec["candidate_id"] not in ids
    edited = next(r for r in after.sft if r.get("candidate_id") == other["candidate_id"])
    assert edited["messages"][-1]["content"] == "An operator's better answer, in plain English."
    assert edited["target_source"] == "operator-edit"
    # Only reviewed items without include_pending: the approved and edited ones.
    strict = settings.replace(datasets={"include_pending": False})
    review(conn, rec["candidate_id"], "approve")
    only = load_snapshot(build_dataset(conn, strict).path)
    assert {r.get("candidate_id") for r in only.sft + only.eval if r.get("candidate_id")} <= {
        rec["candidate_id"], other["candidate_id"]}
    # Nothing reviewed and nothing pending allowed: a clear error, not an empty dataset.
    review(conn, rec["candidate_id"], "reset")
    review(conn, other["candidate_id"], "reset")
    with pytest.raises(DatasetError, match="nothing to train on"):
        build_dataset(conn, strict)


def test_exports_load_with_datasets_and_trl(curated, tmp_path, model_dir):
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    conn, settings = curated
    built = build_dataset(conn, settings)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for fmt in EXPORT_FORMATS:
        result = export_dataset(built.path, fmt, tmp_path / fmt)
        written = result.files
        assert set(written) >= {"sft", "eval"} and ("dpo" in written) == (fmt == "trl") and not result.skipped
        for split, path in written.items():
            ds = load_dataset("json", data_files=str(path), split="train")
            assert len(ds) == built.counts[split]
            if fmt == "trl":
                example = ds[0]
                assert is_conversational(example)
                text = maybe_apply_chat_template(example, tokenizer)
                assert ("text" in text) if split != "dpo" else {"prompt", "chosen", "rejected"} <= set(text)
    first = json.loads((tmp_path / "ms-swift" / f"{built.version}-sft.ms-swift.jsonl").read_text().splitlines()[0])
    assert first["messages"][-1]["role"] == "assistant"  # ms-swift's standard format
    with pytest.raises(DatasetError, match="unknown export format"):
        export_dataset(built.path, "csv", tmp_path)


def test_multi_turn_formats_keep_the_history():
    rec = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                        {"role": "assistant", "content": "a2"}], "task_type": "chat/chitchat"}
    assert to_format(rec, "alpaca") == {"instruction": "q2", "input": "", "output": "a2", "history": [["q1", "a1"]],
                                        "system": "S"}
    assert to_format(rec, "ms-swift") == {"messages": rec["messages"]}
    assert [t["from"] for t in to_format(rec, "sharegpt")["conversations"]] == ["system", "human", "gpt", "human", "gpt"]


def _call(name: str, arguments, call_id: str | None = None) -> dict:
    return {**({"id": call_id} if call_id else {}), "type": "function", "function": {"name": name, "arguments": arguments}}


def test_exports_keep_tools_in_each_formats_own_form_and_alpaca_counts_what_it_cannot_hold(tmp_path):
    """Issue 12: LLaMA-Factory's sharegpt (tools as a JSON string, function_call/observation
    turns alternating as its converter demands), ms-swift's agent format (tools, tool_call/
    tool_response messages), and alpaca, which has no form for calls, leaving them out counted."""
    from flywheel.domains.support import TOOLS
    from training.datasets.builder import NoExportForm
    from training.datasets.snapshot import write_snapshot

    tools = [dict(t) for t in TOOLS]
    agent = {"task_type": "tool-calling/support-desk", "tools": tools, "messages": [
        {"role": "system", "content": "You are the support desk."},
        {"role": "user", "content": "Where is A12345? And cancel B54321."},
        # history as the gateway records it: OpenAI's shape, arguments as JSON text, parallel calls
        {"role": "assistant", "content": "", "tool_calls": [
            _call("lookup_order", '{"order_id": "A12345"}', "call_1"), _call("cancel_order", '{"order_id":"B54321"}', "call_2")]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"cancelled": true}'},
        {"role": "assistant", "content": "A12345 has shipped; B54321 is cancelled."},
        {"role": "user", "content": "Refund the $12 for A12345 then, it came broken."},
        # the target as the builder writes it: TRL's shape, arguments an object
        {"role": "assistant", "content": "", "tool_calls": [
            _call("issue_refund", {"order_id": "A12345", "amount": 12, "reason": "damaged"})]}]}
    plain = {"task_type": "chat/chitchat", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

    share = to_format(agent, "sharegpt")
    assert json.loads(share["tools"]) == [t["function"] for t in tools]  # a JSON string, as LLaMA-Factory reads it
    turns = share["conversations"]
    assert [t["from"] for t in turns] == ["system", "human", "function_call", "observation", "gpt", "human", "function_call"]
    after_system = turns[1:]  # LLaMA-Factory: human/observation at odd positions, gpt/function_call at even ones
    assert len(after_system) % 2 == 0 and all(
        t["from"] in (("human", "observation"), ("gpt", "function_call"))[k % 2] for k, t in enumerate(after_system))
    assert json.loads(turns[2]["value"]) == [{"name": "lookup_order", "arguments": {"order_id": "A12345"}},
                                             {"name": "cancel_order", "arguments": {"order_id": "B54321"}}]
    assert json.loads(turns[3]["value"]) == ['{"status": "shipped"}', '{"cancelled": true}']  # both results, one turn
    assert json.loads(turns[6]["value"]) == {"name": "issue_refund", "arguments": {"order_id": "A12345", "amount": 12,
                                                                                    "reason": "damaged"}}

    swift = to_format(agent, "ms-swift")
    assert json.loads(swift["tools"]) == tools
    assert [m["role"] for m in swift["messages"]] == ["system", "user", "tool_call", "tool_call", "tool_response",
                                                      "tool_response", "assistant", "user", "tool_call"]
    assert json.loads(swift["messages"][2]["content"]) == {"name": "lookup_order", "arguments": {"order_id": "A12345"}}
    assert swift["messages"][4]["content"] == '{"status": "shipped"}'

    # text beside calls: ms-swift keeps both; LLaMA-Factory's function_call turn cannot
    chatty = {**agent, "messages": agent["messages"][:-1] + [{**agent["messages"][-1], "content": "Refunding now."}]}
    assert [m["role"] for m in to_format(chatty, "ms-swift")["messages"][-2:]] == ["assistant", "tool_call"]
    with pytest.raises(NoExportForm, match="sharegpt"):
        to_format(chatty, "sharegpt")
    with pytest.raises(NoExportForm, match="alpaca"):
        to_format(agent, "alpaca")

    folder = write_snapshot(tmp_path / "ds-tools", version="ds-tools", sft=[agent, plain, chatty], eval=[agent])
    result = export_dataset(folder, "alpaca", tmp_path / "alpaca")
    assert set(result.files) == {"sft"}  # eval held tool records only: no file
    assert [json.loads(x)["output"] for x in result.files["sft"].read_text().splitlines()] == ["hello"]
    assert sum(result.skipped["sft"].values()) == 2 and sum(result.skipped["eval"].values()) == 1
    result = export_dataset(folder, "sharegpt", tmp_path / "sharegpt")
    assert sum(result.skipped["sft"].values()) == 1 and "eval" not in result.skipped
    loaded = load_dataset("json", data_files=str(result.files["sft"]), split="train")
    assert len(loaded) == 2 and loaded[0]["tools"] == share["tools"]
    assert not export_dataset(folder, "ms-swift", tmp_path / "swift").skipped
    only_tools = write_snapshot(tmp_path / "ds-only", version="ds-only", sft=[agent])
    with pytest.raises(DatasetError, match="no record has a alpaca form"):
        export_dataset(only_tools, "alpaca", tmp_path / "none")


def test_the_teacher_fills_in_bad_answers_only_with_answers_that_pass_the_verifiers(curated):
    from training.labeling.teacher import TeacherAnswer
    from training.labeling.verify import prompt_schema, verify

    class ScriptedTeacher:
        """The model edge: a table of the prompt's first dimension and metric for charts
        (passes the verifier), prose for everything else (fails the math verifier)."""

        def __init__(self):
            self.asked: list[str] = []

        def label(self, task_type, messages):
            self.asked.append(task_type)
            schema = prompt_schema(messages)
            if schema is not None:
                dim, metric = schema.dimensions[0], schema.metrics[0]
                answer = json.dumps({"chartType": "TABLE_DETAIL", "chartFields": {"dimensions": [dim], "metrics": [metric]},
                                     "mainAxis": dim})
            else:
                answer = "Here is a clear answer in plain English, covering the main points briefly."
            return TeacherAnswer(answer, [answer], [verify(task_type, messages, answer)], 0, "teacher:scripted")

    conn, settings = curated
    teacher = ScriptedTeacher()
    built = build_dataset(conn, settings, teacher=teacher)
    snap = load_snapshot(built.path)
    assert "data-viz/chart-config" in teacher.asked  # bad chart answers nobody corrected
    taught = [r for r in snap.sft + snap.eval if r.get("target_source") == "teacher"]
    assert taught
    for r in taught:
        assert verify(r["task_type"], r["messages"][:-1], r["messages"][-1]["content"]).passed
    if "reasoning/math" in teacher.asked:  # prose without a number fails the math verifier
        assert built.excluded.get("teacher answer failed the verifiers", 0) > 0
    pairs = [p for p in snap.dpo if p["target_source"] == "teacher"]
    assert any(p["pair_source"] == "replaced" for p in pairs)  # the teacher's answer vs the failing one
