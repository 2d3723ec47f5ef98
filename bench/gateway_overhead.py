"""How much latency the gateway adds over calling the same backend in-process.

Both sides use the same constant-time scripted backend, so the difference is the gateway:
HTTP (gunicorn gthread), auth, validation, PII redaction, pseudonymisation, the event
written to the spool (and shipped to the real broker by the sender thread), metrics.
Clients: keep-alive HTTP connections, one per client thread, at 1, 8 and 32 concurrent.

Targets (issue 2): added p50 <= 2 ms, added p99 <= 10 ms, >= 500 requests/s.
    python bench/gateway_overhead.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from _stack import broker_and_settings, emit, gateway, percentile

from serving.backends.base import GenerationRequest, SamplingParams
from serving.backends.scripted import ScriptedBackend

MESSAGES = [
    {"role": "system", "content": "You are a data visualization assistant."},
    {"role": "user", "content": "Monthly profit margin by region for the last half year, only the West and East "
                                "regions, sorted by profit margin descending. My email is ana@example.com."},
]
BODY = json.dumps({"model": "flywheel-chat", "messages": MESSAGES, "max_tokens": 64, "temperature": 0,
                   "user": "user-42"}).encode()


def in_process(backend, n_requests: int, concurrency: int) -> tuple[list[float], float]:
    req = GenerationRequest(messages=tuple(MESSAGES), params=SamplingParams(temperature=0, max_tokens=64))

    def one(_):
        t = time.perf_counter()
        backend.submit(req).collect()
        return time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(one, range(n_requests)))
    return lat, time.perf_counter() - t0


def through_gateway(port: int, token: str, n_requests: int, concurrency: int,
                    rate: float | None = None) -> tuple[list[float], float]:
    """Closed loop (each client sends as soon as it has its answer) or, with ``rate``, paced:
    the clients together offer ``rate`` requests/s and latency counts from each request's
    scheduled send time, so queueing behind a slow answer is not hidden."""
    lat: list[float] = []
    lock = threading.Lock()
    per_client = n_requests // concurrency
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    interval = concurrency / rate if rate else 0.0
    start = time.perf_counter() + 0.05

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine = []
        for i in range(per_client):
            t = time.perf_counter()
            if rate:
                t = start + (i + k / concurrency) * interval
                delay = t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            conn.request("POST", "/v1/chat/completions", BODY, headers)
            resp = conn.getresponse()
            body = resp.read()
            mine.append(time.perf_counter() - t)
            if resp.status != 200:
                raise RuntimeError(f"gateway answered {resp.status}: {body[:200]!r}")
        conn.close()
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return lat, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per concurrency level")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--rate", type=float, default=500.0, help="offered load of the paced mode, requests/s")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    backend = ScriptedBackend()
    with broker_and_settings(model={"backend": "scripted"}, gateway={"threads": 32}) as s:
        from services.gateway.auth import KeyStore

        store = KeyStore([])
        token = store.create("chat")
        store.save(s.keys_path)
        results = {}
        with gateway(s):
            through_gateway(s.gateway.port, token, 200, 4)  # warm up
            ms = lambda xs, q: round(percentile(xs, q) * 1000, 3)  # noqa: E731
            for mode, rate in (("closed_loop", None), (f"paced_{args.rate:g}_rps", args.rate)):
                results[mode] = {}
                for c in levels:
                    base, _ = in_process(backend, args.requests, c)
                    lat, wall = through_gateway(s.gateway.port, token, args.requests, c, rate)
                    results[mode][str(c)] = {
                        "inprocess_p50_ms": ms(base, 0.5), "inprocess_p99_ms": ms(base, 0.99),
                        "gateway_p50_ms": ms(lat, 0.5), "gateway_p99_ms": ms(lat, 0.99),
                        "added_p50_ms": round(ms(lat, 0.5) - ms(base, 0.5), 3),
                        "added_p99_ms": round(ms(lat, 0.99) - ms(base, 0.99), 3),
                        "requests_per_s": round(len(lat) / wall, 1),
                    }
    paced = results[f"paced_{args.rate:g}_rps"]
    emit({
        "bench": "gateway_overhead",
        "requests_per_level": args.requests,
        "modes": results,
        "targets": {
            "added_p50_ms<=2 (paced, all levels)": all(r["added_p50_ms"] <= 2 for r in paced.values()),
            "added_p99_ms<=10 (paced, all levels)": all(r["added_p99_ms"] <= 10 for r in paced.values()),
            "requests_per_s>=500 (closed loop, best level)":
                max(r["requests_per_s"] for r in results["closed_loop"].values()) >= 500,
        },
    })


if __name__ == "__main__":
    main()
