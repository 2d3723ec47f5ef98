"""The per-token cost of structured outputs on the local backend: chart configurations
decoded under the chart domain's JSON Schema (``response_format`` ``json_schema``)
against free decoding of the same prompts, in the same run.

Both arms send the chart app's prompt (DESIGN.md, ~470 tokens) with the same requests,
greedy, one request at a time (the cost of a grammar is per row; batching does not change
it), arms interleaved so that load on the machine hits both alike. Per arm: completion
tokens per second end to end, and decode tokens per second (after the first token, so
the prompt's prefill is left out); valid JSON and schema-valid answers. The grammar's own
cost is timed in place: the mask of allowed tokens (llguidance ``compute_bitmask`` + the
numpy mask of the logits) and feeding the chosen token to the matcher, per constrained
token, and as a share of a constrained decode step (the figure that does not depend on
how busy the machine is); also compiling the schema (first time, and from the cache) and
building llguidance's tokenizer (once per process). Prints one JSON line.

    .venv/bin/python bench/structured_outputs.py [--requests 6] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jsonschema  # noqa: E402

from _stack import emit  # noqa: E402
from flywheel.domains.chart import PromptLists, build_prompt, output_schema  # noqa: E402
from flywheel.settings import load_settings  # noqa: E402
from serving.backends.base import GenerationRequest, ResponseFormat, SamplingParams  # noqa: E402
from serving.model_store import ensure_hf_model  # noqa: E402

LISTS = PromptLists(name="orders", time_field="Order date",
                    dimensions=("Region", "Product category", "Customer segment", "Sales channel"),
                    metrics=("Sales", "Profit", "Profit margin", "Quantity", "Discount"))
REQUESTS = [
    "monthly profit margin by region for the last half year",
    "top 5 product categories by sales",
    "sales by customer segment as a pie chart",
    "quantity per sales channel, highest first",
    "weekly sales trend for the last 8 weeks",
    "regions with a profit above 10000",
    "discount by product category and region",
    "daily quantity for the last 30 days",
]


class Timer:
    """Wraps a function of the engine and adds up its time (constrained rows only)."""

    def __init__(self, module, name: str, count):
        self.module, self.name, self.count = module, name, count
        self.inner = getattr(module, name)
        self.seconds = 0.0
        self.calls = 0
        setattr(module, name, self)

    def __call__(self, *args):
        t0 = time.perf_counter()
        out = self.inner(*args)
        n = self.count(*args)
        if n:
            self.seconds += time.perf_counter() - t0
            self.calls += n
        return out

    def ms_per_call(self) -> float | None:
        return round(self.seconds / self.calls * 1000, 4) if self.calls else None


def run(backend, messages, response_format, max_tokens: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, response_format=response_format)
    t0 = time.monotonic()
    gen = backend.submit(GenerationRequest(messages=tuple(messages), params=params))
    (text, finish), = gen.collect()
    end = time.monotonic()
    tokens = gen.completion_tokens[0]
    return {"text": text, "finish": finish, "tokens": tokens, "seconds": end - t0,
            "decode_seconds": end - (gen.first_token_at or t0)}


def summary(results: list[dict], schema: dict) -> dict:
    tokens = sum(r["tokens"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    decode = sum(r["decode_seconds"] for r in results)

    def valid(text: str, check_schema: bool) -> bool:
        try:
            value = json.loads(text)
            if check_schema:
                jsonschema.validate(value, schema)
            return isinstance(value, dict)
        except (ValueError, jsonschema.ValidationError):
            return False

    return {"requests": len(results), "completion_tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 2),
            "decode_tokens_per_s": round(sum(r["tokens"] - 1 for r in results) / decode, 2) if decode else None,
            "finished_stop": sum(r["finish"] == "stop" for r in results),
            "valid_json": sum(valid(r["text"], False) for r in results),
            "schema_valid": sum(valid(r["text"], True) for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=6, help="chart requests per arm (at most %d)" % len(REQUESTS))
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--torch-threads", type=int, default=None)
    args = ap.parse_args()

    from serving.backends.local import LocalBackend
    from serving.backends.local import engine, sampling

    settings = load_settings(None)
    backend = LocalBackend(ensure_hf_model(settings.model_cache_path), max_batch=4, torch_threads=args.torch_threads)
    schema = output_schema(LISTS)
    fmt = ResponseFormat("json_schema", {"name": "chart_config", "schema": schema, "strict": True})
    try:
        t0 = time.perf_counter()
        backend.grammars._tokenizer()
        tokenizer_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        backend.grammars.matchers(fmt, 1)
        compile_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        backend.grammars.matchers(fmt, 1)
        cached_ms = (time.perf_counter() - t0) * 1000

        warm = [{"role": "user", "content": build_prompt(LISTS, "sales by region")}]
        run(backend, warm, None, 4)
        run(backend, warm, fmt, 4)  # the first mask of a process pays a one-off set-up
        mask = Timer(sampling, "mask_logits", lambda logits, rows: sum(r.grammar is not None for r in rows))
        feed = Timer(engine, "advance_grammar", lambda row, token: 1)

        arms: dict[str, list[dict]] = {"free": [], "constrained": []}
        for k, request in enumerate(REQUESTS[: args.requests]):
            messages = [{"role": "user", "content": build_prompt(LISTS, request)}]
            order = [("free", None), ("constrained", fmt)]
            for arm, response_format in order if k % 2 == 0 else order[::-1]:
                arms[arm].append(run(backend, messages, response_format, args.max_tokens))
            print(f"{k + 1}/{args.requests}: {arms['constrained'][-1]['text']}", file=sys.stderr)
    finally:
        backend.close()

    free, constrained = summary(arms["free"], schema), summary(arms["constrained"], schema)
    grammar_ms = (mask.ms_per_call() or 0.0) + (feed.ms_per_call() or 0.0)
    step_ms = 1000 / constrained["decode_tokens_per_s"]  # one decode step of one row, all included
    emit({
        "bench": "structured_outputs",
        "model": "SmolLM2-135M-Instruct", "prompt": "chart app prompt", "max_tokens": args.max_tokens,
        "free": free, "constrained": constrained,
        "ratio_tokens_per_s": round(constrained["tokens_per_s"] / free["tokens_per_s"], 3),
        "ratio_decode_tokens_per_s": round(constrained["decode_tokens_per_s"] / free["decode_tokens_per_s"], 3),
        "mask_ms_per_token": mask.ms_per_call(),
        "consume_ms_per_token": feed.ms_per_call(),
        "grammar_share_of_decode_step": round(grammar_ms / step_ms, 5),
        "schema_compile_ms": round(compile_ms, 2), "schema_compile_cached_ms": round(cached_ms, 3),
        "llguidance_tokenizer_s": round(tokenizer_s, 2),
    })


if __name__ == "__main__":
    main()
