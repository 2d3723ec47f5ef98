"""Curation semantics (#4): embeddings, task types, dedup, selection, model scores.

Real parts: the MiniLM embedding model, the simulator's labelled prompts and the bundled
SmolLM2 model for the golden score and hardness.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from flywheel.simulate import charts, tasks
from flywheel.simulate.synthetic import paraphrase, synthetic_events
from training.curation.dedup import dedup, normalise, otsu_threshold, slot_guard
from training.curation.embed import Embedder, focus_texts
from training.curation.select import (
    ModelScorer,
    golden_scores,
    hardness,
    k_center_greedy,
    select_by_budget,
    split_budget,
)
from training.curation.task_types import UNKNOWN, TaskClassifier, Taxonomy, TaxonomyError


@pytest.fixture(scope="module")
def embedder():
    return Embedder.shared()


@pytest.fixture(scope="module")
def classifier(embedder):
    return TaskClassifier(Taxonomy.load(), embedder, threshold=0.35)


# ----------------------------------------------------------------------------- embed


def test_embeddings_are_normalised_and_meaningful(embedder):
    texts = ["monthly sales by region", "Show me the monthly sales for each region", "Tell me a joke about cats"]
    v = embedder.encode(texts)
    assert embedder.dim == 384  # MiniLM's width, as the model declares it
    assert v.shape == (3, embedder.dim) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert embedder.encode([]).shape == (0, embedder.dim)
    assert Embedder.shared() is embedder


def test_focus_texts_drop_the_long_template_but_keep_short_prompts():
    rng = random.Random(5)
    schema = charts.SCHEMAS[0]
    requests = [charts.generate_request(rng, schema).text for _ in range(6)]
    prompts = [charts.build_prompt(schema, r) for r in requests]
    short = "Summarize this:\n\nRevenue grew 12 percent."
    out = focus_texts(prompts + [short] * 4)
    assert out[:6] == requests  # the user's words, without "Request:" and the template
    assert out[6] == short  # short texts are content, kept whole


# ----------------------------------------------------------------------------- task types


def test_taxonomy_covers_the_simulator_types():
    taxonomy = Taxonomy.load()
    for name in tasks.TASK_TYPES:
        assert name in taxonomy
    for t in taxonomy.types:
        assert t.description and 5 <= len(t.seeds) <= 16, t.name
        assert t.name.count("/") == 1
    weights = taxonomy.weights()
    assert weights[tasks.CHART_TASK] > weights["chat/chitchat"]  # hard types get more budget


def test_bad_taxonomy_is_a_clear_error(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("groups:\n  writing:\n    types:\n      summarize:\n        seeds: [a, b]\n")
    with pytest.raises(TaxonomyError, match="writing/summarize has no description"):
        Taxonomy.load(path)
    with pytest.raises(TaxonomyError, match="cannot read"):
        Taxonomy.load(tmp_path / "missing.yaml")


def _labelled_prompts(n_tasks: int = 360, n_sessions: int = 160, seed: int = 101):
    rng = random.Random(seed)
    items = [(t.messages[-1]["content"], t.task_type) for t in (tasks.make_task(rng, messy_rate=0.3) for _ in range(n_tasks))]
    traffic = synthetic_events(n_sessions, seed=seed)
    for event in traffic.interactions:
        truth = traffic.truth[event.request_id]
        if event.turn == 1 and truth["attempt"] == 0:
            items.append((event.messages[-1]["content"], truth["task_type"]))
    return items


def test_classification_accuracy_on_simulated_traffic(classifier, embedder):
    # seeds other than those the taxonomy was tuned on; the texts curation classifies:
    # the user's words without the chart template (focus_texts)
    items = _labelled_prompts()
    texts = focus_texts([t for t, _ in items])
    results = classifier.classify(texts, embedder.encode(texts))
    correct = sum(r.task_type == label for r, (_, label) in zip(results, items))
    accuracy = correct / len(items)
    per_type = Counter(label for _, label in items)
    print(f"\ntask-type accuracy {accuracy:.3f} on {len(items)} prompts ({dict(per_type)}); "
          f"unknown {sum(r.task_type == UNKNOWN for r in results)}")
    assert accuracy >= 0.85
    assert all(0.0 <= r.confidence <= 1.0 for r in results)
    # the classifier embeds on its own when no vectors are given, with the same answer
    again = classifier.classify(texts[:5])
    assert [r.task_type for r in again] == [r.task_type for r in results[:5]]


def test_low_confidence_becomes_unknown(embedder):
    clear = "Can you summarize this for my manager?\n\nRevenue grew 12 percent in the third quarter."
    vague = "zxq vlorp"
    strict = TaskClassifier(Taxonomy.load(), embedder, threshold=0.35)
    a, b = strict.classify([clear, vague])
    assert a.task_type == "writing/summarize"
    assert b.confidence < a.confidence
    assert b.task_type == UNKNOWN


# ----------------------------------------------------------------------------- dedup


def test_normalise_merges_case_and_space_only():
    assert normalise("  Show me   SALES\tby Region ") == "show me sales by region"
    assert normalise("sales by region") != normalise("profit by region")


def test_slot_guard():
    assert slot_guard("Show me monthly sales by region", "Show me monthly profit by region")
    assert slot_guard("regions with return rate above 10%", "regions with return rate above 20%")
    assert not slot_guard("Show me monthly sales by region", "Can you show me monthly sales by region please")
    assert not slot_guard("What is a cohort analysis?", "Can you explain what a cohort analysis is?")


def test_dedup_collapses_paraphrases_keeps_slot_variants_apart(embedder):
    rng = random.Random(2)
    base = [
        "Show me monthly sales by region for the last half year",
        "What is a cohort analysis?",
        "top 5 products by revenue this quarter",
        "A store sold 120 units on Monday and 80 units on Tuesday at $15 each. What was the total revenue?",
    ]
    paraphrased = [
        "Can you show me monthly sales by region for the last half year?",
        "Can you explain what a cohort analysis is?",
        "Hey, top 5 products by revenue this quarter thanks",
        "Hi! a store sold 120 units on Monday and 80 units on Tuesday at $15 each. What was the total revenue?",
    ]
    synthetic = [paraphrase(t, rng) for t in base]  # the synthetic traffic's own rewording
    exact = ["  show me MONTHLY sales by region for the last half year"]
    # same template, another slot: must stay apart
    distinct = [
        "Show me monthly profit by region for the last half year",
        "Show me monthly sales by region for the last 3 months",
        "top 10 products by revenue this quarter",
        "top 5 products by profit margin this quarter",
        "A store sold 40 units on Monday and 95 units on Tuesday at $25 each. What was the total revenue?",
    ]
    texts = base + paraphrased + synthetic + exact + distinct
    scores = np.zeros(len(texts))
    scores[1] = -1.0  # the paraphrase of item 1 is better rated: it is the one kept
    scores[5] = 1.0
    result = dedup(texts, embedder.encode(texts), scores, threshold=0.88)
    groups = result.group
    for i in range(4):
        members = {i, 4 + i, 8 + i}
        assert len({int(groups[j]) for j in members}) == 1, [(texts[j], result.reason[j]) for j in members]
        assert len(members & set(result.keep.tolist())) == 1
    assert 5 in result.keep and 1 not in result.keep
    assert result.reason[1].startswith("near-duplicate of 5 (cos=")
    assert result.reason[12] == "exact-duplicate of 0"
    for j in range(13, len(texts)):
        assert j in result.keep, (texts[j], result.reason[j])
    assert result.report["slot_guarded_pairs"] > 0
    assert len(result.keep) == 4 + len(distinct)


def test_dedup_chooses_and_reports_its_threshold(embedder):
    rng = random.Random(4)
    requests = [charts.generate_request(rng).text for _ in range(150)]
    texts = requests + [paraphrase(t, rng) for t in requests[:60]]
    vectors = embedder.encode(texts)
    result = dedup(texts, vectors, np.ones(len(texts)), cluster_size=50)  # several clusters
    report = result.report
    assert report["clusters"] > 1
    assert report["threshold_method"].startswith("otsu")
    assert 0.82 <= result.threshold <= 0.97
    assert {"p50", "p90", "p99"} <= set(report["nn_similarity"])
    assert report["kept"] == len(result.keep) == sum(r is None for r in result.reason)
    # most rewordings collapse onto their original
    merged = sum(int(result.group[150 + i]) == int(result.group[i]) for i in range(60))
    assert merged >= 50
    with pytest.raises(ValueError, match="embeddings of shape"):
        dedup(texts, vectors[:3], np.ones(len(texts)))


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.86, 0.015, 500), rng.normal(0.97, 0.01, 200)])
    assert 0.88 <= otsu_threshold(values, 0.82, 0.97) <= 0.95
    assert otsu_threshold(values[:5], 0.82, 0.97) is None


# ----------------------------------------------------------------------------- select


def _naive_kcg(x, k, initial=()):
    d = np.full(len(x), np.inf)
    chosen = []
    for i in initial:
        d = np.minimum(d, ((x - x[i]) ** 2).sum(1))
    if not initial:
        first = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
        chosen.append(first)
        d = np.minimum(d, ((x - x[first]) ** 2).sum(1))
    while len(chosen) < k:
        j = int(np.argmax(d))
        chosen.append(j)
        d = np.minimum(d, ((x - x[j]) ** 2).sum(1))
    return chosen


def test_k_center_greedy_matches_the_plain_algorithm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1500, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert k_center_greedy(x, 120, batch=16).tolist() == _naive_kcg(x, 120)
    picked = k_center_greedy(x, 50, initial=[3, 9])
    assert picked.tolist() == _naive_kcg(x, 50, initial=[3, 9])
    assert 3 not in picked and 9 not in picked
    # asking for more than there is returns every other point once
    small = x[:10]
    assert sorted(k_center_greedy(small, 50, initial=[0]).tolist()) == list(range(1, 10))
    dup = np.repeat(x[:2], 5, axis=0)
    assert len(set(k_center_greedy(dup, 6).tolist())) == 6


def test_split_budget():
    quota = split_budget({"hard": 100, "easy": 100, "rare": 1}, {"hard": 3.0}, 41)
    assert sum(quota.values()) == 41
    assert quota["rare"] == 1 and quota["hard"] == 3 * quota["easy"]
    # a type with fewer items than its share gives the rest to the others
    quota = split_budget({"a": 2, "b": 100}, {"a": 10.0}, 50)
    assert quota == {"a": 2, "b": 48}
    # at least one per type present, even when the total is smaller
    assert split_budget({"a": 5, "b": 5, "c": 5}, {}, 2) == {"a": 1, "b": 1, "c": 1}


def test_select_by_budget_keeps_every_type_within_its_budget(embedder):
    items = _labelled_prompts(n_tasks=200, n_sessions=0)
    texts = focus_texts([t for t, _ in items])
    types = [label for _, label in items]
    weights = Taxonomy.load().weights()
    result = select_by_budget(embedder.encode(texts), types, weights, total=40)
    present = set(types)
    chosen = Counter(types[i] for i in result.keep)
    assert set(chosen) == present
    assert len(result.keep) == 40 and len(set(result.keep.tolist())) == 40
    for t, info in result.per_type.items():
        assert info["selected"] == chosen[t] <= info["quota"] <= info["available"]
    # per available item, the hard chart type gets more than chit-chat
    chart, chat = result.per_type[tasks.CHART_TASK], result.per_type["chat/chitchat"]
    assert chart["quota"] / chart["available"] > chat["quota"] / chat["available"]


# ----------------------------------------------------------------------------- model scores


@pytest.mark.slow
def test_golden_score_and_hardness_on_the_small_model(model_dir):
    scorer = ModelScorer(model_dir)
    anchors = [("What is 7 + 5?", "7 + 5 = 12."), ("What is 9 + 4?", "9 + 4 = 13.")]
    candidates = [
        ("What is 2 + 3?", "2 + 3 = 5."),
        {"messages": [{"role": "user", "content": "What is 6 + 1?"}], "response": "6 + 1 = 7."},
        ("Say something.", "zebra quantum marmalade umbrella"),
    ]
    gs = golden_scores(candidates, anchors, scorer)
    assert gs.shape == (3,)
    assert set(gs.tolist()) <= {0.0, 0.5, 1.0}
    # a worked example of the same form helps the anchors more than gibberish
    assert gs[0] > gs[2] and gs[1] > gs[2]
    hard = hardness([("What is 2 + 3?", "2 + 3 = 5."), ("What is 2 + 3?", "zebra quantum marmalade umbrella")], scorer)
    assert hard[1] > hard[0] > 0
