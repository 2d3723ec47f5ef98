"""The evaluation gate: statistics and rules (no model), then the real thing: two LoRA
adapters trained here on simulated traffic, one on the answers raters judged good and
one on the answers they judged bad (reversed labels); the gate passes the first and
rejects the second, against the base model as production."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flywheel.settings import Settings
from training.evaluation.evaluate import (EvalItem, TypeResult, Version, _gate, evaluate, paired_ci, render_html,
                               resolve_versions, write_report)

SHORT_TYPES = ("qa/analytics-concepts", "chat/chitchat", "reasoning/math")


def test_paired_ci_brackets_the_mean_difference_and_tightens_with_data():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 400)
    delta, lo, hi = paired_ci(a, b)
    assert lo < delta < hi and lo > 0.5
    small = paired_ci(a[:20], b[:20])
    assert small[2] - small[1] > hi - lo
    assert paired_ci(np.ones(5), np.ones(5)) == (0.0, 0.0, 0.0)


def _type(name: str, verdict: str, reasons=()) -> TypeResult:
    fig = {"candidate": 0.5, "production": 0.5, "delta": 0.0, "ci": [-0.1, 0.1]}
    return TypeResult(name, 10, fig, fig, fig, verdict=verdict, reasons=list(reasons))


def test_gate_rules():
    cfg = Settings().evaluate
    flat = {"delta": 0.0, "ci": [-0.05, 0.05]}
    ok = _gate([_type("a", "better"), _type("b", "fluctuation")], {"pass_rate": flat}, {"relative": 0.01}, cfg)
    assert ok["passed"]
    worse = _gate([_type("a", "worse-loss", ["reference loss up"])], {"pass_rate": flat}, {"relative": 0.0}, cfg)
    assert not worse["passed"] and worse["reasons"] == ["a: reference loss up"]
    dropped = _gate([_type("a", "ok")], {"pass_rate": {"delta": -0.3, "ci": [-0.45, -0.1]}}, {}, cfg)
    assert not dropped["passed"] and "pass rate down" in dropped["reasons"][0]
    forgot = _gate([_type("a", "ok")], {"pass_rate": flat}, {"relative": 0.2}, cfg)
    assert not forgot["passed"] and "forgetting" in forgot["reasons"][0]


def test_resolve_versions_defaults_to_production():
    rows = [{"version": "base", "adapter_path": None, "status": "retired"},
            {"version": "v1", "adapter_path": "/a/v1", "status": "production", "updated_at": "2026-01-01"},
            {"version": "v2", "adapter_path": "/a/v2", "status": "candidate", "dataset": "ds-1"}]
    cand, prod, row = resolve_versions(rows, "v2", None)
    assert (cand, prod, row["dataset"]) == (Version("v2", "/a/v2"), Version("v1", "/a/v1"), "ds-1")
    from training.evaluation.evaluate import EvaluationError

    with pytest.raises(EvaluationError, match="no model version 'v9'"):
        resolve_versions(rows, "v9", None)
    with pytest.raises(EvaluationError, match="is the production version"):
        resolve_versions(rows, "v1", None)


# -- the real gate --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_dir):
    """Two SFT adapters from simulated traffic: one on the answers the simulator's checkers
    call good, one on those they call bad (labels reversed); held-out good answers to other
    prompts are the evaluation split."""
    from flywheel.simulate.synthetic import synthetic_events
    from training.trainers.config import load_stage_config
    from training.trainers.sft import train_sft
    from training.datasets.snapshot import load_snapshot, write_snapshot

    tmp = tmp_path_factory.mktemp("gate")
    interactions, _feedback, truth = synthetic_events(800, seed=11, p_correct=0.5)
    good, bad = [], []
    for ev in interactions:
        t = truth.requests.get(ev.request_id)
        if not t or t["task_type"] not in SHORT_TYPES or not ev.drafts or t.get("defect") or t.get("messy"):
            continue
        rec = {"messages": list(ev.messages) + [{"role": "assistant", "content": ev.drafts[0]["content"]}],
               "task_type": t["task_type"]}
        (good if t["drafts_correct"][0] else bad).append(rec)
    evals, good = good[:12], good[12:]
    assert len(good) >= 48 and len(bad) >= 48, (len(good), len(bad))
    cfg = load_stage_config("sft", overrides={"args": {
        "max_steps": 12, "per_device_train_batch_size": 4, "learning_rate": 5e-4, "max_length": 160,
        "logging_steps": 4, "save_steps": 1000, "eval_steps": 1000}})
    adapters = {}
    for name, sft in (("good", good[:48]), ("reversed", bad[:48])):
        snap = load_snapshot(write_snapshot(tmp / f"ds-{name}", version=f"ds-{name}", sft=sft, eval=evals))
        adapters[name] = train_sft(snap, tmp / f"run-{name}", model_dir=model_dir, cfg=cfg).adapter
    items = [EvalItem(r["messages"][:-1], r["messages"][-1]["content"], r["task_type"]) for r in evals]
    return adapters, items, tmp


@pytest.fixture(scope="module")
def gate_parts(model_dir):
    from serving.backends.local import LocalBackend
    from training.evaluation.evaluate import BackendGenerator, ReferenceScorer

    backend = LocalBackend(model_dir, max_batch=16)
    yield ReferenceScorer(model_dir), BackendGenerator(backend)
    backend.close()


@pytest.mark.slow
def test_gate_passes_good_training_and_rejects_reversed_labels(trained, gate_parts):
    adapters, items, tmp = trained
    scorer, generator = gate_parts
    settings = Settings().replace(evaluate={"max_tokens": 32, "resample_k": 2})
    base = Version("base", None)
    good = evaluate(Version("good", adapters["good"]), base, items, scorer=scorer, generator=generator,
                    settings=settings, dataset="ds-good")
    bad = evaluate(Version("reversed", adapters["reversed"]), base, items, scorer=scorer, generator=generator,
                   settings=settings, dataset="ds-good")
    print("good:", good.gate, good.overall["loss"], good.general)
    print("reversed:", bad.gate, bad.overall["loss"], bad.general)
    assert good.passed, good.gate["reasons"]
    assert good.overall["loss"]["delta"] < 0  # the held-out good answers became more likely
    # Bad answers still teach the format (its loss falls too, less), but the gate sees what
    # they cost: a confirmed regression (pass@k) or forgetting on the general set.
    assert good.overall["loss"]["delta"] < bad.overall["loss"]["delta"]
    assert not bad.passed
    assert any("pass@" in r or "forgetting" in r or "reference loss up" in r for r in bad.gate["reasons"])
    assert {t.task_type for t in good.types} == {it.task_type for it in items}
    json_path, html_path = write_report(bad, tmp / "report")
    assert json.loads(json_path.read_text())["gate"]["passed"] is False
    page = html_path.read_text()
    assert "FAIL" in page and "<svg" in page and "reference loss per task type" in page


def test_report_page_draws_training_channels():
    report = {"candidate": "c", "production": "p", "dataset": "d", "created_at": "now",
              "overall": {"n": 2}, "general": {}, "samples": [],
              "gate": {"passed": True, "reasons": ["fine"]},
              "types": [{"task_type": "chat/chitchat", "n": 2, "loss": {"delta": -0.2, "ci": [-0.3, -0.1]},
                         "pass_rate": {"candidate": 1.0, "production": 0.5, "delta": 0.5, "ci": [0, 1]},
                         "usability": {"delta": 0.1, "ci": [0, 0.2]}, "judge": None, "verdict": "better",
                         "reasons": []}]}
    run = {"stages": {"sft": {"eval_loss": {"chat/chitchat": [{"step": 0, "loss": 2.0}, {"step": 10, "loss": 1.5}]}}}}
    page = render_html(report, run)
    assert "PASS" in page and "Training: eval loss per task type" in page and "<polyline" in page
    assert "Judge vs people" not in page
    report["judge_agreement"] = {"n": 8, "agreement": 0.75, "decisive_agreement": 0.857, "tie_rate": 0.125,
                                 "kappa": 0.52, "pairs": 8, "available": 30}
    assert "Judge vs people: agrees on 75% of 8" in render_html(report, run)
