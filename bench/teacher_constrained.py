"""The local teacher on simulated chart requests: constrained decoding against none.

Both arms use the same model (the bundled SmolLM2-135M-Instruct), the same few-shot
examples drawn at random from the pool (same seed), the same number of samples at the
same temperature; the baseline arm decodes freely, the other with `training.labeling.constrained`.
Per arm: the share of samples that are valid JSON (bare), that pass the chart verifier,
that are correct against the simulator's ground truth, the same for the best-of-N chosen
answer, and seconds and completion tokens per prompt. Prints one JSON line (also on
Ctrl-C, with "partial": true and the prompts done so far).

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
from training.labeling.teacher import LocalTeacher, load_pool  # noqa: E402
from training.labeling.verify import verify  # noqa: E402


def _valid_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


class Arm:
    """One decoding mode's teacher and its running counts."""

    def __init__(self, model_dir, *, constrained: bool, args):
        self.constrained = constrained
        self.teacher = LocalTeacher(model_dir, few_shot=args.few_shot, constrained=constrained, samples=args.samples,
                                    temperature=args.temperature, max_tokens=args.max_tokens,
                                    pool=load_pool(seed=args.seed), seed=args.seed)
        self.prompts = self.samples = self.valid = self.passed = self.correct = 0
        self.best_passed = self.best_correct = self.completion = 0
        self.seconds = 0.0

    def run(self, task) -> None:
        started = time.perf_counter()
        answer = self.teacher.label(CHART_TASK, task.messages)
        self.seconds += time.perf_counter() - started
        self.prompts += 1
        self.completion += answer.tokens["completion"]
        for sample in answer.samples:
            self.samples += 1
            self.valid += _valid_json(sample)
            self.passed += verify(CHART_TASK, task.messages, sample).passed
            self.correct += _valid_json(sample) and charts.is_correct(charts.parse_config(sample), task.truth)
        self.best_passed += answer.passed
        self.best_correct += answer.answer is not None and charts.is_correct(charts.parse_config(answer.answer), task.truth)

    def figures(self) -> dict:
        n, p = max(1, self.samples), max(1, self.prompts)
        out = {
            "prompts": self.prompts,
            "valid_json": round(self.valid / n, 3),
            "verifier_pass": round(self.passed / n, 3),
            "correct": round(self.correct / n, 3),
            "best_of_n_pass": round(self.best_passed / p, 3),
            "best_of_n_correct": round(self.best_correct / p, 3),
            "s_per_prompt": round(self.seconds / p, 2),
            "completion_tokens_per_prompt": round(self.completion / p, 1),
        }
        if self.constrained:
            stats = self.teacher.stats
            out["vocab_scans_per_step"] = round(stats["scans"] / max(1, stats["steps"]), 4)
            out["dead_ends"] = stats["dead_ends"]
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
    free, constrained = Arm(model_dir, constrained=False, args=args), Arm(model_dir, constrained=True, args=args)
    partial = False
    try:
        # The two arms alternate prompt by prompt, so an interrupted run still compares like with like.
        for task in tqdm(tasks, desc="prompts", file=sys.stderr):
            free.run(task)
            constrained.run(task)
    except KeyboardInterrupt:
        partial = True
    print(json.dumps({
        "bench": "teacher_constrained", "samples": args.samples, "few_shot": args.few_shot,
        "temperature": args.temperature, "max_tokens": args.max_tokens, "partial": partial,
        "baseline_unconstrained": free.figures(), "constrained": constrained.figures(),
    }), flush=True)


if __name__ == "__main__":
    main()
