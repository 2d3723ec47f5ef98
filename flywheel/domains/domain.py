"""What an app brings to Flywheel: its domain, as one typed interface.

A `Domain` is a plain value a plugin module exposes (``domain = Domain(...)``):

- its task types (`TaskType`: taxonomy entries ``group/name`` with a description, seed
  examples of what users type, and a relative selection weight),
- per task type (`Task`): a verifier, an output JSON Schema where answers have one (used by
  constrained decoding, the teacher's structured output and ``response_format``), the
  few-shot examples of the teacher's pool, and optionally the training-target form of an
  answer (e.g. the bare compact JSON of a configuration),
- the judge's rubric: what makes one answer better than another in this domain.

Verifiers check an answer without knowing the truth: ``verifier(messages, answer) ->
Verdict``. A task type whose answers are free text can instead ask for the platform's
generic checks (length bounds, refusal/error boilerplate, broken encoding, runaway
repetition, language: `GenericChecks`), optionally refined by its own rule.

This module is the lowest layer: it imports nothing from training/, serving/, services/,
streams/ or the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

__all__ = ["Domain", "Example", "GenericChecks", "OutputSchema", "Task", "TaskType", "Verdict", "Verifier"]


@dataclass(frozen=True)
class Verdict:
    """A verifier's decision: `passed`, a `score` in [0, 1] (1.0 when passed; partial
    credit otherwise, for ranking samples), and the `reasons` it failed."""

    passed: bool
    score: float
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "score": round(self.score, 4), "reasons": list(self.reasons)}


#: ``verifier(messages, answer) -> Verdict``: `messages` is the conversation without the answer.
Verifier = Callable[[list[dict], str], Verdict]


@dataclass(frozen=True)
class GenericChecks:
    """The platform's generic checks for free-text answers (length bounds, no refusal or
    error boilerplate, no broken encoding or runaway repetition, the expected language).

    `refine(messages, answer, reasons) -> reasons` adjusts what they found with the task
    type's own rule (add a reason, or drop one that does not apply to this task)."""

    refine: Callable[[list[dict], str, list[str]], list[str]] | None = None


#: An output JSON Schema, or a function of the conversation returning one (None: no schema
#: for this prompt), for schemas that depend on the prompt (names listed in it).
OutputSchema = Union[Mapping[str, Any], Callable[[list[dict]], "Mapping[str, Any] | None"]]


@dataclass(frozen=True)
class TaskType:
    """One entry of the task-type taxonomy: ``name`` is ``group/type``."""

    name: str
    description: str
    seeds: tuple[str, ...]
    weight: float = 1.0
    #: What a reviewer checks before approving an answer of this type (shown beside each
    #: candidate in the console's review); empty when the domain gives none.
    guidelines: str = ""

    @property
    def group(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class Example:
    """A worked example for the teacher's few-shot pool: a user turn and a good answer."""

    user: str
    assistant: str


@dataclass(frozen=True)
class Task:
    """Everything a domain says about one task type."""

    type: TaskType
    verifier: Verifier | GenericChecks | None = None
    output_schema: OutputSchema | None = None
    examples: tuple[Example, ...] = ()
    #: The training-target form of an answer (None when it has none), e.g. bare compact JSON.
    target: Callable[[str], str | None] | None = None
    #: A tool-calling task type's tool set (OpenAI ``tools``): requests that offer these
    #: functions are of this type, whatever their text (`Domains.task_for_tools`).
    tools: tuple[Mapping[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return self.type.name

    def schema_for(self, messages: list[dict]) -> Mapping[str, Any] | None:
        """The output JSON Schema for an answer to `messages` (None: no schema)."""
        if self.output_schema is None:
            return None
        if callable(self.output_schema):
            return self.output_schema(messages)
        return self.output_schema


@dataclass(frozen=True)
class Domain:
    """An app's domain: a name, its task types, and the judge's rubric for them."""

    name: str
    tasks: tuple[Task, ...]
    #: What makes one answer better than another here, as the judge is told (None: the default).
    rubric: str | None = None
    description: str = ""

    @property
    def task_types(self) -> tuple[TaskType, ...]:
        return tuple(t.type for t in self.tasks)

    def problems(self) -> list[str]:
        """What is malformed about this domain (empty when it is well formed)."""
        out: list[str] = []
        if not isinstance(self.name, str) or not self.name.strip():
            out.append("the domain needs a non-empty name")
        if isinstance(self.tasks, (str, bytes)) or not isinstance(self.tasks, Sequence) or not self.tasks:
            return out + ["tasks must be a non-empty tuple of flywheel.domains.Task"]
        seen: set[str] = set()
        for task in self.tasks:
            if not isinstance(task, Task):
                out.append(f"tasks must hold flywheel.domains.Task values, not {type(task).__name__}")
                continue
            out += [f"task type {task.type.name!r}: {p}" if isinstance(task.type, TaskType) else p for p in _task_problems(task)]
            if isinstance(task.type, TaskType):
                if task.type.name in seen:
                    out.append(f"task type {task.type.name!r} is declared twice")
                seen.add(task.type.name)
        if self.rubric is not None and (not isinstance(self.rubric, str) or not self.rubric.strip()):
            out.append("rubric must be a non-empty string or None")
        return out


def _task_problems(task: Task) -> list[str]:
    t = task.type
    if not isinstance(t, TaskType):
        return [f"a task's type must be a flywheel.domains.TaskType, not {type(t).__name__}"]
    out = []
    group, sep, name = str(t.name).partition("/")
    if not sep or not group or not name or "/" in name:
        out.append("the name must be 'group/type' (one slash)")
    if not str(t.description or "").strip():
        out.append("has no description")
    if len(t.seeds) < 2:
        out.append(f"needs at least 2 seed examples (has {len(t.seeds)})")
    if not isinstance(t.weight, (int, float)) or isinstance(t.weight, bool) or t.weight <= 0:
        out.append("weight must be a positive number")
    if not isinstance(t.guidelines, str):
        out.append("guidelines must be a string")
    if task.verifier is not None and not isinstance(task.verifier, GenericChecks) and not callable(task.verifier):
        out.append("the verifier must be callable (messages, answer) -> Verdict, or GenericChecks")
    if task.output_schema is not None and not (callable(task.output_schema) or isinstance(task.output_schema, Mapping)):
        out.append("output_schema must be a JSON Schema mapping or a function of the messages")
    for ex in task.examples:
        if not isinstance(ex, Example) or not isinstance(ex.user, str) or not isinstance(ex.assistant, str):
            out.append(f"examples must be flywheel.domains.Example(user=str, assistant=str), got {ex!r}")
            break
    if task.target is not None and not callable(task.target):
        out.append("target must be callable (answer) -> str | None")
    for tool in task.tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            out.append(f"tools must be OpenAI function tools ({{'type': 'function', 'function': {{'name', ...}}}}), got {tool!r}")
            break
    return out
