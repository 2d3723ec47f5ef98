"""The chart configuration: ONE pydantic model, `ChartConfig`, and its parts.

Everything else about the configuration is derived from it: the validation
(`flywheel.domains.chart.validate`), the JSON Schema (``ChartConfig.model_json_schema()``,
`config_json_schema`), the constrained decoder's schema (`training.labeling.constrained`
compiles `output_schema`), and the key and enum lists of the app's prompt
(`flywheel.domains.chart.prompt`).

The JSON Schema states what validation enforces (but for an interval filter's value, asked
for in its canonical form "low,high" while validation also takes what people type: "10%,
20%", a pair of numbers). Two kinds of annotation ride along:

- ``x-names``: a name drawn from the prompt's ``dimensions`` or ``metrics`` list; the
  lists differ per prompt, so `output_schema` turns these into ``enum``s for one prompt;
- ``x-decoding``: what constrained decoding adds on top (tighter lengths and counts, no
  repeated names, keys in the prompt's order, a dayjs expression's prefix and characters,
  mainAxis among the dimensions already chosen: ``record``/``among``).

Rules a schema cannot state (a name from the prompt's lists, mainAxis among the chosen
dimensions) are code next to the model (`validate`, `verifier`).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, Strict, WithJsonSchema

__all__ = [
    "CHART_TYPES",
    "CONFIG_KEYS",
    "DIMENSION_CONDITIONS",
    "GRANULARITIES",
    "METRIC_CONDITIONS",
    "SORT_ORDERS",
    "ChartConfig",
    "ChartFields",
    "ChartType",
    "DimensionCondition",
    "DimensionFilter",
    "DimensionFilterSpec",
    "Granularity",
    "IntervalFilter",
    "MetricCondition",
    "MetricFilter",
    "SortOrder",
    "SortSpec",
    "ThresholdFilter",
    "TimeFilter",
    "TopN",
    "interval",
    "number",
]


class ChartType(str, enum.Enum):
    CHART_COLUMN = "CHART_COLUMN"
    CHART_LINE = "CHART_LINE"
    CHART_PIE = "CHART_PIE"
    TABLE_DETAIL = "TABLE_DETAIL"


class Granularity(str, enum.Enum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


class DimensionCondition(str, enum.Enum):
    IN = "in"
    NOT_IN = "not-in"
    LIKE = "like"
    NOT_LIKE = "not-like"


class MetricCondition(str, enum.Enum):
    GREATER = "greater"
    LESS = "less"
    INTERVAL = "interval"


class SortOrder(str, enum.Enum):
    ASC = "ASC"
    DESC = "DESC"


def _values(e: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(m.value for m in e)


CHART_TYPES = _values(ChartType)
GRANULARITIES = _values(Granularity)
DIMENSION_CONDITIONS = _values(DimensionCondition)
METRIC_CONDITIONS = _values(MetricCondition)
SORT_ORDERS = _values(SortOrder)

# Characters the decoder allows in a dayjs expression and in an interval "low,high".
DAYJS_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789().,' -"
INTERVAL_CHARS = "0123456789.,-"


def number(value: Any) -> float | None:
    """A number as users and models write it: 20, 20.5, "20%", "$1,000"; None otherwise."""
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


def interval(value: Any) -> tuple[float, float] | None:
    """``(low, high)`` of an interval filter's value ("low,high" or a pair), low <= high; else None."""
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list):
        parts = value
    else:
        return None
    if len(parts) != 2:
        return None
    low, high = number(parts[0]), number(parts[1])
    if low is None or high is None or low > high:
        return None
    return (low, high)


def _check_interval(value: Any) -> Any:
    if interval(value) is None:
        raise ValueError("an interval is 'low,high' with low <= high")
    return value


def _optional(description: str, **decoding: Any) -> Any:
    """An optional key: absent is fine, null is not (no ``default`` in the JSON Schema)."""

    def extra(schema: dict) -> None:
        schema.pop("default", None)
        schema["description"] = description
        if decoding:
            schema["x-decoding"] = decoding

    return Field(None, json_schema_extra=extra)


def _name(kind: Literal["dimensions", "metrics"], description: str, **decoding: Any) -> Any:
    extra: dict[str, Any] = {"x-names": kind}
    if decoding:
        extra["x-decoding"] = decoding
    return Field(min_length=1, description=description, json_schema_extra=extra)


# The parts. Strict: no coercion (a number is not a name, true is not 1); enums take their values.
_STRICT = ConfigDict(extra="forbid", strict=True)

_BY_VALUE = Strict(False)  # an enum field takes the enum's value ("CHART_LINE"), as JSON has it


class ChartFields(BaseModel):
    model_config = _STRICT
    dimensions: list[Annotated[str, _name("dimensions", "a dimension (or the time field) from the prompt's list",
                                          record="dims")]] = Field(
        description="the dimensions to group by", json_schema_extra={"x-decoding": {"minItems": 1, "maxItems": 3,
                                                                                      "uniqueItems": True}})
    metrics: list[Annotated[str, _name("metrics", "a metric from the prompt's list", record="metrics")]] = Field(
        min_length=1, description="the metrics to show", json_schema_extra={"x-decoding": {"maxItems": 3, "uniqueItems": True}})


class SortSpec(BaseModel):
    model_config = _STRICT
    metric: Annotated[str, _name("metrics", "the metric to sort by")]
    sort: Annotated[SortOrder, _BY_VALUE]


class TopN(BaseModel):
    model_config = _STRICT
    metric: Annotated[str, _name("metrics", "the metric to rank by")]
    sort: Annotated[SortOrder, _BY_VALUE]
    number: int = Field(ge=1, description="how many to keep", json_schema_extra={"x-decoding": {"maxDigits": 3}})


class DimensionFilterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"x-decoding": {"ordered": True}})
    condition: Annotated[DimensionCondition, _BY_VALUE]
    value: list[Annotated[str, Field(json_schema_extra={"x-decoding": {"maxLength": 40}})]] = Field(
        min_length=1, description="the values (or substrings, for like/not-like)", json_schema_extra={"x-decoding": {"maxItems": 5}})


class DimensionFilter(BaseModel):
    model_config = _STRICT
    dimension: Annotated[str, _name("dimensions", "the dimension restricted")]
    filter: DimensionFilterSpec


class ThresholdFilter(BaseModel):
    model_config = _STRICT
    condition: Literal[MetricCondition.GREATER, MetricCondition.LESS]
    value: float = Field(description="the threshold, as the user says it (20% -> 20)")


Interval = Annotated[
    Any,
    PlainValidator(_check_interval),
    WithJsonSchema({"type": "string", "pattern": r"^-?\d+(\.\d+)?,-?\d+(\.\d+)?$", "description": "low,high",
                    "x-decoding": {"interval": True, "maxLength": 24, "charset": INTERVAL_CHARS}}),
]


class IntervalFilter(BaseModel):
    model_config = _STRICT
    condition: Literal[MetricCondition.INTERVAL]
    value: Interval


class MetricFilter(BaseModel):
    model_config = _STRICT
    metric: Annotated[str, _name("metrics", "the metric restricted")]
    filter: Annotated[ThresholdFilter | IntervalFilter, Field(discriminator="condition")]


class TimeFilter(BaseModel):
    model_config = _STRICT
    granularity: Annotated[Granularity, _BY_VALUE]
    dayjsScript: list[Annotated[str, Field(pattern=r"^\s*dayjs\(\)", json_schema_extra={
        "x-decoding": {"prefix": "dayjs()", "maxLength": 64, "charset": DAYJS_CHARS}})]] = Field(
        min_length=2, max_length=2, description="[start, end], each a dayjs expression")


class ChartConfig(BaseModel):
    """A chart configuration, in DESIGN.md's key order (the order the decoder keeps)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"x-decoding": {"ordered": True}})

    chartType: Annotated[ChartType, _BY_VALUE]
    chartFields: ChartFields
    mainAxis: Annotated[str, _name("dimensions", "the main axis: usually a dimension or the time field",
                                   among="dims")]
    sort: SortSpec = _optional("only when the user asks for an order")
    topN: TopN = _optional("only for the top or bottom N")
    dimensionFilters: list[DimensionFilter] = _optional(
        "only when the user restricts dimension values", minItems=1, maxItems=3)
    metricFilters: list[MetricFilter] = _optional("only when the user restricts a metric's value", minItems=1, maxItems=3)
    chartTimeFilter: TimeFilter = _optional("only when the user gives a time range")


#: The keys of a configuration, in order.
CONFIG_KEYS: tuple[str, ...] = tuple(ChartConfig.model_fields)
