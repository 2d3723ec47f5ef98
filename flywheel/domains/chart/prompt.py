"""The chart app's prompt: DESIGN.md's template, and reading the lists back from a prompt.

The app sends the template with the dataset's dimension and metric lists, its time field
and the user's words filled in (`build_prompt`). The text is the app's: byte for byte the
template of DESIGN.md ("The demo domain"); its key list and enum lists come from
`ChartConfig`, so they cannot drift from what validation accepts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from flywheel.domains.chart.config import (
    CONFIG_KEYS,
    ChartType,
    DimensionCondition,
    Granularity,
    MetricCondition,
    SortOrder,
)

__all__ = [
    "PROMPT_TEMPLATE",
    "PromptLists",
    "build_followup_prompt",
    "build_prompt",
    "lists_from_messages",
    "schema_from_prompt",
]


@dataclass(frozen=True)
class PromptLists:
    """What a chart prompt lists: the time field, the dimensions (without it) and the
    metrics. The simulator's datasets extend it with sample values."""

    name: str
    time_field: str
    dimensions: tuple[str, ...]  # without the time field
    metrics: tuple[str, ...]

    @property
    def all_dimensions(self) -> tuple[str, ...]:
        """The dimension list shown in the prompt: the time field first."""
        return (self.time_field, *self.dimensions)


def _or(values: Iterable) -> str:
    values = [v.value for v in values]
    return ", ".join(values[:-1]) + " or " + values[-1]


def _alts(values: Iterable) -> str:
    return "|".join(json.dumps(v.value) for v in values)


# Verbatim from DESIGN.md ("The demo domain"); the four lists/values are filled in.
PROMPT_TEMPLATE = (
    """\
You are a data visualization assistant. Turn the user's request into a JSON chart configuration.
Allowed keys: @KEYS@.
- chartType: @CHART_TYPES@.
- chartFields: {"dimensions": [...], "metrics": [...]}, names taken only from the lists below.
- mainAxis: the main axis, usually a dimension or the time field.
- chartTimeFilter: only when the user gives a time range: {"granularity": @GRANULARITIES@, "dayjsScript": [start, end]}, each a dayjs expression.
- dimensionFilters: only when the user restricts dimension values: [{"dimension": ..., "filter": {"condition": @DIMENSION_CONDITIONS@, "value": [...]}}].
- metricFilters: only when the user restricts a metric's value: [{"metric": ..., "filter": {"condition": @METRIC_CONDITIONS@, "value": number, or "low,high" for interval}}].
- sort: only when the user asks for an order: {"metric": ..., "sort": @SORT_ORDERS@}.
- topN: only for the top or bottom N: {"metric": ..., "sort": @SORT_ORDERS@, "number": N}.
For a trend over time, use the time field as mainAxis and CHART_LINE.
Dimensions: {dimensions}
Metrics: {metrics}
Time field: {time_field}
Request: {request}
JSON:"""
    .replace("@KEYS@", ", ".join(CONFIG_KEYS))
    .replace("@CHART_TYPES@", _or(ChartType))
    .replace("@GRANULARITIES@", _alts(Granularity))
    .replace("@DIMENSION_CONDITIONS@", _alts(DimensionCondition))
    .replace("@METRIC_CONDITIONS@", _alts(MetricCondition))
    .replace("@SORT_ORDERS@", _alts(SortOrder))
)


def build_prompt(schema: PromptLists, request: str) -> str:
    """The prompt the assistant app sends: DESIGN.md's template with the schema's lists,
    its time field and the user's words filled in."""
    return (
        PROMPT_TEMPLATE.replace("{dimensions}", json.dumps(list(schema.all_dimensions), ensure_ascii=False))
        .replace("{metrics}", json.dumps(list(schema.metrics), ensure_ascii=False))
        .replace("{time_field}", json.dumps(schema.time_field, ensure_ascii=False))
        .replace("{request}", request)
    )


def build_followup_prompt(request: str) -> str:
    """What the app sends for a follow-up turn ("now make it a line chart"); the earlier
    turns travel as conversation history before it."""
    return f"Update the chart configuration.\nRequest: {request}\nJSON:"


_PROMPT_LIST = re.compile(r"^(Dimensions|Metrics|Time field):[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def schema_from_prompt(text: str | None) -> PromptLists | None:
    """The lists a chart prompt gives (`build_prompt`'s ``Dimensions: [...]``,
    ``Metrics: [...]`` and ``Time field: "..."`` lines), named ``"prompt"``; None when
    `text` lacks one of the lines or a line is not valid JSON. The time field joins the
    dimensions when the list does not already name it."""
    found: dict[str, Any] = {}
    for match in _PROMPT_LIST.finditer(text or ""):
        key = match.group(1)
        if key in found:
            continue
        try:
            found[key] = json.loads(match.group(2))
        except json.JSONDecodeError:
            return None
    dims, metrics, time_field = found.get("Dimensions"), found.get("Metrics"), found.get("Time field")
    if not (
        isinstance(dims, list) and isinstance(metrics, list) and isinstance(time_field, str)
        and all(isinstance(x, str) for x in dims + metrics)
    ):
        return None
    return PromptLists(name="prompt", time_field=time_field, dimensions=tuple(d for d in dims if d != time_field),
                       metrics=tuple(metrics))


def lists_from_messages(messages: list[dict] | None) -> PromptLists | None:
    """The lists of the latest message that gives them (a follow-up turn is checked
    against the lists of the conversation's first prompt)."""
    for m in reversed(messages or []):
        if isinstance(m.get("content"), str):
            lists = schema_from_prompt(m["content"])
            if lists is not None:
                return lists
    return None
