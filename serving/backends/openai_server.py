"""The ``openai`` backend: any OpenAI-compatible server (vLLM in production, a hosted API,
or another flywheel gateway).

Each request is streamed from the upstream (``stream=True``), so the gateway can stream
too and time the first token. With vLLM, LoRA versions are loaded by their immutable
version name through ``POST /v1/load_lora_adapter`` (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``
must be on) and selected through the request's ``model`` field; the base model is
served under ``upstream_model``. ``response_format``, the tool fields (``tools``,
``tool_choice``, ``parallel_tool_calls``, assistant ``tool_calls`` and ``tool`` messages in
the history), ``logprobs``/``top_logprobs``, the penalties and ``logit_bias`` are passed on
as the client sent them (vLLM decodes under a schema with its own structured-outputs
engine, and parses tool calls out of the model's text with the tool parser it was started
with: ``--enable-auto-tool-choice --tool-call-parser hermes`` for Hermes-style models;
without them vLLM refuses ``tool_choice: "auto"``, and that 400 comes back to the client).
The upstream's tool-call deltas (ids, names, argument pieces) and token log-probabilities
come back piece by piece, unchanged.

Failures map to the gateway's statuses: upstream unreachable, timing out or overloaded
(429/503) → 503; any other failure or a broken stream → 502; a 400 keeps its message.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from serving.backends.base import FEATURES, BackendError, Generation, GenerationRequest, ToolCallDelta

log = logging.getLogger(__name__)


class OpenAIServerBackend:
    name = "openai"
    supports = FEATURES  # everything is passed on; the upstream says what it cannot do (its 400 comes back)

    def __init__(self, base_url: str, *, model: str, api_key: str = "", timeout_s: float = 120.0,
                 max_concurrency: int = 64):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=5.0),
                                    headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="upstream")
        self._adapters: dict[str, str] = {}
        self._lock = threading.Lock()
        self._inflight = 0

    @classmethod
    def from_settings(cls, settings) -> "OpenAIServerBackend":
        m = settings.model
        if not m.upstream_url:
            raise ValueError("model.backend = 'openai' needs model.upstream_url (e.g. http://vllm:8000/v1)")
        return cls(m.upstream_url, model=m.upstream_model, api_key=m.upstream_api_key.get_secret_value(),
                   timeout_s=m.upstream_timeout_s, max_concurrency=m.upstream_concurrency)

    # -- versions ----------------------------------------------------------------------
    def versions(self) -> list[str]:
        return ["base", *self._adapters]

    def load_adapter(self, version: str, adapter_path: Path) -> None:
        with self._lock:
            if self._adapters.get(version) == str(adapter_path):
                return
            if version in self._adapters or version == "base":
                raise ValueError(f"version {version!r} is loaded already with another adapter: names are immutable")
        resp = self._admin("/load_lora_adapter", {"lora_name": version, "lora_path": str(adapter_path)})
        if resp.status_code >= 400 and "already" not in resp.text.lower():
            raise ValueError(f"the upstream refused adapter {version!r} ({resp.status_code}): {resp.text[:300]}")
        with self._lock:
            self._adapters[version] = str(adapter_path)

    def unload_adapter(self, version: str) -> None:
        resp = self._admin("/unload_lora_adapter", {"lora_name": version})
        if resp.status_code >= 400 and resp.status_code != 404:
            raise ValueError(f"the upstream refused to unload {version!r} ({resp.status_code}): {resp.text[:300]}")
        with self._lock:
            self._adapters.pop(version, None)

    def _admin(self, path: str, body: dict) -> httpx.Response:
        try:
            return self._client.post(path, json=body)
        except httpx.HTTPError as e:
            raise ValueError(f"cannot reach the upstream at {self.base_url}: {e}") from None

    # -- generation --------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> Generation:
        if request.version != "base" and request.version not in self._adapters:
            raise BackendError(f"version {request.version!r} is not loaded on the upstream", 503)
        gen = Generation(request.n)
        with self._lock:
            self._inflight += 1
        self._pool.submit(self._run, request, gen)
        return gen

    def _body(self, request: GenerationRequest) -> dict:
        p = request.params
        body = {"model": self.model if request.version == "base" else request.version,
                "messages": list(request.messages), "n": request.n, "temperature": p.temperature, "top_p": p.top_p,
                "max_tokens": p.max_tokens, "stream": True, "stream_options": {"include_usage": True}}
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if p.response_format is not None:  # as the client sent it: vLLM decodes under it itself
            body["response_format"] = p.response_format.to_openai()
        if p.presence_penalty:
            body["presence_penalty"] = p.presence_penalty
        if p.frequency_penalty:
            body["frequency_penalty"] = p.frequency_penalty
        if p.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in p.logit_bias}
        if p.logprobs:
            body["logprobs"] = True
            if p.top_logprobs:
                body["top_logprobs"] = p.top_logprobs
        if request.tools:
            body["tools"] = [dict(t) for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        return body

    def _run(self, request: GenerationRequest, gen: Generation) -> None:
        reasons: dict[int, str] = {}
        try:
            with self._client.stream("POST", "/chat/completions", json=self._body(request)) as resp:
                if resp.status_code >= 400:
                    text = resp.read().decode("utf-8", "replace")[:500]
                    status = 503 if resp.status_code in (408, 429, 503, 504) else 400 if resp.status_code == 400 else 502
                    raise BackendError(f"upstream answered {resp.status_code}: {text}", status)
                for line in resp.iter_lines():
                    if gen.cancelled:
                        break
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise BackendError(f"upstream failed mid-stream: {chunk['error']}", 502)
                    if chunk.get("usage"):
                        gen.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                        total = chunk["usage"].get("completion_tokens", 0)
                        # The upstream reports one total; spread it so the sum is right.
                        for i in range(request.n):
                            gen.completion_tokens[i] = total // request.n + (1 if i < total % request.n else 0)
                    for choice in chunk.get("choices", []):
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or ""
                        calls = tuple(_tool_call_delta(c) for c in delta.get("tool_calls") or ())
                        logprobs = tuple(_logprob(e) for e in (choice.get("logprobs") or {}).get("content") or ())
                        if text or calls or logprobs:
                            gen.put(choice["index"], text, tool_calls=calls, logprobs=logprobs)
                        if choice.get("finish_reason"):
                            reasons[choice["index"]] = choice["finish_reason"]
            if gen.cancelled:
                gen.fail(BackendError("request cancelled", 499))
            elif len(reasons) < request.n:
                raise BackendError("the upstream stream ended before every draft finished", 502)
            else:
                # Finishes go out last, after the usage chunk (which follows them upstream).
                for i in range(request.n):
                    gen.put(i, "", reasons[i])
        except BackendError as e:
            gen.fail(e)
        except (httpx.ConnectError, httpx.TimeoutException) as e:
            gen.fail(BackendError(f"upstream {self.base_url} unreachable or too slow: {type(e).__name__}", 503))
        except Exception as e:  # noqa: BLE001 - a broken stream must fail the request, never hang it
            gen.fail(BackendError(f"upstream stream broke: {type(e).__name__}: {e}", 502))
        finally:
            with self._lock:
                self._inflight -= 1

    def health(self) -> dict:
        return {"ok": True, "upstream": self.base_url, "inflight": self._inflight, "adapters": list(self._adapters)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def _tool_call_delta(piece: dict) -> ToolCallDelta:
    """One streamed piece of a tool call, as OpenAI's protocol has it."""
    function = piece.get("function") or {}
    return ToolCallDelta(index=piece.get("index", 0), id=piece.get("id"), name=function.get("name"),
                         arguments=function.get("arguments") or "")


def _logprob(entry: dict) -> dict:
    """A token's log-probability entry with OpenAI's fields only (an upstream may add its own)."""
    out = {k: entry[k] for k in ("token", "logprob", "bytes") if k in entry}
    out["top_logprobs"] = [{k: t[k] for k in ("token", "logprob", "bytes") if k in t}
                           for t in entry.get("top_logprobs") or ()]
    return out
