"""Task types and few-shot examples kept in YAML files (a domain ships them as package data).

Task types: ``{"groups": {group: {"description": ..., "types": {name: {description, seeds,
weight, guidelines}}}}}`` (the layout of the taxonomy file; ``guidelines``, optional, is what
a reviewer checks). Examples: ``{task_type: [{user,
assistant}, ...]}``. JSON Lines of ``{"task_type", "user", "assistant"}`` work too, for
generated pools.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from flywheel.domains.domain import Example, TaskType
from flywheel.domains.errors import DomainError

__all__ = ["examples_from_data", "read_examples", "read_task_types", "task_types_from_data"]


def _read(path: Path, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DomainError(f"cannot read the {what} {path}: {exc}") from exc
    if str(path).endswith(".jsonl"):
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DomainError(f"{path} is not valid JSON Lines: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DomainError(f"{path} is not valid YAML: {exc}") from exc


def task_types_from_data(data: Any, source: str = "<dict>") -> tuple[TaskType, ...]:
    """Task types from ``{"groups": {group: {"types": {name: {description, seeds, weight, guidelines}}}}}``."""
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict) or not data["groups"]:
        raise DomainError(f"{source}: expected a mapping with a non-empty 'groups' mapping")
    types = []
    for group, gdata in data["groups"].items():
        if not isinstance(gdata, dict) or not isinstance(gdata.get("types"), dict) or not gdata["types"]:
            raise DomainError(f"{source}: group {group!r} needs a non-empty 'types' mapping")
        for name, tdata in gdata["types"].items():
            full = f"{group}/{name}"
            if "/" in str(group) or "/" in str(name):
                raise DomainError(f"{source}: {full!r}: group and type names cannot contain '/'")
            if not isinstance(tdata, dict):
                raise DomainError(f"{source}: {full} must be a mapping with description and seeds")
            description = str(tdata.get("description") or "").strip()
            seeds = tuple(str(s).strip() for s in (tdata.get("seeds") or []) if str(s).strip())
            if not description:
                raise DomainError(f"{source}: {full} has no description")
            if len(seeds) < 2:
                raise DomainError(f"{source}: {full} needs at least 2 seed examples (has {len(seeds)})")
            try:
                weight = float(tdata.get("weight", 1.0))
            except (TypeError, ValueError):
                raise DomainError(f"{source}: {full}: weight must be a number") from None
            if weight <= 0:
                raise DomainError(f"{source}: {full}: weight must be positive")
            guidelines = tdata.get("guidelines") or ""
            if not isinstance(guidelines, str):
                raise DomainError(f"{source}: {full}: guidelines must be text")
            types.append(TaskType(full, description, seeds, weight, guidelines.strip()))
    return tuple(types)


def read_task_types(path: str | Path) -> tuple[TaskType, ...]:
    """The task types of a YAML file in the taxonomy's layout."""
    return task_types_from_data(_read(Path(path), "task-type taxonomy"), source=str(path))


def examples_from_data(data: Any, source: str = "<dict>") -> dict[str, tuple[Example, ...]]:
    """Examples per task type from ``{task_type: [{user, assistant}]}`` or a list of
    ``{task_type, user, assistant}`` records."""
    if isinstance(data, list):
        grouped: dict[str, list] = {}
        for rec in data:
            if not isinstance(rec, dict) or not isinstance(rec.get("task_type"), str):
                raise DomainError(f"{source}: every record needs a 'task_type', got {rec!r}")
            grouped.setdefault(rec["task_type"], []).append({k: v for k, v in rec.items() if k != "task_type"})
        data = grouped
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DomainError(f"{source}: expected a mapping of task type -> list of examples")
    out: dict[str, tuple[Example, ...]] = {}
    for task_type, examples in data.items():
        items = []
        for ex in examples or []:
            if not isinstance(ex, dict) or not isinstance(ex.get("user"), str) or not isinstance(ex.get("assistant"), str):
                raise DomainError(f"{source}: every example of {task_type!r} needs 'user' and 'assistant' strings, got {ex!r}")
            items.append(Example(ex["user"], ex["assistant"]))
        out[str(task_type)] = tuple(items)
    return out


def read_examples(path: str | Path) -> dict[str, tuple[Example, ...]]:
    """Few-shot examples per task type from a YAML (or JSON Lines) file."""
    return examples_from_data(_read(Path(path), "few-shot pool"), source=str(path))
