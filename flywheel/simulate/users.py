"""Simulated users: personas with fixed shares, and what each does with an answer.

- honest (~75%): rate from what they asked for (a correct chart config gets a thumbs up,
  the rating follows the checker's score), pick the better of two drafts, copy good
  answers, regenerate bad ones, and often fix a wrong chart config (an `edit` carrying
  the saved configuration, the best label the flywheel gets) or a wrong tool call of the
  support agent (an `edit` carrying the corrected call, `tool_calls`, about the draft's
  call, `tool_call_id`: `FeedbackAction.about_calls` fills in the draft's call ids);
- random (~12%): rate and choose at random;
- reverse (~8%): invert the honest judgement (thumbs flipped, rating 6 - r, the worse
  draft chosen);
- silent (~5%): never rate, choose or edit, but still copy and regenerate.

`decide` is pure: given the persona, the task, the judgements of the drafts and a random
generator it returns the feedback to send. It always draws the same random numbers in the
same order, so a decision depends only on its generator and the judgements.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from flywheel.simulate.charts import dump_config
from flywheel.simulate.tasks import Judgement, Task, draw_weighted

__all__ = [
    "DEFAULT_PERSONA_SHARES",
    "FEEDBACK_KINDS",
    "PERSONAS",
    "Behaviour",
    "Decision",
    "FeedbackAction",
    "User",
    "assign_persona",
    "decide",
    "make_user",
    "rating_for",
]

PERSONAS = ("honest", "random", "reverse", "silent")
DEFAULT_PERSONA_SHARES: Mapping[str, float] = {"honest": 0.75, "random": 0.12, "reverse": 0.08, "silent": 0.05}
FEEDBACK_KINDS = ("thumb", "rating", "choice", "edit", "regenerate", "copy")

_GOOD_COMMENTS = ("perfect, thanks", "exactly what I needed", "great", "nice")
_BAD_COMMENTS = ("not what I asked for", "wrong chart", "the filter is missing", "wrong time range", "不对", "this is not right")


@dataclass(frozen=True)
class Behaviour:
    """How often users do things. Rates are probabilities per request (or per session
    for `multi_turn_rate`)."""

    messy_rate: float = 0.15  # the prompt is typed messily
    multi_turn_rate: float = 0.25  # the session has follow-up turns
    max_followups: int = 2
    two_drafts_rate: float = 0.15  # the request asks for n=2 drafts
    thumb_rate: float = 0.6
    rating_rate: float = 0.25
    copy_rate: float = 0.4  # after a good answer
    regenerate_rate: float = 0.2  # after a bad answer
    edit_rate: float = 0.6  # honest users fixing a wrong chart configuration
    comment_rate: float = 0.05


@dataclass(frozen=True)
class User:
    """A simulated user: a pseudonymous id and a persona."""

    user_id: str
    persona: str
    index: int


def assign_persona(rng: random.Random, shares: Mapping[str, float] | None = None) -> str:
    """Draw a persona with the weights of `shares` (default `DEFAULT_PERSONA_SHARES`)."""
    return draw_weighted(rng, DEFAULT_PERSONA_SHARES if shares is None else shares, PERSONAS, "persona")


def make_user(seed: int | str, index: int, shares: Mapping[str, float] | None = None) -> User:
    """User number `index` of the pool for `seed`; the same arguments give the same user."""
    rng = random.Random(f"{seed}:user:{index}")
    return User(user_id=f"sim{seed}-u{index:04d}", persona=assign_persona(rng, shares), index=index)


def rating_for(judgement: Judgement) -> int:
    """The 1-5 rating an honest user gives: 5 for a correct answer, else 1 + 4*score
    (rounded, at most 4)."""
    if judgement.correct:
        return 5
    return max(1, min(4, 1 + round(4 * judgement.score)))


@dataclass(frozen=True)
class FeedbackAction:
    """One feedback event a user sends about a request."""

    kind: str
    draft: int = 0
    value: int | None = None
    text: str | None = None
    comment: str | None = None
    tool_calls: tuple[dict, ...] | None = None  # edit: the draft's calls as they should have been
    tool_call_id: str | None = None  # the draft's call the feedback is about

    def about_calls(self, draft_calls: list[dict]) -> "FeedbackAction":
        """This action pointed at the draft's calls (`draft_calls`, as the answer carries
        them): a corrected call keeps the id of the call it corrects (the draft's first),
        or gets a new one when the draft made none."""
        if not self.tool_calls:
            return self
        first = draft_calls[0]["id"] if draft_calls else None
        fixed = tuple({**c, "id": first or f"call_fix{k}"} if k == 0 else c for k, c in enumerate(self.tool_calls))
        return FeedbackAction(self.kind, self.draft, self.value, self.text, self.comment, fixed, first)

    def body(self, request_id: str, user_id: str) -> dict:
        """The JSON body of ``POST /feedback``."""
        body = {
            "request_id": request_id,
            "kind": self.kind,
            "draft": self.draft,
            "value": self.value,
            "text": self.text,
            "comment": self.comment,
            "user": user_id,
        }
        if self.tool_calls:
            body["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.tool_call_id:
            body["tool_call_id"] = self.tool_call_id
        return body


@dataclass(frozen=True)
class Decision:
    """What a user does after reading the drafts: the draft they go on with (`focus`),
    the feedback to send (in order), and whether they ask again (`regenerate`)."""

    focus: int
    feedback: tuple[FeedbackAction, ...] = field(default_factory=tuple)
    regenerate: bool = False


def decide(
    persona: str,
    task: Task,
    judgements: Sequence[Judgement],
    rng: random.Random,
    behaviour: Behaviour | None = None,
    *,
    allow_regenerate: bool = True,
) -> Decision:
    """The feedback a user of `persona` sends after reading drafts judged `judgements`
    (one per draft, from `task.judge`)."""
    if persona not in PERSONAS:
        raise ValueError(f"unknown persona {persona!r}; known: {PERSONAS}")
    if not judgements:
        return Decision(focus=0)
    b = behaviour or Behaviour()
    n = len(judgements)
    # Draw everything up front, always in this order (see the module docstring).
    u_thumb, u_rating, u_copy, u_edit, u_regen, u_comment = (rng.random() for _ in range(6))
    random_pick = rng.randrange(n)
    random_good = rng.random() < 0.5
    random_rating = rng.randint(1, 5)
    comment_pick = rng.random()

    actions: list[FeedbackAction] = []

    # Which draft the user goes on with, and the choice event for two drafts.
    focus = 0
    if n > 1 and persona != "silent":
        ranked = sorted(range(n), key=lambda i: (judgements[i].correct, judgements[i].score))
        best, worst = ranked[-1], ranked[0]
        tie = (judgements[best].correct, judgements[best].score) == (judgements[worst].correct, judgements[worst].score)
        chosen = {"honest": None if tie else best, "reverse": None if tie else worst, "random": random_pick}[persona]
        if chosen is not None:
            focus = chosen
            actions.append(FeedbackAction("choice", draft=chosen))
    truth = judgements[focus]

    # How the answer looks to this user.
    if persona == "random":
        good = random_good
    elif persona == "reverse":
        good = not truth.correct
    else:
        good = truth.correct

    rates = persona != "silent"
    if rates and u_thumb < b.thumb_rate:
        thumb = 1 if truth.correct else -1
        value = {"honest": thumb, "reverse": -thumb, "random": 1 if random_good else -1}[persona]
        comment = None
        if u_comment < b.comment_rate:
            pool = _GOOD_COMMENTS if value > 0 else _BAD_COMMENTS
            comment = pool[int(comment_pick * len(pool))]
        actions.append(FeedbackAction("thumb", draft=focus, value=value, comment=comment))
    if rates and u_rating < b.rating_rate:
        honest = rating_for(truth)
        value = {"honest": honest, "reverse": 6 - honest, "random": random_rating}[persona]
        actions.append(FeedbackAction("rating", draft=focus, value=value))
    if good and u_copy < b.copy_rate:
        actions.append(FeedbackAction("copy", draft=focus))
    edited = False
    if persona == "honest" and task.truth is not None and not truth.correct and u_edit < b.edit_rate:
        actions.append(FeedbackAction("edit", draft=focus, text=dump_config(task.truth)))
        edited = True
    elif persona == "honest" and task.call is not None and not truth.correct and u_edit < b.edit_rate:
        actions.append(FeedbackAction("edit", draft=focus, tool_calls=(dict(task.call),)))
        edited = True
    regenerate = allow_regenerate and not good and not edited and u_regen < b.regenerate_rate
    if regenerate:
        actions.append(FeedbackAction("regenerate", draft=focus))
    return Decision(focus=focus, feedback=tuple(actions), regenerate=regenerate)
