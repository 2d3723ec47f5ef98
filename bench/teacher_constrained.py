"""The local teacher on simulated chart requests: constrained decoding against none.

Both arms use the same model (the bundled SmolLM2-135M-Instruct), the same few-shot
examples drawn at random from the pool (same seed), the same number of samples at the
same temperature; the baseline arm decodes freely, the other with `training.constrained`.
Per arm: the share of samples that are valid JSON (bare), that pass the chart verifier,
that are correct against the simulator's ground truth, the same for the best-of-N chosen
answer, and seconds and completion tokens per prompt. Prints one JSON line.

    nice .venv/bin/python bench/teacher_constrained.py [--prompts 20] [--samples 4] [--few-shot 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from flywheel.settings import load_settings  # noqa: E402
from flywheel.simulate import charts  # noqa: E402
from flywheel.simulate.tasks import CHART_TASK, make_task  # noqa: E402
from serving.model_store import ensure_hf_model  # noqa: E402
from training.teacher import LocalTeacher, load_pool  # noqa: E402
from training.verify import verify  # noqa: E402


def _valid_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def run_arm(model_dir, tasks, *, constrained: bool, args) -> dict:
    teacher = LocalTeacher(model_dir, few_shot=args.few_shot, constrained=constrained, samples=args.samples,
                           temperature=args.temperature, max_tokens=args.max_tokens, pool=load_pool(seed=args.seed),
                           seed=args.seed)
    n_samples = valid = passed = correct = 0
    best_passed = best_correct = 0
    completion = 0
    started = time.perf_counter()
    for task in tqdm(tasks, desc="constrained" if constrained else "free", file=sys.stderr):
        answer = teacher.label(CHART_TASK, task.messages)
        completion += answer.tokens["completion"]
        for sample in answer.samples:
            n_samples += 1
            valid += _valid_json(sample)
            passed += verify(CHART_TASK, task.messages, sample).passed
            correct += charts.is_correct(charts.parse_config(sample), task.truth) and _valid_json(sample)
        best_passed += answer.passed
        best_correct += answer.answer is not None and charts.is_correct(charts.parse_config(answer.answer), task.truth)
    seconds = time.perf_counter() - started
    out = {
        "valid_json": round(valid / n_samples, 3),
        "verifier_pass": round(passed / n_samples, 3),
        "correct": round(correct / n_samples, 3),
        "best_of_n_pass": round(best_passed / len(tasks), 3),
        "best_of_n_correct": round(best_correct / len(tasks), 3),
        "s_per_prompt": round(seconds / len(tasks), 2),
        "completion_tokens_per_prompt": round(completion / len(tasks), 1),
    }
    if constrained:
        out["vocab_scans_per_step"] = round(teacher.stats["scans"] / max(1, teacher.stats["steps"]), 4)
        out["dead_ends"] = teacher.stats["dead_ends"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=20, help="simulated chart requests")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (best-of-N)")
    p.add_argument("--few-shot", type=int, default=3, help="examples drawn from the pool per prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    settings = load_settings(None)
    model_dir = ensure_hf_model(settings.model_cache_path)
    rng = random.Random(args.seed)
    tasks = [make_task(rng, CHART_TASK, messy_rate=0) for _ in range(args.prompts)]
    free = run_arm(model_dir, tasks, constrained=False, args=args)
    constrained = run_arm(model_dir, tasks, constrained=True, args=args)
    print(json.dumps({
        "bench": "teacher_constrained", "prompts": args.prompts, "samples": args.samples, "few_shot": args.few_shot,
        "temperature": args.temperature, "max_tokens": args.max_tokens, "baseline_unconstrained": free,
        "constrained": constrained,
    }))


if __name__ == "__main__":
    main()
