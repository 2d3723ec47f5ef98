"""A scripted backend: answers from a queue of texts (or a fixed reply) in constant time.

The fake at the model edge: used by the gateway-overhead benchmark (so only the gateway
is measured) and by tests of error paths. ``enqueue`` scripts replies (a text, or a list
of tool calls ``{"name": ..., "arguments": {...}}``, answered with ``finish_reason``
``tool_calls`` and the arguments streamed in pieces); ``fail_next`` scripts a failure with
the status the gateway should answer. It honours tools (its replies are scripted) and none
of the optional sampling features (``supports``), so the gateway's 400 for those is tested
here too.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
import uuid

from serving.backends.base import BackendError, Generation, GenerationRequest, ToolCallDelta


class ScriptedBackend:
    name = "scripted"
    supports = frozenset({"tools", "response_format"})

    def __init__(self, reply: str = "This is a scripted answer.", delay_s: float = 0.0, versions=("base",)):
        self.reply = reply
        self.delay_s = delay_s
        self._versions = list(versions)
        self.adapter_paths: dict[str, str] = {}
        self._queue: collections.deque[str | BackendError] = collections.deque()
        self._lock = threading.Lock()
        self.requests: list[GenerationRequest] = []

    def enqueue(self, *texts: str | list[dict]) -> None:
        with self._lock:
            self._queue.extend(texts)

    def fail_next(self, status: int = 502, message: str = "scripted backend failure") -> None:
        with self._lock:
            self._queue.append(BackendError(message, status))

    def versions(self) -> list[str]:
        return list(self._versions)

    def load_adapter(self, version: str, adapter_path) -> None:
        """Stand-in for a real adapter load: the version becomes servable (same reply)."""
        if version not in self._versions:
            self._versions.append(version)
        self.adapter_paths[version] = str(adapter_path)

    def submit(self, request: GenerationRequest) -> Generation:
        if request.version not in self._versions:
            raise BackendError(f"version {request.version!r} is not loaded", 503)
        with self._lock:
            self.requests.append(request)
            script = [self._queue.popleft() if self._queue else self.reply for _ in range(request.n)]
        if self.delay_s:
            time.sleep(self.delay_s)
        gen = Generation(request.n)
        gen.prompt_tokens = sum(len((m.get("content") or "").split()) for m in request.messages)
        for i, text in enumerate(script):
            if isinstance(text, BackendError):
                raise text
            if isinstance(text, list):
                self._calls(gen, i, text)
                continue
            tokens = re.findall(r"\S+\s*", text)  # one "token" per word
            words = tokens[: request.params.max_tokens]
            for w in words:
                gen.put(i, w)
            gen.completion_tokens[i] = len(words)
            gen.put(i, "", "length" if len(words) < len(tokens) else "stop")
        return gen

    @staticmethod
    def _calls(gen: Generation, i: int, calls: list[dict]) -> None:
        for k, call in enumerate(calls):
            args = json.dumps(call.get("arguments", {}))
            half = len(args) // 2
            gen.put(i, "", tool_calls=(ToolCallDelta(k, f"call_{uuid.uuid4().hex}", call["name"], ""),))
            gen.put(i, "", tool_calls=(ToolCallDelta(k, arguments=args[:half]),))
            gen.put(i, "", tool_calls=(ToolCallDelta(k, arguments=args[half:]),))
            gen.completion_tokens[i] += 1 + len(args) // 4
        gen.put(i, "", "tool_calls")

    def health(self) -> dict:
        return {"ok": True, "queued": len(self._queue)}

    def close(self) -> None:
        pass
