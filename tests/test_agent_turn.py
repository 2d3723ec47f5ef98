"""Issue 12's end-to-end check: one flywheel turn on simulated support-desk agent traffic
(tools offered, wrong calls corrected by users) produces a candidate whose evaluation
reports the tool-calling metrics, candidate against production, per tool set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.simulate.sessions import SimulationConfig
from flywheel.simulate.synthetic import synthetic_events
from streams.landing import land_events
from tests.conftest import query, wait_for_turn


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a training job and an evaluation job on two cores
def test_a_turn_on_agent_traffic_evaluates_the_candidate_on_tool_calls(tmp_path, broker):
    from services.control.plane import ControlPlane
    from streams.topics import ensure_topics, topic_names
    from tests.conftest import make_settings

    s = make_settings(tmp_path, broker.bootstrap,
                      curation={"watermark_lag_s": 0}, datasets={"include_pending": True},
                      review={"auto_approve": False}, training={"dpo": False},
                      refresh={"min_sft_records": 5, "train_overrides": [
                          "sft.args.max_steps=1", "sft.args.eval_steps=1000"]},
                      # Enough tokens for one call; a gate that asks for nothing: this test is
                      # about what the report holds, not about the candidate passing.
                      evaluate={"max_tokens": 48, "resample_k": 1, "max_loss_increase": 1e9,
                                "max_pass_rate_drop": 1.0, "max_forgetting": 1e9})
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    interactions, feedback, _ = synthetic_events(90, seed=12, config=SimulationConfig(agent_share=0.6))
    assert any(i.tools for i in interactions) and any(f.kind == "edit" and f.tool_calls for f in feedback)
    plane = ControlPlane(s).start()
    try:
        with plane.reader() as cur:
            land_events(cur, interactions, feedback)
        run_id = plane.refresh.start()["run_id"]
        wait_for_turn(plane, run_id, timeout=1200)
        candidate, steps = query(plane, "SELECT candidate, steps FROM refresh_runs WHERE run_id = ?", [run_id])[0]
        names = [st["name"] for st in json.loads(steps)]
        assert names[:4] == ["mine", "dataset", "train", "evaluate"], steps
        (report_path,) = query(plane, "SELECT report_path FROM evaluations WHERE candidate = ?", [candidate])[0]
        report = json.loads((Path(report_path) / "report.json").read_text())
        tool_types = [t for t in report["types"] if t.get("tool_calls")]
        assert [t["task_type"] for t in tool_types] == ["tool-calling/support-desk"], report["types"]
        tc = tool_types[0]["tool_calls"]
        assert tc["n"] > 0
        for metric in ("name_accuracy", "arguments_exact", "arguments_valid"):
            fig = tc[metric]
            assert 0.0 <= fig["production"] <= 1.0 and 0.0 <= fig["candidate"] <= 1.0, (metric, fig)
            assert fig["ci"][0] <= fig["ci"][1] and -1.0 <= fig["delta"] <= 1.0, (metric, fig)
        # Both answer under the tools grammar (tool_choice "required"): their calls' arguments
        # validate unless max_tokens cut them; whether the function is the right one is the metric.
        assert max(tc["arguments_valid"]["production"], tc["arguments_valid"]["candidate"]) > 0, tc
    finally:
        plane.stop(drain=False)
