"""The general domain: what users of a chat assistant ask besides the app's own task
(summaries, rewrites, math, analytics concepts, chit-chat, code, extraction...).

Its task types and seeds are ``task_types.yaml``, the teacher's worked examples
``examples.yaml``. Free-text answers get the platform's generic checks (`GenericChecks`);
math and summaries refine them (`verifiers`). Task types without a verifier here get the
generic checks too, but count as having no verifier of their own.
"""

from __future__ import annotations

from pathlib import Path

from flywheel.domains.domain import Domain, GenericChecks, Task
from flywheel.domains.files import read_examples, read_task_types
from flywheel.domains.general.verifiers import math_rule, summary_rule

__all__ = ["RUBRIC", "domain"]

_HERE = Path(__file__).parent

#: The judge's criteria for general chat answers.
RUBRIC = "correct, complete, following the requested format, concise"

_VERIFIERS = {
    "writing/rewrite": GenericChecks(),
    "qa/analytics-concepts": GenericChecks(),
    "chat/chitchat": GenericChecks(),
    "reasoning/math": GenericChecks(math_rule),
    "writing/summarize": GenericChecks(summary_rule),
}


def _tasks() -> tuple[Task, ...]:
    examples = read_examples(_HERE / "examples.yaml")
    return tuple(
        Task(type=t, verifier=_VERIFIERS.get(t.name), examples=examples.get(t.name, ()))
        for t in read_task_types(_HERE / "task_types.yaml")
    )


domain = Domain(
    name="general",
    description="General chat tasks: writing, reasoning, questions, conversation, code, extraction.",
    tasks=_tasks(),
    rubric=RUBRIC,
)
