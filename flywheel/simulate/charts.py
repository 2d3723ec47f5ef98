"""The verifiable task of the demo domain: chart requests and their configurations.

An analytics assistant turns a request such as "monthly profit margin by region for the
last half year" into a chart configuration (DESIGN.md, "The demo domain"). This module

- describes the datasets the simulated product offers (`SCHEMAS`),
- generates natural-language requests together with their ground-truth configuration
  (`generate_request`, `generate_followup`),
- renders the prompt the assistant app sends (`build_prompt`), and
- verifies a model's answer (`parse_config`, `score_config`, `is_correct`), which the
  training side reuses as the chart-config verifier.

Conventions the ground truth follows (so that one request has one right answer):

- A request that names a time grain ("monthly", "by week", "daily") is a trend: CHART_LINE,
  the time field first in ``dimensions`` and as ``mainAxis``, ``chartTimeFilter`` with
  that granularity. Other requests use the named dimension as ``mainAxis``.
- A time range alone ("last month", "in Q3") gives ``chartTimeFilter`` with the range's
  own unit as granularity (month, quarter...).
- "top/bottom N" gives ``topN`` only; "ranked by", "highest first" give ``sort`` only.
- Metric thresholds are the numbers as the user says them ("over 20%" -> 20).
- dayjs expressions: ``dayjs().subtract(N, 'unit').startOf('unit')`` ...
  ``dayjs().endOf('unit')`` for "last N units", ``dayjs().quarter(K)`` for "Q K".
"""

from __future__ import annotations

import copy
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "CHART_TYPES",
    "CONFIG_KEYS",
    "DIMENSION_CONDITIONS",
    "FIELD_WEIGHTS",
    "GRANULARITIES",
    "METRIC_CONDITIONS",
    "PROMPT_TEMPLATE",
    "SCHEMAS",
    "ChartRequest",
    "DatasetSchema",
    "build_followup_prompt",
    "build_prompt",
    "compare_configs",
    "dump_config",
    "generate_followup",
    "generate_request",
    "get_schema",
    "is_correct",
    "normalize_dayjs",
    "parse_config",
    "schema_from_prompt",
    "score_config",
    "validate_config",
]

CHART_TYPES = ("CHART_COLUMN", "CHART_LINE", "CHART_PIE", "TABLE_DETAIL")
GRANULARITIES = ("day", "week", "month", "quarter", "year")
DIMENSION_CONDITIONS = ("in", "not-in", "like", "not-like")
METRIC_CONDITIONS = ("greater", "less", "interval")
SORT_ORDERS = ("ASC", "DESC")
CONFIG_KEYS = (
    "chartType",
    "chartFields",
    "mainAxis",
    "sort",
    "topN",
    "dimensionFilters",
    "metricFilters",
    "chartTimeFilter",
)

# Verbatim from DESIGN.md ("The demo domain"); the four lists/values are filled in.
PROMPT_TEMPLATE = """\
You are a data visualization assistant. Turn the user's request into a JSON chart configuration.
Allowed keys: chartType, chartFields, mainAxis, sort, topN, dimensionFilters, metricFilters, chartTimeFilter.
- chartType: CHART_COLUMN, CHART_LINE, CHART_PIE or TABLE_DETAIL.
- chartFields: {"dimensions": [...], "metrics": [...]}, names taken only from the lists below.
- mainAxis: the main axis, usually a dimension or the time field.
- chartTimeFilter: only when the user gives a time range: {"granularity": "day"|"week"|"month"|"quarter"|"year", "dayjsScript": [start, end]}, each a dayjs expression.
- dimensionFilters: only when the user restricts dimension values: [{"dimension": ..., "filter": {"condition": "in"|"not-in"|"like"|"not-like", "value": [...]}}].
- metricFilters: only when the user restricts a metric's value: [{"metric": ..., "filter": {"condition": "greater"|"less"|"interval", "value": number, or "low,high" for interval}}].
- sort: only when the user asks for an order: {"metric": ..., "sort": "ASC"|"DESC"}.
- topN: only for the top or bottom N: {"metric": ..., "sort": "ASC"|"DESC", "number": N}.
For a trend over time, use the time field as mainAxis and CHART_LINE.
Dimensions: {dimensions}
Metrics: {metrics}
Time field: {time_field}
Request: {request}
JSON:"""


# ----------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class DatasetSchema:
    """One dataset of the analytics product: its time field, dimensions and metrics.

    `values` lists sample values per dimension (for filters); `metric_kinds` says how a
    metric's thresholds are phrased (percent, money, count, score, days); `like_values`
    gives substrings users filter names by.
    """

    name: str
    time_field: str
    dimensions: tuple[str, ...]  # without the time field
    metrics: tuple[str, ...]
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    metric_kinds: Mapping[str, str] = field(default_factory=dict)
    like_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def all_dimensions(self) -> tuple[str, ...]:
        """The dimension list shown in the prompt: the time field first."""
        return (self.time_field, *self.dimensions)

    def kind(self, metric: str) -> str:
        return self.metric_kinds.get(metric, "count")


SCHEMAS: tuple[DatasetSchema, ...] = (
    DatasetSchema(
        name="retail_sales",
        time_field="Order date",
        dimensions=("Region", "Product category", "Product", "Customer segment", "Sales rep", "Ship mode"),
        metrics=("Sales", "Profit", "Profit margin", "Quantity", "Discount rate", "Return rate", "Customer satisfaction"),
        values={
            "Region": ("East", "West", "North", "South", "Central"),
            "Product category": ("Furniture", "Office supplies", "Technology"),
            "Customer segment": ("Consumer", "Corporate", "Home office"),
            "Ship mode": ("Standard", "Second class", "First class", "Same day"),
        },
        metric_kinds={
            "Sales": "money",
            "Profit": "money",
            "Profit margin": "percent",
            "Quantity": "count",
            "Discount rate": "percent",
            "Return rate": "percent",
            "Customer satisfaction": "score",
        },
        like_values={"Product": ("Chair", "Phone", "Paper", "Desk")},
    ),
    DatasetSchema(
        name="marketing",
        time_field="Date",
        dimensions=("Channel", "Campaign", "Country", "Device"),
        metrics=("Impressions", "Clicks", "Click-through rate", "Conversions", "Conversion rate", "Cost", "Cost per acquisition", "Revenue"),
        values={
            "Channel": ("Search", "Social", "Email", "Display", "Affiliate"),
            "Country": ("US", "UK", "Germany", "France", "Japan"),
            "Device": ("Desktop", "Mobile", "Tablet"),
        },
        metric_kinds={
            "Impressions": "count",
            "Clicks": "count",
            "Click-through rate": "percent",
            "Conversions": "count",
            "Conversion rate": "percent",
            "Cost": "money",
            "Cost per acquisition": "money",
            "Revenue": "money",
        },
        like_values={"Campaign": ("Spring", "Brand", "Retargeting", "Holiday")},
    ),
    DatasetSchema(
        name="hr",
        time_field="Hire date",
        dimensions=("Department", "Office", "Job level", "Employment type"),
        metrics=("Headcount", "Attrition rate", "Average salary", "Overtime hours", "Engagement score", "Open positions"),
        values={
            "Department": ("Engineering", "Sales", "Marketing", "Finance", "Support"),
            "Office": ("London", "New York", "Singapore", "Berlin"),
            "Job level": ("Junior", "Mid", "Senior", "Lead"),
            "Employment type": ("Full-time", "Part-time", "Contractor"),
        },
        metric_kinds={
            "Headcount": "count",
            "Attrition rate": "percent",
            "Average salary": "money",
            "Overtime hours": "count",
            "Engagement score": "score",
            "Open positions": "count",
        },
    ),
    DatasetSchema(
        name="logistics",
        time_field="Ship date",
        dimensions=("Warehouse", "Carrier", "Destination region", "Shipping method"),
        metrics=("Shipments", "On-time rate", "Average delivery days", "Freight cost", "Damage rate", "Parcel weight"),
        values={
            "Warehouse": ("Dallas", "Reno", "Atlanta", "Columbus"),
            "Carrier": ("UPS", "FedEx", "DHL", "USPS"),
            "Destination region": ("East", "West", "North", "South"),
            "Shipping method": ("Ground", "Air", "Express"),
        },
        metric_kinds={
            "Shipments": "count",
            "On-time rate": "percent",
            "Average delivery days": "days",
            "Freight cost": "money",
            "Damage rate": "percent",
            "Parcel weight": "count",
        },
    ),
    DatasetSchema(
        name="saas",
        time_field="Signup date",
        dimensions=("Plan", "Country", "Acquisition channel", "Company size"),
        metrics=("MRR", "Active users", "Churn rate", "New subscriptions", "ARPU", "Trial conversion rate", "Net revenue retention"),
        values={
            "Plan": ("Free", "Starter", "Pro", "Enterprise"),
            "Country": ("US", "UK", "Germany", "Brazil", "India"),
            "Acquisition channel": ("Organic", "Paid search", "Referral", "Partner"),
            "Company size": ("1-10", "11-50", "51-200", "201-1000"),
        },
        metric_kinds={
            "MRR": "money",
            "Active users": "count",
            "Churn rate": "percent",
            "New subscriptions": "count",
            "ARPU": "money",
            "Trial conversion rate": "percent",
            "Net revenue retention": "percent",
        },
    ),
)


def get_schema(name: str) -> DatasetSchema:
    """The schema called `name` (KeyError with the known names otherwise)."""
    for schema in SCHEMAS:
        if schema.name == name:
            return schema
    raise KeyError(f"unknown dataset schema {name!r}; known: {[s.name for s in SCHEMAS]}")


# ----------------------------------------------------------------------------- prompt


def build_prompt(schema: DatasetSchema, request: str) -> str:
    """The prompt the assistant app sends: DESIGN.md's template with the schema's lists,
    its time field and the user's words filled in."""
    return (
        PROMPT_TEMPLATE.replace("{dimensions}", json.dumps(list(schema.all_dimensions), ensure_ascii=False))
        .replace("{metrics}", json.dumps(list(schema.metrics), ensure_ascii=False))
        .replace("{time_field}", json.dumps(schema.time_field, ensure_ascii=False))
        .replace("{request}", request)
    )


_PROMPT_LIST = re.compile(r"^(Dimensions|Metrics|Time field):[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def schema_from_prompt(text: str | None) -> DatasetSchema | None:
    """The lists a chart prompt gives (`build_prompt`'s ``Dimensions: [...]``,
    ``Metrics: [...]`` and ``Time field: "..."`` lines), as a `DatasetSchema` named
    ``"prompt"``; None when `text` lacks one of the lines or a line is not valid JSON.
    The time field joins the dimensions when the list does not already name it."""
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
    return DatasetSchema(
        name="prompt", time_field=time_field, dimensions=tuple(d for d in dims if d != time_field), metrics=tuple(metrics)
    )


def build_followup_prompt(request: str) -> str:
    """What the app sends for a follow-up turn ("now make it a line chart"); the earlier
    turns travel as conversation history before it."""
    return f"Update the chart configuration.\nRequest: {request}\nJSON:"


def dump_config(config: Mapping[str, Any]) -> str:
    """Compact JSON, as an `edit` feedback carries a saved configuration."""
    return json.dumps(config, ensure_ascii=False, separators=(",", ":"))


# ----------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class ChartRequest:
    """A user's chart request: the words, the dataset, the right configuration."""

    schema: DatasetSchema
    text: str
    truth: dict
    intent: str  # trend, breakdown, share, topn, sorted, threshold, table, like; followup:<kind>


@dataclass(frozen=True)
class _TimeRange:
    phrase: str
    unit: str
    script: tuple[str, str]


def _last(n: int, unit: str) -> tuple[str, str]:
    return (f"dayjs().subtract({n}, '{unit}').startOf('{unit}')", f"dayjs().endOf('{unit}')")


def _previous(unit: str) -> tuple[str, str]:
    return (f"dayjs().subtract(1, '{unit}').startOf('{unit}')", f"dayjs().subtract(1, '{unit}').endOf('{unit}')")


def _current(unit: str) -> tuple[str, str]:
    return (f"dayjs().startOf('{unit}')", f"dayjs().endOf('{unit}')")


def _time_ranges(unit: str) -> list[_TimeRange]:
    """The phrasings of time ranges whose natural unit is `unit`."""
    if unit == "day":
        return [
            *(_TimeRange(f"for the last {n} days", "day", _last(n, "day")) for n in (7, 14, 30)),
            _TimeRange("over the past 30 days", "day", _last(30, "day")),
            _TimeRange("yesterday", "day", _previous("day")),
        ]
    if unit == "week":
        return [
            _TimeRange("this week", "week", _current("week")),
            _TimeRange("last week", "week", _previous("week")),
            *(_TimeRange(f"for the last {n} weeks", "week", _last(n, "week")) for n in (4, 8, 12)),
        ]
    if unit == "month":
        return [
            _TimeRange("this month", "month", _current("month")),
            _TimeRange("last month", "month", _previous("month")),
            _TimeRange("for the last half year", "month", _last(6, "month")),
            *(_TimeRange(f"for the last {n} months", "month", _last(n, "month")) for n in (3, 6, 12)),
        ]
    if unit == "quarter":
        return [
            _TimeRange("this quarter", "quarter", _current("quarter")),
            _TimeRange("last quarter", "quarter", _previous("quarter")),
            *(
                _TimeRange(f"in Q{k}", "quarter", (f"dayjs().quarter({k}).startOf('quarter')", f"dayjs().quarter({k}).endOf('quarter')"))
                for k in (1, 2, 3, 4)
            ),
        ]
    if unit == "year":
        return [
            _TimeRange("this year", "year", _current("year")),
            _TimeRange("last year", "year", _previous("year")),
            _TimeRange("for the last 2 years", "year", _last(2, "year")),
        ]
    raise ValueError(f"unknown time unit {unit!r}")


# For a trend at a given grain, the range units that make sense.
_TREND_RANGES = {
    "day": ("day", "week", "month"),
    "week": ("week", "month", "quarter"),
    "month": ("month", "quarter", "year"),
    "quarter": ("year",),
}
_GRAIN_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly", "quarter": "quarterly"}

_PREFIXES = ("", "", "Show me ", "Can you plot ", "I need ", "Please chart ", "Give me ", "Plot ", "I'd like to see ")
_SUFFIXES = ("", "", ".", "?", " please")
_ACRONYM = re.compile(r"^[A-Z]{2,}$")


def _say(name: str) -> str:
    """How users write a field name in a sentence: lowercase unless it is an acronym."""
    return name if _ACRONYM.match(name) else name.lower()


def _plural(name: str) -> str:
    word = _say(name)
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word + "s"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _threshold(schema: DatasetSchema, metric: str, rng: random.Random) -> tuple[str, float | int, tuple[int, int]]:
    """A threshold phrase, its value, and an interval (low, high) for the metric."""
    kind = schema.kind(metric)
    if kind == "percent":
        v = rng.choice((5, 10, 15, 20, 25, 30, 40, 50))
        return f"{v}%", v, (v, v + rng.choice((10, 20)))
    if kind == "money":
        v = rng.choice((500, 1000, 5000, 10000, 50000))
        return f"${v:,}", v, (v, v * rng.choice((2, 5)))
    if kind == "score":
        v = rng.choice((3, 4, 7, 8))
        return str(v), v, (v - 1, v + 1)
    if kind == "days":
        v = rng.choice((2, 3, 5))
        return f"{v} days", v, (v, v + 2)
    v = rng.choice((50, 100, 500, 1000, 5000))
    return f"{v:,}", v, (v, v * 2)


def _fmt(kind: str, v: int) -> str:
    return {"percent": f"{v}%", "money": f"${v:,}", "days": f"{v} days"}.get(kind, f"{v:,}" if kind == "count" else str(v))


def _config(
    chart_type: str,
    dimensions: list[str],
    metrics: list[str],
    main_axis: str,
    *,
    sort: dict | None = None,
    top_n: dict | None = None,
    dimension_filters: list[dict] | None = None,
    metric_filters: list[dict] | None = None,
    time_range: _TimeRange | None = None,
    granularity: str | None = None,
) -> dict:
    config: dict[str, Any] = {
        "chartType": chart_type,
        "chartFields": {"dimensions": list(dimensions), "metrics": list(metrics)},
        "mainAxis": main_axis,
    }
    if sort:
        config["sort"] = sort
    if top_n:
        config["topN"] = top_n
    if dimension_filters:
        config["dimensionFilters"] = dimension_filters
    if metric_filters:
        config["metricFilters"] = metric_filters
    if time_range is not None:
        config["chartTimeFilter"] = {"granularity": granularity or time_range.unit, "dayjsScript": list(time_range.script)}
    return config


def _dimension_filter(schema: DatasetSchema, rng: random.Random, exclude: tuple[str, ...] = ()) -> tuple[str, dict] | None:
    """A phrase restricting dimension values (" excluding the West region") and its filter."""
    choices = [d for d in schema.values if d not in exclude]
    if not choices:
        return None
    dim = rng.choice(choices)
    values = schema.values[dim]
    singular, plural = _say(dim), _plural(dim)
    style = rng.randrange(4)
    if style == 0:
        v = rng.choice(values)
        return f" excluding the {v} {singular}", {"dimension": dim, "filter": {"condition": "not-in", "value": [v]}}
    if style == 1:
        v = rng.choice(values)
        return f" for the {v} {singular} only", {"dimension": dim, "filter": {"condition": "in", "value": [v]}}
    if style == 2:
        a, b = rng.sample(values, 2)
        return f" in the {a} and {b} {plural}", {"dimension": dim, "filter": {"condition": "in", "value": [a, b]}}
    a, b = rng.sample(values, 2)
    return f" without the {a} and {b} {plural}", {"dimension": dim, "filter": {"condition": "not-in", "value": [a, b]}}


def _maybe_range(rng: random.Random, p: float = 0.5) -> _TimeRange | None:
    if rng.random() >= p:
        return None
    return rng.choice(_time_ranges(rng.choice(("day", "week", "month", "month", "quarter", "year"))))


def _with_range(text: str, time_range: _TimeRange | None) -> str:
    return f"{text} {time_range.phrase}" if time_range else text


def _trend(schema: DatasetSchema, rng: random.Random) -> tuple[str, dict]:
    grain = rng.choice(("day", "week", "month", "month", "quarter"))
    unit = rng.choice(_TREND_RANGES[grain])
    # A trend needs several points: at its own grain only "the last N <grain>s" will do.
    ranges = [r for r in _time_ranges(unit) if unit != grain or r.phrase.startswith(("for the last", "over the past"))]
    time_range = rng.choice(ranges)
    metric = rng.choice(schema.metrics)
    m = _say(metric)
    split = rng.choice(schema.dimensions) if rng.random() < 0.35 else None
    if split:
        text = rng.choice(
            (
                f"{_GRAIN_ADJECTIVE[grain]} {m} by {_say(split)} {time_range.phrase}",
                f"{m} per {grain} for each {_say(split)} {time_range.phrase}",
            )
        )
        dims = [schema.time_field, split]
    else:
        text = rng.choice(
            (
                f"{_GRAIN_ADJECTIVE[grain]} {m} trend {time_range.phrase}",
                f"{m} trend by {grain} {time_range.phrase}",
                f"{m} per {grain} {time_range.phrase}",
                f"how {m} changed {time_range.phrase}, by {grain}",
            )
        )
        dims = [schema.time_field]
    filters = None
    if rng.random() < 0.25:
        found = _dimension_filter(schema, rng)
        if found:
            text += found[0]
            filters = [found[1]]
    return text, _config(
        "CHART_LINE", dims, [metric], schema.time_field, dimension_filters=filters, time_range=time_range, granularity=grain
    )


def _breakdown(schema: DatasetSchema, rng: random.Random) -> tuple[str, dict]:
    dim = rng.choice(schema.dimensions)
    metrics = rng.sample(schema.metrics, rng.choice((1, 1, 2)))
    names = _and([_say(x) for x in metrics])
    text = rng.choice(
        (
            f"{names} by {_say(dim)}",
            f"compare {names} across {_plural(dim)}",
            f"{names} for each {_say(dim)}",
        )
    )
    time_range = _maybe_range(rng)
    text = _with_range(text, time_range)
    filters = None
    if rng.random() < 0.25:
        found = _dimension_filter(schema, rng)
        if found:
            text += found[0]
            filters = [found[1]]
    return text, _config("CHART_COLUMN", [dim], metrics, dim, dimension_filters=filters, time_range=time_range)


def _share(schema: DatasetSchema, rng: random.Random) -> tuple[str, dict]:
    dim = rng.choice(schema.dimensions)
    additive = [x for x in schema.metrics if schema.kind(x) in ("money", "count")] or list(schema.metrics)
    metric = rng.choice(additive)
    m = _say(metric)
    text = rng.choice(
        (
            f"share of {m} by {_say(dim)}",
            f"{m} split by {_say(dim)} as a pie chart",
            f"what share of {m} comes from each {_say(dim)}",
            f"pie chart of {m} by {_say(dim)}",
        )
    )
    time_range = _maybe_range(rng, 0.4)
    return _with_range(text, time_range), _config("CHART_PIE", [dim], [metric], dim, time_range=time_range)


def _topn(schema: DatasetSchema, rng: random.Random) -> tuple[str, dict]:
    dim = rng.choice(schema.dimensions)
    metric = rng.choice(schema.metrics)
    n = rng.choice((3, 5, 5, 10))
    order = rng.choice(("DESC", "DESC", "ASC"))
    m, plural = _say(metric), _plural(dim)
    if order == "DESC":
        text = rng.choice((f"top {n} {plural} by {m}", f"the {n} {plural} with the highest {m}"))
    else:
        text = rng.choice((f"bottom {n} {plural} by {m}", f"the {n} {plural} with the lowest {m}"))
    time_range = _maybe_range(rng)
    return _with_range(text, time_range), _config(
        "CHART_COLUMN", [dim], [metric], dim, top_n={"metric": metric, "sort": order, "number": n}, time_range=time_range
    )


def _sorted(schema: DatasetSchema, rng: random.Random) -> tuple[str, dict]:
    dim = rng.choice(schema.dimensions)
    metric = rng.choice(schema.metrics)
    m, d = _say(metric), _say(dim)
    order = rng.choice(("DESC", "ASC"))
    if order == "DESC":
        text = rng.choice((f"{_plural(dim)} ranked by {m}", f"{m} by {d}, sorted from highest to lowest", f"{m} by {d}, highest first"))
    else:
        text = rng.choice((f"{m} by {d} in ascending order", f"{m} by {d}, sorted from lowest to highest", f"{m} by {d}, lowest first"))
    time_range = _maybe_range(rng, 0.4)
    return _with_range(text, time_range), _config(
        "CHART_COLUMN", [dim], [metric], dim, sort={"metric": metric, "sort": order}, time_range=time_range
    )


def _threshold_request(schema: DatasetSchema, rng: random.Random) -> tuple[str, dict]:
    dim = rng.choice(schema.dimensions)
    metric = rng.choice(schema.metrics)
    phrase, value, (low, high) = _threshold(schema, metric, rng)
    m, plural = _say(metric), _plural(dim)
    style = rng.randrange(3)
    if style == 0:
        text = rng.choice((f"{plural} where {m} is over {phrase}", f"{plural} with {m} above {phrase}"))
        flt = {"condition": "greater", "value": value}
    elif style == 1:
        text = rng.choice((f"{plural} where {m} is below {phrase}", f"{plural} with {m} under {phrase}"))
        flt = {"condition": "less", "value": value}
    else:
        kind = schema.kind(metric)
        text = f"{plural} with {m} between {_fmt(kind, low)} and {_fmt(kind, high)}"
        flt = {"condition": "interval", "value": f"{low},{high}"}
    time_range = _maybe_range(rng, 0.4)
    return _with_range(text, time_range), _config(
        "CHART_COLUMN", [dim], [metric], dim, metric_filters=[{"metric": metric, "filter": flt}], time_range=time_range
    )


def _table(schema: DatasetSchema, rng: random.Random) -> tuple[str, dict]:
    dims = rng.sample(schema.dimensions, 2)
    metrics = rng.sample(schema.metrics, rng.choice((1, 2, 2, 3)))
    names = _and([_say(x) for x in metrics])
    text = rng.choice(
        (
            f"a table of {names} by {_say(dims[0])} and {_say(dims[1])}",
            f"list {names} for each {_say(dims[0])} and {_say(dims[1])}",
            f"detail table with {names} per {_say(dims[0])} and {_say(dims[1])}",
        )
    )
    time_range = _maybe_range(rng, 0.4)
    return _with_range(text, time_range), _config("TABLE_DETAIL", dims, metrics, dims[0], time_range=time_range)


def _like(schema: DatasetSchema, rng: random.Random) -> tuple[str, dict]:
    if not schema.like_values:
        return _breakdown(schema, rng)
    dim = rng.choice(sorted(schema.like_values))
    needle = rng.choice(schema.like_values[dim])
    metric = rng.choice(schema.metrics)
    m, plural = _say(metric), _plural(dim)
    if rng.random() < 0.7:
        text = rng.choice((f"{m} by {_say(dim)} for {plural} containing '{needle}'", f"{m} of {plural} whose name contains {needle}"))
        condition = "like"
    else:
        text = f"{m} by {_say(dim)} for {plural} not containing '{needle}'"
        condition = "not-like"
    return text, _config(
        "CHART_COLUMN", [dim], [metric], dim, dimension_filters=[{"dimension": dim, "filter": {"condition": condition, "value": [needle]}}]
    )


_INTENTS = {
    "trend": (_trend, 0.24),
    "breakdown": (_breakdown, 0.18),
    "share": (_share, 0.1),
    "topn": (_topn, 0.14),
    "sorted": (_sorted, 0.1),
    "threshold": (_threshold_request, 0.1),
    "table": (_table, 0.08),
    "like": (_like, 0.06),
}


_VERB_FIRST = ("list ", "compare ", "how ", "what ", "a table", "detail table", "pie chart")


def _dress(text: str, rng: random.Random) -> str:
    """Wrap the core request the way people type it ("Show me ...", "...?")."""
    prefix = rng.choice(_PREFIXES)
    suffix = rng.choice(_SUFFIXES)
    if prefix and not text.startswith(_VERB_FIRST):
        return prefix + text + suffix
    return text[0].upper() + text[1:] + suffix if rng.random() < 0.6 else text + suffix


def generate_request(
    rng: random.Random, schema: DatasetSchema | None = None, intent: str | None = None
) -> ChartRequest:
    """A natural-language chart request with its ground-truth configuration. Everything
    is drawn from `rng`, so the same generator state gives the same request."""
    schema = schema or rng.choice(SCHEMAS)
    if intent is None:
        names = list(_INTENTS)
        intent = rng.choices(names, weights=[_INTENTS[n][1] for n in names])[0]
    if intent not in _INTENTS:
        raise ValueError(f"unknown chart intent {intent!r}; known: {sorted(_INTENTS)}")
    text, truth = _INTENTS[intent][0](schema, rng)
    return ChartRequest(schema=schema, text=_dress(text, rng), truth=truth, intent=intent)


def generate_followup(rng: random.Random, previous: ChartRequest) -> ChartRequest:
    """A follow-up to `previous` in the same conversation ("now make it a line chart",
    "only the top 3") and the configuration it should produce."""
    schema, truth = previous.schema, previous.truth
    fields = truth["chartFields"]
    on_time = truth["mainAxis"] == schema.time_field
    options: list[str] = []
    if truth["chartType"] != "CHART_LINE":
        options.append("line")
    if truth["chartType"] != "CHART_PIE" and not on_time and len(fields["metrics"]) == 1 and len(fields["dimensions"]) == 1:
        options.append("pie")
    if truth["chartType"] != "TABLE_DETAIL":
        options.append("table")
    if not on_time and "topN" not in truth:
        options.append("top")
    if not on_time and "sort" not in truth and "topN" not in truth:
        options.append("sort")
    if len(fields["metrics"]) < 3:
        options.append("add_metric")
    filtered = {f["dimension"] for f in truth.get("dimensionFilters", [])}
    if any(d not in filtered for d in schema.values):
        options.append("exclude")
    if on_time and "chartTimeFilter" in truth:
        options.append("grain")
    if not on_time:
        options.append("range")

    kind = rng.choice(options)
    new = copy.deepcopy(truth)
    if kind == "line":
        text = rng.choice(("now make it a line chart", "show that as a line chart instead", "can you switch to a line chart"))
        new["chartType"] = "CHART_LINE"
    elif kind == "pie":
        text = rng.choice(("make it a pie chart", "show it as a pie instead"))
        new["chartType"] = "CHART_PIE"
    elif kind == "table":
        text = rng.choice(("as a table please", "show the details in a table", "turn it into a detail table"))
        new["chartType"] = "TABLE_DETAIL"
    elif kind == "top":
        n = rng.choice((3, 5))
        metric = fields["metrics"][0]
        text = rng.choice((f"only the top {n}", f"just show the top {n}")) if len(fields["metrics"]) == 1 else f"only the top {n} by {_say(metric)}"
        new.pop("sort", None)
        new["topN"] = {"metric": metric, "sort": "DESC", "number": n}
    elif kind == "sort":
        metric = rng.choice(fields["metrics"])
        order = rng.choice(("DESC", "ASC"))
        text = f"sort it by {_say(metric)} " + ("descending" if order == "DESC" else "ascending")
        new["sort"] = {"metric": metric, "sort": order}
    elif kind == "add_metric":
        metric = rng.choice([x for x in schema.metrics if x not in fields["metrics"]])
        text = rng.choice((f"also add {_say(metric)}", f"add {_say(metric)} too"))
        new["chartFields"]["metrics"].append(metric)
    elif kind == "exclude":
        dim = rng.choice([d for d in schema.values if d not in filtered])
        value = rng.choice(schema.values[dim])
        text = rng.choice((f"exclude the {value} {_say(dim)}", f"leave out the {value} {_say(dim)}"))
        new.setdefault("dimensionFilters", []).append({"dimension": dim, "filter": {"condition": "not-in", "value": [value]}})
    elif kind == "grain":
        current = truth["chartTimeFilter"]["granularity"]
        grain = rng.choice([g for g in ("day", "week", "month", "quarter") if g != current])
        text = rng.choice((f"switch to {_GRAIN_ADJECTIVE[grain]}", f"by {grain} instead"))
        new["chartTimeFilter"]["granularity"] = grain
    else:  # range
        current = truth.get("chartTimeFilter", {}).get("dayjsScript")
        ranges = [r for u in ("week", "month", "quarter", "year") for r in _time_ranges(u) if list(r.script) != current]
        time_range = rng.choice(ranges)
        text = rng.choice((f"what about {time_range.phrase}?", f"same but {time_range.phrase}"))
        new["chartTimeFilter"] = {"granularity": time_range.unit, "dayjsScript": list(time_range.script)}
    # Keep the key order of a freshly generated config.
    new = {k: new[k] for k in CONFIG_KEYS if k in new}
    return ChartRequest(schema=schema, text=text, truth=new, intent=f"followup:{kind}")


# ----------------------------------------------------------------------------- validation


def validate_config(config: Any, schema: DatasetSchema | None = None) -> list[str]:
    """Problems with `config` as a chart configuration (empty when it is well formed).
    With a `schema`, names must come from its lists."""
    errors: list[str] = []
    if not isinstance(config, dict):
        return ["the configuration must be a JSON object"]
    for key in config:
        if key not in CONFIG_KEYS:
            errors.append(f"unknown key {key!r}")
    dims_allowed = set(schema.all_dimensions) if schema else None
    metrics_allowed = set(schema.metrics) if schema else None

    def name_ok(name: Any, allowed: set[str] | None, what: str) -> None:
        if not isinstance(name, str) or not name:
            errors.append(f"{what} must be a non-empty string")
        elif allowed is not None and name not in allowed:
            errors.append(f"{what} {name!r} is not in the schema")

    if config.get("chartType") not in CHART_TYPES:
        errors.append(f"chartType must be one of {CHART_TYPES}")
    fields = config.get("chartFields")
    if not isinstance(fields, dict) or not isinstance(fields.get("dimensions"), list) or not isinstance(fields.get("metrics"), list):
        errors.append("chartFields must be {'dimensions': [...], 'metrics': [...]}")
    else:
        for d in fields["dimensions"]:
            name_ok(d, dims_allowed, "dimension")
        for m in fields["metrics"]:
            name_ok(m, metrics_allowed, "metric")
        if not fields["metrics"]:
            errors.append("chartFields.metrics must not be empty")
        if set(fields) - {"dimensions", "metrics"}:
            errors.append("chartFields takes only dimensions and metrics")
    name_ok(config.get("mainAxis"), dims_allowed, "mainAxis")
    if "sort" in config:
        s = config["sort"]
        if not isinstance(s, dict) or set(s) != {"metric", "sort"} or s.get("sort") not in SORT_ORDERS:
            errors.append("sort must be {'metric': ..., 'sort': 'ASC'|'DESC'}")
        else:
            name_ok(s["metric"], metrics_allowed, "sort.metric")
    if "topN" in config:
        t = config["topN"]
        if (
            not isinstance(t, dict)
            or set(t) != {"metric", "sort", "number"}
            or t.get("sort") not in SORT_ORDERS
            or not isinstance(t.get("number"), int)
            or isinstance(t.get("number"), bool)
            or t["number"] < 1
        ):
            errors.append("topN must be {'metric': ..., 'sort': 'ASC'|'DESC', 'number': N >= 1}")
        else:
            name_ok(t["metric"], metrics_allowed, "topN.metric")
    for f in _as_list(config.get("dimensionFilters", []), errors, "dimensionFilters"):
        flt = f.get("filter") if isinstance(f, dict) else None
        if (
            not isinstance(f, dict)
            or set(f) != {"dimension", "filter"}
            or not isinstance(flt, dict)
            or set(flt) != {"condition", "value"}
            or flt.get("condition") not in DIMENSION_CONDITIONS
            or not isinstance(flt.get("value"), list)
            or not flt["value"]
            or not all(isinstance(v, str) for v in flt["value"])
        ):
            errors.append("a dimension filter must be {'dimension': ..., 'filter': {'condition': in|not-in|like|not-like, 'value': [strings]}}")
        else:
            name_ok(f["dimension"], dims_allowed, "dimensionFilters.dimension")
    for f in _as_list(config.get("metricFilters", []), errors, "metricFilters"):
        flt = f.get("filter") if isinstance(f, dict) else None
        if (
            not isinstance(f, dict)
            or set(f) != {"metric", "filter"}
            or not isinstance(flt, dict)
            or set(flt) != {"condition", "value"}
            or flt.get("condition") not in METRIC_CONDITIONS
        ):
            errors.append("a metric filter must be {'metric': ..., 'filter': {'condition': greater|less|interval, 'value': ...}}")
            continue
        name_ok(f["metric"], metrics_allowed, "metricFilters.metric")
        value = flt["value"]
        if flt["condition"] == "interval":
            if _interval(value) is None:
                errors.append("an interval filter's value must be 'low,high' with low <= high")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append("a greater/less filter's value must be a number")
    if "chartTimeFilter" in config:
        t = config["chartTimeFilter"]
        if (
            not isinstance(t, dict)
            or set(t) != {"granularity", "dayjsScript"}
            or t.get("granularity") not in GRANULARITIES
            or not isinstance(t.get("dayjsScript"), list)
            or len(t["dayjsScript"]) != 2
            or not all(isinstance(s, str) and s.strip().startswith("dayjs()") for s in t["dayjsScript"])
        ):
            errors.append("chartTimeFilter must be {'granularity': day|week|month|quarter|year, 'dayjsScript': [start, end]}")
    return errors


def _as_list(value: Any, errors: list[str], what: str) -> list:
    if not isinstance(value, list):
        errors.append(f"{what} must be a list")
        return []
    return value


# ----------------------------------------------------------------------------- verification


def parse_config(text: str | None) -> dict | None:
    """The first JSON object in `text` that looks like a chart configuration (has one of
    the allowed keys), else the first JSON object at all, else None. Tolerates prose and
    code fences around the JSON and trailing commas inside it."""
    if not text:
        return None
    decoder = json.JSONDecoder()
    first: dict | None = None
    for match in re.finditer(r"\{", text):
        start = match.start()
        obj = None
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            end = text.rfind("}")
            if end > start:
                try:
                    obj = json.loads(re.sub(r",\s*([}\]])", r"\1", text[start : end + 1]))
                except json.JSONDecodeError:
                    obj = None
        if isinstance(obj, dict):
            if any(k in obj for k in CONFIG_KEYS):
                return obj
            if first is None:
                first = obj
    return first


def normalize_dayjs(expression: str) -> str:
    """A dayjs expression without whitespace and with single quotes, for comparison."""
    return re.sub(r"\s+", "", expression).replace('"', "'").rstrip(";")


# How much each part of a configuration weighs in `score_config`.
FIELD_WEIGHTS: dict[str, float] = {
    "chartType": 0.15,
    "dimensions": 0.15,
    "metrics": 0.15,
    "mainAxis": 0.10,
    "dimensionFilters": 0.10,
    "metricFilters": 0.10,
    "sort": 0.05,
    "topN": 0.05,
    "chartTimeFilter": 0.15,
}


def _names(value: Any) -> set[str] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return {v.strip() for v in value}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().rstrip("%").replace(",", "").lstrip("$"))
        except ValueError:
            return None
    return None


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list):
        parts = value
    else:
        return None
    if len(parts) != 2:
        return None
    low, high = _number(parts[0]), _number(parts[1])
    if low is None or high is None or low > high:
        return None
    return (low, high)


def _norm_dimension_filters(value: Any) -> list | None:
    if value in (None, []):
        return []
    if not isinstance(value, list):
        return None
    out = []
    for f in value:
        if not isinstance(f, dict) or not isinstance(f.get("filter"), dict):
            return None
        values = _names(f["filter"].get("value"))
        if values is None:
            return None
        out.append((str(f.get("dimension", "")).strip(), str(f["filter"].get("condition", "")).strip().lower(), tuple(sorted(values))))
    return sorted(out)


def _norm_metric_filters(value: Any) -> list | None:
    if value in (None, []):
        return []
    if not isinstance(value, list):
        return None
    out = []
    for f in value:
        if not isinstance(f, dict) or not isinstance(f.get("filter"), dict):
            return None
        condition = str(f["filter"].get("condition", "")).strip().lower()
        raw = f["filter"].get("value")
        v = _interval(raw) if condition == "interval" else _number(raw)
        if v is None:
            return None
        out.append((str(f.get("metric", "")).strip(), condition, v))
    return sorted(out, key=repr)


def _norm_sort(value: Any) -> tuple | None | bool:
    if value in (None, {}):
        return None
    if not isinstance(value, dict):
        return False
    return (str(value.get("metric", "")).strip(), str(value.get("sort", "")).strip().upper())


def _norm_top_n(value: Any) -> tuple | None | bool:
    if value in (None, {}):
        return None
    if not isinstance(value, dict):
        return False
    number = _number(value.get("number"))
    return (
        str(value.get("metric", "")).strip(),
        str(value.get("sort", "")).strip().upper(),
        int(number) if number is not None and number == int(number) else None,
    )


def _norm_time(value: Any) -> tuple | None | bool:
    if value in (None, {}):
        return None
    if not isinstance(value, dict):
        return False
    script = value.get("dayjsScript")
    if isinstance(script, list) and all(isinstance(s, str) for s in script):
        script = tuple(normalize_dayjs(s) for s in script)
    else:
        script = False
    return (str(value.get("granularity", "")).strip().lower(), script)


def _jaccard(a: set[str] | None, b: set[str] | None) -> float:
    if a is None or b is None:
        return 0.0
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def compare_configs(predicted: Mapping[str, Any] | None, truth: Mapping[str, Any]) -> dict[str, float]:
    """Per-field agreement of `predicted` with `truth`, each in [0, 1] (see
    `FIELD_WEIGHTS` for the fields). Sets are compared as sets (Jaccard), filters as
    sets of (field, condition, values), the time filter as half granularity, half the
    dayjs pair after `normalize_dayjs`. Absent, null and empty filters are the same.
    Names are compared exactly after trimming whitespace; unknown keys are ignored."""
    if not isinstance(predicted, Mapping):
        return {k: 0.0 for k in FIELD_WEIGHTS}
    p_fields = predicted.get("chartFields") if isinstance(predicted.get("chartFields"), Mapping) else {}
    t_fields = truth["chartFields"]
    out = {
        "chartType": float(str(predicted.get("chartType", "")).strip().upper() == truth["chartType"]),
        "dimensions": _jaccard(_names(p_fields.get("dimensions", [])), _names(t_fields["dimensions"])),
        "metrics": _jaccard(_names(p_fields.get("metrics", [])), _names(t_fields["metrics"])),
        "mainAxis": float(isinstance(predicted.get("mainAxis"), str) and predicted["mainAxis"].strip() == truth["mainAxis"]),
        "dimensionFilters": float(
            _norm_dimension_filters(predicted.get("dimensionFilters")) == _norm_dimension_filters(truth.get("dimensionFilters"))
        ),
        "metricFilters": float(_norm_metric_filters(predicted.get("metricFilters")) == _norm_metric_filters(truth.get("metricFilters"))),
        "sort": float(_norm_sort(predicted.get("sort")) == _norm_sort(truth.get("sort"))),
        "topN": float(_norm_top_n(predicted.get("topN")) == _norm_top_n(truth.get("topN"))),
    }
    p_time, t_time = _norm_time(predicted.get("chartTimeFilter")), _norm_time(truth.get("chartTimeFilter"))
    if p_time is None or t_time is None or p_time is False:
        out["chartTimeFilter"] = float(p_time == t_time)
    else:
        out["chartTimeFilter"] = 0.5 * (p_time[0] == t_time[0]) + 0.5 * (p_time[1] == t_time[1])
    return out


def score_config(predicted: Mapping[str, Any] | None, truth: Mapping[str, Any]) -> float:
    """Partial credit in [0, 1]: the `FIELD_WEIGHTS`-weighted agreement of `predicted`
    with `truth`; 0.0 when nothing could be parsed, 1.0 exactly when `is_correct`."""
    parts = compare_configs(predicted, truth)
    score = sum(FIELD_WEIGHTS[k] * v for k, v in parts.items())
    return 1.0 if all(v == 1.0 for v in parts.values()) else min(score, 0.99)


def is_correct(predicted: Mapping[str, Any] | None, truth: Mapping[str, Any]) -> bool:
    """True when `predicted` would draw the same chart as `truth`: chart type, dimension
    and metric sets, main axis, filters, sort, topN and the time filter (granularity and
    the dayjs pair, whitespace-insensitive) all agree."""
    return all(v == 1.0 for v in compare_configs(predicted, truth).values())
