"""The task mix of the simulated analytics assistant.

Each task is the user's messages plus what the simulated user knows about a good answer:
the chart configuration for `data-viz/chart-config` (verifiable), the call a support-desk
customer's message asks for (`tool-calling/support-desk`, the second app: `agent`), a numeric answer for
`reasoning/math`, keywords for summaries and concept questions, politeness markers for
rewrites, and plain sanity heuristics for chit-chat. `Task.judge(answer)` turns that into
a `Judgement` the personas act on.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

from flywheel.domains.chart import CHART_TASK
from flywheel.simulate import agent, charts
from flywheel.simulate.messy import make_messy

__all__ = [
    "CHART_TASK",
    "DEFAULT_TASK_MIX",
    "SUPPORT_TASK",
    "TASK_TYPES",
    "Judgement",
    "Task",
    "followup_task",
    "make_task",
    "pick_task_type",
    "sanity_score",
]

SUPPORT_TASK = agent.SUPPORT_TASK
TASK_TYPES = (
    CHART_TASK,
    "writing/summarize",
    "writing/rewrite",
    "reasoning/math",
    "qa/analytics-concepts",
    "chat/chitchat",
    SUPPORT_TASK,  # the agent app's; not in the default mix (SimulationConfig.agent_share)
)
DEFAULT_TASK_MIX: Mapping[str, float] = {
    CHART_TASK: 0.50,
    "writing/summarize": 0.10,
    "writing/rewrite": 0.10,
    "reasoning/math": 0.10,
    "qa/analytics-concepts": 0.10,
    "chat/chitchat": 0.10,
}


@dataclass(frozen=True)
class Judgement:
    """How good an answer is from the point of view of what was asked: a score in
    [0, 1] and whether it counts as correct (a right chart, a right number...)."""

    score: float
    correct: bool


@dataclass(frozen=True)
class Task:
    """One user request: its type, the messages to send, and what a good answer is.

    `user_text` is the user's own words (possibly messy) inside `messages`; `truth` the
    chart configuration (chart tasks); `expected` the numeric answer (math); `keywords`
    groups of alternative words of which a good answer mentions each group; `reference`
    the text being summarised or rewritten; `messy` the roughening applied.
    """

    task_type: str
    messages: list[dict]
    user_text: str
    truth: dict | None = None
    expected: float | None = None
    keywords: tuple[tuple[str, ...], ...] = ()
    reference: str | None = None
    schema: str | None = None
    intent: str | None = None
    messy: tuple[str, ...] = ()
    followup: bool = False
    meta: Mapping[str, str] = field(default_factory=dict)
    tools: tuple[dict, ...] = ()
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    call: dict | None = None

    @property
    def app(self) -> str:
        """The app that sends the task: the support agent for tool calls, else the analytics assistant."""
        return agent.AGENT_APP if self.tools else "analytics-assistant"

    @property
    def checker(self) -> Callable[[str], float] | None:
        """A function answer -> score in [0, 1], or None when only sanity heuristics apply."""
        if self.truth is not None:
            truth = self.truth
            return lambda answer: charts.score_config(charts.parse_config(answer), truth)
        if self.expected is not None:
            return self._check_math
        if self.task_type == "writing/rewrite":
            return self._check_rewrite
        if self.task_type == "writing/summarize":
            return self._check_summary
        if self.keywords:
            return self._check_keywords
        return None

    def judge(self, answer: str) -> Judgement:
        """Score `answer` with the checker (or `sanity_score`) and decide correctness."""
        if self.call is not None:
            score, correct = agent.judge_call(self.call, answer)
            return Judgement(score, correct)
        if self.truth is not None:
            predicted = charts.parse_config(answer)
            return Judgement(charts.score_config(predicted, self.truth), charts.is_correct(predicted, self.truth))
        check = self.checker
        score = check(answer) if check is not None else sanity_score(answer)
        return Judgement(score, score >= (0.99 if self.expected is not None else 0.6))

    # -- checkers

    def _check_math(self, answer: str) -> float:
        numbers = [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?", answer or "")]
        if not numbers or self.expected is None:
            return 0.0

        def close(x: float) -> bool:
            return abs(x - self.expected) <= max(0.01, 0.005 * abs(self.expected))

        if close(numbers[-1]):
            return 1.0
        return 0.4 if any(close(x) for x in numbers) else 0.0

    def _keyword_coverage(self, answer: str) -> float:
        if not self.keywords:
            return 1.0
        low = (answer or "").lower()
        return sum(any(k in low for k in group) for group in self.keywords) / len(self.keywords)

    def _check_keywords(self, answer: str) -> float:
        return 0.7 * self._keyword_coverage(answer) + 0.3 * sanity_score(answer)

    def _check_summary(self, answer: str) -> float:
        answer = answer or ""
        shorter = 0 < len(answer.strip()) < len(self.reference or "") * 0.8
        return 0.6 * self._keyword_coverage(answer) + 0.2 * shorter + 0.2 * sanity_score(answer)

    def _check_rewrite(self, answer: str) -> float:
        low = (answer or "").lower()
        polite = any(m in low for m in ("please", "thank", "appreciate", "could you", "would you", "kindly", "sorry", "grateful"))
        return 0.4 * polite + 0.4 * self._keyword_coverage(answer) + 0.2 * sanity_score(answer)

    def to_dict(self) -> dict:
        """A JSON-ready description (for the manifest and for comparing plans)."""
        return {
            "task_type": self.task_type,
            "messages": self.messages,
            "user_text": self.user_text,
            "truth": self.truth,
            "expected": self.expected,
            "schema": self.schema,
            "intent": self.intent,
            "messy": list(self.messy),
            "followup": self.followup,
            **({"tools": list(self.tools), "tool_choice": self.tool_choice, "call": self.call} if self.tools else {}),
        }


def sanity_score(answer: str | None) -> float:
    """A length/sanity heuristic for answers without a checker: empty 0, a few characters
    0.2, mostly repeated words 0.3, very long 0.5, otherwise 0.8."""
    text = (answer or "").strip()
    if not text:
        return 0.0
    if len(text) < 10:
        return 0.2
    words = text.lower().split()
    if len(words) >= 8 and len(set(words)) / len(words) < 0.35:
        return 0.3
    if len(text) > 3000:
        return 0.5
    return 0.8


# ----------------------------------------------------------------------------- generators

_PARAGRAPHS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    (
        "Revenue for the third quarter reached 4.2 million dollars, up 12 percent on the same quarter last year. "
        "Growth came mostly from the enterprise plan, while the starter plan lost customers after the price change in July. "
        "The finance team expects the fourth quarter to be flat because two large renewals were signed early.",
        (("revenue",), ("12", "twelve", "grew", "growth", "up"), ("enterprise",)),
    ),
    (
        "The dashboard migration finished on Friday. All 38 reports now read from the new warehouse, and the nightly "
        "refresh dropped from three hours to forty minutes. Two reports still show small differences in returned orders, "
        "which the data team will fix next week.",
        (("migration", "migrated", "moved"), ("warehouse",), ("refresh", "faster", "minutes")),
    ),
    (
        "Customer satisfaction fell from 4.5 to 4.1 in the West region after the carrier change. Most complaints mention "
        "late deliveries and damaged parcels. Operations proposes switching back to the old carrier for large orders "
        "while the new one improves its on-time rate.",
        (("satisfaction",), ("west",), ("carrier", "deliver")),
    ),
    (
        "The spring email campaign reached 120,000 subscribers. The open rate was 31 percent, higher than the usual 24 "
        "percent, but the conversion rate stayed at 2 percent. Marketing wants to test shorter subject lines and a single "
        "call to action in the next send.",
        (("campaign", "email"), ("open rate", "opens", "31"), ("conversion",)),
    ),
    (
        "Attrition in the support team rose to 18 percent this year, twice the company average. Exit interviews point to "
        "night shifts and a lack of career paths. HR will pilot a rotation schedule and publish a promotion ladder for "
        "support engineers in the next quarter.",
        (("attrition", "turnover", "leaving", "left"), ("support",), ("shift", "career", "promotion")),
    ),
    (
        "Warehouse Dallas shipped 52,000 parcels in March, its busiest month so far. The on-time rate held at 96 percent "
        "despite the storm week, thanks to weekend shifts. Freight cost per parcel went up slightly because more orders "
        "were sent by air.",
        (("dallas", "warehouse"), ("parcels", "shipped", "shipments"), ("on-time", "on time", "96")),
    ),
)

_EMAILS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("Send me the sales numbers today. I asked twice already and I still don't have them.", (("sales",), ("numbers", "figures", "report"))),
    ("Your dashboard is broken again. Fix it before the board meeting.", (("dashboard",), ("meeting", "board"))),
    ("We are not paying this invoice. The report was late and half the charts were wrong.", (("invoice",), ("report", "charts"))),
    ("Stop changing the metric definitions without telling us. Our numbers don't match anymore.", (("metric", "definition"), ("numbers", "match"))),
    ("I need access to the marketing dataset now. Don't make me file another ticket.", (("access",), ("marketing", "dataset"))),
)

_CONCEPTS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("What is a cohort analysis?", (("group", "cohort"), ("time", "period", "over"), ("user", "customer", "behavio"))),
    ("What does churn rate mean?", (("customer", "user", "subscriber"), ("leave", "cancel", "stop", "lost"), ("period", "time", "month", "percent", "rate"))),
    ("Explain the difference between a dimension and a metric.", (("dimension",), ("metric", "measure"), ("categor", "group", "number", "numeric"))),
    ("What is a funnel chart used for?", (("stage", "step"), ("conversion", "drop")),),
    ("What is year-over-year growth?", (("year",), ("compare", "previous", "last", "same"), ("growth", "increase", "change", "percent"))),
    ("When should I use a line chart instead of a bar chart?", (("time", "trend"), ("categor", "compare", "discrete"))),
    ("What is a p-value, in simple words?", (("probability", "chance", "likely"), ("null", "random", "hypothesis"))),
    ("What is the difference between mean and median?", (("average", "mean"), ("middle", "median"), ("outlier", "skew", "extreme"))),
    ("What is a KPI?", (("key performance indicator", "indicator"), ("measure", "metric", "goal", "target"))),
    ("What does ARPU stand for and how is it calculated?", (("average revenue per user", "revenue per user"), ("divid", "total", "number of users"))),
)

_CHITCHAT = (
    "Hi! How are you today?",
    "Good morning, can you help me with some reports later?",
    "Thanks, that was really helpful!",
    "Tell me a fun fact about data.",
    "What can you do for me?",
    "I'm tired of spreadsheets. Any advice?",
    "Do you like charts?",
    "Can you tell me a short joke about statistics?",
)

_PLAIN_FOLLOWUPS = (
    "Can you make it shorter?",
    "Thanks! Can you explain that more simply?",
    "Can you give me an example?",
    "ok, and what else should I know?",
)

_NAMES = ("Alice", "Bob", "Carmen", "Deepak", "Emma", "Farid", "Grace", "Hiro")
_ITEMS = ("dashboards", "licences", "reports", "laptops", "chairs", "subscriptions")


def _math_problem(rng: random.Random) -> tuple[str, float]:
    kind = rng.randrange(6)
    if kind == 0:
        a, b, p = rng.randint(20, 200), rng.randint(20, 200), rng.choice((5, 12, 15, 25, 40))
        return (f"A store sold {a} units on Monday and {b} units on Tuesday at ${p} each. What was the total revenue?", float((a + b) * p))
    if kind == 1:
        old, new = rng.choice(((200, 250), (400, 300), (1200, 1500), (80, 100), (500, 450)))
        return (f"Sales went from {old} to {new}. What is the percentage change?", round((new - old) / old * 100, 2))
    if kind == 2:
        values = [rng.randint(10, 90) for _ in range(rng.choice((3, 4, 5)))]
        listed = ", ".join(str(v) for v in values)
        return (f"What is the average of {listed}?", round(sum(values) / len(values), 2))
    if kind == 3:
        revenue = rng.choice((1000, 2500, 4000, 8000))
        cost = int(revenue * rng.choice((0.6, 0.75, 0.8, 0.9)))
        return (f"Revenue was ${revenue:,} and costs were ${cost:,}. What is the profit margin in percent?", round((revenue - cost) / revenue * 100, 2))
    if kind == 4:
        visitors, rate = rng.choice((1000, 2000, 5000, 12000)), rng.choice((2, 3, 4, 5))
        return (f"A landing page had {visitors:,} visitors and a conversion rate of {rate}%. How many visitors converted?", float(visitors * rate // 100))
    name, n, price = rng.choice(_NAMES), rng.randint(3, 12), rng.choice((15, 30, 45, 60))
    item = rng.choice(_ITEMS)
    return (f"{name} buys {n} {item} at ${price} each and gets a $20 discount on the total. How much does {name} pay?", float(n * price - 20))


def make_task(
    rng: random.Random, task_type: str | None = None, *, mix: Mapping[str, float] | None = None, messy_rate: float = 0.15,
    schema: "charts.DatasetSchema | str | None" = None,
) -> Task:
    """A task of `task_type` (or one drawn from `mix`); with probability `messy_rate`
    the user's words are roughened (see `messy`), the expected answer staying the same.
    A chart task is over `schema` when given (e.g. a held-out one, `charts.eval_schemas()`),
    else over one of the traffic's datasets."""
    task_type = task_type or pick_task_type(rng, mix)
    messy = rng.random() < messy_rate

    def roughen(text: str) -> tuple[str, tuple[str, ...]]:
        if not messy:
            return text, ()
        result = make_messy(text, rng)
        return result.text, result.flags

    if task_type == CHART_TASK:
        request = charts.generate_request(rng, schema)
        words, flags = roughen(request.text)
        return Task(
            task_type,
            [{"role": "user", "content": charts.build_prompt(request.schema, words)}],
            user_text=words,
            truth=request.truth,
            schema=request.schema.name,
            intent=request.intent,
            messy=flags,
        )
    if task_type == SUPPORT_TASK:
        request = agent.generate_agent_request(rng)
        words, flags = request.text, ()  # typed cleanly: a typo in an order id would change the right call
        return Task(task_type, [{"role": "system", "content": agent.AGENT_SYSTEM}, {"role": "user", "content": words}],
                    words, intent=request.intent, messy=flags, tools=agent.TOOLS, tool_choice="required",
                    parallel_tool_calls=False, call=request.call)
    if task_type == "writing/summarize":
        paragraph, keywords = rng.choice(_PARAGRAPHS)
        instruction = rng.choice(
            ("Summarize the following paragraph in one sentence:", "Can you summarize this for my manager?", "Give me a short summary of this update:", "TL;DR this please:")
        )
        words, flags = roughen(instruction)
        return Task(task_type, [{"role": "user", "content": f"{words}\n\n{paragraph}"}], words, keywords=keywords, reference=paragraph, messy=flags)
    if task_type == "writing/rewrite":
        email, keywords = rng.choice(_EMAILS)
        instruction = rng.choice(
            ("Make this email more polite:", "Rewrite this message so it sounds friendlier:", "Can you make this email less rude?", "Please rewrite politely:")
        )
        words, flags = roughen(instruction)
        return Task(task_type, [{"role": "user", "content": f"{words}\n\n{email}"}], words, keywords=keywords, reference=email, messy=flags)
    if task_type == "reasoning/math":
        problem, answer = _math_problem(rng)
        words, flags = roughen(problem)
        return Task(task_type, [{"role": "user", "content": words}], words, expected=answer, messy=flags)
    if task_type == "qa/analytics-concepts":
        question, keywords = rng.choice(_CONCEPTS)
        words, flags = roughen(question)
        return Task(task_type, [{"role": "user", "content": words}], words, keywords=keywords, messy=flags)
    if task_type == "chat/chitchat":
        words, flags = roughen(rng.choice(_CHITCHAT))
        return Task(task_type, [{"role": "user", "content": words}], words, messy=flags)
    raise ValueError(f"unknown task type {task_type!r}; known: {TASK_TYPES}")


def draw_weighted(rng: random.Random, weights: Mapping[str, float], known, what: str) -> str:
    """Draw one of ``known`` with ``weights`` (names outside ``known`` are an error; the
    order of ``known`` fixes the draw, so the same seed gives the same name)."""
    unknown = set(weights) - set(known)
    if unknown:
        raise ValueError(f"unknown {what}(s) {sorted(unknown)}; known: {tuple(known)}")
    names = [n for n in known if weights.get(n, 0) > 0]
    if not names:
        raise ValueError(f"the weights give no {what} a positive weight")
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def pick_task_type(rng: random.Random, mix: Mapping[str, float] | None = None) -> str:
    """Draw a task type with the weights of `mix` (default `DEFAULT_TASK_MIX`)."""
    return draw_weighted(rng, DEFAULT_TASK_MIX if mix is None else mix, TASK_TYPES, "task type")


def followup_task(rng: random.Random, previous: Task, *, messy_rate: float = 0.15) -> Task:
    """The next turn of a multi-turn session: for charts a follow-up with the updated
    configuration ("now make it a line chart"), otherwise a generic follow-up judged by
    sanity heuristics. Its messages hold only the new user message; the runner puts the
    conversation so far in front."""
    messy = rng.random() < messy_rate
    if previous.truth is not None and previous.schema is not None:
        request = charts.ChartRequest(charts.get_schema(previous.schema), previous.user_text, previous.truth, previous.intent or "")
        follow = charts.generate_followup(rng, request)
        words, flags = (follow.text, ())
        if messy:
            result = make_messy(words, rng)
            words, flags = result.text, result.flags
        return Task(
            previous.task_type,
            [{"role": "user", "content": charts.build_followup_prompt(words)}],
            words,
            truth=follow.truth,
            schema=previous.schema,
            intent=follow.intent,
            messy=flags,
            followup=True,
        )
    words, flags = rng.choice(_PLAIN_FOLLOWUPS), ()
    if messy:
        result = make_messy(words, rng)
        words, flags = result.text, result.flags
    return Task(previous.task_type, [{"role": "user", "content": words}], words, messy=flags, followup=True)
