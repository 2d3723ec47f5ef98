"""Pairwise judge: which of two answers to the same prompt is better, asked of a model.

The judge model (any OpenAI-compatible endpoint; by default the teacher's) sees the
conversation, optionally a reference answer, and two answers labelled A and B. Models
favour a position, so every pair is asked twice with the answers swapped; the two
verdicts must agree on the same ANSWER to name a winner, otherwise the result is a tie.
A judge that always says "A" therefore produces only ties.

The reply is parsed robustly (`parse_verdict`): "A", "B", "tie", "[[A]]", "Answer B is
better", "Verdict: tie"...; anything else counts as a tie, and is kept in ``raw`` so an
audit can see it.

`agreement_with_humans` reports how often the judge agrees with human preference labels;
`agreement_on_pairs` runs the judge on the people's own preferences in a dataset (a
user's edit or chosen draft over what they moved away from: `human_preference_pairs`),
which the evaluation report shows whenever a judge is configured and such pairs exist.
"""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

from flywheel.domains import Domains, active_domains, domains_for
from flywheel.settings import Settings
from training.chat_client import ChatClient

__all__ = ["HUMAN_TARGETS", "Judge", "JudgeResult", "agreement_on_pairs", "agreement_with_humans", "human_preference_pairs",
           "judge_from_settings", "parse_verdict"]

Winner = Literal["a", "b", "tie"]

#: What makes an answer better when the task type's domain gives no rubric of its own.
DEFAULT_RUBRIC = "correct, complete, following the requested format, concise"


def judge_system(rubric: str = DEFAULT_RUBRIC) -> str:
    """The judge's instructions with a domain's rubric (`flywheel.domains.Domain.rubric`)."""
    return (
        "You are an impartial judge. Compare two answers to the same conversation and decide which one better does what "
        f"the user asked: {rubric}. Ignore the order in which the answers are shown and their length. Reply with exactly "
        "one of: A, B, tie."
    )


JUDGE_SYSTEM = judge_system()


def _render(prompt_messages: Sequence[dict], first: str, second: str, reference: str | None,
            system: str = JUDGE_SYSTEM) -> list[dict]:
    conversation = "\n".join(f"[{m.get('role', 'user')}] {m.get('content', '')}" for m in prompt_messages)
    parts = [f"## Conversation\n{conversation}"]
    if reference:
        parts.append(f"## Reference answer (known to be good)\n{reference}")
    parts.append(f"## Answer A\n{first}")
    parts.append(f"## Answer B\n{second}")
    parts.append("Which answer is better? Reply with exactly one of: A, B, tie.")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


_TIE = re.compile(r"\b(tie|draw|equal(?:ly)?|both|neither|same)\b", re.IGNORECASE)
_BRACKETED = re.compile(r"\[\[\s*([AB]|tie)\s*\]\]", re.IGNORECASE)
_NAMED = re.compile(r"\b(?:answer|response|assistant|option|verdict|winner|choice)\s*[:\-]?\s*\(?([AB])\)?\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*([AB])\W*$")
_BETTER = re.compile(r"\b([AB])\b[^.\n]{0,24}?\b(?:is|was)\s+(?:better|best|preferred|superior)", re.IGNORECASE)
_LETTER = re.compile(r"\b([AB])\b")


def parse_verdict(text: str | None) -> Literal["A", "B", "tie"] | None:
    """"A", "B" or "tie" from a judge's reply; None when it cannot be read."""
    text = (text or "").strip()
    if not text:
        return None
    m = _BRACKETED.search(text)
    if m:
        v = m.group(1).upper()
        return "tie" if v == "TIE" else v
    m = _BARE.match(text)
    if m:
        return m.group(1).upper()
    m = _BETTER.search(text)
    if m:
        return m.group(1).upper()
    first_line = text.splitlines()[0]
    for chunk in (first_line, text):
        named = {x.upper() for x in _NAMED.findall(chunk)}
        if len(named) == 1 and not _TIE.search(chunk):
            return named.pop()
        if _TIE.search(chunk) and len(named) != 1:
            return "tie"
        letters = set(_LETTER.findall(chunk))  # upper-case standalone A/B only ("a" is an article)
        if len(letters) == 1:
            return letters.pop()
    return None


@dataclass(frozen=True)
class JudgeResult:
    """``winner`` is "a", "b" or "tie" in the caller's order; ``raw`` the two replies
    (A/B as shown, then swapped) and ``verdicts`` what each was read as, already mapped
    back to the caller's a/b."""

    winner: Winner
    raw: tuple[str, str]
    verdicts: tuple[str | None, str | None]

    def to_dict(self) -> dict:
        return {"winner": self.winner, "raw": list(self.raw), "verdicts": list(self.verdicts)}


def _to_caller(verdict: str | None, swapped: bool) -> str | None:
    if verdict in (None, "tie"):
        return verdict
    if not swapped:
        return verdict.lower()
    return "b" if verdict == "A" else "a"


class Judge:
    """Ask a model which of two answers is better, twice with the positions swapped."""

    def __init__(self, client: ChatClient, *, max_tokens: int = 16, concurrency: int = 4, domains: Domains | None = None):
        self.client = client
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self._domains = domains

    def system(self, task_type: str | None = None) -> str:
        """The judge's instructions for `task_type`: with its domain's rubric, else the default."""
        rubric = (self._domains or active_domains()).rubric(task_type) if task_type else None
        return judge_system(rubric or DEFAULT_RUBRIC)

    def judge_pair(self, prompt_messages: Sequence[dict], answer_a: str, answer_b: str,
                   reference: str | None = None, task_type: str | None = None) -> JudgeResult:
        """The better of `answer_a` and `answer_b` to `prompt_messages` ("tie" when the two
        orders disagree or the judge says so), by the rubric of `task_type`'s domain."""
        system = self.system(task_type)
        first = self.client.chat(_render(prompt_messages, answer_a, answer_b, reference, system),
                                 max_tokens=self.max_tokens).texts[0]
        second = self.client.chat(_render(prompt_messages, answer_b, answer_a, reference, system),
                                  max_tokens=self.max_tokens).texts[0]
        v1, v2 = _to_caller(parse_verdict(first), False), _to_caller(parse_verdict(second), True)
        winner: Winner = v1 if v1 == v2 and v1 in ("a", "b") else "tie"
        return JudgeResult(winner, (first, second), (v1, v2))

    def judge_many(self, items: Iterable[tuple]) -> list[JudgeResult]:
        """`judge_pair` over ``(messages, a, b, reference[, task_type])`` items, in parallel, in order."""
        items = list(items)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda it: self.judge_pair(*it), items))


def judge_from_settings(settings: Settings) -> Judge:
    """A `Judge` on ``settings.judge`` (falling back to the teacher's endpoint per field)."""
    teacher = settings.teacher
    client = ChatClient.from_endpoint(settings.judge.resolve(teacher), what="judge", concurrency=teacher.concurrency)
    return Judge(client, concurrency=teacher.concurrency, domains=domains_for(settings))


def agreement_with_humans(results: Sequence[JudgeResult | str], human_labels: Sequence[str | None]) -> dict:
    """How the judge's winners agree with human labels ("a"/"b"/"tie", None = unlabelled).

    ``agreement``: share of labelled pairs where the judge names the same winner (a tie
    counts as disagreement unless the human also said tie); ``decisive_agreement``: the
    same among pairs the judge did not call a tie; ``tie_rate``: the judge's ties among
    labelled pairs; ``kappa``: Cohen's kappa over the three outcomes. None when no pair
    is labelled."""
    if len(results) != len(human_labels):
        raise ValueError(f"{len(results)} judge results but {len(human_labels)} human labels")
    pairs = [((r.winner if isinstance(r, JudgeResult) else r), h) for r, h in zip(results, human_labels) if h is not None]
    for _, h in pairs:
        if h not in ("a", "b", "tie"):
            raise ValueError(f"a human label must be 'a', 'b', 'tie' or None, not {h!r}")
    n = len(pairs)
    if not n:
        return {"n": 0, "agreement": None, "decisive_agreement": None, "tie_rate": None, "kappa": None}
    agree = sum(j == h for j, h in pairs)
    decisive = [(j, h) for j, h in pairs if j != "tie"]
    outcomes = ("a", "b", "tie")
    p_o = agree / n
    p_e = sum((sum(j == o for j, _ in pairs) / n) * (sum(h == o for _, h in pairs) / n) for o in outcomes)
    return {
        "n": n,
        "agreement": round(p_o, 4),
        "decisive_agreement": round(sum(j == h for j, h in decisive) / len(decisive), 4) if decisive else None,
        "tie_rate": round(sum(j == "tie" for j, _ in pairs) / n, 4),
        "kappa": round((p_o - p_e) / (1 - p_e), 4) if p_e < 1 else None,
    }


#: Dataset targets a person chose: a user's correction, an operator's edit, the draft a user picked.
HUMAN_TARGETS = ("user-edit", "operator-edit", "choice")


def human_preference_pairs(dpo_records: Sequence[dict]) -> list[dict]:
    """The DPO records (TRL prompt/chosen/rejected, with ``pair_source`` and
    ``target_source`` as `training.datasets.builder` writes them) that are a person's preference:
    the answer they wrote or picked over the one they moved away from."""
    return [r for r in dpo_records if r.get("pair_source") == "moved-away" and r.get("target_source") in HUMAN_TARGETS]


def agreement_on_pairs(judge: "Judge", pairs: Sequence[dict], *, limit: int = 50, seed: int = 0) -> dict:
    """The judge's agreement with people on up to ``limit`` of their preference ``pairs``
    (`human_preference_pairs`). Each pair is shown with the person's choice at a random
    side (the judge also swaps positions itself), so a judge that always names one side
    cannot score well. Returns `agreement_with_humans`' figures plus ``pairs`` judged and
    ``available``."""
    rng = random.Random(seed)
    sample = list(pairs) if len(pairs) <= limit else rng.sample(list(pairs), limit)
    items, labels = [], []
    for rec in sample:
        chosen, rejected = rec["chosen"][-1]["content"], rec["rejected"][-1]["content"]
        first = rng.random() < 0.5
        items.append((rec["prompt"], chosen if first else rejected, rejected if first else chosen, None))
        labels.append("a" if first else "b")
    return {**agreement_with_humans(judge.judge_many(items), labels), "pairs": len(sample), "available": len(pairs)}
