"""The chart-config verifier: does an answer look right for its prompt, without the truth?

Checked strictly (the chart app parses the answer):

- the answer must be ONE JSON object and nothing else. A single fenced block
  (```json ... ```) around it is accepted as a formatting detail; prose before or after
  the JSON fails (reason ``text around the JSON``) with half the score, because the
  training target must be bare JSON (`chart_target` gives the bare form). JSON that only
  parses after repair (trailing commas) fails as invalid JSON;
- `ChartConfig` (`validate_config`): allowed keys, chartType enum, chartFields
  ``{"dimensions": [...], "metrics": [...]}`` with at least one metric, the shapes of
  dimension/metric filters, chartTimeFilter with a granularity and a dayjs pair, sort/topN;
- every dimension, metric and time field drawn from the lists IN THE PROMPT (the
  ``Dimensions:``/``Metrics:``/``Time field:`` lines of the latest message that has them,
  so a follow-up turn is checked against the lists of the conversation's first prompt),
  and mainAxis one of the chosen dimensions.

Without ground truth a verifier cannot tell a right chart from a wrong but well-formed
one; `is_correct` (against the truth) is stricter.
"""

from __future__ import annotations

import json
import re

from flywheel.domains.chart.prompt import lists_from_messages
from flywheel.domains.chart.score import dump_config
from flywheel.domains.chart.validate import validate_config
from flywheel.domains.domain import Verdict

__all__ = ["chart_target", "extract_json", "verify_chart"]

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


def verify_chart(messages: list[dict], answer: str) -> Verdict:
    """Bare JSON, `ChartConfig`, names from the prompt's lists (module docstring)."""
    value, problem = extract_json(answer)
    if value is None:
        return Verdict(False, 0.0, [problem or "invalid JSON"])
    reasons = [problem] if problem else []
    schema = lists_from_messages(messages)
    if schema is None:
        reasons.append("the prompt gives no Dimensions/Metrics/Time field lists: names not checked")
    errors = validate_config(value, schema)
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
    return dump_config(value)
