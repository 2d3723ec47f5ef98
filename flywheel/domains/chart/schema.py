"""The chart configuration's JSON Schema, for one prompt: `ChartConfig`'s, with the names
the prompt lists as ``enum``s (wherever the model marks a name with ``x-names``)."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from flywheel.domains.chart.config import ChartConfig
from flywheel.domains.chart.prompt import PromptLists, lists_from_messages

__all__ = ["config_json_schema", "output_schema", "output_schema_for", "response_format", "response_schema"]

#: ``x-decoding`` bounds that standard JSON Schema can state: `response_schema` folds them in.
#: Not ``uniqueItems``: llguidance refuses it ("Unimplemented keys"), and OpenAI's strict
#: mode does not take it either; the verifier still rejects a repeated name.
_STANDARD_BOUNDS = ("minItems", "maxItems", "maxLength")


@lru_cache(maxsize=1)
def _base() -> dict:
    return ChartConfig.model_json_schema()


def config_json_schema() -> dict:
    """``ChartConfig.model_json_schema()`` (a copy): any names of the right shape."""
    return copy.deepcopy(_base())


def output_schema(lists: PromptLists) -> dict:
    """The JSON Schema of a configuration for a prompt with these lists: dimensions (the
    time field first) and metrics restricted to the listed names."""
    names = {
        "dimensions": list(dict.fromkeys([lists.time_field, *lists.dimensions] if lists.time_field else lists.dimensions)),
        "metrics": list(dict.fromkeys(lists.metrics)),
    }

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            kind = node.get("x-names")
            if kind in names:
                node["enum"] = list(names[kind])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    schema = config_json_schema()
    walk(schema)
    return schema


def output_schema_for(messages: list[dict]) -> dict | None:
    """`output_schema` for the lists the conversation's prompt gives; None without them."""
    lists = lists_from_messages(messages)
    return output_schema(lists) if lists is not None else None


def response_schema(lists: PromptLists) -> dict:
    """`output_schema` in plain JSON Schema, for an app's ``response_format``: the
    ``x-decoding`` bounds that standard keywords can state (item counts,
    string lengths, TopN's three digits) folded in, every ``x-`` annotation removed.

    Without the bounds a grammar engine lets a small model repeat one name until
    ``max_tokens`` (``["Sales", "Sales", ...``): the bounds are what make the document end.
    What JSON Schema cannot say (mainAxis among the chosen dimensions) stays the verifier's.
    """

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        decoding = node.get("x-decoding") or {}
        out = {k: walk(v) for k, v in node.items() if not k.startswith("x-")}
        for key in _STANDARD_BOUNDS:
            if key in decoding:
                out[key] = decoding[key]
        if "maxDigits" in decoding:
            out["maximum"] = 10 ** decoding["maxDigits"] - 1
        return out

    return walk(output_schema(lists))


def response_format(lists: PromptLists) -> dict:
    """The ``response_format`` the chart app sends (OpenAI's ``json_schema`` type, strict)."""
    return {"type": "json_schema",
            "json_schema": {"name": "chart_config", "strict": True, "schema": response_schema(lists)}}
