"""A stand-in OpenAI-compatible endpoint for tests: the model edge, nothing else faked.

``StandIn(reply)`` serves ``POST /v1/chat/completions`` on 127.0.0.1 with werkzeug; its
reply is a function of the request's messages (a position-biased judge answers "A" to
everything). ``fail_next(status, times)`` answers the next requests with an error status
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
        out = {
            "id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2 * n, "total_tokens": 10 + 2 * n},
        }
        if body.get("stream"):  # as vLLM streams: one chunk per draft, then the usage chunk
            head = {k: out[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
            chunks = [{**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": t},
                                            "finish_reason": "stop"}]} for i, t in enumerate(texts)]
            chunks.append({**head, "choices": [], "usage": out["usage"]})
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return Response(sse, 200, mimetype="text/event-stream")
        return Response(json.dumps(out), 200, mimetype="application/json")
