"""Rater cleaning: planted reverse and random raters in simulated traffic are found, and
cleaned labels beat the raw vote."""

from __future__ import annotations

import json

import pytest

from flywheel.simulate.charts import build_prompt, dump_config, get_schema
from flywheel.simulate.sessions import SimulationConfig
from flywheel.simulate.synthetic import synthetic_events
from training.curation.raters import (
    Judgement,
    answer_groups,
    chart_truth,
    checkable_truth,
    clean_labels,
    detection_scores,
    judgements_from_feedback,
    rater_reliability,
)


def _traffic(n_sessions: int, seed: int, users: int):
    """Judgements, checkable truth and groups from offline simulated traffic (default
    persona mix). Groups: the same task type and the same normalised answer, the exact
    form of the equivalence classes the curation's dedup gives (each answer is usually
    rated by one person only, the one who asked, so consensus needs groups)."""
    interactions, feedback, truth = synthetic_events(n_sessions, seed, config=SimulationConfig(users=users))
    drafts = {i.request_id: len(i.drafts) for i in interactions}
    judgements = judgements_from_feedback([f.model_dump() for f in feedback], drafts)
    items, types = {}, {}
    for i in interactions:
        for d in i.drafts:
            item = f"{i.request_id}:{d['index']}"
            items[item], types[item] = (i.messages, d["content"]), truth[i.request_id]["task_type"]
    chart = [i for i, t in types.items() if t == "data-viz/chart-config"]
    return judgements, checkable_truth(items, chart), answer_groups(items, types), truth


@pytest.fixture(scope="module")
def traffic():
    # 6,000 sessions over 100 users (~60 sessions each), the simulator's default persona mix.
    return _traffic(6000, seed=7, users=100)


def test_planted_reverse_and_random_raters_are_detected(traffic):
    judgements, truth_labels, groups, truth = traffic
    report = rater_reliability(judgements, truth_labels, min_items=5, groups=groups)
    scores = detection_scores(report, truth.users)
    print("\nrater detection (6000 sessions, 100 users, default persona mix):", json.dumps(scores))
    print("statuses:", report.counts, "rounds:", report.rounds, "truth items:", report.truth_items)
    for cls in ("reverse", "random"):
        assert scores[cls]["actual"] > 0, f"the simulation planted no {cls} raters"
        assert scores[cls]["precision"] >= 0.9, (cls, scores[cls])
        assert scores[cls]["recall"] >= 0.9, (cls, scores[cls])
    # Reliable raters carry positive weight, reverse negative (flipped), random none.
    for rater, stats in report.raters.items():
        assert {"reliable": stats.weight > 0, "reverse": stats.weight < 0, "random": stats.weight == 0,
                "unknown": True}[stats.status], (rater, stats)


def test_clean_labels_beat_the_raw_majority(traffic):
    judgements, truth_labels, groups, truth = traffic
    report = rater_reliability(judgements, truth_labels, groups=groups)
    # Judge the labels only where no verifier truth exists: that is where votes matter.
    cleaned = clean_labels(judgements, report, groups=groups)
    raw: dict[str, int] = {}
    for j in judgements:
        raw[j.item] = raw.get(j.item, 0) + j.label

    def correct(item: str) -> bool:
        request_id, draft = item.rsplit(":", 1)
        return truth.requests[request_id]["drafts_correct"][int(draft)]

    decided = [i for i, c in cleaned.items() if c.label != "unknown" and i not in truth_labels]
    clean_acc = sum((cleaned[i].label == "good") == correct(i) for i in decided) / len(decided)
    raw_items = [i for i, v in raw.items() if v != 0 and i not in truth_labels]
    raw_acc = sum((raw[i] > 0) == correct(i) for i in raw_items) / len(raw_items)
    print(f"\nlabel accuracy without verifier truth: cleaned {clean_acc:.3f} on {len(decided)} items, "
          f"raw majority {raw_acc:.3f} on {len(raw_items)} items")
    assert clean_acc > raw_acc
    assert clean_acc >= 0.9
    # Verifier truth wins when given.
    with_truth = clean_labels(judgements, report, truth=truth_labels, groups=groups)
    some = next(iter(truth_labels))
    assert with_truth[some].label == "bad" and with_truth[some].source == "truth"


def _votes(rater: str, labels: list[int], start: int = 0) -> list[Judgement]:
    return [Judgement(rater, f"item{start + k}", lab) for k, lab in enumerate(labels)]


def test_reverse_votes_are_flipped_and_chance_is_corrected():
    truth_pattern = [1, -1] * 20
    js = []
    for r in ("h1", "h2", "h3"):
        js += _votes(r, truth_pattern)
    js += _votes("rev", [-x for x in truth_pattern])
    js += _votes("always-up", [1] * len(truth_pattern))  # agrees half the time by construction
    js += _votes("newcomer", truth_pattern[:3])
    report = rater_reliability(js, min_items=5)
    assert report.status("h1") == "reliable"
    assert report.status("rev") == "reverse"
    assert report.status("always-up") == "random"
    assert report.status("newcomer") == "unknown"
    assert report.status("never-seen") == "unknown"
    # An item only the reverse rater judged: flipped by default, unknown when excluded.
    lone = js + [Judgement("rev", "lone", -1)]
    report = rater_reliability(lone, min_items=5)
    assert clean_labels(lone, report)["lone"].label == "good"
    assert clean_labels(lone, report, reverse="exclude")["lone"].label == "unknown"


def test_judgements_from_feedback_rules():
    rows = [
        {"request_id": "r1", "draft": 0, "kind": "thumb", "value": 1, "user_id": "u"},
        {"request_id": "r1", "draft": 0, "kind": "rating", "value": 3, "user_id": "v"},  # neutral: nothing
        {"request_id": "r1", "draft": 0, "kind": "rating", "value": 2, "user_id": "w"},
        {"request_id": "r2", "draft": 1, "kind": "choice", "value": None, "user_id": "u"},
        {"request_id": "r2", "draft": 1, "kind": "thumb", "value": -1, "user_id": "u"},  # absolute beats choice
        {"request_id": "r3", "draft": 0, "kind": "edit", "value": None, "user_id": "u", "text": "{}"},
        {"request_id": "r4", "draft": 0, "kind": "thumb", "value": 1, "user_id": None},  # unattributable
        {"request_id": "r2", "draft": 0, "kind": "copy", "value": None, "user_id": "u"},
    ]
    got = sorted((j.rater, j.item, j.label) for j in judgements_from_feedback(rows, {"r2": 2}))
    assert got == [("u", "r1:0", 1), ("u", "r2:0", -1), ("u", "r2:1", -1), ("u", "r3:0", -1), ("w", "r1:0", -1)]
    with pytest.raises(ValueError):
        Judgement("u", "i", 0)


def test_chart_truth_uses_only_the_prompt_lists():
    schema = get_schema("retail_sales")
    messages = [{"role": "user", "content": build_prompt(schema, "sales by region")}]
    valid = dump_config({"chartType": "CHART_COLUMN", "chartFields": {"dimensions": ["Region"], "metrics": ["Sales"]},
                         "mainAxis": "Region"})
    unknown_metric = valid.replace('"Sales"', '"Revenue"')
    items = {"ok": (messages, valid), "bad-name": (messages, unknown_metric), "prose": (messages, "a nice chart"),
             "no-lists": ([{"role": "user", "content": "hello"}], "prose")}
    assert chart_truth(items) == {"bad-name": -1, "prose": -1}
