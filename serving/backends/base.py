"""The interface every serving backend implements.

A backend turns one chat request into ``n`` drafts. It exposes a single primitive,
:meth:`Backend.submit`, which returns a :class:`Generation`: an iterator of
:class:`Delta` pieces (text for one draft) ending, per draft, with a ``finish_reason``.
The gateway builds both the streaming and the non-streaming answer from the same
iterator, so the two can never disagree.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Protocol

#: What ``response_format: {"type": "json_object"}`` asks for: any JSON object.
ANY_JSON_OBJECT: Mapping[str, Any] = {"type": "object"}


@dataclasses.dataclass(frozen=True)
class ResponseFormat:
    """OpenAI's ``response_format``, as the client sent it (validated by the gateway).

    ``json_schema`` is OpenAI's object for ``type == "json_schema"`` (``name``,
    ``description``, ``schema``, ``strict``), kept whole so a backend that speaks OpenAI's
    protocol can pass it on unchanged (:meth:`to_openai`); a backend that decodes itself
    reads :attr:`schema`.
    """

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)

    @property
    def schema(self) -> Mapping[str, Any] | None:
        """The JSON Schema every draft must follow: the given one for ``json_schema`` (with
        or without ``strict``: a backend that can decode under it always does), any JSON
        object for ``json_object``, None for plain text."""
        if self.type == "json_schema":
            return (self.json_schema or {}).get("schema", ANY_JSON_OBJECT)
        if self.type == "json_object":
            return ANY_JSON_OBJECT
        return None

    def to_openai(self) -> dict[str, Any]:
        """The request field, as OpenAI's API takes it."""
        if self.json_schema is None:
            return {"type": self.type}
        return {"type": self.type, "json_schema": dict(self.json_schema)}


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters, already validated by the gateway's protocol layer."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: ResponseFormat | None = None  # the shape every draft must take

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[dict, ...]  # OpenAI chat messages: {"role": ..., "content": str}
    params: SamplingParams = SamplingParams()
    n: int = 1
    version: str = "base"  # the model version to serve (alias resolution happens upstream)


@dataclasses.dataclass(frozen=True)
class Delta:
    """A piece of draft ``index``. ``finish_reason`` is set on the last piece of that draft
    ("stop", "length" or "error"); ``text`` may be empty on that piece."""

    index: int
    text: str
    finish_reason: str | None = None


class BackendError(Exception):
    """The backend failed. ``status`` is the HTTP status the gateway should answer with:
    503 when it is unavailable or overloaded (retry later), 502 when it failed mid-way,
    400 when it cannot serve the request as asked (``param`` names the request field)."""

    def __init__(self, message: str, status: int = 502, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


class PromptTooLong(BackendError):
    """The prompt does not fit the model's context (answered as HTTP 400, param ``messages``)."""

    def __init__(self, message: str):
        super().__init__(message, status=400)


class Generation:
    """The running generation of one request: iterate it to get :class:`Delta` pieces.

    Producers (backend threads) call :meth:`put`, :meth:`finish_draft` and :meth:`fail`;
    the consumer (the request thread) iterates. Token counts are filled in by the backend.
    """

    def __init__(self, n: int):
        self.n = n
        self.prompt_tokens = 0
        self.completion_tokens = [0] * n
        self.created = time.monotonic()
        self.first_token_at: float | None = None
        self._items: list[Delta | BackendError] = []
        self._cond = threading.Condition()
        self._open = n
        self.cancelled = False

    # -- producer side -------------------------------------------------------------
    def put(self, index: int, text: str, finish_reason: str | None = None) -> None:
        with self._cond:
            if self.first_token_at is None and text:
                self.first_token_at = time.monotonic()
            self._items.append(Delta(index, text, finish_reason))
            if finish_reason is not None:
                self._open -= 1
            self._cond.notify_all()

    def fail(self, error: BackendError) -> None:
        with self._cond:
            self._items.append(error)
            self._open = 0
            self._cond.notify_all()

    # -- consumer side -------------------------------------------------------------
    def cancel(self) -> None:
        """The client went away: backends stop generating for this request."""
        self.cancelled = True

    def __iter__(self) -> Iterator[Delta]:
        pos = 0
        while True:
            with self._cond:
                while pos >= len(self._items) and self._open > 0:
                    self._cond.wait()
                batch = self._items[pos:]
                pos = len(self._items)
                done = self._open <= 0
            for item in batch:
                if isinstance(item, BackendError):
                    raise item
                yield item
            if done and pos >= len(self._items):
                return

    def collect(self) -> list[tuple[str, str]]:
        """Run to completion: ``[(text, finish_reason), ...]`` per draft."""
        texts = [""] * self.n
        reasons = ["stop"] * self.n
        for d in self:
            texts[d.index] += d.text
            if d.finish_reason:
                reasons[d.index] = d.finish_reason
        return list(zip(texts, reasons))


class Backend(Protocol):
    """What the gateway needs from a model server."""

    name: str

    def versions(self) -> list[str]:
        """Model versions this backend can serve right now."""
        ...

    def submit(self, request: GenerationRequest) -> Generation:
        """Start generating; never blocks on the model. Raises BackendError(503) if the
        version is unknown to the backend or the queue is full."""
        ...

    def health(self) -> dict:
        """A small dict for /healthz (e.g. {"ok": True, "queue": 3})."""
        ...

    def close(self) -> None:
        ...
