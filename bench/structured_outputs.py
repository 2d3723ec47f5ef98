"""The per-token cost of structured outputs on the local backend: chart configurations
decoded under the chart domain's JSON Schema (``response_format`` ``json_schema``), and
as a forced tool call (``tools`` with one function ``make_chart`` whose parameters are that
schema, ``tool_choice`` naming it: the Lark grammar of ``serving/backends/local/tools.py``,
the call's tags around the schema), against free decoding of the same prompts, in the
same run.

Both arms send the chart app's prompt (DESIGN.md, ~470 tokens) with the same requests,
greedy, one request at a time (the cost of a grammar is per row; batching does not change
it), arms interleaved so that load on the machine hits both alike. Per arm: completion
tokens per second end to end, and decode tokens per second (after the first token, so
the prompt's prefill is left out); valid JSON and schema-valid answers. The grammar's own
cost is timed in place: the mask of allowed tokens (llguidance ``compute_bitmask`` + the
numpy mask of the logits) and feeding the chosen token to the matcher, per constrained
token, and as a share of a constrained decode step (the figure that does not depend on
how busy the machine is), per constrained arm; also compiling the schema and the tool
grammar (first time, and from the cache) and building llguidance's tokenizer (once per
process). Prints one JSON line.

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


def tool_request(messages, schema: dict, max_tokens: int) -> GenerationRequest:
    """The chart configuration as a forced call of ``make_chart``."""
    tool = {"type": "function", "function": {"name": "make_chart", "description": "Draw the chart.",
                                             "parameters": schema}}
    return GenerationRequest(messages=tuple(messages), params=SamplingParams(temperature=0.0, max_tokens=max_tokens),
                             tools=(tool,), tool_choice={"type": "function", "function": {"name": "make_chart"}})


def run(backend, messages, response_format, max_tokens: int, schema: dict | None = None, timers=()) -> dict:
    """One request, greedy; ``schema``: as a forced tool call (the answer is its arguments).
    ``timers``: their seconds and calls during this request are recorded with it."""
    before = [(t.seconds, t.calls) for t in timers]
    if schema is not None:
        request = tool_request(messages, schema, max_tokens)
    else:
        request = GenerationRequest(messages=tuple(messages), params=SamplingParams(
            temperature=0.0, max_tokens=max_tokens, response_format=response_format))
    t0 = time.monotonic()
    gen = backend.submit(request)
    (draft,) = gen.drafts()
    end = time.monotonic()
    text = draft.tool_calls[0]["function"]["arguments"] if draft.tool_calls else draft.text
    tokens = gen.completion_tokens[0]
    return {"text": text, "finish": draft.finish_reason, "tokens": tokens, "seconds": end - t0,
            "decode_seconds": end - (gen.first_token_at or t0),
            "timed": [(t.seconds - s, t.calls - c) for t, (s, c) in zip(timers, before)]}


def ms_per_token(results: list[dict], k: int) -> float | None:
    seconds = sum(r["timed"][k][0] for r in results)
    calls = sum(r["timed"][k][1] for r in results)
    return round(seconds / calls * 1000, 4) if calls else None


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
            "finished": sum(r["finish"] in ("stop", "tool_calls") for r in results),
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
    from serving.backends.local.tools import tool_grammar

    schema = output_schema(LISTS)
    fmt = ResponseFormat("json_schema", {"name": "chart_config", "schema": schema, "strict": True})
    try:
        t0 = time.perf_counter()
        backend.grammars._tokenizer()
        tokenizer_s = time.perf_counter() - t0
        compile_ms = {}
        for arm, compile_once in (("constrained", lambda: backend.grammars.matchers(fmt, 1)),
                                  ("tool_call", lambda: backend.grammars.for_constraint(
                                      tool_grammar(tool_request([], schema, 1), None), 1))):
            t0 = time.perf_counter()
            compile_once()
            first = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            compile_once()
            compile_ms[arm] = (round(first, 2), round((time.perf_counter() - t0) * 1000, 3))

        warm = [{"role": "user", "content": build_prompt(LISTS, "sales by region")}]
        run(backend, warm, None, 4)
        run(backend, warm, fmt, 4)  # the first mask of a process pays a one-off set-up
        run(backend, warm, None, 4, schema=schema)
        mask = Timer(sampling, "mask_logits", lambda logits, rows: sum(r.grammar is not None for r in rows))
        feed = Timer(engine, "advance_grammar", lambda row, token: 1)
        timers = (mask, feed)

        arms: dict[str, list[dict]] = {"free": [], "constrained": [], "tool_call": []}
        for k, request in enumerate(REQUESTS[: args.requests]):
            messages = [{"role": "user", "content": build_prompt(LISTS, request)}]
            order = [("free", None, None), ("constrained", fmt, None), ("tool_call", None, schema)]
            for arm, response_format, as_tool in order if k % 2 == 0 else order[::-1]:
                arms[arm].append(run(backend, messages, response_format, args.max_tokens, as_tool, timers))
            print(f"{k + 1}/{args.requests}: {arms['constrained'][-1]['text']} | {arms['tool_call'][-1]['text']}",
                  file=sys.stderr)
    finally:
        backend.close()

    free = summary(arms["free"], schema)
    figures = {}
    for arm in ("constrained", "tool_call"):
        out = summary(arms[arm], schema)
        mask_ms, feed_ms = ms_per_token(arms[arm], 0), ms_per_token(arms[arm], 1)
        step_ms = 1000 / out["decode_tokens_per_s"]  # one decode step of one row, all included
        figures[arm] = {**out, "ratio_tokens_per_s": round(out["tokens_per_s"] / free["tokens_per_s"], 3),
                        "ratio_decode_tokens_per_s": round(out["decode_tokens_per_s"] / free["decode_tokens_per_s"], 3),
                        "mask_ms_per_token": mask_ms, "consume_ms_per_token": feed_ms,
                        "grammar_share_of_decode_step": round(((mask_ms or 0.0) + (feed_ms or 0.0)) / step_ms, 5),
                        "compile_ms": compile_ms[arm][0], "compile_cached_ms": compile_ms[arm][1]}
    emit({
        "bench": "structured_outputs",
        "model": "SmolLM2-135M-Instruct", "prompt": "chart app prompt", "max_tokens": args.max_tokens,
        "free": free, **figures,
        "llguidance_tokenizer_s": round(tokenizer_s, 2),
    })


if __name__ == "__main__":
    main()
