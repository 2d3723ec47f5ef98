"""Play simulated users against a running gateway.

Sessions run concurrently on a thread pool, each one sequentially: send a turn with the
official `openai` client, judge the drafts against what the user asked for, post the
user's feedback to ``POST {base_url}/feedback``, maybe regenerate, go on to the next turn.
The traffic carries only what a real client would send; the ground truth (personas, messy
flags, right configurations, draft correctness, feedback sent) goes to a JSONL manifest
that evaluation and tests read.

Reproducibility: session plans come from per-session generators (`sessions`), and each
decision from ``random.Random(f"{seed}:{session}:{turn}:{attempt}:decide")``, so thread
scheduling never changes what is sent, and the same answers give the same decisions.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import openai

from flywheel.domains.tool_calls import render_answer
from flywheel.simulate.sessions import SessionPlan, SimulationConfig, TurnPlan, app_response_format, plan_session
from flywheel.simulate.tasks import CHART_TASK, Judgement
from flywheel.simulate.users import FeedbackAction, decide

__all__ = ["SimulationReport", "run_simulation"]


@dataclass
class SimulationReport:
    """What a simulation run did. `chart_accuracy` is the share of chart-config drafts
    that were correct (None when there were none)."""

    sessions: int = 0
    requests: int = 0
    errors: int = 0
    feedback: dict[str, int] = field(default_factory=dict)
    feedback_errors: int = 0
    chart_drafts: int = 0
    chart_correct: int = 0
    chart_accuracy: float | None = None
    agent_drafts: int = 0  # the support agent's drafts (tool calls), and how many made the right call
    agent_correct: int = 0
    requests_by_task: dict[str, int] = field(default_factory=dict)
    requests_by_persona: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def feedback_total(self) -> int:
        return sum(self.feedback.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "requests_per_s": round(self.requests_per_s, 3)}


@dataclass
class _Outcome:
    request_id: str
    drafts: list[str]
    focus: int
    calls: list[list[dict]] = field(default_factory=list)  # each draft's tool calls


class _ManifestWriter:
    """Thread-safe JSONL writer, one line per request, flushed as it goes."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self._file is None:
            return
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Simulation:
    def __init__(
        self,
        client: openai.OpenAI,
        *,
        seed: int,
        model: str,
        max_tokens: int,
        config: SimulationConfig,
        manifest: _ManifestWriter,
        deadline: float | None,
        max_sessions: int | None,
        run_tag: str | None,
    ) -> None:
        self.client = client
        self.seed = seed
        self.model = model
        self.max_tokens = max_tokens
        self.config = config
        self.manifest = manifest
        self.deadline = deadline
        self.max_sessions = max_sessions
        self.run_tag = run_tag
        self.report = SimulationReport()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._next_index = 0

    # -- scheduling

    def time_up(self) -> bool:
        return self.stop.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)

    def _claim_session(self) -> int | None:
        with self._lock:
            if self.time_up() or (self.max_sessions is not None and self._next_index >= self.max_sessions):
                return None
            index = self._next_index
            self._next_index += 1
            self.report.sessions += 1
            return index

    def worker(self) -> None:
        while (index := self._claim_session()) is not None:
            self.run_session(plan_session(self.seed, index, self.config, run_tag=self.run_tag))

    # -- one session

    def run_session(self, plan: SessionPlan) -> None:
        history: list[dict] = []
        for turn in plan.turns:
            if self.time_up():
                return
            messages = history + [dict(m) for m in turn.task.messages]
            outcome = self.request(plan, turn, messages, attempt=0)
            if outcome is None:
                return  # the gateway failed this turn; a real user would give up here too
            answer = {"role": "assistant", "content": outcome.drafts[outcome.focus]}
            if outcome.calls and outcome.calls[outcome.focus]:
                answer = {"role": "assistant", "content": None, "tool_calls": outcome.calls[outcome.focus]}
            history = messages + [answer]

    def request(
        self, plan: SessionPlan, turn: TurnPlan, messages: list[dict], *, attempt: int, regenerate_of: str | None = None
    ) -> _Outcome | None:
        task, user = turn.task, plan.user
        record: dict[str, Any] = {
            "request_id": None,
            "session_id": plan.session_id,
            "session_index": plan.index,
            "turn": turn.turn,
            "attempt": attempt,
            "regenerate_of": regenerate_of,
            "user": user.user_id,
            "persona": user.persona,
            "task_type": task.task_type,
            "intent": task.intent,
            "schema": task.schema,
            "user_text": task.user_text,
            "messy": list(task.messy),
            "followup": task.followup,
            "n": turn.n,
            "truth": task.truth,
            "expected": task.expected,
            "call": task.call,
            "drafts": [],
            "feedback": [],
            "error": None,
        }
        fmt = app_response_format(self.config, task.task_type, messages)
        started = time.monotonic()
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                n=turn.n,
                temperature=0.0 if turn.n == 1 else 0.8,
                max_tokens=self.max_tokens,
                user=user.user_id,
                extra_headers={"X-Session-Id": plan.session_id},
                **({"response_format": fmt} if fmt else {}),
                **({"tools": list(task.tools), "tool_choice": task.tool_choice,
                    "parallel_tool_calls": task.parallel_tool_calls} if task.tools else {}),
            )
            choices = sorted(response.choices, key=lambda c: c.index)
            calls = [[tc.model_dump(include={"id", "type", "function"}) for tc in (c.message.tool_calls or [])]
                     for c in choices]
            # The answer as the simulated user reads it: its text, then its calls (Hermes form).
            drafts = [render_answer(c.message.content or "", k) if k else (c.message.content or "")
                      for c, k in zip(choices, calls)]
            if not drafts:
                raise ValueError("the gateway answered without any choices")
            request_id = response.id
        except Exception as exc:  # noqa: BLE001 - count every failure, keep simulating
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
            record["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
            with self._lock:
                self.report.errors += 1
            self.manifest.write(record)
            return None
        record["request_id"] = request_id
        record["latency_ms"] = round((time.monotonic() - started) * 1000, 1)

        judgements: list[Judgement] = [task.judge(d) for d in drafts]
        record["drafts"] = [
            {"index": i, "correct": j.correct, "score": round(j.score, 4), "chars": len(d)}
            for i, (d, j) in enumerate(zip(drafts, judgements))
        ]
        rng = random.Random(f"{self.seed}:{plan.index}:{turn.turn}:{attempt}:decide")
        decision = decide(user.persona, task, judgements, rng, self.config.behaviour, allow_regenerate=attempt == 0)
        with self._lock:
            r = self.report
            r.requests += 1
            r.requests_by_task[task.task_type] = r.requests_by_task.get(task.task_type, 0) + 1
            r.requests_by_persona[user.persona] = r.requests_by_persona.get(user.persona, 0) + 1
            if task.task_type == CHART_TASK:
                r.chart_drafts += len(judgements)
                r.chart_correct += sum(j.correct for j in judgements)
            if task.call is not None:
                r.agent_drafts += len(judgements)
                r.agent_correct += sum(j.correct for j in judgements)
        for action in decision.feedback:
            action = action.about_calls(calls[action.draft])
            ok = self.send_feedback(request_id, user.user_id, action)
            record["feedback"].append({**asdict(action), "ok": ok})
        self.manifest.write(record)

        outcome = _Outcome(request_id, drafts, decision.focus, calls)
        if decision.regenerate and not self.time_up():
            again = self.request(plan, turn, messages, attempt=attempt + 1, regenerate_of=request_id)
            if again is not None:
                return again
        return outcome

    def send_feedback(self, request_id: str, user_id: str, action: FeedbackAction) -> bool:
        try:
            self.client.post("/feedback", body=action.body(request_id, user_id), cast_to=object)
        except Exception:  # noqa: BLE001 - a failed feedback post is counted, not fatal
            with self._lock:
                self.report.feedback_errors += 1
            return False
        with self._lock:
            self.report.feedback[action.kind] = self.report.feedback.get(action.kind, 0) + 1
        return True

    # -- reporting

    def status_line(self, started: float) -> str:
        r = self.report
        elapsed = max(time.monotonic() - started, 1e-9)
        accuracy = f"{r.chart_correct / r.chart_drafts:.0%}" if r.chart_drafts else "-"
        if r.agent_drafts:
            accuracy += f" | tool-call accuracy {r.agent_correct / r.agent_drafts:.0%}"
        return (
            f"simulating: {r.sessions} sessions | {r.requests} requests ({r.requests / elapsed:.2f}/s) | "
            f"{sum(r.feedback.values())} feedback | {r.errors} errors | chart accuracy {accuracy} | {elapsed:.0f}s"
        )


def run_simulation(
    base_url: str,
    api_key: str,
    *,
    seed: int = 0,
    duration_s: float | None = 60,
    max_sessions: int | None = None,
    concurrency: int = 4,
    model: str = "flywheel-chat",
    manifest_path: Path | None = None,
    max_tokens: int = 200,
    progress: bool = True,
    config: SimulationConfig | None = None,
    request_timeout_s: float = 120.0,
    run_tag: str | None = None,
) -> SimulationReport:
    """Simulate users of the analytics assistant against the gateway at `base_url` (its
    OpenAI base, e.g. ``http://127.0.0.1:8000/v1``) until `duration_s` has passed or
    `max_sessions` sessions have started, whichever comes first. Requests already in
    flight at the deadline finish; no new one starts.

    `config` sets the task mix, persona shares and behaviour rates; `run_tag` replaces the
    seed in session ids (``sim-<tag>-000042``) when several runs share a seed.
    """
    if duration_s is None and max_sessions is None:
        raise ValueError("give duration_s or max_sessions (or both), or the simulation would never end")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=request_timeout_s)
    manifest = _ManifestWriter(manifest_path)
    started = time.monotonic()
    sim = _Simulation(
        client,
        seed=seed,
        model=model,
        max_tokens=max_tokens,
        config=config or SimulationConfig(),
        manifest=manifest,
        deadline=None if duration_s is None else started + duration_s,
        max_sessions=max_sessions,
        run_tag=run_tag,
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="simulate") as pool:
            futures = [pool.submit(sim.worker) for _ in range(concurrency)]
            try:
                _wait(futures, progress, lambda: sim.status_line(started))
            except KeyboardInterrupt:
                sim.stop.set()
                concurrent.futures.wait(futures)
            for f in futures:
                f.result()  # a bug in a worker should surface, not vanish
    finally:
        manifest.close()
        client.close()
    report = sim.report
    report.elapsed_s = round(time.monotonic() - started, 3)
    report.chart_accuracy = report.chart_correct / report.chart_drafts if report.chart_drafts else None
    return report


def _wait(futures: list[concurrent.futures.Future], progress: bool, status: Callable[[], str]) -> None:
    if not progress:
        concurrent.futures.wait(futures)
        return
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    with Live(Text(status()), console=Console(stderr=True), refresh_per_second=4) as live:
        while True:
            done, _ = concurrent.futures.wait(futures, timeout=0.25)
            live.update(Text(status()))
            if len(done) == len(futures):
                break
