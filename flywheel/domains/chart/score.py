"""Comparing a chart configuration with the right one, and reading one out of an answer.

`parse_config` is tolerant (prose, code fences, trailing commas: what people and models
write); `compare_configs` / `score_config` / `is_correct` judge a configuration against the
true one field by field (sets as sets, filters as sets, dayjs pairs whitespace-insensitive).
The simulator's users and the evaluation against ground truth use them.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from flywheel.domains.chart.config import CONFIG_KEYS, interval
from flywheel.domains.chart.config import number as _number

__all__ = ["FIELD_WEIGHTS", "compare_configs", "dump_config", "is_correct", "normalize_dayjs", "parse_config", "score_config"]


def dump_config(config: Mapping[str, Any]) -> str:
    """Compact JSON, as an `edit` feedback carries a saved configuration."""
    return json.dumps(config, ensure_ascii=False, separators=(",", ":"))


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
        v = interval(raw) if condition == "interval" else _number(raw)
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
