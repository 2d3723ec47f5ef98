"""Local backend serving: aggregate tokens/s at 1, 4 and 16 concurrent requests
(continuous batching), and on the chart app's prompts, prefix caching against no caching.

Default workload (``essays``): the gateway runs as in production (`flywheel gateway`:
gunicorn, the real model, the real broker). Each client sends requests one after another
(greedy, max_tokens 64) with prompts that ask for long answers; tokens are the completion
tokens the gateway reports. Target (issue 2): >= 6x the single-stream rate at 16
concurrent requests.
    python bench/local_serving.py [--rounds 2] [--max-tokens 64]

``--workload chart`` (issue 14): the demo app's chart requests, prompts built by the
simulator (`flywheel.simulate.charts`: `generate_request` over the traffic's datasets,
`build_prompt`, ~440 tokens of which ~350 are the same instructions), sent in-process to
one `LocalBackend` (`submit`, no gateway: what is measured is the model side) with its
prefix cache on and, in the same run and on the same backend, swapped for an empty one
of 0 bytes (no caching: the path before issue 14). Phases, interleaved per repeat:

  ttft       one request at a time (max_tokens 4): time to first token, median
  16-way     16 clients, ``--rounds`` requests each (greedy, max_tokens 64): tokens/s

The cached phases start from what earlier requests left in the cache (the first request
of the run warms both modes and fills the instruction block; no other priming). Both
modes get the same requests, so their greedy answers are compared too (``identical``).
Targets: TTFT >= 3x lower and 16-way throughput >= 2x with the cache.
    python bench/local_serving.py --workload chart [--rounds 2] [--repeats 2]

``--paths``: what serves the phases. ``after`` (default): the backend as it is; its rows
attend to one copy of their shared instructions (``attention.py``, ``kv_cache.py``) and
the short remainders of prompts queued together are prefilled in one forward
(``Engine._admit``). ``before``: the path of the first prefix-caching build: transformers'
own SDPA attention, every row with its own copy of its prompt, prefills one at a time.
``both``: every repeat runs both (other requests for each, order alternating), so before
and after are compared side by side (``by_path``; the top-level figures are ``after``'s).
``cpu_s`` is the process's CPU time in a phase: on a shared machine wall time depends on
what else runs, CPU time much less so (with ``--torch-threads 1``, where no thread spins
waiting for another, it is close to the work done).
    python bench/local_serving.py --workload chart --paths both [--repeats 4] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
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


# -- chart workload: prefix cache on/off ------------------------------------------------
CLIENTS = 16


def chart_messages(n: int, seed: int = 14) -> list[list[dict]]:
    """``n`` chart requests as the app sends them (the simulator's traffic datasets)."""
    from flywheel.simulate import charts

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        req = charts.generate_request(rng)
        out.append([{"role": "user", "content": charts.build_prompt(req.schema, req.text)}])
    return out


def chart_ask(backend, messages: list[dict], max_tokens: int) -> tuple[str, int, float]:
    """(answer, completion tokens, seconds to the first token)."""
    from serving.backends.base import GenerationRequest, SamplingParams

    gen = backend.submit(GenerationRequest(messages=tuple(messages),
                                           params=SamplingParams(temperature=0.0, max_tokens=max_tokens)))
    [(text, _)] = gen.collect()
    return text, gen.completion_tokens[0], (gen.first_token_at or time.monotonic()) - gen.created


def ttft_phase(backend, prompts: list[list[dict]]) -> dict:
    cpu0 = time.process_time()
    times = [chart_ask(backend, p, 4)[2] for p in prompts]
    return {"requests": len(prompts), "ttft_s": round(statistics.median(times), 3),
            "cpu_s": round(time.process_time() - cpu0, 2)}


def wide_phase(backend, prompts: list[list[dict]], max_tokens: int) -> dict:
    """CLIENTS clients; client k sends prompts k, k + CLIENTS, ... one after another."""
    def client(k: int) -> list[tuple[str, int, float]]:
        return [chart_ask(backend, prompts[i], max_tokens) for i in range(k, len(prompts), CLIENTS)]

    t0, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for rs in pool.map(client, range(CLIENTS)) for r in rs]
    wall = time.perf_counter() - t0
    tokens = sum(r[1] for r in results)
    return {"requests": len(results), "tokens": tokens, "seconds": round(wall, 2),
            "cpu_s": round(time.process_time() - cpu0, 2),
            "tokens_per_s": round(tokens / wall, 1), "ttft_s_median": round(statistics.median(r[2] for r in results), 3),
            "answers": [r[0] for r in results]}


def chart_main(args) -> None:
    import torch

    from flywheel.settings import load_settings
    from serving.backends.local import LocalBackend
    from serving.backends.local.attention import install as install_attention, installed as attention_installed
    from serving.backends.local.prefix_cache import PrefixCache
    from serving.model_store import ensure_hf_model

    backend = LocalBackend(ensure_hf_model(load_settings(None).model_cache_path), max_batch=CLIENTS,
                           torch_threads=args.torch_threads)
    engine = backend.engine
    caches = {"uncached": PrefixCache(0), "cached": engine.prefix_cache}
    paths = ["before", "after"] if args.paths == "both" else [args.paths]

    def use(mode: str) -> None:  # swapped on the worker, between two steps
        engine.call(lambda: setattr(engine, "prefix_cache", caches[mode]))

    def serve(path: str) -> None:  # between phases, on the worker: no row is running
        def switch() -> None:
            model = backend.adapters.base_model
            after = path == "after"
            if after:
                install_attention(model)
            else:
                model.set_attn_implementation("sdpa")
            engine.kv.share_prefixes = after and attention_installed(model)
            engine.join_prefills = after

        engine.call(switch)

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    n_ttft, n_wide = args.ttft_requests, CLIENTS * args.rounds
    # each path gets its own requests: a request seen before would be all cached
    prompts = chart_messages(1 + args.repeats * len(paths) * (n_ttft + n_wide))
    runs = {a: {m: {"ttft": [], "wide": []} for m in caches} for a in paths}
    identical = {a: [0, 0] for a in paths}
    try:
        for mode in caches:  # warm-up, and the instruction block enters the cache
            use(mode)
            chart_ask(backend, prompts[0], 4)
        at = 1
        for repeat in range(args.repeats):
            for path in paths if repeat % 2 == 0 else paths[::-1]:  # ABBA against drift
                serve(path)
                ttft_prompts, at = prompts[at : at + n_ttft], at + n_ttft
                wide_prompts, at = prompts[at : at + n_wide], at + n_wide
                answers = {}
                for mode in caches:
                    use(mode)
                    runs[path][mode]["ttft"].append(ttft_phase(backend, ttft_prompts))
                    wide = wide_phase(backend, wide_prompts, args.max_tokens)
                    answers[mode] = wide.pop("answers")
                    runs[path][mode]["wide"].append(wide)
                identical[path][0] += sum(a == b for a, b in zip(answers["cached"], answers["uncached"]))
                identical[path][1] += len(answers["cached"])
        cache_stats = caches["cached"].stats()
        shared_stats = backend.health()["shared_prefix"]
    finally:
        backend.close()

    def summary(path: str) -> dict:
        def med(mode: str, phase: str, key: str) -> float:
            return statistics.median(r[key] for r in runs[path][mode][phase])

        ttft = {m: med(m, "ttft", "ttft_s") for m in caches}
        rate = {m: med(m, "wide", "tokens_per_s") for m in caches}
        cpu = {m: med(m, "wide", "cpu_s") for m in caches}
        return {"ttft_s": ttft, "tokens_per_s": rate, "16way_cpu_s": cpu,
                "ttft_s_under_16way": {m: med(m, "wide", "ttft_s_median") for m in caches},
                "answers_identical": "{}/{}".format(*identical[path]),
                "ratios": {"ttft_uncached/cached": round(ttft["uncached"] / ttft["cached"], 2),
                           "tokens_per_s_cached/uncached": round(rate["cached"] / rate["uncached"], 2),
                           "16way_cpu_s_uncached/cached": round(cpu["uncached"] / cpu["cached"], 2)},
                "runs": runs[path]}

    by_path = {a: summary(a) for a in paths}
    top = by_path[paths[-1]]  # "after" when both ran
    ratios = top["ratios"]
    emit({"bench": "local_serving", "workload": "chart", "in_process": True, "clients": CLIENTS,
          "max_tokens": args.max_tokens, "rounds": args.rounds, "repeats": args.repeats,
          "torch_threads": torch.get_num_threads(),
          "prompt_tokens_example": len(backend._encode(prompts[0])),
          "paths": paths, "shared_prefix": shared_stats,
          **{k: v for k, v in top.items() if k != "runs"},
          "by_path": by_path if len(paths) > 1 else None,
          "runs": top["runs"] if len(paths) == 1 else None,
          "prefix_cache": cache_stats,
          "targets": {">=3x_lower_ttft": {"measured": ratios["ttft_uncached/cached"],
                                          "met": ratios["ttft_uncached/cached"] >= 3},
                      ">=2x_16way_tokens_per_s": {"measured": ratios["tokens_per_s_cached/uncached"],
                                                  "met": ratios["tokens_per_s_cached/uncached"] >= 2}},
          "load_average": {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("essays", "chart"), default="essays")
    ap.add_argument("--rounds", type=int, default=None,
                    help="requests per client at each level (default: 2 for essays, 1 for chart)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,4,16", help="essays: concurrency levels")
    ap.add_argument("--repeats", type=int, default=2, help="chart: interleaved repeats (medians)")
    ap.add_argument("--ttft-requests", type=int, default=6, help="chart: sequential requests per TTFT phase")
    ap.add_argument("--paths", choices=("after", "before", "both"), default="after",
                    help="chart: serve with the backend as it is, as before the shared-prefix attention and "
                         "joint prefills, or both, interleaved")
    ap.add_argument("--torch-threads", type=int, default=None, help="chart: torch threads (default: torch's)")
    args = ap.parse_args()
    if args.workload == "chart":
        args.rounds = args.rounds or 1
        chart_main(args)
        return
    args.rounds = args.rounds or 2
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
