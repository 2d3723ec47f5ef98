"""Aggregate tokens/s of the local backend when traffic is split over two model versions
(LoRA adapters served next to the base in the same batches) against all traffic on one
version, in the same run.

This bench calls the backend in-process (`LocalBackend.submit`, no gateway, no broker):
what it measures is the model side, PEFT's mixed-batch LoRA forward against a plain one.
The adapters are random (serving/adapters.py, r=8 on q_proj/v_proj, the shape of a
typical fine-tune). EOS is ignored (the backend's EOS set is emptied), so every request
generates exactly max_tokens whatever an adapter makes the model say and every phase does
the same work. 16 clients send requests one after another (greedy, max_tokens 64) with
prompts that ask for long answers. Phases, each with all 16 clients:

  base_unwrapped   no adapter loaded: the plain transformers model (the fast path)
  base             adapters A and B loaded, every request on the base
  adapter          every request on adapter A
  split_base_a     half the clients on the base, half on adapter A
  split_a_b        half on adapter A, half on adapter B

One repeat runs them in that order (loading A and B after the first, unloading them after
the last); the figures are medians over --repeats (the machine is shared: interleaving
keeps drift out of the ratios). `step_ms` is the time (median and min) of one 16-row
decode step (model forward only, KV length 128) for the same mixes, from a separate model
instance: the per-step cost of PEFT's mixed batch without the rest of the serving loop.
Target (issue 3): a split rate >= 0.8x the single-version rate of its versions.
    python bench/versions_serving.py [--rounds 2] [--max-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _stack import emit

from flywheel.settings import load_settings
from serving.adapters import make_random_adapter
from serving.backends.base import GenerationRequest, SamplingParams
from serving.backends.local import LocalBackend
from serving.model_store import ensure_hf_model, load_model

TOPICS = ["the history of the bicycle", "how bread is baked", "why the sky is blue", "the water cycle",
          "how a car engine works", "the rules of chess", "what a database index is", "the life of bees",
          "how to plan a garden", "the first moon landing", "how rainbows form", "what a spreadsheet is for",
          "how trains run on time", "the story of paper", "what makes a good chart", "how volcanoes erupt"]
CLIENTS = 16
MIXES = {"base": ["base"], "adapter": ["a"], "split_base_a": ["base", "a"], "split_a_b": ["a", "b"]}


def ask(backend: LocalBackend, version: str, topic: str, max_tokens: int) -> int:
    gen = backend.submit(GenerationRequest(
        messages=({"role": "user", "content": f"Write a long, detailed essay about {topic}."},),
        params=SamplingParams(temperature=0.0, max_tokens=max_tokens), version=version))
    gen.collect()
    return gen.completion_tokens[0]


def phase(backend: LocalBackend, versions: list[str], rounds: int, max_tokens: int) -> dict:
    """16 clients; client k sends its requests to ``versions[k % len(versions)]``."""
    def client(k: int) -> int:
        v = versions[k % len(versions)]
        return sum(ask(backend, v, TOPICS[(k + r * CLIENTS) % len(TOPICS)], max_tokens) for r in range(rounds))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        tokens = sum(pool.map(client, range(CLIENTS)))
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)}


def step_times(model_dir: Path, paths: dict[str, Path], kv_len: int = 128, reps: int = 20) -> dict:
    """Median ms of one 16-row decode step for each mix (plain model, then PEFT)."""
    import torch
    from peft import PeftModel
    from transformers import DynamicCache

    model, _ = load_model(model_dir)
    ids = torch.randint(0, 1000, (CLIENTS, kv_len), generator=torch.Generator().manual_seed(0))
    pos = torch.full((CLIENTS, 1), kv_len)

    def timer(m, **kw):
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            m(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **kw)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            with torch.inference_mode():
                m(input_ids=ids[:, :1], position_ids=pos, past_key_values=cache, use_cache=True, **kw)
            times.append(time.perf_counter() - t0)
            cache.crop(-1)
        return times

    out = {"base_unwrapped": timer(model)}
    peft = PeftModel.from_pretrained(model, str(paths["a"]), adapter_name="a")
    peft.load_adapter(str(paths["b"]), adapter_name="b")
    peft.eval()
    for _ in range(3):  # interleaved
        for name, versions in MIXES.items():
            names = [("__base__" if v == "base" else v) for v in versions] * (CLIENTS // len(versions))
            out.setdefault(name, []).extend(timer(peft, adapter_names=names))
    return {"median": {k: round(1000 * statistics.median(v), 1) for k, v in out.items()},
            "min": {k: round(1000 * min(v), 1) for k, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="requests per client in each phase")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model_dir = ensure_hf_model(load_settings(None).model_cache_path)
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-bench-adapters-"))
    paths = {name: make_random_adapter(model_dir, tmp / name, seed=seed) for name, seed in (("a", 1), ("b", 2))}
    backend = LocalBackend(model_dir, max_batch=CLIENTS)
    backend.engine.eos = set()  # every request runs to max_tokens: the same work in every phase
    runs: dict[str, list[dict]] = {"base_unwrapped": [], **{k: [] for k in MIXES}}
    loads = []
    try:
        ask(backend, "base", "warming up", 8)
        for _ in range(args.repeats):
            runs["base_unwrapped"].append(phase(backend, ["base"], args.rounds, args.max_tokens))
            t0 = time.perf_counter()
            backend.load_adapter("a", paths["a"])
            backend.load_adapter("b", paths["b"])
            loads.append((time.perf_counter() - t0) / 2)
            for name, versions in MIXES.items():
                runs[name].append(phase(backend, versions, args.rounds, args.max_tokens))
            backend.unload_adapter("a")
            backend.unload_adapter("b")
    finally:
        backend.close()

    phases = {name: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                     "each": [r["tokens_per_s"] for r in rs], "tokens": rs[0]["tokens"]}
              for name, rs in runs.items()}
    rate = {k: v["tokens_per_s"] for k, v in phases.items()}
    ratios = {
        "split_base_a/best_single": round(rate["split_base_a"] / max(rate["base"], rate["adapter"]), 3),
        "split_a_b/adapter": round(rate["split_a_b"] / rate["adapter"], 3),
        "split_base_a/base_unwrapped": round(rate["split_base_a"] / rate["base_unwrapped"], 3),
        "base/base_unwrapped": round(rate["base"] / rate["base_unwrapped"], 3),
        "adapter/base_unwrapped": round(rate["adapter"] / rate["base_unwrapped"], 3),
    }
    try:
        steps = step_times(model_dir, paths)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit({"bench": "versions_serving", "in_process": True, "clients": CLIENTS, "max_tokens": args.max_tokens,
          "rounds": args.rounds, "repeats": args.repeats, "eos_ignored": True,
          "adapters": "random LoRA r=8 on q_proj,v_proj", "adapter_load_s": round(statistics.median(loads), 3),
          "phases": phases, "ratios": ratios, "step_ms": steps,
          "targets": {">=0.8x_single_split_base_a": ratios["split_base_a/best_single"] >= 0.8,
                      ">=0.8x_single_split_a_b": ratios["split_a_b/adapter"] >= 0.8}})


if __name__ == "__main__":
    main()
