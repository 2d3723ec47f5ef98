"""The chart configuration's JSON Schema, for one prompt: `ChartConfig`'s, with the names
the prompt lists as ``enum``s (wherever the model marks a name with ``x-names``)."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from flywheel.domains.chart.config import ChartConfig
from flywheel.domains.chart.prompt import PromptLists, lists_from_messages

__all__ = ["config_json_schema", "output_schema", "output_schema_for"]


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
