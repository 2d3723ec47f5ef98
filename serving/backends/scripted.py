"""A scripted backend: answers from a queue of texts (or a fixed reply) in constant time.

The fake at the model edge: used by the gateway-overhead benchmark (so only the gateway
is measured) and by tests of error paths. ``enqueue`` scripts replies; ``fail_next``
scripts a failure with the status the gateway should answer.
"""

from __future__ import annotations

import collections
import re
import threading
import time

from serving.backends.base import BackendError, Generation, GenerationRequest


class ScriptedBackend:
    name = "scripted"

    def __init__(self, reply: str = "This is a scripted answer.", delay_s: float = 0.0, versions=("base",)):
        self.reply = reply
        self.delay_s = delay_s
        self._versions = list(versions)
        self.adapter_paths: dict[str, str] = {}
        self._queue: collections.deque[str | BackendError] = collections.deque()
        self._lock = threading.Lock()
        self.requests: list[GenerationRequest] = []

    def enqueue(self, *texts: str) -> None:
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
        gen.prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
        for i, text in enumerate(script):
            if isinstance(text, BackendError):
                raise text
            tokens = re.findall(r"\S+\s*", text)  # one "token" per word
            words = tokens[: request.params.max_tokens]
            for w in words:
                gen.put(i, w)
            gen.completion_tokens[i] = len(words)
            gen.put(i, "", "length" if len(words) < len(tokens) else "stop")
        return gen

    def health(self) -> dict:
        return {"ok": True, "queued": len(self._queue)}

    def close(self) -> None:
        pass
