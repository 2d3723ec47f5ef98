"""Offline synthetic traffic: the simulator's users without a model or a gateway.

`synthetic_events` plays the same session plans, personas and decisions as `run` does
against a live gateway, but the drafts come from a stand-in for the served model: for
chart requests the right configuration with probability ``p_correct`` and otherwise a
perturbed one (wrong chart type, a metric or filter missing, prose instead of JSON); for
the support agent's requests the right call or a wrong one (`agent.wrong_call`: another
function, a wrong or missing argument, text instead of a call), recorded as the gateway
records calls (`tools`, `tool_choice`, each draft's `tool_calls`), with honest users'
corrections as `edit` feedback carrying the corrected call; for
the other task types a good answer built from what the task knows (its reference text,
keywords, expected number) or a bad one (a refusal, rambling, a wrong number). A share of
sessions repeat an earlier request reworded (`paraphrase`), so dedup has work, and a few
answers carry defects the cleaning rules must catch (a leaked secret, broken encoding, a
model error). Everything is drawn from per-session generators, so the same seed gives the
same events, ids and timestamps; 100k prompts take seconds.

The events are the ones the gateway emits (`streams.schemas.Interaction`/`Feedback`); the
ground truth goes to a `SyntheticTruth`: request id -> what the request was (task type,
persona, messy flags, which drafts were correct, paraphrase group...) and user id ->
persona. `emit_synthetic` produces the events to Kafka so they land through the control
plane like real traffic.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Iterable

from flywheel.domains.tool_calls import parse_answer
from flywheel.simulate import agent, charts
from flywheel.simulate.sessions import SimulationConfig, app_response_format, plan_session
from flywheel.simulate.tasks import Judgement, Task
from flywheel.simulate.users import decide
from streams.schemas import Feedback, Interaction

__all__ = ["SyntheticTraffic", "SyntheticTruth", "emit_synthetic", "paraphrase", "synthetic_events"]

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
MODEL_ALIAS = "flywheel-chat"
MODEL_VERSION = "base"
DEFECTS = ("secret", "garbage-encoding", "model-error", "empty")


def _params(n: int, task: Task | None = None) -> dict:
    """The sampling parameters the gateway records for a request of the app."""
    params = {"temperature": 0.0 if n == 1 else 0.8, "max_tokens": 200, "n": n}
    if task is not None and task.parallel_tool_calls is not None:
        params["parallel_tool_calls"] = task.parallel_tool_calls
    return params


def _draft_event(i: int, text: str, task: Task, call_prefix: str) -> dict:
    """Draft `i` as the gateway records it: an agent's calls split out of the text."""
    if not task.tools:
        return {"index": i, "content": text, "finish_reason": "stop"}
    content, calls = parse_answer(text, [t["function"]["name"] for t in task.tools])
    if not calls:
        return {"index": i, "content": text, "finish_reason": "stop"}
    calls = [{**c, "id": f"{call_prefix}-{i}-{k}"} for k, c in enumerate(calls)]
    return {"index": i, "content": content, "finish_reason": "tool_calls", "tool_calls": calls}


class SyntheticTruth(dict):
    """request_id -> {task_type, persona, user, messy, drafts_correct (by the task's checker),
    drafts_good (what the stand-in meant: a good or a bad answer), focus, paraphrase_of,
    defect, ...} and user_id -> persona, in one mapping (request ids start with
    ``chatcmpl-``, user ids with ``sim``); `requests` and `users` split them."""

    @property
    def requests(self) -> dict[str, dict]:
        return {k: v for k, v in self.items() if isinstance(v, dict)}

    @property
    def users(self) -> dict[str, str]:
        return {k: v for k, v in self.items() if isinstance(v, str)}


@dataclass
class SyntheticTraffic:
    """What `synthetic_events` returns; unpacks as ``interactions, feedback, truth``."""

    interactions: list[Interaction]
    feedback: list[Feedback]
    truth: SyntheticTruth

    def __iter__(self):
        return iter((self.interactions, self.feedback, self.truth))


# ----------------------------------------------------------------------------- paraphrase

# Rewordings that keep the request (and its ground truth): openers, politeness and
# framing change, the content words stay, as when a user asks again or a colleague
# asks the same thing.
_SWAPS: tuple[tuple[str, str], ...] = (
    ("Show me ", "Can you show me "),
    ("Can you plot ", "Please plot "),
    ("I need ", "I want "),
    ("Please chart ", "Chart "),
    ("Give me ", "Show me "),
    ("I'd like to see ", "Let me see "),
    ("Explain ", "Can you explain "),
    ("Can you ", "Could you "),
    ("Make ", "Please make "),
    ("Summarize ", "Please summarize "),
)
_OPENERS = ("", "Hey, ", "Hi! ", "Please, ", "Hello, ")
_CLOSERS = ("", " thanks", " please", "?", " thank you")


def paraphrase(text: str, rng: random.Random) -> str:
    """The same request in other words: one phrase swapped, else a greeting or a closing
    word added. Never returns `text` unchanged."""
    out = text
    swaps = [s for s in _SWAPS if s[0] in out or s[1] in out]
    if swaps and rng.random() < 0.6:
        a, b = rng.choice(swaps)
        out = out.replace(a, b, 1) if a in out else out.replace(b, a, 1)
    elif rng.random() < 0.5:
        opener = rng.choice(_OPENERS[1:])
        out = opener + (out[0].lower() + out[1:] if out[:2] != out[:2].upper() else out)
    else:
        out = out.rstrip(" ?.!") + rng.choice(_CLOSERS[1:])
    if out == text:
        out = "Please: " + text
    return out


def _reword(task: Task, rng: random.Random) -> Task:
    """`task` asked again in other words (same truth, same messages around the words)."""
    words = paraphrase(task.user_text, rng)
    messages = [dict(m) for m in task.messages]
    if task.truth is not None and task.schema is not None:
        messages[-1]["content"] = charts.build_prompt(charts.get_schema(task.schema), words)
    else:
        messages[-1]["content"] = messages[-1]["content"].replace(task.user_text, words, 1)
    # Everything else stays: an agent's request keeps its tools, tool_choice and true call.
    return replace(task, messages=messages, user_text=words)


# ----------------------------------------------------------------------------- stand-in model

_REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot provide that information.",
    "I am unable to answer this question.",
)
_CHITCHAT_GOOD = (
    "I'm doing well, thank you! How can I help you with your data today?",
    "Happy to help. Tell me which report or chart you are working on and we can start there.",
    "Here is one: the word 'statistics' first appeared in the 18th century and meant facts about the state.",
    "I can turn your questions into charts, summarise updates, do quick calculations and explain analytics terms.",
    "Take a short break, then automate the repetitive parts: a saved chart often replaces a weekly spreadsheet.",
)


def _ramble(rng: random.Random) -> str:
    word = rng.choice(("data", "chart", "the the", "value", "report"))
    return " ".join([word] * rng.randint(12, 40))


def _perturb_config(config: dict, schema: charts.DatasetSchema, rng: random.Random) -> str:
    bad = json.loads(json.dumps(config))
    kind = rng.randrange(6)
    if kind == 0:
        bad["chartType"] = rng.choice([t for t in charts.CHART_TYPES if t != config["chartType"]])
    elif kind == 1:
        extra = [m for m in schema.metrics if m not in bad["chartFields"]["metrics"]]
        bad["chartFields"]["metrics"] = [rng.choice(extra)] if extra else []
    elif kind == 2 and "chartTimeFilter" in bad:
        bad.pop("chartTimeFilter")
    elif kind == 2:
        bad["chartTimeFilter"] = {"granularity": "month", "dayjsScript": ["dayjs().startOf('month')", "dayjs().endOf('month')"]}
    elif kind == 3:
        bad["mainAxis"] = rng.choice([d for d in schema.all_dimensions if d != config["mainAxis"]])
    elif kind == 4:
        return "Here is a chart for you: " + json.dumps({"chart": {"type": "bar", "data": {"x": bad["mainAxis"]}}})
    else:
        bad["topN"] = {"metric": bad["chartFields"]["metrics"][0], "sort": "DESC", "number": rng.choice((3, 10))}
        bad.pop("sort", None)
    return charts.dump_config(bad) if rng.random() < 0.7 else "```json\n" + json.dumps(bad, indent=1) + "\n```"


def _good_answer(task: Task, rng: random.Random) -> str:
    if task.call is not None:
        return agent.render_answer("", [task.call])
    if task.truth is not None:
        return charts.dump_config(task.truth)
    if task.expected is not None:
        value = task.expected
        shown = f"{value:,.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value):,}"
        return rng.choice((f"The answer is {shown}.", f"Working it out step by step gives {shown}.", f"Result: {shown}"))
    words = [group[0] for group in task.keywords]
    if task.task_type == "writing/summarize":
        return f"In short: {', '.join(words)} are the main points of this update."
    if task.task_type == "writing/rewrite":
        return (f"Hello, could you please help me with the {' and the '.join(words)}? "
                "I would really appreciate it. Thank you!")
    if task.task_type == "qa/analytics-concepts":
        return f"Briefly: it is about {', '.join(words)}. " + rng.choice(
            ("Analysts use it to compare results over time.", "It helps you read a dashboard correctly."))
    return rng.choice(_CHITCHAT_GOOD)


def _bad_answer(task: Task, rng: random.Random) -> str:
    if task.call is not None:
        return agent.wrong_call(task.call, rng)
    if task.truth is not None:
        if task.schema is None or rng.random() < 0.15:
            return rng.choice((_ramble(rng), rng.choice(_REFUSALS)))
        return _perturb_config(task.truth, charts.get_schema(task.schema), rng)
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(_REFUSALS)
    if roll < 0.5:
        return _ramble(rng)
    if task.expected is not None:
        return f"The answer is {round(task.expected * rng.choice((0.5, 1.1, 2, 10)) + 1, 2)}."
    return rng.choice(("ok", "I don't know.", "Yes.", "Sure."))


def _draft(task: Task, rng: random.Random, p_correct: float) -> tuple[str, bool]:
    """A draft and whether the stand-in meant it to be good."""
    good = rng.random() < p_correct
    return (_good_answer(task, rng) if good else _bad_answer(task, rng)), good


def _judge(task: Task, draft: str) -> Judgement:
    if task.truth is not None and draft == charts.dump_config(task.truth):
        return Judgement(1.0, True)  # the exact right configuration: skip the verifier
    return task.judge(draft)


def _defective(text: str, defect: str, rng: random.Random) -> str:
    if defect == "secret":
        return text + " (debug: api_key sk-" + "".join(rng.choice("abcdefghijkmnpqrstuvwxyz0123456789") for _ in range(32)) + ")"
    if defect == "garbage-encoding":
        return text.encode("utf-8").decode("latin-1")[:60] + " Ã©Ã¨ â€™ \ufffd\ufffd"
    if defect == "empty":
        return ""
    return text


# ----------------------------------------------------------------------------- events


def synthetic_events(
    n_sessions: int,
    seed: int = 0,
    *,
    config: SimulationConfig | None = None,
    p_correct: float = 0.45,
    paraphrase_rate: float = 0.12,
    defect_rate: float = 0.02,
    start: datetime = EPOCH,
    run_tag: str | None = None,
    app: str = "analytics-assistant",
) -> SyntheticTraffic:
    """`n_sessions` simulated sessions as gateway events, with their ground truth.

    `p_correct` is the stand-in model's chance of a good draft; `paraphrase_rate` the share
    of sessions that repeat an earlier session's first request in other words;
    `defect_rate` the share of requests whose draft 0 carries a defect (see `DEFECTS`).
    `run_tag` replaces the seed in ids, so two batches with one seed do not collide.
    """
    if n_sessions < 0:
        raise ValueError("n_sessions must be >= 0")
    if not 0 <= p_correct <= 1 or not 0 <= paraphrase_rate <= 1 or not 0 <= defect_rate <= 1:
        raise ValueError("p_correct, paraphrase_rate and defect_rate are probabilities in [0, 1]")
    config = config or SimulationConfig()
    tag = run_tag if run_tag is not None else str(seed)
    interactions: list[Interaction] = []
    feedback: list[Feedback] = []
    truth = SyntheticTruth()
    firsts: list[tuple[Task, str]] = []  # first requests so far, for paraphrases
    for index in range(n_sessions):
        plan = plan_session(seed, index, config, run_tag=tag)
        rng = random.Random(f"{seed}:{index}:synthetic")
        turns = list(plan.turns)
        paraphrase_of = None
        if firsts and rng.random() < paraphrase_rate:
            original, original_id = firsts[rng.randrange(len(firsts))]
            turns = [type(turns[0])(1, _reword(original, rng), turns[0].n)]
            paraphrase_of = original_id
        truth[plan.user.user_id] = plan.user.persona
        at = start + timedelta(seconds=index * 7 + rng.random())
        history: list[dict] = []
        for turn in turns:
            task = turn.task
            messages = history + [dict(m) for m in task.messages]
            attempt, regenerate_of = 0, None
            while True:
                request_id = f"chatcmpl-syn{tag}-{index:06d}-{turn.turn}-{attempt}"
                at += timedelta(seconds=2 + rng.random() * 3)
                drafts, meant_good = map(list, zip(*(_draft(task, rng, p_correct) for _ in range(turn.n))))
                defect = rng.choice(DEFECTS) if rng.random() < defect_rate else None
                if defect is not None:
                    drafts[0] = _defective(drafts[0], defect, rng)
                error = defect == "model-error"
                events = [_draft_event(i, d, task, f"call_syn{tag}-{index:06d}-{turn.turn}-{attempt}")
                          for i, d in enumerate(drafts)]
                judgements = [_judge(task, d) for d in drafts]
                decision = decide(plan.user.persona, task, judgements, random.Random(f"{seed}:{index}:{turn.turn}:{attempt}:decide"),
                                  config.behaviour, allow_regenerate=attempt == 0)
                interactions.append(Interaction(
                    event_id=f"ev-syn{tag}-{index:06d}-{turn.turn}-{attempt}",
                    request_id=request_id, session_id=plan.session_id, turn=turn.turn, user_id=plan.user.user_id,
                    app=task.app if task.tools else app, created_at=at, model_alias=MODEL_ALIAS,
                    model_version=MODEL_VERSION, messages=messages,
                    drafts=[] if error else events,
                    params=_params(turn.n, task),
                    tools=list(task.tools) or None, tool_choice=task.tool_choice,
                    response_format=app_response_format(config, task.task_type, messages),  # as the gateway records it
                    usage={"prompt_tokens": sum(len(m["content"]) for m in messages) // 4,
                           "completion_tokens": sum(len(d) for d in drafts) // 4},
                    timing={"total_ms": round(200 + rng.random() * 800, 3)},
                    status="error" if error else "ok",
                    error={"type": "BackendError", "message": "the model backend failed", "status": 503} if error else None,
                    tags={"source": "synthetic"},
                ))
                truth[request_id] = {
                    "task_type": task.task_type, "persona": plan.user.persona, "user": plan.user.user_id,
                    "session_id": plan.session_id, "turn": turn.turn, "attempt": attempt, "regenerate_of": regenerate_of,
                    "messy": list(task.messy), "followup": task.followup, "paraphrase_of": paraphrase_of,
                    "drafts_correct": [j.correct for j in judgements], "drafts_good": meant_good, "drafts_score": [round(j.score, 4) for j in judgements],
                    "focus": decision.focus, "defect": defect, "truth": task.truth, "expected": task.expected,
                    "call": task.call, "app": task.app if task.tools else app,
                }
                if error:
                    break
                for k, action in enumerate(decision.feedback):
                    action = action.about_calls(events[action.draft].get("tool_calls") or [])
                    feedback.append(Feedback(
                        event_id=f"fb-syn{tag}-{index:06d}-{turn.turn}-{attempt}-{k}", request_id=request_id,
                        draft=action.draft, kind=action.kind, value=action.value, text=action.text,
                        user_id=plan.user.user_id, session_id=plan.session_id, app=task.app if task.tools else app,
                        created_at=at + timedelta(seconds=1 + k), comment=action.comment,
                        tool_calls=list(action.tool_calls) if action.tool_calls else None,
                        tool_call_id=action.tool_call_id,
                    ))
                if not decision.regenerate:
                    break
                attempt, regenerate_of = attempt + 1, request_id
            if error:
                break  # like a real user after a failure: the session ends
            if turn.turn == 1 and paraphrase_of is None:
                firsts.append((task, request_id))
            history = messages + [{"role": "assistant", "content": drafts[decision.focus]}]
    return SyntheticTraffic(interactions, feedback, truth)


def emit_synthetic(settings, n_sessions: int, seed: int = 0, *, drain_timeout: float = 60.0, **kwargs) -> SyntheticTruth:
    """Produce `synthetic_events` to the interactions and feedback topics (keys: session id
    and request id, as the gateway does) and wait until the broker acknowledged them.
    Returns the ground truth. Raises RuntimeError when events remain unsent."""
    from streams.producer import EventProducer

    interactions, feedback, truth = synthetic_events(n_sessions, seed, **kwargs)
    # A spool of its own: a gateway may be running on the same data folder.
    producer = EventProducer(settings.bootstrap, settings.data_path / "spool-synthetic",
                             client_id=f"{settings.kafka.client_id}-synthetic")
    try:
        items: list = [(settings.topic("interactions"), e.session_id, e) for e in interactions]
        items += [(settings.topic("feedback"), e.request_id, e) for e in feedback]
        for chunk in _chunks(items, 5000):
            producer.emit_many(chunk)
        if not producer.flush(drain_timeout):
            raise RuntimeError(f"synthetic events not acknowledged by Kafka at {settings.bootstrap} within {drain_timeout}s")
    finally:
        producer.close(drain_timeout=5)
    return truth


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

