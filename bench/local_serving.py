"""Aggregate tokens/s of the local backend through the gateway at 1, 4 and 16 concurrent
requests (continuous batching), against the single-stream rate of the same run.

The gateway runs as in production (`flywheel gateway`: gunicorn, the real model, the
real broker). Each client sends requests one after another (greedy, max_tokens 64) with
prompts that ask for long answers; tokens are the completion tokens the gateway reports.

Target (issue 2): >= 6x the single-stream rate at 16 concurrent requests.
    python bench/local_serving.py [--rounds 2] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

from _stack import broker_and_settings, emit, gateway

TOPICS = ["the history of the bicycle", "how bread is baked", "why the sky is blue", "the water cycle",
          "how a car engine works", "the rules of chess", "what a database index is", "the life of bees",
          "how to plan a garden", "the first moon landing", "how rainbows form", "what a spreadsheet is for",
          "how trains run on time", "the story of paper", "what makes a good chart", "how volcanoes erupt"]


def ask(port: int, token: str, topic: str, max_tokens: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": "flywheel-chat", "temperature": 0, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": f"Write a long, detailed essay about {topic}."}]})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json",
                                                       "Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"gateway answered {resp.status}: {data}")
    return data["usage"]["completion_tokens"]


def level(port: int, token: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    def client(k: int) -> int:
        return sum(ask(port, token, TOPICS[(k + r * concurrency) % len(TOPICS)], max_tokens) for r in range(rounds))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - t0
    return {"requests": concurrency * rounds, "tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,4,16")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with broker_and_settings(model={"backend": "local", "max_batch": max(levels)}) as s:
        from services.gateway.auth import KeyStore

        store = KeyStore([])
        token = store.create("chat")
        store.save(s.keys_path)
        with gateway(s, timeout=600):
            ask(s.gateway.port, token, "warming up", 8)
            results = {str(c): level(s.gateway.port, token, c, args.rounds, args.max_tokens) for c in levels}
    single = results[str(levels[0])]["tokens_per_s"]
    for r in results.values():
        r["x_single_stream"] = round(r["tokens_per_s"] / single, 2)
    top = results[str(levels[-1])]["x_single_stream"]
    emit({"bench": "local_serving", "max_tokens": args.max_tokens, "rounds": args.rounds, "levels": results,
          "targets": {f">=6x_single_at_{levels[-1]}": top >= 6}})


if __name__ == "__main__":
    main()
