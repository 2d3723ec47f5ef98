"""A stand-in OpenAI-compatible endpoint for tests: the model edge, nothing else faked.

``StandIn(reply)`` serves ``POST /v1/chat/completions`` on 127.0.0.1 with werkzeug; its
reply is a function of the request's messages (a position-biased judge answers "A" to
everything): a text, or a list of tool calls (``{"name": ..., "arguments": {...}}``),
answered as vLLM answers them (``content: null``, ids ``call_standin_<draft>_<call>``,
``finish_reason: "tool_calls"``; streamed as a first piece with id and name, then the
arguments in two pieces). With ``logprobs: true`` each draft carries one made-up token
entry per piece. ``fail_next(status, times)`` answers the next requests with an error status
(a flaky endpoint). Every request body is kept in ``requests``. A request with
``stream: true`` is answered with server-sent events, as the ``openai`` backend asks.
"""

from __future__ import annotations

import json
import threading
import time

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


class StandIn:
    def __init__(self, reply, port: int):
        self.reply = reply
        self.requests: list[dict] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self.server = make_server("127.0.0.1", port, self._app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{port}/v1"

    def start(self) -> "StandIn":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)

    def fail_next(self, status: int = 503, times: int = 1) -> None:
        with self._lock:
            self._failures.extend([status] * times)

    @Request.application
    def _app(self, request: Request) -> Response:
        if request.path != "/v1/chat/completions":
            return Response(json.dumps({"error": {"message": "not found"}}), 404, mimetype="application/json")
        body = request.get_json()
        with self._lock:
            self.requests.append(body)
            status = self._failures.pop(0) if self._failures else None
        if status is not None:
            err = {"error": {"message": "stand-in failure", "type": "server_error", "code": status}}
            return Response(json.dumps(err), status, mimetype="application/json")
        n = body.get("n") or 1
        texts = [self.reply(body["messages"], i) for i in range(n)]
        calls = [[{"id": f"call_standin_{i}_{k}", "type": "function",
                   "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for k, c in enumerate(t)]
                 if isinstance(t, list) else None for i, t in enumerate(texts)]
        logprob = {"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}

        def message(i):
            if calls[i] is not None:
                return {"role": "assistant", "content": None, "tool_calls": calls[i]}
            return {"role": "assistant", "content": texts[i]}

        def logprobs(k: int = 1):
            return {"logprobs": {"content": [logprob] * k}} if body.get("logprobs") else {}

        out = {
            "id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": i, "message": message(i), **logprobs(),
                         "finish_reason": "stop" if calls[i] is None else "tool_calls"} for i in range(n)],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2 * n, "total_tokens": 10 + 2 * n},
        }
        if body.get("stream"):  # as vLLM streams: one chunk per draft (tool calls in pieces), then the usage chunk
            head = {k: out[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
            chunks = []
            for i, t in enumerate(texts):
                if calls[i] is None:
                    chunks.append({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": t},
                                                        **logprobs(), "finish_reason": "stop"}]})
                    continue
                for k, c in enumerate(calls[i]):
                    args = c["function"]["arguments"]
                    pieces = [{"index": k, "id": c["id"], "type": "function",
                               "function": {"name": c["function"]["name"], "arguments": ""}},
                              {"index": k, "function": {"arguments": args[: len(args) // 2]}},
                              {"index": k, "function": {"arguments": args[len(args) // 2:]}}]
                    chunks += [{**head, "choices": [{"index": i, "delta": {"tool_calls": [piece]}, **logprobs(),
                                                     "finish_reason": None}]} for piece in pieces]
                chunks.append({**head, "choices": [{"index": i, "delta": {}, "finish_reason": "tool_calls"}]})
            chunks.append({**head, "choices": [], "usage": out["usage"]})
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return Response(sse, 200, mimetype="text/event-stream")
        return Response(json.dumps(out), 200, mimetype="application/json")
