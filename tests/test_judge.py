"""Pairwise judge: position swap, parsing, agreement with human labels."""

from __future__ import annotations

import re

import pytest

from tests.conftest import free_port
from tests.openai_standin import StandIn
from training.chat_client import ChatClient
from training.evaluation.judge import Judge, JudgeResult, agreement_with_humans, judge_from_settings, parse_verdict

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def standin():
    started = []

    def start(reply):
        s = StandIn(reply, free_port()).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _judge(server) -> Judge:
    return Judge(ChatClient(server.url, "judge-model", retries=1, what="judge"))


def _shown(messages, label: str) -> str:
    text = messages[-1]["content"]
    return re.search(rf"## Answer {label}\n(.*?)(?:\n\n## |\n\nWhich)", text, re.DOTALL).group(1)


def test_position_biased_judge_gives_only_ties(standin):
    server = standin(lambda messages, i: "A")  # always the first position
    judge = _judge(server)
    pairs = [("4", "5"), ("5", "4"), ("four", "It is 4."), ("22", "4")]
    results = [judge.judge_pair(PROMPT, a, b) for a, b in pairs]
    assert [r.winner for r in results] == ["tie"] * len(pairs)
    for r in results:
        assert r.raw == ("A", "A") and r.verdicts == ("a", "b")
    # It was asked twice per pair, the second time with the answers swapped.
    assert len(server.requests) == 2 * len(pairs)
    first, second = server.requests[0]["messages"], server.requests[1]["messages"]
    assert (_shown(first, "A"), _shown(first, "B")) == ("4", "5")
    assert (_shown(second, "A"), _shown(second, "B")) == ("5", "4")


def test_consistent_judge_names_the_winner_in_either_order(standin):
    # Prefers the answer that says 4, wherever it is shown, and answers in prose.
    def reply(messages, i):
        return "Answer A is better." if "4" in _shown(messages, "A") else "[[B]]"

    judge = _judge(standin(reply))
    assert judge.judge_pair(PROMPT, "4", "5").winner == "a"
    assert judge.judge_pair(PROMPT, "5", "4").winner == "b"
    many = judge.judge_many([(PROMPT, "4", "5", None), (PROMPT, "3", "It is 4", "4")])
    assert [r.winner for r in many] == ["a", "b"]


def test_reference_answer_is_shown(standin):
    server = standin(lambda messages, i: "tie")
    result = _judge(server).judge_pair(PROMPT, "4", "four", reference="4")
    assert result.winner == "tie"
    assert "## Reference answer (known to be good)\n4" in server.requests[0]["messages"][-1]["content"]


def test_unreadable_replies_are_ties(standin):
    result = _judge(standin(lambda messages, i: "Hmm, hard to say.")).judge_pair(PROMPT, "4", "5")
    assert result.winner == "tie" and result.verdicts == (None, None)


def test_retries_a_flaky_judge(standin):
    server = standin(lambda messages, i: "A" if "4" in _shown(messages, "A") else "B")
    server.fail_next(503)
    judge = _judge(server)
    assert judge.judge_pair(PROMPT, "4", "5").winner == "a"
    assert judge.client.tally.retries == 1


def test_parse_verdict():
    cases = {"A": "A", " b ": None, "B.": "B", "[[A]]": "A", "Tie": "tie", "Verdict: B": "B", "Both are equally good": "tie",
             "I think B is better than A.": "B", "": None, "a cat sat": None}
    assert {k: parse_verdict(k) for k in cases} == cases


def test_agreement_with_humans():
    results = [JudgeResult(w, ("", ""), (None, None)) for w in ("a", "b", "tie", "a", "b")]
    report = agreement_with_humans(results, ["a", "a", "a", None, "b"])
    assert report["n"] == 4
    assert report["agreement"] == 0.5
    assert report["decisive_agreement"] == round(2 / 3, 4)
    assert report["tie_rate"] == 0.25
    assert agreement_with_humans(results, [None] * 5)["agreement"] is None
    with pytest.raises(ValueError):
        agreement_with_humans(results, ["a"])


def test_judge_from_settings_falls_back_to_the_teacher(settings, standin):
    server = standin(lambda messages, i: "B")
    s = settings.replace(teacher={"base_url": server.url, "model": "teacher-model"})
    judge = judge_from_settings(s)
    assert judge.client.model == "teacher-model"
    assert judge.judge_pair(PROMPT, "x", "y").winner == "tie"


def test_agreement_on_peoples_own_preferences(standin):
    """The dataset's human pairs (a user's edit or chosen draft over what they moved away
    from) are judged with the person's pick at random sides: a judge that prefers what
    people prefer agrees on all, a position-biased one on none, a contrary one has kappa < 0."""
    from training.evaluation.judge import agreement_on_pairs, human_preference_pairs

    def rec(i, target_source, pair_source="moved-away"):
        return {"prompt": [{"role": "user", "content": f"question {i}"}],
                "chosen": [{"role": "assistant", "content": f"good answer {i}"}],
                "rejected": [{"role": "assistant", "content": f"poor answer {i}"}],
                "target_source": target_source, "pair_source": pair_source}

    records = [rec(i, ("user-edit", "choice", "operator-edit")[i % 3]) for i in range(12)]
    records += [rec(90, "teacher"), rec(91, "draft"), rec(92, "user-edit", "replaced")]  # not a person's pick
    pairs = human_preference_pairs(records)
    assert len(pairs) == 12

    def prefers(word):
        return lambda messages, i: "A" if word in _shown(messages, "A") else "B"

    agrees = agreement_on_pairs(_judge(standin(prefers("good"))), pairs, limit=10, seed=1)
    assert agrees["pairs"] == 10 and agrees["available"] == 12
    assert agrees["agreement"] == 1.0 and agrees["tie_rate"] == 0.0
    biased = agreement_on_pairs(_judge(standin(lambda messages, i: "A")), pairs, limit=10, seed=1)
    assert biased["agreement"] == 0.0 and biased["tie_rate"] == 1.0
    contrary = agreement_on_pairs(_judge(standin(prefers("poor"))), pairs, limit=10, seed=1)
    assert contrary["agreement"] == 0.0 and contrary["kappa"] < 0
