"""Verifiers: does an answer look right for its task type, without knowing the truth?

One interface for every task type: ``verify(task_type, messages, answer) -> Verdict``
(``passed``, a ``score`` in [0, 1], the ``reasons`` it failed). The teacher uses it to
pick the best of several samples, the datasets builder to refuse a bad target, the
evaluation to count a verifier pass rate.

The verifiers come from the loaded domains (`flywheel.domains`): each task type's domain
gives its verifier. ``data-viz/chart-config`` is the chart domain's
(`flywheel.domains.chart.verifier`: bare JSON, `ChartConfig`, names from the prompt's
lists); the general domain's free-text types ask for the generic checks below, refined
for ``reasoning/math`` (a number in the answer) and ``writing/summarize`` (shorter than
the text it summarises).

Generic checks: non-empty, length bounds, no broken encoding, no runaway repetition, no
refusal or error boilerplate (`training.curation.clean.rule_violation`), English
(`training.curation.clean.detect_language`). A task type without a verifier of its own
gets the generic checks (`has_verifier` is False).

Tool calls (#12) have their own check, whatever the task type: `verify_tool_calls` takes
the tools offered, the ``tool_choice`` and the calls an answer made (OpenAI's shapes, as an
interaction records them) and checks that each called function was offered (the named one
for a named choice), that its arguments parse as a JSON object and validate against the
function's JSON Schema (`jsonschema`), that a required or named choice got a call, and that
``parallel_tool_calls: false`` got at most one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flywheel.domains import Domains, GenericChecks, Verdict, active_domains
from flywheel.domains.chart import CHART_TASK, chart_target, extract_json, lists_from_messages
from training.curation.clean import CleanRules, detect_language, rule_violation

__all__ = [
    "CHART_TASK",
    "Verdict",
    "chart_target",
    "extract_json",
    "generic_reasons",
    "has_verifier",
    "prompt_schema",
    "verifiers",
    "verify",
    "verify_generic",
    "verify_answer_calls",
    "verify_tool_calls",
]

log = logging.getLogger(__name__)

#: The dimension/metric/time-field lists of the latest message that gives them.
prompt_schema = lists_from_messages

#: Limits of the generic checks: the curation cleaning rules' defaults.
GENERIC_RULES = CleanRules()
#: Languages an answer may be in (the bundled model is English-only).
ANSWER_LANGUAGES = ("en", "und")


def has_verifier(task_type: str | None, *, domains: Domains | None = None) -> bool:
    """Whether `task_type` has a verifier of its own (others get the generic checks)."""
    return (domains or active_domains()).verifier(task_type) is not None


def verifiers(*, domains: Domains | None = None) -> list[str]:
    """The task types with a verifier of their own."""
    loaded = domains or active_domains()
    return sorted(t.name for t in loaded.task_types() if loaded.verifier(t.name) is not None)


def verify(task_type: str | None, messages: list[dict], answer: str | None, *, domains: Domains | None = None) -> Verdict:
    """Check `answer` to the conversation `messages` (the prompt, without the answer) with
    the verifier of `task_type`'s domain, or the generic checks when it has none."""
    fn = (domains or active_domains()).verifier(task_type)
    if answer is None or not isinstance(answer, str):
        return Verdict(False, 0.0, ["no answer"])
    if fn is None:
        return verify_generic(messages, answer)
    if isinstance(fn, GenericChecks):
        reasons = generic_reasons(messages, answer)
        return _generic_verdict(fn.refine(messages, answer, reasons) if fn.refine else reasons)
    try:
        verdict = fn(messages, answer)
    except Exception as exc:  # noqa: BLE001 - a plugin's verifier failing must not stop a curation run
        log.exception("the verifier of %s failed", task_type)
        return Verdict(False, 0.0, [f"the verifier of {task_type} failed: {type(exc).__name__}: {exc}"])
    if not isinstance(verdict, Verdict):
        return Verdict(False, 0.0, [f"the verifier of {task_type} returned {type(verdict).__name__}, not a Verdict"])
    return verdict


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


def verify_tool_calls(tools: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[str, Any]],
                      tool_choice: str | Mapping[str, Any] | None = None,
                      parallel_tool_calls: bool | None = None) -> Verdict:
    """Check the tool ``calls`` of an answer against the ``tools`` offered (see the module
    docstring; `flywheel.domains.tool_calls.check_tool_calls` does it, so that a domain's
    own verifier checks its tool set the same way)."""
    from flywheel.domains.tool_calls import check_tool_calls

    return check_tool_calls(tools, calls, tool_choice, parallel_tool_calls)


def verify_answer_calls(tools: Sequence[Mapping[str, Any]], answer: str | None,
                        tool_choice: str | Mapping[str, Any] | None = None,
                        parallel_tool_calls: bool | None = None) -> Verdict:
    """`verify_tool_calls` on the calls of an answer in the Hermes text form (how curation,
    the datasets, the teacher and the evaluation carry an answer that called tools)."""
    from flywheel.domains.tool_calls import parse_answer

    if answer is None:
        return Verdict(False, 0.0, ["no answer"])
    return verify_tool_calls(tools, parse_answer(answer)[1], tool_choice, parallel_tool_calls)
