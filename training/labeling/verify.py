"""Verifiers: does an answer look right for its task type, without knowing the truth?

One interface for every task type: ``verify(task_type, messages, answer) -> Verdict``
(``passed``, a ``score`` in [0, 1], the ``reasons`` it failed). The teacher uses it to
pick the best of several samples, the datasets builder to refuse a bad target, the
evaluation to count a verifier pass rate.

``data-viz/chart-config`` is checked strictly (the chart app parses the answer):

- the answer must be ONE JSON object and nothing else. A single fenced block
  (```json ... ```) around it is accepted as a formatting detail; prose before or after
  the JSON fails (reason ``text around the JSON``) with half the score, because the
  training target must be bare JSON (`chart_target` gives the bare form). JSON that only
  parses after repair (trailing commas) fails as invalid JSON;
- the schema of the prompt in DESIGN.md: allowed keys, chartType enum, chartFields
  ``{"dimensions": [...], "metrics": [...]}`` with at least one metric, the shapes of
  dimension/metric filters, chartTimeFilter with a granularity and a dayjs pair,
  sort/topN shapes (`flywheel.simulate.charts.validate_config`, shared with the
  simulator);
- every dimension, metric and time field drawn from the lists IN THE PROMPT (the
  ``Dimensions:``/``Metrics:``/``Time field:`` lines of the latest message that has them,
  so a follow-up turn is checked against the lists of the conversation's first prompt),
  and mainAxis one of the chosen dimensions.

Without ground truth a verifier cannot tell a right chart from a wrong but well-formed
one; the simulator's ``charts.is_correct`` (against the truth) is stricter.

Other task types get generic checks: non-empty, length bounds, no broken encoding, no
runaway repetition, no refusal or error boilerplate (`training.curation.clean.rule_violation`),
English (`training.curation.clean.detect_language`); ``reasoning/math`` also needs a number in
the answer, ``writing/summarize`` an answer shorter than the text it summarises. A task
type without a registered verifier gets the generic checks (`has_verifier` is False).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable

from flywheel.simulate import charts
from training.curation.clean import CleanRules, detect_language, rule_violation

__all__ = [
    "CHART_TASK",
    "Verdict",
    "chart_target",
    "extract_json",
    "has_verifier",
    "register",
    "verifiers",
    "verify",
    "verify_generic",
]

CHART_TASK = "data-viz/chart-config"

Verifier = Callable[[list[dict], str], "Verdict"]
_REGISTRY: dict[str, Verifier] = {}

#: Limits of the generic checks: the curation cleaning rules' defaults.
GENERIC_RULES = CleanRules()
#: Languages an answer may be in (the bundled model is English-only).
ANSWER_LANGUAGES = ("en", "und")


@dataclass(frozen=True)
class Verdict:
    """A verifier's decision: `passed`, a `score` in [0, 1] (1.0 when passed; partial
    credit otherwise, for ranking samples), and the `reasons` it failed."""

    passed: bool
    score: float
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "score": round(self.score, 4), "reasons": list(self.reasons)}


def register(task_type: str) -> Callable[[Verifier], Verifier]:
    """Decorator: make `fn(messages, answer) -> Verdict` the verifier of `task_type`."""

    def deco(fn: Verifier) -> Verifier:
        _REGISTRY[task_type] = fn
        return fn

    return deco


def has_verifier(task_type: str | None) -> bool:
    """Whether `task_type` has a verifier of its own (others get the generic checks)."""
    return task_type in _REGISTRY


def verifiers() -> list[str]:
    """The task types with a verifier of their own."""
    return sorted(_REGISTRY)


def verify(task_type: str | None, messages: list[dict], answer: str | None) -> Verdict:
    """Check `answer` to the conversation `messages` (the prompt, without the answer) with
    the verifier of `task_type`, or the generic checks when it has none."""
    fn = _REGISTRY.get(task_type or "", None)
    if answer is None or not isinstance(answer, str):
        return Verdict(False, 0.0, ["no answer"])
    if fn is None:
        return verify_generic(messages, answer)
    return fn(messages, answer)


# ----------------------------------------------------------------------------- generic


def _last_user(messages: list[dict]) -> str:
    for m in reversed(messages or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


_REPEATED_LINE_MIN = 3


def _runaway(answer: str) -> str | None:
    """Runaway repetition the cleaning rules miss: the same line, or the same 6-word
    phrase, three or more times."""
    lines = [ln.strip().lower() for ln in answer.splitlines() if len(ln.strip()) >= 8]
    for ln in set(lines):
        if lines.count(ln) >= _REPEATED_LINE_MIN:
            return f"runaway repetition: a line repeated {lines.count(ln)} times"
    words = answer.lower().split()
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - 5):
        gram = tuple(words[i : i + 6])
        seen[gram] = seen.get(gram, 0) + 1
        if seen[gram] >= _REPEATED_LINE_MIN:
            return "runaway repetition: a 6-word phrase repeated 3+ times"
    return None


def generic_reasons(messages: list[dict], answer: str) -> list[str]:
    """What the generic checks find wrong with `answer` (empty when it passes)."""
    reasons = []
    violation = rule_violation(_last_user(messages) or "?", answer, GENERIC_RULES)
    # The prompt side of the cleaning rules is not the answer's fault.
    if violation and not re.search(r"\bprompt\b", violation):
        reasons.append(violation)
    if not reasons:
        runaway = _runaway(answer)
        if runaway:
            reasons.append(runaway)
        language = detect_language(answer)
        if language not in ANSWER_LANGUAGES:
            reasons.append(f"language: the answer is {language!r}, expected English")
    return reasons


def _generic_verdict(reasons: list[str], checks: int = 3) -> Verdict:
    return Verdict(not reasons, 1.0 if not reasons else max(0.0, 1.0 - len(reasons) / checks) * 0.5, reasons)


def verify_generic(messages: list[dict], answer: str) -> Verdict:
    """Length bounds, format (no refusal/error boilerplate, broken encoding, runaway
    repetition) and language."""
    return _generic_verdict(generic_reasons(messages, answer))


for _name in ("writing/rewrite", "qa/analytics-concepts", "chat/chitchat"):
    register(_name)(verify_generic)


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?%?")


@register("reasoning/math")
def verify_math(messages: list[dict], answer: str) -> Verdict:
    """Generic checks plus: a numeric answer is present."""
    reasons = generic_reasons(messages, answer)
    if not _NUMBER.search(answer or ""):
        reasons.append("math: no numeric answer")
    else:  # a bare number ("7") is a complete final answer
        reasons = [r for r in reasons if not r.startswith("too-short")]
    return _generic_verdict(reasons)


@register("writing/summarize")
def verify_summary(messages: list[dict], answer: str) -> Verdict:
    """Generic checks plus: shorter than the text it summarises."""
    reasons = generic_reasons(messages, answer)
    source = _last_user(messages)
    if source and len(answer.strip()) >= len(source.strip()):
        reasons.append("summary: not shorter than the text it summarises")
    return _generic_verdict(reasons)


# ----------------------------------------------------------------------------- charts

_FENCE = re.compile(r"^```[A-Za-z]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)


def extract_json(answer: str) -> tuple[object | None, str | None]:
    """``(value, problem)``: the JSON value of a bare (or singly fenced) answer and None,
    or the first JSON object found in prose and ``"text around the JSON"``, or None and
    ``"invalid JSON: ..."``."""
    text = (answer or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        error = f"invalid JSON: {exc.msg} at char {exc.pos}"
    # Prose around a configuration: the first object that has a chart's own keys (inner
    # objects of a broken configuration, e.g. a sort {"metric", "sort"}, do not count).
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and ("chartType" in value or "chartFields" in value):
            return value, "text around the JSON"
    return None, error


def prompt_schema(messages: list[dict]) -> charts.DatasetSchema | None:
    """The dimension/metric/time-field lists of the latest message that gives them."""
    for m in reversed(messages or []):
        if isinstance(m.get("content"), str):
            schema = charts.schema_from_prompt(m["content"])
            if schema is not None:
                return schema
    return None


@register(CHART_TASK)
def verify_chart(messages: list[dict], answer: str) -> Verdict:
    """Bare JSON, DESIGN.md's schema, names from the prompt's lists (module docstring)."""
    value, problem = extract_json(answer)
    if value is None:
        return Verdict(False, 0.0, [problem or "invalid JSON"])
    reasons = [problem] if problem else []
    schema = prompt_schema(messages)
    if schema is None:
        reasons.append("the prompt gives no Dimensions/Metrics/Time field lists: names not checked")
    errors = charts.validate_config(value, schema)
    reasons += errors
    if isinstance(value, dict):
        fields = value.get("chartFields")
        dims = fields.get("dimensions") if isinstance(fields, dict) else None
        axis = value.get("mainAxis")
        if isinstance(dims, list) and isinstance(axis, str) and axis and axis not in dims:
            reasons.append(f"mainAxis {axis!r} is not one of chartFields.dimensions")
    if not reasons:
        return Verdict(True, 1.0, [])
    if schema is None and len(reasons) == 1:
        # Well formed, but the names could not be checked: not a pass.
        return Verdict(False, 0.5, reasons)
    score = 0.2 + 0.8 * max(0.0, 1.0 - len(errors) / 5)
    if problem:
        score *= 0.5
    return Verdict(False, round(min(score, 0.95), 4), reasons)


def chart_target(answer: str) -> str | None:
    """The bare, compact JSON of a chart answer (fences and surrounding prose removed) —
    the form a training target takes; None when the answer holds no JSON object."""
    value, _ = extract_json(answer)
    if not isinstance(value, dict):
        return None
    return charts.dump_config(value)
