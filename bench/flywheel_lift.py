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

The tool-calling arm (``--arm tools``, or ``--arm chart,tools`` for both; issue 12): one
turn on the support-desk agent's traffic (flywheel.simulate.agent: every session the agent's,
five tools, ``tool_choice: "required"`` as the app sends it; the stand-in calls right with
probability --p-correct, users correct wrong calls with `edit`), the same stages (land,
curate, dataset, run_job: SFT, then DPO per the config unless --dpo-steps 0), in a warehouse
of its own. The base model and the turn's adapter answer --held-out agent requests the
traffic never contained (the simulator's sessions under another seed, first requests only,
their true calls from its SyntheticTruth), with the tools and tool_choice the app sends
(--tool-choice auto to see whether the model calls unprompted). Scored with the
evaluation's own tool-call metrics (training.evaluation.evaluate.tool_call_scores):
function-name accuracy, argument exact-match, argument validity (the tool-call verifier:
offered function, arguments valid under its JSON Schema), plus the share of answers that
made a call at all, per function, and turn 1 minus base with paired-bootstrap 95%
intervals. Printed under ``tools`` in the JSON line (bench/results/flywheel_lift_tools.json
when the chart arm does not run).

    python bench/flywheel_lift.py [--sessions 300] [--held-out 40] [--turns 2] [--set sft.args.learning_rate=0.001]
    python bench/flywheel_lift.py --reuse RUN_DIR [--held-out 48]      # score a finished run's adapter again
    python bench/flywheel_lift.py --arm tools [--tool-sessions 400] [--held-out 40] [--dpo-steps 0]
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

from flywheel.settings import Settings, load_settings  # noqa: E402

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


def one_turn(turn: int, conn, settings, args, model_dir, parent: Path | None, p_correct: float, work: Path, *,
             config=None, focus: str = CHART, label: str = "chart", sessions: int | None = None,
             seen: set[str] | None = None) -> dict:
    """One turn on `sessions` (default --sessions) of the simulator's traffic under `config`
    (default: the analytics assistant); `focus` is the task type whose records are counted
    (as ``<label>_sft_records``); the traffic's user messages are added to `seen`."""
    from flywheel.simulate.synthetic import synthetic_events
    from streams.landing import land_events
    from training.curation.pipeline import curate
    from training.datasets.builder import build_dataset
    from training.trainers.job import run_job

    minutes, t = {}, time.monotonic()
    interactions, feedback, _truth = synthetic_events(sessions or args.sessions, seed=args.seed + 1000 * turn,
                                                      p_correct=p_correct, config=config)
    if seen is not None:
        seen.update(m["content"] for i in interactions for m in i.messages if m["role"] == "user")
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
    say(f"turn {turn}: dataset {built.version}: {built.counts} ({label} SFT {built.task_types['sft'].get(focus, 0)}, "
        f"{label} pairs {built.task_types['dpo'].get(focus, 0)})")
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
        f"{label}_sft_records": built.task_types["sft"].get(focus, 0), "run_dir": str(run_dir),
        "adapter": run["adapter"], "sft_steps": sft.get("steps"), "dpo": run.get("stages", {}).get("dpo", {}).get("status"),
        "packing": sft.get("packing"), "train_cpu_s": round(train_cpu),
        "tokens_computed_per_cpu_s": round(sum(s.get("tokens", 0) for s in run.get("stages", {}).values()) / train_cpu, 1),
        "supervised_tokens": sft.get("supervised_tokens"),
        "supervised_per_cpu_s": round((sft.get("supervised_tokens") or 0) / train_cpu, 1),
        "minutes": {k: round(v, 2) for k, v in minutes.items()},
    }


# -- the tool-calling arm (issue 12) ------------------------------------------------------------------
TOOL_METRICS = ("name_accuracy", "arguments_exact", "arguments_valid", "made_a_call")


def agent_held_out(n: int, seed: int, seen: set[str]) -> list:
    """`n` support-desk requests the traffic never contained: first requests of the
    simulator's agent sessions under another seed, as the app sends them (system prompt,
    tools, tool_choice), each an EvalItem whose reference is the true call its
    SyntheticTruth keeps; requests whose words the traffic held are skipped."""
    from flywheel.domains.tool_calls import render_answer
    from flywheel.simulate.sessions import SimulationConfig
    from flywheel.simulate.synthetic import synthetic_events
    from training.evaluation.evaluate import EvalItem

    interactions, _, truth = synthetic_events(3 * n + 20, seed=7_000_000 + seed, config=SimulationConfig(agent_share=1.0),
                                              paraphrase_rate=0.0, defect_rate=0.0, run_tag=f"held-out-tools-{seed}")
    items, texts = [], set(seen)
    for i in interactions:
        t = truth[i.request_id]
        text = i.messages[-1]["content"]
        if t["attempt"] or t["turn"] != 1 or not i.tools or not t["call"] or text in texts:
            continue
        texts.add(text)
        items.append(EvalItem(list(i.messages), render_answer("", [t["call"]]), t["task_type"], list(i.tools),
                              i.tool_choice))
        if len(items) == n:
            return items
    raise SystemExit(f"only {len(items)} unseen agent requests for --held-out {n}")


def score_tools(items, answers) -> tuple[dict, dict]:
    """The evaluation's tool-call metrics (training.evaluation.evaluate.tool_call_scores) and
    whether an answer made a call at all; overall and per true function. Returns the
    figures and the per-answer arrays (for paired intervals)."""
    import numpy as np

    from flywheel.domains.tool_calls import parse_answer
    from training.evaluation.evaluate import tool_call_scores

    per = tool_call_scores(items, answers) | {"made_a_call": np.array([float(bool(parse_answer(a)[1])) for a in answers])}
    functions = [parse_answer(it.reference)[1][0]["function"]["name"] for it in items]

    def rates(idx) -> dict:
        return {"n": len(idx), **{k: round(float(per[k][idx].mean()), 3) for k in TOOL_METRICS}}

    by_function = defaultdict(list)
    for k, name in enumerate(functions):
        by_function[name].append(k)
    return {**rates(list(range(len(items)))), "per_function": {f: rates(ix) for f, ix in sorted(by_function.items())}}, per


def evaluate_tools(model_dir, arms: dict[str, Path | None], items, max_tokens: int, tool_choice: str) -> dict:
    """Greedy answers of each arm (the base model: adapter None) through the local backend,
    as the evaluation job decodes them (training.evaluation.evaluate.BackendGenerator: the
    request's tools, `tool_choice` as the app sends it unless overridden); scored by
    `score_tools`; later arms against the first with paired-bootstrap intervals."""
    from serving.backends.local import LocalBackend
    from training.evaluation.evaluate import BackendGenerator, Version, paired_ci

    out: dict[str, dict] = {}
    per: dict[str, dict] = {}
    backend = LocalBackend(model_dir, max_batch=16)
    try:
        generator = BackendGenerator(backend)
        offered = [(it.tools, it.tool_choice if tool_choice == "app" else tool_choice) for it in items]
        for arm, adapter in arms.items():
            t = time.monotonic()
            version = Version("base", None) if adapter is None else Version(arm, str(adapter))
            answers = [a[0] for a in generator.generate(version, [it.messages for it in items], max_tokens=max_tokens,
                                                        tools=offered)]
            out[arm], per[arm] = score_tools(items, answers)
            out[arm]["example"] = {"request": items[0].messages[-1]["content"][:120], "answer": answers[0][:240],
                                   "truth": items[0].reference[:240]}
            out[arm]["minutes"] = round((time.monotonic() - t) / 60, 2)
            say(f"tools {arm}: function name {out[arm]['name_accuracy']:.0%}, arguments exact "
                f"{out[arm]['arguments_exact']:.0%}, valid {out[arm]['arguments_valid']:.0%}, a call in "
                f"{out[arm]['made_a_call']:.0%} ({out[arm]['minutes']} min)")
    finally:
        backend.close()
    first, *others = list(arms)
    for arm in others:
        out[arm]["minus_" + first] = {}
        for k in TOOL_METRICS:
            delta, lo, hi = paired_ci(per[arm][k], per[first][k])
            out[arm]["minus_" + first][k] = {"delta": round(delta, 3), "ci95": [round(lo, 3), round(hi, 3)]}
    return out


def tool_arm(args, model_dir, work: Path) -> dict:
    """One turn on the support-desk agent's traffic, base vs turn 1 on unseen agent requests."""
    from flywheel.simulate.agent import SUPPORT_TASK
    from flywheel.simulate.sessions import SimulationConfig
    from services.control.migrations import ALL
    from streams.warehouse import apply_migrations, connect
    from training.datasets.snapshot import load_snapshot, snapshot_dir

    t0 = time.monotonic()
    seen: set[str] = set()
    arms: dict[str, Path | None] = {} if args.skip_base else {"base": None}
    turn = None
    if args.reuse:
        arms["reused"] = Path(json.loads((Path(args.reuse) / "run.json").read_text())["adapter"])
    else:
        work.mkdir(parents=True, exist_ok=True)
        settings = bench_settings(work, args.review)
        conn = connect(settings.db_path)
        apply_migrations(conn, ALL)
        try:
            turn = one_turn(1, conn, settings, args, model_dir, None, args.p_correct, work,
                            config=SimulationConfig(agent_share=1.0), focus=SUPPORT_TASK, label="tool",
                            sessions=args.tool_sessions, seen=seen)
        finally:
            conn.close()
        manifest = load_snapshot(snapshot_dir(settings.data_path, turn["dataset"])).manifest
        turn["tool_dpo_pairs"] = manifest["task_types"].get("dpo", {}).get(SUPPORT_TASK, 0)
        turn["tool_eval_records"] = manifest["task_types"].get("eval", {}).get(SUPPORT_TASK, 0)
        arms["turn1"] = Path(turn["adapter"])
    items = agent_held_out(args.held_out, args.seed, seen)
    e = time.monotonic()
    figures = evaluate_tools(model_dir, arms, items, args.tool_max_tokens, args.tool_choice)
    if turn is not None:  # evaluate: both arms' answers; turn_total: the turn up to its candidate's scores
        turn["minutes"]["evaluate"] = round((time.monotonic() - e) / 60, 2)
        turn["minutes"]["turn_total"] = round(sum(turn["minutes"][k] for k in ("traffic", "mine", "dataset", "train"))
                                              + figures["turn1"]["minutes"], 2)
    f = time.monotonic()
    forgot = forgetting(model_dir, arms) | {"minutes": round((time.monotonic() - f) / 60, 2)}
    return {
        "task_type": SUPPORT_TASK, "sessions": None if args.reuse else args.tool_sessions,
        "held_out": len(items), "tool_choice": f"as the app sends it ({items[0].tool_choice})" if args.tool_choice == "app"
        else args.tool_choice, "max_tokens": args.tool_max_tokens, "overrides": args.set, "turn": turn,
        "arms": figures, "forgetting": forgot, "minutes_total": round((time.monotonic() - t0) / 60, 1),
    }


def bench_settings(work: Path, review: str) -> Settings:
    """The settings (defaults, then ``FLYWHEEL_*`` variables, e.g.
    ``FLYWHEEL_DATASETS__REPLAY_RATIO=0.3``), in the work folder, but for the curation
    watermark (simulated time) and what --review asks: the default auto review rules, or
    everything unreviewed."""
    return load_settings(None).replace(data_dir=str(work),
        curation={"watermark_lag_s": 0, "select_total": 5000},
        **({} if review == "auto" else {"review": {"auto_approve": False}, "datasets": {"include_pending": True}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "),
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("The tool-calling arm"):])
    ap.add_argument("--arm", default="chart",
                    help="comma-separated: chart (the analytics assistant's chart configurations, up to two turns; the "
                         "default) and/or tools (one turn on the support-desk agent's traffic, scored on function-name "
                         "accuracy, argument exact-match and validity; see below)")
    ap.add_argument("--sessions", type=int, default=300, help="simulated sessions of traffic per turn (chart arm)")
    ap.add_argument("--tool-sessions", type=int, default=400,
                    help="tools arm: simulated agent sessions in its turn (under the auto review rules 200 gave 15 tool "
                         "SFT records, 400 gave 143: users earn rater trust as their feedback accumulates)")
    ap.add_argument("--p-correct", type=float, default=0.0,
                    help="turn 1: the served model stand-in's chance of a right draft (chart configuration or call; "
                         "the base model: 0)")
    ap.add_argument("--held-out", type=int, default=40,
                    help="requests per held-out set (chart: seen and unseen; tools: unseen agent requests)")
    ap.add_argument("--turns", type=int, default=2, choices=(1, 2), help="chart arm's turns (the tools arm runs one)")
    ap.add_argument("--sft-steps", type=int, default=0, help="cap SFT steps (0: the config's epochs)")
    ap.add_argument("--dpo-steps", type=int, default=None, help="cap DPO steps (0 skips DPO; default: the config)")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE.SECTION.KEY=VALUE",
                    help="training config override, as `flywheel train --set` (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=200, help="chart arm's answer budget")
    ap.add_argument("--tool-max-tokens", type=int, default=96,
                    help="tools arm's answer budget (the longest true call is ~60 tokens)")
    ap.add_argument("--tool-choice", choices=("app", "auto", "required"), default="app",
                    help="tools arm: the tool_choice of the held-out requests; app: as the agent sends it (required, "
                         "decoded under the tool grammar); auto: the model may answer in text")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-base", action="store_true",
                    help="do not answer with the base model")
    ap.add_argument("--base-decoding", default="schema",
                    help="chart arm: the base model's decodings (free: it rambles to --max-tokens, the slowest arm; "
                         "measured 0%% exact / 0%% valid)")
    ap.add_argument("--decoding", default="free,schema",
                    help="chart arm, comma-separated: free (plain greedy) and/or schema (the app sends the chart JSON "
                         "Schema as response_format; the local backend decodes under it)")
    ap.add_argument("--review", choices=("auto", "none"), default="auto",
                    help="auto: the default auto review rules decide what trains (as in a scheduled turn); "
                         "none: every unreviewed candidate with a target trains (datasets.include_pending)")
    ap.add_argument("--reuse", metavar="RUN_DIR", help="score the adapter of a finished run folder (no training)")
    args = ap.parse_args()
    arm_names = tuple(a for a in args.arm.split(",") if a)
    if not arm_names or set(arm_names) - {"chart", "tools"}:
        ap.error("--arm takes chart and/or tools")
    decodings = tuple(d for d in args.decoding.split(",") if d)
    base_decodings = tuple(d for d in args.base_decoding.split(",") if d)
    if not decodings or set(decodings + base_decodings) - {"free", "schema"}:
        ap.error("--decoding and --base-decoding take free and/or schema")

    from serving.model_store import ensure_hf_model

    work = None if args.reuse else Path(tempfile.mkdtemp(prefix="flywheel-lift-"))
    if work is not None:
        say(f"work folder {work}")
    if "chart" in arm_names:
        out = chart_arm(args, work, decodings, base_decodings)
        name = "flywheel_lift.json"
    else:
        out = {"bench": "flywheel_lift", "arm": "tools"}
        name = "flywheel_lift_tools.json"
    if "tools" in arm_names:
        t = time.monotonic()
        out["tools"] = tool_arm(args, ensure_hf_model(Settings().model_cache_path), None if work is None else work / "tools")
        say(f"tools arm: {round((time.monotonic() - t) / 60, 1)} min")
    line = json.dumps(out)
    print(line)
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / name).write_text(line + "\n")


def chart_arm(args, work: Path | None, decodings: tuple[str, ...], base_decodings: tuple[str, ...]) -> dict:
    """The chart arm: base, then up to two turns on the analytics assistant's traffic."""
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
        settings = bench_settings(work, args.review)
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
    return {
        "bench": "flywheel_lift", "sessions_per_turn": None if args.reuse else args.sessions,
        "held_out_per_set": args.held_out, "overrides": args.set, "turns": turns,
        "arms": figures, "forgetting": forgetting(model_dir, arms),
        "goal": {"unseen_exact": 0.6, "unseen_valid": 0.95, "turn_minutes": 20},
        "minutes_total": round((time.monotonic() - t0) / 60, 1),
    }


if __name__ == "__main__":
    main()
