"""The simulated product's datasets, and chart requests with their right configurations.

An analytics assistant turns a request such as "monthly profit margin by region for the
last half year" into a chart configuration (DESIGN.md, "The demo domain"). The domain
itself (the configuration model, the app's prompt, validation, the verifier, scoring)
is `flywheel.domains.chart`; this module, a client of it,

- describes the datasets the simulated product offers (`SCHEMAS`, the traffic's) and
  datasets that traffic never uses (`EVAL_SCHEMAS`, `eval_schemas()`: held-out vocabularies
  for evaluating on unseen schemas),
- generates natural-language requests together with their ground-truth configuration
  (`generate_request`, `generate_followup`), and
- regenerates the chart domain's few-shot pool (`few_shot_examples`).

The domain's functions are re-exported here (`build_prompt`, `validate_config`,
`is_correct`...) for the simulator's callers.

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

from flywheel.domains.chart import (
    CHART_TASK,
    CHART_TYPES,
    CONFIG_KEYS,
    DIMENSION_CONDITIONS,
    FIELD_WEIGHTS,
    GRANULARITIES,
    METRIC_CONDITIONS,
    PROMPT_TEMPLATE,
    SORT_ORDERS,
    PromptLists,
    build_followup_prompt,
    build_prompt,
    compare_configs,
    dump_config,
    is_correct,
    normalize_dayjs,
    parse_config,
    schema_from_prompt,
    score_config,
    validate_config,
)

__all__ = [
    "CHART_TYPES",
    "CONFIG_KEYS",
    "DIMENSION_CONDITIONS",
    "EVAL_SCHEMAS",
    "FIELD_WEIGHTS",
    "GRANULARITIES",
    "METRIC_CONDITIONS",
    "PROMPT_TEMPLATE",
    "SCHEMAS",
    "SORT_ORDERS",
    "ChartRequest",
    "DatasetSchema",
    "build_followup_prompt",
    "build_prompt",
    "compare_configs",
    "dump_config",
    "eval_schemas",
    "few_shot_examples",
    "generate_followup",
    "generate_request",
    "get_schema",
    "is_correct",
    "normalize_dayjs",
    "parse_config",
    "schema_from_prompt",
    "score_config",
    "traffic_schemas",
    "validate_config",
]


# ----------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class DatasetSchema(PromptLists):
    """One dataset of the analytics product: its time field, dimensions and metrics (what
    the prompt lists), and what the request generator needs to phrase requests.

    `values` lists sample values per dimension (for filters); `metric_kinds` says how a
    metric's thresholds are phrased (percent, money, count, score, days); `like_values`
    gives substrings users filter names by. `eval_only` datasets never appear in traffic.
    """

    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    metric_kinds: Mapping[str, str] = field(default_factory=dict)
    like_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    eval_only: bool = False

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


# Held-out datasets for evaluation on schemas the model never saw in traffic: business
# domains of their own (vehicle fleet, hospital admissions, energy metering, e-learning)
# with vocabularies unlike the traffic's. The traffic simulator never draws them
# (`generate_request` without a schema uses `SCHEMAS` only); benches and evaluations ask
# for them by name or through `eval_schemas()`.
EVAL_SCHEMAS: tuple[DatasetSchema, ...] = (
    DatasetSchema(
        name="fleet",
        time_field="Trip date",
        dimensions=("Vehicle type", "Depot", "Driver", "Route", "Fuel type"),
        metrics=("Trips", "Distance driven", "Fuel consumption", "Maintenance cost", "Idle hours", "Utilization rate",
                 "Incidents"),
        values={
            "Vehicle type": ("Van", "Truck", "Electric van", "Pickup"),
            "Depot": ("Leeds", "Bristol", "Glasgow", "Cardiff"),
            "Route": ("North loop", "City centre", "Airport run", "Coastal"),
            "Fuel type": ("Diesel", "Electric", "Hybrid"),
        },
        metric_kinds={
            "Trips": "count",
            "Distance driven": "count",
            "Fuel consumption": "count",
            "Maintenance cost": "money",
            "Idle hours": "count",
            "Utilization rate": "percent",
            "Incidents": "count",
        },
        like_values={"Driver": ("Smith", "Patel", "Nguyen", "Kowalski")},
        eval_only=True,
    ),
    DatasetSchema(
        name="hospital_admissions",
        time_field="Admission date",
        dimensions=("Ward", "Admission type", "Diagnosis group", "Attending physician", "Insurance type"),
        metrics=("Admissions", "Average length of stay", "Bed occupancy rate", "Readmission rate", "Treatment cost",
                 "Patient satisfaction"),
        values={
            "Ward": ("Cardiology", "Oncology", "Pediatrics", "Orthopedics", "Maternity"),
            "Admission type": ("Emergency", "Elective", "Transfer"),
            "Diagnosis group": ("Respiratory", "Cardiac", "Trauma", "Infection"),
            "Insurance type": ("Public", "Private", "Self-pay"),
        },
        metric_kinds={
            "Admissions": "count",
            "Average length of stay": "days",
            "Bed occupancy rate": "percent",
            "Readmission rate": "percent",
            "Treatment cost": "money",
            "Patient satisfaction": "score",
        },
        like_values={"Attending physician": ("Lee", "Garcia", "Okafor", "Novak")},
        eval_only=True,
    ),
    DatasetSchema(
        name="energy_metering",
        time_field="Reading date",
        dimensions=("Meter type", "Tariff", "Substation", "Customer class", "Building"),
        metrics=("Consumption", "Peak demand", "Solar generation", "Energy cost", "Outage minutes", "Customer rating"),
        values={
            "Meter type": ("Smart", "Analog", "Prepaid"),
            "Tariff": ("Time-of-use", "Flat", "Night saver", "Green"),
            "Substation": ("Riverside", "Hilltop", "Harbor", "Eastgate"),
            "Customer class": ("Residential", "Commercial", "Industrial"),
        },
        metric_kinds={
            "Consumption": "count",
            "Peak demand": "count",
            "Solar generation": "count",
            "Energy cost": "money",
            "Outage minutes": "count",
            "Customer rating": "score",
        },
        like_values={"Building": ("Tower", "Annex", "Plant", "Depot")},
        eval_only=True,
    ),
    DatasetSchema(
        name="elearning",
        time_field="Enrollment date",
        dimensions=("Course", "Instructor", "Learning track", "Learner country", "Delivery format"),
        metrics=("Enrollments", "Completion rate", "Average quiz score", "Watch hours", "Course revenue", "Dropout rate",
                 "Certificates issued"),
        values={
            "Learning track": ("Data science", "Design", "Business", "Languages"),
            "Learner country": ("Canada", "Mexico", "Spain", "Nigeria", "Vietnam"),
            "Delivery format": ("Self-paced", "Live cohort", "Blended"),
            "Instructor": ("Ana Ruiz", "Tom Baker", "Mei Chen"),
        },
        metric_kinds={
            "Enrollments": "count",
            "Completion rate": "percent",
            "Average quiz score": "score",
            "Watch hours": "count",
            "Course revenue": "money",
            "Dropout rate": "percent",
            "Certificates issued": "count",
        },
        like_values={"Course": ("Python", "Excel", "Spanish", "Marketing")},
        eval_only=True,
    ),
)


def traffic_schemas() -> tuple[DatasetSchema, ...]:
    """The datasets simulated traffic draws from."""
    return SCHEMAS


def eval_schemas() -> tuple[DatasetSchema, ...]:
    """The held-out datasets: never in traffic, for evaluating on unseen schemas
    (``generate_request(rng, schema)`` draws requests over one of them)."""
    return EVAL_SCHEMAS


def get_schema(name: str) -> DatasetSchema:
    """The schema called `name`, traffic or held-out (KeyError with the known names otherwise)."""
    for schema in (*SCHEMAS, *EVAL_SCHEMAS):
        if schema.name == name:
            return schema
    raise KeyError(f"unknown dataset schema {name!r}; known: {[s.name for s in (*SCHEMAS, *EVAL_SCHEMAS)]}")


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
    rng: random.Random, schema: DatasetSchema | str | None = None, intent: str | None = None
) -> ChartRequest:
    """A natural-language chart request with its ground-truth configuration, over `schema`
    (a dataset or its name; default: one of the traffic's `SCHEMAS`, never a held-out one).
    Everything is drawn from `rng`, so the same generator state gives the same request."""
    schema = get_schema(schema) if isinstance(schema, str) else schema or rng.choice(SCHEMAS)
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


def few_shot_examples(n: int = 48, seed: int = 0) -> list[dict]:
    """The chart domain's few-shot pool (``flywheel/domains/chart/examples.jsonl``, one
    record a line): `n` requests of the traffic's ground truth with compact prompts (the
    lists and the request, without the instructions, which the real prompt gives)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        request = generate_request(rng)
        schema = request.schema
        user = (f"Dimensions: {json.dumps(list(schema.all_dimensions))}\nMetrics: {json.dumps(list(schema.metrics))}\n"
                f"Time field: {json.dumps(schema.time_field)}\nRequest: {request.text}\nJSON:")
        out.append({"task_type": CHART_TASK, "user": user, "assistant": dump_config(request.truth)})
    return out
