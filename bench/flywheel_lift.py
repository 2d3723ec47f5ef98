"""Does the flywheel lift the served model? Exactly right and valid chart configurations on
held-out requests, for datasets the traffic showed (seen) and for datasets it never showed
(unseen: the simulator's evaluation-only schemas), per intent, before and after one turn,
and after a second turn trained incrementally on traffic served by the first turn's model.

Each turn, as the flywheel runs it (the scheduler's stages, timed):
1. traffic: simulated sessions of the analytics assistant (flywheel.simulate.synthetic);
   the served model's stand-in answers a chart request right with probability p (turn 1:
   --p-correct; turn 2: the exactly-right rate turn 1's model measured on seen schemas),
   users fix wrong configurations (`edit`) and rate;
2. mine: land into DuckDB, curate (training.curation.pipeline; incremental across turns);
3. dataset: training.datasets.builder (unreviewed candidates included: nobody reviews in a
   benchmark);
4. train: training.trainers.job.run_job with the default configs (training/trainers/configs)
   plus --set overrides; turn 2 continues turn 1's adapter;
5. evaluate: greedy answers of the local backend (the prompt exactly as the app sends it)
   for the base model and each turn's adapter; the general-set reference loss (the
   evaluation gate's forgetting check) of each adapter against the base.

Printed (one JSON line, also bench/results/flywheel_lift.json): exactly-right and valid
rates per arm for seen and unseen schemas and per intent, minutes per stage, training
tokens (computed and supervised) per CPU-second, prompt tokens per request, the
forgetting figures. Goal of issue 11: >= 60% exactly right and >= 95% valid on unseen
schemas after one turn, <= 20 minutes from the start of the turn to the canary.

    python bench/flywheel_lift.py [--sessions 300] [--held-out 40] [--turns 2] [--set sft.args.learning_rate=0.001]
    python bench/flywheel_lift.py --reuse RUN_DIR [--held-out 48]      # score a finished run's adapter again
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(REPO))

from flywheel.settings import Settings  # noqa: E402

CHART = "data-viz/chart-config"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def held_out(n: int, seed: int, unseen: bool) -> list:
    """Chart requests never in the traffic (another seed); over the traffic's datasets
    (seen) or the evaluation-only ones (unseen), in equal shares per dataset."""
    from flywheel.simulate import charts
    from flywheel.simulate.tasks import make_task

    schemas = charts.eval_schemas() if unseen else charts.SCHEMAS
    rng = random.Random(f"held-out:{seed}:{'unseen' if unseen else 'seen'}")
    return [make_task(rng, CHART, messy_rate=0.0, schema=schemas[i % len(schemas)]) for i in range(n)]


def score(tasks, answers) -> dict:
    """Valid (the verifier) and exactly right (the simulator's truth) rates, per intent, and
    how often each field of the configuration is right (where answers go wrong)."""
    from flywheel.domains.chart.score import compare_configs, parse_config
    from training.labeling.verify import verify

    by_intent: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    fields: dict[str, float] = defaultdict(float)
    for t, a in zip(tasks, answers):
        by_intent[t.intent].append((verify(t.task_type, t.messages, a).passed, t.judge(a).correct))
        for name, agreement in compare_configs(parse_config(a), t.truth).items():
            fields[name] += agreement == 1.0
    rows = [x for v in by_intent.values() for x in v]

    def rates(xs):
        return {"n": len(xs), "valid": round(sum(v for v, _ in xs) / len(xs), 3),
                "exact": round(sum(c for _, c in xs) / len(xs), 3)}

    return {**rates(rows), "per_intent": {k: rates(v) for k, v in sorted(by_intent.items())},
            "fields_right": {k: round(v / len(rows), 3) for k, v in fields.items()}}


def answers_of(backend, version: str, tasks, max_tokens: int, schema: bool) -> tuple[list[str], float]:
    """Greedy answers; with ``schema`` the request carries the chart app's ``response_format``
    (the dataset's JSON Schema: names from its lists) and the backend decodes under it."""
    from flywheel.domains.chart.prompt import lists_from_messages
    from flywheel.domains.chart.schema import response_format
    from serving.backends.base import GenerationRequest, ResponseFormat, SamplingParams

    def fmt(task):
        if not schema:
            return None
        rf = response_format(lists_from_messages(task.messages))
        return ResponseFormat(type=rf["type"], json_schema=rf["json_schema"])

    gens = [backend.submit(GenerationRequest(messages=tuple(t.messages), params=SamplingParams(
        temperature=0.0, max_tokens=max_tokens, response_format=fmt(t)), version=version)) for t in tasks]
    return [g.collect()[0][0] for g in gens], sum(g.prompt_tokens for g in gens) / len(gens)


def evaluate_arms(model_dir, arms: dict[str, Path | None], sets: dict[str, list], max_tokens: int,
                  decodings: tuple[str, ...], base_decodings: tuple[str, ...] = ()) -> dict:
    """Each arm answered free and/or under the app's schema (arm name + ``+schema``); the
    base model (adapter None) with ``base_decodings``."""
    from serving.backends.local import LocalBackend

    out: dict[str, dict] = {}
    backend = LocalBackend(model_dir, max_batch=16)
    try:
        for arm, adapter in arms.items():
            version = "base" if adapter is None else arm
            if adapter is not None:
                backend.load_adapter(version, adapter)
            for decoding in (base_decodings if adapter is None else decodings):
                name = arm if decoding == "free" else f"{arm}+schema"
                t = time.monotonic()
                out[name] = {}
                for set_name, tasks in sets.items():
                    got, prompt_tokens = answers_of(backend, version, tasks, max_tokens, decoding == "schema")
                    out[name][set_name] = {**score(tasks, got), "prompt_tokens_per_request": round(prompt_tokens)}
                out[name]["example"] = {"request": sets["unseen"][0].user_text[:120], "answer": got[0][:240]}
                out[name]["minutes"] = round((time.monotonic() - t) / 60, 2)
                say(f"{name}: seen exact {out[name]['seen']['exact']:.0%} valid {out[name]['seen']['valid']:.0%}; "
                    f"unseen exact {out[name]['unseen']['exact']:.0%} valid {out[name]['unseen']['valid']:.0%} "
                    f"({out[name]['minutes']} min)")
    finally:
        backend.close()
    return out


def forgetting(model_dir, arms: dict[str, Path | None]) -> dict:
    """General-set reference loss of each adapter relative to the base (the gate's check)."""
    from training.evaluation.evaluate import ReferenceScorer, Version, general_items

    items = general_items()
    scorer = ReferenceScorer(model_dir)
    base = float(scorer.nll(Version("base", None), items).mean())
    out: dict = {"base_loss": round(base, 4)}
    for name, adapter in arms.items():
        if adapter is not None:
            loss = float(scorer.nll(Version(name, str(adapter)), items).mean())
            out[name] = {"general_loss": round(loss, 4), "relative": round(loss / base - 1, 4)}
    return out


def one_turn(turn: int, conn, settings, args, model_dir, parent: Path | None, p_correct: float, work: Path) -> dict:
    from flywheel.simulate.synthetic import synthetic_events
    from streams.landing import land_events
    from training.curation.pipeline import curate
    from training.datasets.builder import build_dataset
    from training.trainers.job import run_job

    minutes, t = {}, time.monotonic()
    interactions, feedback, _truth = synthetic_events(args.sessions, seed=args.seed + 1000 * turn, p_correct=p_correct)
    land_events(conn, interactions, feedback)
    minutes["traffic"] = (time.monotonic() - t) / 60
    t = time.monotonic()
    # The auto review rules apply as in a turn; their decisions land directly here (the bench
    # has no Kafka). With --review none, unreviewed candidates are used instead.
    curate(conn, settings, emit=lambda events: land_events(conn, reviews=events))
    minutes["mine"] = (time.monotonic() - t) / 60
    t = time.monotonic()
    built = build_dataset(conn, settings)
    minutes["dataset"] = (time.monotonic() - t) / 60
    say(f"turn {turn}: dataset {built.version}: {built.counts} (chart SFT {built.task_types['sft'].get(CHART, 0)}, "
        f"chart pairs {built.task_types['dpo'].get(CHART, 0)})")
    overrides = list(args.set)
    if args.sft_steps:
        overrides.append(f"sft.args.max_steps={args.sft_steps}")
    if args.dpo_steps is not None:
        overrides.append(f"dpo.args.max_steps={args.dpo_steps}")
    t, c = time.monotonic(), cpu_s()
    run_dir = work / f"run-{turn}"
    run = run_job(built.path, run_dir, model_dir=model_dir, parent=parent, overrides=overrides,
                  skip_dpo=args.dpo_steps == 0)
    train_cpu = cpu_s() - c
    minutes["train"] = (time.monotonic() - t) / 60
    sft = run.get("stages", {}).get("sft", {})
    return {
        "turn": turn, "p_correct_served": round(p_correct, 3), "dataset": built.version, "counts": built.counts,
        "chart_sft_records": built.task_types["sft"].get(CHART, 0), "run_dir": str(run_dir),
        "adapter": run["adapter"], "sft_steps": sft.get("steps"), "dpo": run.get("stages", {}).get("dpo", {}).get("status"),
        "packing": sft.get("packing"), "train_cpu_s": round(train_cpu),
        "tokens_computed_per_cpu_s": round(sum(s.get("tokens", 0) for s in run.get("stages", {}).values()) / train_cpu, 1),
        "supervised_tokens": sft.get("supervised_tokens"),
        "supervised_per_cpu_s": round((sft.get("supervised_tokens") or 0) / train_cpu, 1),
        "minutes": {k: round(v, 2) for k, v in minutes.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=300, help="simulated sessions of traffic per turn")
    ap.add_argument("--p-correct", type=float, default=0.0,
                    help="turn 1: the served model stand-in's chance of a right chart draft (the base model: 0)")
    ap.add_argument("--held-out", type=int, default=40, help="requests per held-out set (seen and unseen)")
    ap.add_argument("--turns", type=int, default=2, choices=(1, 2))
    ap.add_argument("--sft-steps", type=int, default=0, help="cap SFT steps (0: the config's epochs)")
    ap.add_argument("--dpo-steps", type=int, default=None, help="cap DPO steps (0 skips DPO; default: the config)")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE.SECTION.KEY=VALUE",
                    help="training config override, as `flywheel train --set` (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-base", action="store_true",
                    help="do not answer with the base model")
    ap.add_argument("--base-decoding", default="schema",
                    help="the base model's decodings (free: it rambles to --max-tokens, the slowest arm; "
                         "measured 0%% exact / 0%% valid)")
    ap.add_argument("--decoding", default="free,schema",
                    help="comma-separated: free (plain greedy) and/or schema (the app sends the chart JSON Schema "
                         "as response_format; the local backend decodes under it)")
    ap.add_argument("--review", choices=("auto", "none"), default="auto",
                    help="auto: the default auto review rules decide what trains (as in a scheduled turn); "
                         "none: every unreviewed candidate with a target trains (datasets.include_pending)")
    ap.add_argument("--reuse", metavar="RUN_DIR", help="score the adapter of a finished run folder (no training)")
    args = ap.parse_args()
    decodings = tuple(d for d in args.decoding.split(",") if d)
    base_decodings = tuple(d for d in args.base_decoding.split(",") if d)
    if not decodings or set(decodings + base_decodings) - {"free", "schema"}:
        ap.error("--decoding and --base-decoding take free and/or schema")

    from serving.model_store import ensure_hf_model
    from services.control.migrations import ALL
    from streams.warehouse import apply_migrations, connect

    sets = {"seen": held_out(args.held_out, args.seed, unseen=False),
            "unseen": held_out(args.held_out, args.seed, unseen=True)}
    t0 = time.monotonic()
    turns: list[dict] = []
    arms: dict[str, Path | None] = {} if args.skip_base else {"base": None}
    if args.reuse:
        run = json.loads((Path(args.reuse) / "run.json").read_text())
        model_dir = ensure_hf_model(Settings().model_cache_path)
        arms["reused"] = Path(run["adapter"])
        figures = evaluate_arms(model_dir, arms, sets, args.max_tokens, decodings, base_decodings)
    else:
        work = Path(tempfile.mkdtemp(prefix="flywheel-lift-"))
        say(f"work folder {work}")
        # The default settings, but for the curation watermark (simulated time) and what
        # --review asks: the default auto review rules, or everything unreviewed.
        settings = Settings(data_dir=str(work)).replace(
            curation={"watermark_lag_s": 0, "select_total": 5000},
            **({} if args.review == "auto" else {"review": {"auto_approve": False}, "datasets": {"include_pending": True}}))
        model_dir = ensure_hf_model(settings.model_cache_path)
        conn = connect(settings.db_path)
        apply_migrations(conn, ALL)
        figures = evaluate_arms(model_dir, arms, sets, args.max_tokens, decodings, base_decodings)
        parent, p = None, args.p_correct
        for turn in range(1, args.turns + 1):
            t = time.monotonic()
            result = one_turn(turn, conn, settings, args, model_dir, parent, p, work)
            name = f"turn{turn}"
            arms[name] = parent = Path(result["adapter"])
            e = time.monotonic()
            figures |= evaluate_arms(model_dir, {name: parent}, sets, args.max_tokens, decodings)
            result["minutes"]["evaluate"] = round((time.monotonic() - e) / 60, 2)
            result["minutes"]["turn_total"] = round((time.monotonic() - t) / 60, 2)
            turns.append(result)
            say(f"turn {turn}: {result['minutes']}")
            # the next turn's traffic is served by this model (as the app sends it: with the schema if asked)
            p = figures[f"{name}+schema" if "schema" in decodings else name]["seen"]["exact"]
        conn.close()
    out = {
        "bench": "flywheel_lift", "sessions_per_turn": None if args.reuse else args.sessions,
        "held_out_per_set": args.held_out, "overrides": args.set, "turns": turns,
        "arms": figures, "forgetting": forgetting(model_dir, arms),
        "goal": {"unseen_exact": 0.6, "unseen_valid": 0.95, "turn_minutes": 20},
        "minutes_total": round((time.monotonic() - t0) / 60, 1),
    }
    line = json.dumps(out)
    print(line)
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / "flywheel_lift.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
