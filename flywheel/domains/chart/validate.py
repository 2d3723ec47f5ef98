"""Validation of a chart configuration: `ChartConfig` decides what is well formed; this
module words each problem the way the app's users and the verifier's reasons read it
(one message per broken part, as the prompt describes the parts), and adds the rule a
schema cannot state: every name from the prompt's lists."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from flywheel.domains.chart.config import (
    CHART_TYPES,
    ChartConfig,
    DimensionCondition,
    Granularity,
    MetricCondition,
    SortOrder,
)
from flywheel.domains.chart.prompt import PromptLists

__all__ = ["validate_config"]


def _alts(values, quote: bool = False) -> str:
    return "|".join(repr(v.value) if quote else v.value for v in values)


NOT_AN_OBJECT = "the configuration must be a JSON object"
SHAPES = {
    "chartType": f"chartType must be one of {CHART_TYPES}",
    "chartFields": "chartFields must be {'dimensions': [...], 'metrics': [...]}",
    "sort": f"sort must be {{'metric': ..., 'sort': {_alts(SortOrder, True)}}}",
    "topN": f"topN must be {{'metric': ..., 'sort': {_alts(SortOrder, True)}, 'number': N >= 1}}",
    "dimensionFilters": "a dimension filter must be {'dimension': ..., 'filter': {'condition': "
                        f"{_alts(DimensionCondition)}, 'value': [strings]}}}}",
    "metricFilters": f"a metric filter must be {{'metric': ..., 'filter': {{'condition': {_alts(MetricCondition)}, 'value': ...}}}}",
    "chartTimeFilter": f"chartTimeFilter must be {{'granularity': {_alts(Granularity)}, 'dayjsScript': [start, end]}}",
}
VALUE_PROBLEMS = {
    MetricCondition.INTERVAL.value: "an interval filter's value must be 'low,high' with low <= high",
    MetricCondition.GREATER.value: "a greater/less filter's value must be a number",
    MetricCondition.LESS.value: "a greater/less filter's value must be a number",
}


def _problems(config: dict) -> dict[tuple, str]:
    """`ChartConfig`'s errors: location -> error type (the first at each location)."""
    try:
        ChartConfig.model_validate(config)
    except ValidationError as exc:
        out: dict[tuple, str] = {}
        for err in exc.errors():
            out.setdefault(tuple(err["loc"]), err["type"])
        return out
    return {}


def validate_config(config: Any, schema: PromptLists | None = None) -> list[str]:
    """Problems with `config` as a chart configuration (empty when it is well formed).
    With `schema` (the prompt's lists), names must come from its lists."""
    if not isinstance(config, dict):
        return [NOT_AN_OBJECT]
    bad = _problems(config)
    dims_allowed = set(schema.all_dimensions) if schema else None
    metrics_allowed = set(schema.metrics) if schema else None
    errors = [f"unknown key {key!r}" for key in config if bad.get((key,)) == "extra_forbidden"]

    def under(prefix: tuple, *, except_names: tuple = ()) -> bool:
        """A problem at or below `prefix`, other than a (present but bad) name at one of `except_names`."""
        return any(loc[: len(prefix)] == prefix and not (loc in except_names and kind != "missing")
                   for loc, kind in bad.items())

    def name(value: Any, loc: tuple, allowed: set[str] | None, what: str) -> None:
        if loc in bad:
            errors.append(f"{what} must be a non-empty string")
        elif allowed is not None and value not in allowed:
            errors.append(f"{what} {value!r} is not in the schema")

    if under(("chartType",)):
        errors.append(SHAPES["chartType"])
    fields = config.get("chartFields")
    if ("chartFields",) in bad or any(bad.get(("chartFields", k)) in ("missing", "list_type") for k in ("dimensions", "metrics")):
        errors.append(SHAPES["chartFields"])
    else:
        for i, d in enumerate(fields["dimensions"]):
            name(d, ("chartFields", "dimensions", i), dims_allowed, "dimension")
        for i, m in enumerate(fields["metrics"]):
            name(m, ("chartFields", "metrics", i), metrics_allowed, "metric")
        if bad.get(("chartFields", "metrics")) == "too_short":
            errors.append("chartFields.metrics must not be empty")
        if any(len(loc) == 2 and loc[0] == "chartFields" and kind == "extra_forbidden" for loc, kind in bad.items()):
            errors.append("chartFields takes only dimensions and metrics")
    name(config.get("mainAxis"), ("mainAxis",), dims_allowed, "mainAxis")
    for key in ("sort", "topN"):
        if key not in config:
            continue
        if under((key,), except_names=((key, "metric"),)):
            errors.append(SHAPES[key])
        else:
            name(config[key]["metric"], (key, "metric"), metrics_allowed, f"{key}.metric")
    if "dimensionFilters" in config:
        if ("dimensionFilters",) in bad:
            errors.append("dimensionFilters must be a list")
        else:
            for i, f in enumerate(config["dimensionFilters"]):
                loc = ("dimensionFilters", i)
                if under(loc, except_names=(loc + ("dimension",),)):
                    errors.append(SHAPES["dimensionFilters"])
                else:
                    name(f["dimension"], loc + ("dimension",), dims_allowed, "dimensionFilters.dimension")
    if "metricFilters" in config:
        if ("metricFilters",) in bad:
            errors.append("metricFilters must be a list")
        else:
            for i, f in enumerate(config["metricFilters"]):
                loc = ("metricFilters", i)
                condition = f["filter"].get("condition") if isinstance(f, dict) and isinstance(f.get("filter"), dict) else None
                condition = condition if isinstance(condition, str) else None
                value_loc = loc + ("filter", condition, "value")
                if under(loc, except_names=(loc + ("metric",), value_loc)):
                    errors.append(SHAPES["metricFilters"])
                    continue
                name(f["metric"], loc + ("metric",), metrics_allowed, "metricFilters.metric")
                if value_loc in bad:
                    errors.append(VALUE_PROBLEMS[condition])
    if "chartTimeFilter" in config and under(("chartTimeFilter",)):
        errors.append(SHAPES["chartTimeFilter"])
    return errors

