"""Session plans: who talks to the assistant, about what, in how many turns.

Session `index` of a run with `seed` is planned from its own generator,
``random.Random(f"{seed}:{index}")``, so the plan does not depend on which thread runs it
or on what the model answers: the same seed gives the same sessions, prompts, personas
and draft counts. (Decisions after an answer use a generator of their own per request;
see `run`.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Mapping

from flywheel.domains.chart import CHART_TASK
from flywheel.domains.chart.prompt import lists_from_messages
from flywheel.domains.chart.schema import response_format
from flywheel.simulate.tasks import DEFAULT_TASK_MIX, SUPPORT_TASK, Task, followup_task, make_task
from flywheel.simulate.users import DEFAULT_PERSONA_SHARES, Behaviour, User, make_user

__all__ = ["SessionPlan", "SimulationConfig", "TurnPlan", "app_response_format", "plan_session"]


@dataclass(frozen=True)
class SimulationConfig:
    """What the simulated population looks like: the task mix, the persona shares, the
    behaviour rates and the number of distinct users sessions are drawn from."""

    task_mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_MIX))
    persona_shares: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PERSONA_SHARES))
    behaviour: Behaviour = field(default_factory=Behaviour)
    # The assistant's users: analysts who come back. Rater cleaning judges a user from
    # their own ratings, so only a returning user can earn the trust that lets their edits
    # be approved without a person (review.approve_edits_min_trust): with 600 sessions, 50
    # users put 147 of 199 kept edits above it, 200 users 22 of 173.
    users: int = 50
    # The chart app sends its dataset's JSON Schema as ``response_format`` (OpenAI's
    # json_schema type), as an app using structured outputs does; False: free text.
    structured_outputs: bool = True
    # The share of sessions that go to the second app, the support-desk agent (tool calls,
    # `flywheel.simulate.agent`); the rest keep `task_mix`. 0: the analytics assistant only.
    agent_share: float = 0.0

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError("SimulationConfig.users must be at least 1")
        if not 0.0 <= self.agent_share <= 1.0:
            raise ValueError("SimulationConfig.agent_share is a share in [0, 1]")

    @property
    def mix(self) -> Mapping[str, float]:
        """The task mix with the agent app's share (`task_mix` when `agent_share` is 0)."""
        if not self.agent_share:
            return self.task_mix
        total = sum(self.task_mix.values()) or 1.0
        return {**{k: v / total * (1 - self.agent_share) for k, v in self.task_mix.items()},
                SUPPORT_TASK: self.agent_share}


@dataclass(frozen=True)
class TurnPlan:
    """One turn: the task (its messages are the new user message only) and how many
    drafts the user asks for."""

    turn: int
    task: Task
    n: int


@dataclass(frozen=True)
class SessionPlan:
    index: int
    session_id: str
    user: User
    turns: tuple[TurnPlan, ...]

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "session_id": self.session_id,
            "user": self.user.user_id,
            "persona": self.user.persona,
            "turns": [{"turn": t.turn, "n": t.n, **t.task.to_dict()} for t in self.turns],
        }


def plan_session(seed: int | str, index: int, config: SimulationConfig | None = None, *, run_tag: str | None = None) -> SessionPlan:
    """The plan of session `index` for `seed` (see the module docstring)."""
    config = config or SimulationConfig()
    b = config.behaviour
    rng = random.Random(f"{seed}:{index}")
    user = make_user(seed, rng.randrange(config.users), config.persona_shares)
    task = make_task(rng, mix=config.mix, messy_rate=b.messy_rate)
    turns = [TurnPlan(1, task, 2 if rng.random() < b.two_drafts_rate else 1)]
    if b.max_followups > 0 and rng.random() < b.multi_turn_rate and not task.tools:
        for _ in range(rng.randint(1, b.max_followups)):
            task = followup_task(rng, task, messy_rate=b.messy_rate)
            turns.append(TurnPlan(len(turns) + 1, task, 2 if rng.random() < b.two_drafts_rate else 1))
    session_id = f"sim-{run_tag if run_tag is not None else seed}-{index:06d}"
    return SessionPlan(index=index, session_id=session_id, user=user, turns=tuple(turns))


def app_response_format(config: SimulationConfig, task_type: str, messages: list[dict]) -> dict | None:
    """The ``response_format`` the app sends with `messages`: the chart configuration's JSON
    Schema for the dataset the conversation's prompt lists (`flywheel.domains.chart.schema`),
    when the config asks for structured outputs; None otherwise."""
    if not config.structured_outputs or task_type != CHART_TASK:
        return None
    lists = lists_from_messages(messages)
    return response_format(lists) if lists is not None else None
