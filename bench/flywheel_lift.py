"""Does one turn of the flywheel lift the served model? The verifier pass rate (and the
share of exactly right configurations) on held-out chart-config requests, before and after
one SFT+DPO round built from simulated traffic, against the few-shot best-of-N teacher,
with the prompt tokens each needs.

1. Simulated traffic (flywheel.simulate.synthetic): users of the analytics assistant;
   the served model's stand-in answers a chart request correctly with probability
   --p-correct (the real bundled model: 0%), and users fix wrong configurations (`edit`).
2. The flywheel's own path: land into DuckDB -> curate (`training.curation.pipeline`) -> dataset
   (`training.datasets.builder`, unreviewed candidates included: nobody reviews in a benchmark)
   -> SFT then DPO (`training.trainers.job.run_job`, steps capped by --sft-steps/--dpo-steps).
3. Held-out chart requests from a different seed (never in the traffic), answered greedily
   by the base model, the SFT stage's adapter and the final one (SFT then DPO) (local
   backend, the prompt as the app sends it), and by the local teacher (few-shot examples,
   schema-constrained sampling, best of --teacher-samples by the verifier; 0 skips it).
   `--reuse RUN_DIR` evaluates a run folder an earlier run printed, without retraining.

Figures are what they are: a 135M model, a few hundred examples and minutes of CPU.

    python bench/flywheel_lift.py [--sessions 600] [--held-out 40] [--sft-steps 150] [--dpo-steps 30]
    python bench/flywheel_lift.py --reuse /tmp/flywheel-lift-XXXX/run --held-out 48 --teacher-samples 0
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(REPO))

from flywheel.settings import Settings  # noqa: E402



def held_out(n: int, seed: int) -> list:
    from flywheel.simulate.tasks import CHART_TASK, make_task

    rng = random.Random(f"held-out:{seed}")
    return [make_task(rng, CHART_TASK, messy_rate=0.0) for _ in range(n)]


def score(tasks, answers) -> dict:
    from training.labeling.verify import verify

    passed = [verify(t.task_type, t.messages, a).passed for t, a in zip(tasks, answers)]
    correct = [t.judge(a).correct for t, a in zip(tasks, answers)]
    return {"verifier_pass_rate": round(sum(passed) / len(tasks), 3), "correct_rate": round(sum(correct) / len(tasks), 3)}


def backend_answers(backend, version: str, tasks, max_tokens: int) -> tuple[list[str], float]:
    from serving.backends.base import GenerationRequest, SamplingParams

    gens = [backend.submit(GenerationRequest(messages=tuple(t.messages), params=SamplingParams(temperature=0.0,
            max_tokens=max_tokens), version=version)) for t in tasks]
    answers = [g.collect()[0][0] for g in gens]
    return answers, sum(g.prompt_tokens for g in gens) / len(gens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=600)
    ap.add_argument("--p-correct", type=float, default=0.1, help="the served model stand-in's chance of a good draft")
    ap.add_argument("--held-out", type=int, default=40)
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--dpo-steps", type=int, default=30)
    ap.add_argument("--teacher-samples", type=int, default=4, help="0 skips the teacher arm")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", metavar="RUN_DIR", help="evaluate a finished run folder (printed by an earlier run) "
                    "instead of building data and training again")
    args = ap.parse_args()

    from flywheel.simulate.synthetic import synthetic_events
    from serving.backends.local import LocalBackend
    from serving.model_store import ensure_hf_model
    from services.control.migrations import ALL
    from streams.landing import land_events
    from streams.warehouse import apply_migrations, connect
    from training.curation.pipeline import curate
    from training.datasets.builder import build_dataset
    from training.trainers.job import run_job
    from training.labeling.teacher import LocalTeacher

    t0 = time.monotonic()
    chart = "data-viz/chart-config"
    if args.reuse:  # evaluate a finished run again (more held-out prompts, say) without retraining
        run_dir = Path(args.reuse)
        run = json.loads((run_dir / "run.json").read_text())
        manifest = json.loads((Path(run["dataset_path"]) / "manifest.json").read_text())
        data = {"dataset": manifest.get("version"), "sft_records": manifest["counts"]["sft"],
                "dpo_pairs": manifest["counts"]["dpo"], "reused_run": str(run_dir)}
        steps = {stage: run.get("stages", {}).get(stage, {}).get("steps") for stage in ("sft", "dpo")}
        model_dir = ensure_hf_model(Settings().model_cache_path)
        t_data = t_train = time.monotonic()
    else:
        work = Path(tempfile.mkdtemp(prefix="flywheel-lift-"))
        settings = Settings(data_dir=str(work)).replace(
            curation={"watermark_lag_s": 0, "select_total": 5000}, review={"auto_approve": False},
            datasets={"include_pending": True})
        model_dir = ensure_hf_model(settings.model_cache_path)
        interactions, feedback, _truth = synthetic_events(args.sessions, seed=args.seed, p_correct=args.p_correct)
        conn = connect(settings.db_path)
        apply_migrations(conn, ALL)
        land_events(conn, interactions, feedback)
        curate(conn, settings)
        built = build_dataset(conn, settings, progress=lambda m: print(f"  {m}", file=sys.stderr))
        conn.close()
        print(f"dataset {built.version}: {built.counts} (chart SFT {built.task_types['sft'].get(chart, 0)}, "
              f"chart pairs {built.task_types['dpo'].get(chart, 0)})", file=sys.stderr)
        data = {"dataset": built.version, "sft_records": built.counts["sft"], "dpo_pairs": built.counts["dpo"],
                "chart_sft_records": built.task_types["sft"].get(chart, 0)}
        steps = {"sft": args.sft_steps, "dpo": args.dpo_steps}
        t_data = time.monotonic()
        run_dir = work / "run"
        run = run_job(built.path, run_dir, model_dir=model_dir,
                      overrides=[f"sft.args.max_steps={args.sft_steps}", f"dpo.args.max_steps={args.dpo_steps}",
                                 "sft.args.eval_steps=100000", "sft.args.save_steps=100000",
                                 "dpo.args.save_steps=100000"])
        t_train = time.monotonic()
    print(f"run folder: {run_dir}", file=sys.stderr)

    tasks = held_out(args.held_out, args.seed)
    # base, the SFT stage's adapter, and the final one (SFT then DPO) when DPO ran
    arms = {"base": None, "after_sft": run_dir / "sft" / "adapter", "after_one_round": Path(run["adapter"])}
    if arms["after_sft"] == arms["after_one_round"] or not (arms["after_sft"] / "adapter_config.json").is_file():
        del arms["after_sft"]
    answers: dict[str, tuple[list[str], float]] = {}
    backend = LocalBackend(model_dir, max_batch=16)
    try:
        for name, adapter in arms.items():
            if adapter is not None:
                backend.load_adapter(name.replace("_", "-"), adapter)
            answers[name] = backend_answers(backend, "base" if adapter is None else name.replace("_", "-"), tasks,
                                            args.max_tokens)
    finally:
        backend.close()
    t_eval = time.monotonic()

    teacher_figures: dict = {"skipped": "--teacher-samples 0"}
    if args.teacher_samples > 0:
        teacher = LocalTeacher(model_dir, samples=args.teacher_samples, max_tokens=args.max_tokens)
        teacher_answers, teacher_tokens = [], []
        for t in tasks:
            ans = teacher.label(chart, t.messages)
            teacher_answers.append(ans.answer or "")
            teacher_tokens.append(ans.tokens.get("prompt", 0) if isinstance(ans.tokens, dict) else 0)
        teacher_figures = {**score(tasks, teacher_answers), "samples": args.teacher_samples,
                           "prompt_tokens_per_request": round(sum(teacher_tokens) / len(tasks))}
    t_teacher = time.monotonic()

    figures = {
        "bench": "flywheel_lift", "sessions": None if args.reuse else args.sessions, "p_correct_stand_in": args.p_correct,
        **data, "held_out": len(tasks), "sft_steps": steps["sft"], "dpo_steps": steps["dpo"],
        "dpo_ran": run.get("stages", {}).get("dpo", {}).get("status"),
        **{name: {**score(tasks, got), "prompt_tokens_per_request": round(tokens)} for name, (got, tokens) in answers.items()},
        "teacher_few_shot_best_of_n": teacher_figures,
        "minutes": {"data": round((t_data - t0) / 60, 1), "train": round((t_train - t_data) / 60, 1),
                    "eval": round((t_eval - t_train) / 60, 1), "teacher": round((t_teacher - t_eval) / 60, 1)},
        "examples": [{"request": t.messages[-1]["content"].rsplit("Request:", 1)[-1][:120], "after": a[:200]}
                     for t, a in list(zip(tasks, answers["after_one_round"][0]))[:3]],
    }
    line = json.dumps(figures)
    print(line)
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / "flywheel_lift.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
