"""A small client for OpenAI-compatible chat endpoints, shared by the teacher and the judge.

It wraps the official ``openai`` client with what a relabeling job needs: its own retry
loop with exponential backoff (connection errors, timeouts, 429 and 5xx are retried; a
400 is not), a concurrency limit (a semaphore, so thread pools of any size stay polite),
and a thread-safe tally of requests, retries and tokens (and their cost when prices are
given).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from training.errors import TeacherError

__all__ = ["ChatClient", "ChatResult", "Tally"]


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
                 backoff_s: float = 0.5, concurrency: int = 4, price_prompt_per_1k: float = 0.0,
                 price_completion_per_1k: float = 0.0, what: str = "teacher"):
        if not base_url:
            raise TeacherError(f"the {what} needs an endpoint: set {what}.base_url (e.g. http://vllm:8000/v1)")
        if not model:
            raise TeacherError(f"the {what} needs a model name: set {what}.model")
        import openai

        self._openai = openai
        # Retries are ours (counted, with our backoff); the client must not retry on its own.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0)
        self.base_url, self.model, self.what = base_url, model, what
        self.retries, self.backoff_s = retries, backoff_s
        self.prices = (price_prompt_per_1k, price_completion_per_1k)
        self._slots = threading.BoundedSemaphore(concurrency)
        self.tally = Tally()

    def _retryable(self, exc: Exception) -> bool:
        o = self._openai
        if isinstance(exc, (o.APIConnectionError, o.APITimeoutError, o.RateLimitError, o.InternalServerError)):
            return True
        return isinstance(exc, o.APIStatusError) and exc.status_code in (408, 409, 429) or (
            isinstance(exc, o.APIStatusError) and exc.status_code >= 500)

    def chat(self, messages: list[dict], *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256) -> ChatResult:
        last: Exception | None = None
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts = attempt + 1
            if attempt:
                with self.tally._lock:
                    self.tally.retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                with self._slots:
                    response = self.client.chat.completions.create(
                        model=self.model, messages=messages, n=n, temperature=temperature, max_tokens=max_tokens)
            except self._openai.OpenAIError as exc:
                last = exc
                if not self._retryable(exc):
                    break
                continue
            usage = response.usage
            p = usage.prompt_tokens if usage else 0
            c = usage.completion_tokens if usage else 0
            with self.tally._lock:
                self.tally.requests += 1
                self.tally.prompt_tokens += p
                self.tally.completion_tokens += c
                self.tally.cost += p / 1000 * self.prices[0] + c / 1000 * self.prices[1]
            texts = [choice.message.content or "" for choice in sorted(response.choices, key=lambda ch: ch.index)]
            return ChatResult(texts, p, c, attempt + 1)
        with self.tally._lock:
            self.tally.failures += 1
        raise TeacherError(
            f"the {self.what} endpoint {self.base_url} (model {self.model!r}) failed after {attempts} attempt(s): "
            f"{type(last).__name__}: {last}") from last


def teacher_client(settings) -> ChatClient | None:
    """A client on the teacher's endpoint (section teacher), or None when the teacher is the
    local model (no endpoint)."""
    t = settings.teacher
    if t.kind != "openai" or not t.base_url:
        return None
    return ChatClient(t.base_url, t.model, api_key=t.api_key, timeout_s=t.timeout_s, retries=t.retries,
                      backoff_s=t.backoff_s, concurrency=t.concurrency, price_prompt_per_1k=t.price_prompt_per_1k,
                      price_completion_per_1k=t.price_completion_per_1k, what="teacher")
