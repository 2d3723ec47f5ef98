"""SFT tokens/s of our training path against a plain TRL ``SFTTrainer`` run with the same
model, data and LoRA settings, in the same run.

Data: simulated chart-config requests (flywheel.simulate.charts) in the prompt the
assistant app sends (~470 tokens) with the ground-truth configuration as the answer, in
TRL's ``messages`` format; the bundled SmolLM2-135M; LoRA r=16 all-linear
(training/trainers/configs/sft.yaml). Phases, each in a fresh process (so peak memory is its own):

  plain   trl.SFTTrainer(model, args=SFTConfig(...), peft_config=LoraConfig(...)),
          assistant_only_loss, the same batch size, max_length, lr and seed
  ours    training.trainers.sft.build_sft_trainer + run_trainer on a snapshot folder (the job's
          path: snapshot loader, YAML config, adapter attach, loss-channel callback,
          adapter save), per-task eval off so both do the same training work

tokens/s counts non-padding input tokens (``include_num_input_tokens_seen="non_padding"``)
over the trainer's ``train_runtime``, and per CPU-second of the phase process (on a shared
machine wall time swings with other jobs; CPU time much less). Phases alternate over --repeats (the machine is
shared: interleaving keeps drift out of the ratio); figures are medians. Peak memory is
the phase process's max RSS (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).
Target (issue 5): ours >= 0.95x plain.

    python bench/training.py [--examples 16] [--steps 4] [--batch 2] [--max-length 1024] [--repeats 2]

``--speedups`` instead times one epoch of packed chart rows (the SFT default) through our
path in several variants, alternating, each in its own process: ``before`` (the recipe of
session 7: fp32, LoRA dropout 0.05, TRL's fused LM head scoring every position of a row),
``after`` (today's defaults: bf16 where the CPU has AMX, no LoRA dropout, the LM head only
where the answer is). Figures:
supervised (answer) tokens per second and per CPU-second, and seconds per step.

    python bench/training.py --speedups [--examples 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queue_mod
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# This file is called training.py: keep bench/ off the path so `import training` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(REPO))


def chart_records(n: int, seed: int = 0) -> list[dict]:
    from flywheel.simulate.charts import build_prompt, dump_config, generate_request

    rng = random.Random(seed)
    out = []
    for i in range(n):
        req = generate_request(rng)
        out.append({"messages": [{"role": "user", "content": build_prompt(req.schema, req.text)},
                                 {"role": "assistant", "content": dump_config(req.truth)}],
                    "task_type": "chart_config", "weight": 1.0, "source_ids": [f"sim-{i}"]})
    return out


def _common_args(opts) -> dict:
    return {"max_steps": opts["steps"], "per_device_train_batch_size": opts["batch"], "max_length": opts["max_length"],
            "logging_steps": 1, "save_steps": 10_000, "eval_steps": 10_000, "seed": 0, "report_to": "none",
            "disable_tqdm": True}


def _peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds of this process: on a shared machine far steadier than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def phase_plain(opts: dict, queue) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from training.trainers.config import build_args, build_lora, load_stage_config

    cfg = load_stage_config("sft", overrides={"args": _common_args(opts)})
    args = build_args(cfg, Path(opts["tmp"]) / "plain", include_num_input_tokens_seen="non_padding",
                      eval_strategy="no")
    tok = AutoTokenizer.from_pretrained(opts["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(opts["model_dir"], dtype=torch.bfloat16 if args.bf16 else torch.float32)
    data = Dataset.from_list([{"messages": r["messages"]} for r in chart_records(opts["examples"])])
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=build_lora(cfg))
    cpu0 = _cpu_s()
    out = trainer.train()
    cpu = _cpu_s() - cpu0
    runtime = out.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen
    queue.put({"tokens": tokens, "runtime_s": runtime, "tokens_per_s": tokens / runtime, "peak_mb": _peak_mb(),
               "tokens_per_cpu_s": tokens / cpu})


def phase_ours(opts: dict, queue, packing: bool = False) -> None:
    from training.datasets.snapshot import load_snapshot, write_snapshot
    from training.trainers.config import load_stage_config
    from training.trainers.sft import build_sft_trainer, run_trainer

    tmp = Path(opts["tmp"]) / f"ours-{time.monotonic_ns()}"
    snap = load_snapshot(write_snapshot(tmp / "snapshot", version="bench", sft=chart_records(opts["examples"])))
    args = _common_args(opts)
    if opts.get("epoch"):  # one pass over the examples, whatever the number of steps it takes
        args.update(max_steps=-1, num_train_epochs=1)
    flywheel = {"per_task_eval": False, "shared_prefix_packing": packing}
    variant = opts.get("variant") or {}
    args.update(variant.get("args", {}))
    flywheel.update(variant.get("flywheel", {}))
    cfg = load_stage_config("sft", overrides={"args": args, "flywheel": flywheel, "lora": variant.get("lora", {})})
    trainer, callback = build_sft_trainer(snap, tmp / "run", model_dir=opts["model_dir"], cfg=cfg)
    trainer.flywheel_answer_head = variant.get("answer_head", True)
    supervised = sum(sum(1 for x in r["labels"] if x != -100) for r in trainer.train_dataset)
    cpu0 = _cpu_s()
    result = run_trainer(trainer, callback, tmp / "run", "sft", len(trainer.train_dataset))
    cpu = _cpu_s() - cpu0  # includes the adapter save after the loop: counted against us
    queue.put({"tokens": result.tokens, "runtime_s": result.train_runtime_s, "tokens_per_s": result.tokens_per_s,
               "peak_mb": _peak_mb(), "tokens_per_cpu_s": result.tokens / cpu, "steps": result.steps,
               "supervised_tokens": supervised, "supervised_per_cpu_s": supervised / cpu,
               "supervised_per_s": supervised / result.train_runtime_s, "final_loss": result.train_loss[-1]["loss"],
               "bf16": bool(trainer.args.bf16)})


def phase_packed(opts: dict, queue) -> None:
    phase_ours(opts, queue, packing=True)


def run_phase(fn, opts: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(opts, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                raise SystemExit(f"the {fn.__name__} process died (exit code {proc.exitcode}); see its traceback above")
    proc.join()
    return result


def alternate(phases: list[tuple], repeats: int, line) -> dict[str, list[dict]]:
    """Run ``(name, fn, opts)`` phases ``repeats`` times, the order reversed every other
    repeat (drift on a shared machine stays out of the ratios); ``line(result)`` is printed
    after each phase. Returns each phase's results."""
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in phases}
    for r in range(repeats):
        for name, fn, opts in phases if r % 2 == 0 else phases[::-1]:
            res = run_phase(fn, opts)
            runs[name].append(res)
            print(f"repeat {r + 1}/{repeats} {name}: {line(res)}", file=sys.stderr, flush=True)
    return runs


def median_of(runs: dict[str, list[dict]]):
    return lambda name, key: round(statistics.median(x[key] for x in runs[name]), 2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--speedups", action="store_true",
                   help="time packed SFT before and after session 8's speed-ups (bf16 on AMX CPUs, answer-only LM "
                   "head, no LoRA dropout); see the module docstring")
    p.add_argument("--packing", action="store_true",
                   help="compare shared-prefix packing with our unpacked path instead: one epoch over --examples "
                   "each, tokens of supervision (answer tokens) per CPU-second (target of issue 11: more)")
    a = p.parse_args(argv)
    sys.path.append(str(BENCH))
    from _stack import emit

    from flywheel.settings import load_settings
    from serving.model_store import ensure_hf_model

    model_dir = str(ensure_hf_model(load_settings(None, env={}).model_cache_path))
    if a.packing:
        return compare_packing(a, model_dir, emit)
    if a.speedups:
        return compare_speedups(a, model_dir, emit)
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        opts = {"examples": a.examples, "steps": a.steps, "batch": a.batch, "max_length": a.max_length,
                "model_dir": model_dir, "tmp": tmp}
        runs = alternate([("plain", phase_plain, opts), ("ours", phase_ours, opts)], a.repeats,
                         lambda res: f"{res['tokens_per_s']:.1f} tokens/s, {res['tokens_per_cpu_s']:.1f} tokens/cpu-s, "
                                     f"peak {res['peak_mb']:.0f} MB")
    med = median_of(runs)

    import torch

    emit({
        "bench": "training",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "examples": a.examples, "steps": a.steps, "batch": a.batch, "max_length": a.max_length, "repeats": a.repeats,
        "tokens_per_step": round(med("ours", "tokens") / a.steps, 1),
        "plain_tokens_per_s": med("plain", "tokens_per_s"),
        "ours_tokens_per_s": med("ours", "tokens_per_s"),
        "ratio": round(med("ours", "tokens_per_s") / med("plain", "tokens_per_s"), 3),
        "target_ratio": 0.95,
        "plain_tokens_per_cpu_s": med("plain", "tokens_per_cpu_s"),
        "ours_tokens_per_cpu_s": med("ours", "tokens_per_cpu_s"),
        "cpu_ratio": round(med("ours", "tokens_per_cpu_s") / med("plain", "tokens_per_cpu_s"), 3),
        "plain_peak_mb": med("plain", "peak_mb"),
        "ours_peak_mb": med("ours", "peak_mb"),
        "plain_s_per_step": round(med("plain", "runtime_s") / a.steps, 2),
        "ours_s_per_step": round(med("ours", "runtime_s") / a.steps, 2),
    })


def compare_packing(a, model_dir: str, emit) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        opts = {"examples": a.examples, "steps": a.steps, "batch": a.batch, "max_length": a.max_length,
                "model_dir": model_dir, "tmp": tmp, "epoch": True}
        runs = alternate([("unpacked", phase_ours, opts), ("packed", phase_packed, opts)], a.repeats,
                         lambda res: f"{res['steps']} steps, {res['tokens']} tokens computed, "
                                     f"{res['supervised_per_cpu_s']:.1f} supervised tokens/cpu-s, final loss "
                                     f"{res['final_loss']:.3f}")
    med = median_of(runs)

    emit({
        "bench": "training-packing", "examples": a.examples, "batch": a.batch, "repeats": a.repeats,
        "supervised_tokens": med("packed", "supervised_tokens"),
        "unpacked_tokens_computed": med("unpacked", "tokens"), "packed_tokens_computed": med("packed", "tokens"),
        "unpacked_steps": med("unpacked", "steps"), "packed_steps": med("packed", "steps"),
        "unpacked_supervised_per_cpu_s": med("unpacked", "supervised_per_cpu_s"),
        "packed_supervised_per_cpu_s": med("packed", "supervised_per_cpu_s"),
        "cpu_ratio": round(med("packed", "supervised_per_cpu_s") / med("unpacked", "supervised_per_cpu_s"), 3),
        "wall_ratio": round(med("packed", "supervised_per_s") / med("unpacked", "supervised_per_s"), 3),
        "unpacked_peak_mb": med("unpacked", "peak_mb"), "packed_peak_mb": med("packed", "peak_mb"),
    })


#: session 7's recipe, and today's defaults
SPEEDUP_VARIANTS = {
    "before": {"args": {"bf16": False}, "lora": {"lora_dropout": 0.05}, "answer_head": False},
    "after": {},
}


def compare_speedups(a, model_dir: str, emit) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-speedups-") as tmp:
        phases = [(name, phase_packed, {"examples": a.examples, "steps": a.steps, "batch": 1,
                                        "max_length": a.max_length, "model_dir": model_dir, "tmp": tmp,
                                        "epoch": True, "variant": variant})
                  for name, variant in SPEEDUP_VARIANTS.items()]
        runs = alternate(phases, a.repeats,
                         lambda res: f"{res['steps']} steps in {res['runtime_s']:.1f} s, "
                                     f"{res['supervised_per_s']:.1f} supervised tokens/s, "
                                     f"{res['supervised_per_cpu_s']:.1f}/cpu-s, final loss {res['final_loss']:.3f}")
    med = median_of(runs)

    emit({
        "bench": "training-speedups", "examples": a.examples, "repeats": a.repeats,
        "bf16_in_after": runs["after"][0]["bf16"], "load_average_end": [round(x, 2) for x in os.getloadavg()],
        **{name: {"steps": med(name, "steps"), "s_per_step": round(med(name, "runtime_s") / med(name, "steps"), 2),
                  "supervised_per_s": med(name, "supervised_per_s"),
                  "supervised_per_cpu_s": med(name, "supervised_per_cpu_s"), "peak_mb": med(name, "peak_mb"),
                  "final_loss": med(name, "final_loss")} for name in runs},
        "after_vs_before": round(med("after", "supervised_per_s") / med("before", "supervised_per_s"), 2),
        "after_vs_before_by_cpu": round(med("after", "supervised_per_cpu_s") / med("before", "supervised_per_cpu_s"), 2),
    })


if __name__ == "__main__":
    main()
