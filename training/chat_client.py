"""A small client for OpenAI-compatible chat endpoints, shared by the teacher and the judge.

It wraps the official ``openai`` client, which retries on its own (``max_retries``:
connection errors, timeouts, 408/409/429 and 5xx, with exponential backoff or as long as
the server's ``Retry-After`` says; a 400 is not retried), and adds what a relabeling job
needs: a concurrency limit (a semaphore, so thread pools of any size stay polite), a
thread-safe tally of requests, retries and tokens (and their cost when prices are given),
and one error, :class:`~training.errors.TeacherError`, that says which endpoint failed
after how many attempts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flywheel.settings import OpenAIEndpoint, Settings
from training.errors import TeacherError

__all__ = ["ChatClient", "ChatResult", "Tally", "teacher_client"]

# Set by the openai client on every request it sends: 0 on the first, n on the n-th retry.
_RETRY_HEADER = "x-stainless-retry-count"


@dataclass
class Tally:
    """Running totals of one client: requests, retries, failures, tokens and cost."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def to_dict(self) -> dict:
        with self._lock:
            return {
                "requests": self.requests, "retries": self.retries, "failures": self.failures,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost": round(self.cost, 6),
            }


@dataclass(frozen=True)
class ChatResult:
    texts: list[str]
    prompt_tokens: int
    completion_tokens: int
    attempts: int


class ChatClient:
    """``chat(messages, n=, temperature=, max_tokens=) -> ChatResult`` against one endpoint."""

    def __init__(self, base_url: str, model: str, *, api_key: str = "", timeout_s: float = 60.0, retries: int = 3,
                 concurrency: int = 4, price_prompt_per_1k: float = 0.0, price_completion_per_1k: float = 0.0,
                 what: str = "teacher"):
        if not base_url:
            raise TeacherError(f"the {what} needs an endpoint: set {what}.base_url (e.g. http://vllm:8000/v1)")
        if not model:
            raise TeacherError(f"the {what} needs a model name: set {what}.model")
        import openai

        self._openai = openai
        # The client retries (and honours Retry-After); the hook sees each attempt it sends,
        # in the calling thread, to count retries and name the attempts in an error.
        http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._on_request]})
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s,
                                    max_retries=retries, http_client=http_client)
        self.base_url, self.model, self.what = base_url, model, what
        self.retries = retries
        self.prices = (price_prompt_per_1k, price_completion_per_1k)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._calls = threading.local()
        self.tally = Tally()

    @classmethod
    def from_endpoint(cls, endpoint: OpenAIEndpoint, *, what: str, concurrency: int = 4,
                      price_prompt_per_1k: float = 0.0, price_completion_per_1k: float = 0.0) -> ChatClient:
        """A client on a settings endpoint (``settings.teacher``, ``settings.judge.resolve(...)``)."""
        return cls(endpoint.base_url, endpoint.model, api_key=endpoint.api_key.get_secret_value(),
                   timeout_s=endpoint.timeout_s, retries=endpoint.retries, concurrency=concurrency,
                   price_prompt_per_1k=price_prompt_per_1k, price_completion_per_1k=price_completion_per_1k,
                   what=what)

    def _on_request(self, request) -> None:
        retry = int(request.headers.get(_RETRY_HEADER, "0") or 0)
        self._calls.attempts = retry + 1
        if retry:
            with self.tally._lock:
                self.tally.retries += 1

    def chat(self, messages: list[dict], *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
             tools: list[dict] | None = None, tool_choice=None, response_format: dict | None = None) -> ChatResult:
        """``n`` answers; with `tools` (and `tool_choice`) passed on, an answer that called
        tools is its text then its calls in the Hermes text form (flywheel.domains.tool_calls);
        `response_format` is passed on as OpenAI's."""
        self._calls.attempts = 0
        extra: dict = {}
        if tools:
            extra.update(tools=tools, **({"tool_choice": tool_choice} if tool_choice is not None else {}))
        if response_format:
            extra["response_format"] = response_format
        try:
            with self._slots:
                response = self.client.chat.completions.create(
                    model=self.model, messages=messages, n=n, temperature=temperature, max_tokens=max_tokens, **extra)
        except self._openai.OpenAIError as exc:
            with self.tally._lock:
                self.tally.failures += 1
            attempts = max(1, self._calls.attempts)
            raise TeacherError(
                f"the {self.what} endpoint {self.base_url} (model {self.model!r}) failed after {attempts} attempt(s): "
                f"{type(exc).__name__}: {exc}") from exc
        usage = response.usage
        p = usage.prompt_tokens if usage else 0
        c = usage.completion_tokens if usage else 0
        with self.tally._lock:
            self.tally.requests += 1
            self.tally.prompt_tokens += p
            self.tally.completion_tokens += c
            self.tally.cost += p / 1000 * self.prices[0] + c / 1000 * self.prices[1]
        from flywheel.domains.tool_calls import render_answer

        texts = [render_answer(choice.message.content or "", [c.model_dump() for c in choice.message.tool_calls])
                 if choice.message.tool_calls else (choice.message.content or "")
                 for choice in sorted(response.choices, key=lambda ch: ch.index)]
        return ChatResult(texts, p, c, max(1, self._calls.attempts))


def teacher_client(settings: Settings) -> ChatClient | None:
    """A client on the teacher's endpoint (section teacher), or None when the teacher is the
    local model (no endpoint)."""
    teacher = settings.teacher
    if teacher.kind != "openai" or not teacher.base_url:
        return None
    return ChatClient.from_endpoint(teacher, what="teacher", concurrency=teacher.concurrency,
                                    price_prompt_per_1k=teacher.price_prompt_per_1k,
                                    price_completion_per_1k=teacher.price_completion_per_1k)
