"""Evaluation and gate: a candidate version against the production version, per task type,
on a dataset's held-out split, with confidence intervals and a pass/fail with reasons.

Per task type, paired on the same prompts:

- **reference loss**: mean per-token NLL of the held-out reference answers under each
  version (the "channel loss" practitioners watch per task type); cheap, no generation;
- **verifier pass rate** of greedy answers (training/labeling/verify.py; task types without a
  specific verifier get the generic ones: length, format, language);
- **judge win rate** (position-swapped pairwise judge, training/evaluation/judge.py), when a judge
  endpoint is configured (`judge.base_url`);
- **usability**: the mean of the per-answer verifier score and, when judged, the judge's
  per-item outcome (win 1, tie 0.5, loss 0).

- **tool calls** (issue 12), for items whose request offered tools (per tool set: a
  tool-calling task type is one app's tool set), what tool-calling benchmarks report:
  function-name accuracy (the answer calls the reference's functions), argument
  exact-match (the same calls with the same arguments, compared as JSON) and argument
  validity (the tool-call verifier passes: offered functions, arguments valid under their
  schemas). The answers are decoded with the request's ``tools`` and ``tool_choice``.

Differences come with paired-bootstrap 95% intervals. A task type whose pass rate or
usability seems to drop is resampled (`evaluate.resample_k` samples per prompt per
version at temperature `evaluate.resample_temperature`): pass@k tells a fluctuation of
greedy decoding (pass@k not lower) from a regression. A general set shipped with the
project (`training/data/general_eval.jsonl`) catches forgetting through its reference loss.

Gate rules (settings section `evaluate`): no task type significantly worse on reference
loss (`max_loss_increase`) or usability (a regression confirmed by pass@k); the overall
verifier pass rate not significantly lower than production's (beyond `max_pass_rate_drop`);
no tool-calling type significantly worse on function-name accuracy or argument exact-match
(beyond `max_pass_rate_drop` too);
general reference loss not up by more than `max_forgetting`. The report is JSON plus a readable HTML page
with charts (per-type deltas, and the training run's eval loss per task type when given).
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from training.errors import TrainingError

Progress = Callable[[str], None]


class EvaluationError(TrainingError):
    """An evaluation cannot run (missing version, empty split, unloadable adapter)."""


@dataclass(frozen=True)
class EvalItem:
    messages: list[dict]  # the prompt (up to the last user turn)
    reference: str  # with tools: its calls in the Hermes text form (flywheel.domains.tool_calls)
    task_type: str
    tools: list[dict] | None = None  # the tools the request offered, and its tool_choice
    tool_choice: object = None


@dataclass(frozen=True)
class Version:
    name: str
    adapter_path: str | None  # None: the base model


def items_from_records(records: Sequence[dict]) -> list[EvalItem]:
    from flywheel.domains.tool_calls import render_answer

    return [EvalItem(list(r["messages"][:-1]),
                     render_answer(r["messages"][-1]["content"], r["messages"][-1].get("tool_calls"))
                     if r.get("tools") else r["messages"][-1]["content"],
                     r["task_type"], r.get("tools"), r.get("tool_choice")) for r in records]


def general_items() -> list[EvalItem]:
    from training.datasets.builder import read_general

    return items_from_records(read_general("general_eval.jsonl"))


# -- statistics -----------------------------------------------------------------------------
def paired_ci(a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a - b) and its 95% paired-bootstrap interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        return 0.0, 0.0, 0.0
    if d.size == 1 or np.all(d == d[0]):
        return float(d.mean()), float(d.min()), float(d.max())
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


# -- the model side ------------------------------------------------------------------------------
class ReferenceScorer:
    """Per-token NLL of reference answers under the base model or an adapter on it (one
    copy of the base; adapters switched by name)."""

    def __init__(self, model_dir: Path | str, batch_size: int = 4):
        from training.curation.select import ModelScorer

        self.scorer = ModelScorer(model_dir, batch_size=batch_size)
        self.base = self.scorer.model
        self.peft = None

    def _use(self, version: Version) -> None:
        if version.adapter_path is None:
            self.scorer.model = self.base if self.peft is None else self.peft
            if self.peft is not None:
                self.peft.base_model.disable_adapter_layers()
            return
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, version.adapter_path, adapter_name=version.name)
        elif version.name not in self.peft.peft_config:
            self.peft.load_adapter(version.adapter_path, adapter_name=version.name)
        self.peft.base_model.enable_adapter_layers()
        self.peft.set_adapter(version.name)
        self.peft.eval()
        self.scorer.model = self.peft

    def nll(self, version: Version, items: Sequence[EvalItem]) -> np.ndarray:
        from training.trainers.sft import render_tool_messages

        self._use(version)
        return -self.scorer.mean_logprob([(render_tool_messages(it.messages, it.tools), it.reference) for it in items])


class BackendGenerator:
    """Answers from the local backend: both versions' requests batch together."""

    def __init__(self, backend):
        self.backend = backend

    def ensure(self, version: Version) -> None:
        if version.name not in self.backend.versions() and version.adapter_path is not None:
            self.backend.load_adapter(version.name, version.adapter_path)

    def generate(self, version: Version, prompts: Sequence[list[dict]], *, n: int = 1, temperature: float = 0.0,
                 max_tokens: int = 256, seed: int = 0, tools: Sequence[tuple] | None = None) -> list[list[str]]:
        """Answers per prompt; `tools`: per prompt ``(tools, tool_choice)`` or None, the
        answers then carry their calls in the Hermes text form."""
        from flywheel.domains.tool_calls import render_answer
        from serving.backends.base import GenerationRequest, SamplingParams

        self.ensure(version)
        offered = list(tools) if tools is not None else [None] * len(prompts)
        gens = [self.backend.submit(GenerationRequest(
            messages=tuple(p), params=SamplingParams(temperature=temperature, max_tokens=max_tokens,
                                                     seed=None if temperature == 0 else seed + i),
            n=n, version=version.name,
            **({"tools": tuple(t[0]), "tool_choice": t[1]} if t and t[0] else {})))
            for i, (p, t) in enumerate(zip(prompts, offered))]
        return [[render_answer(d.text, d.tool_calls) if d.tool_calls else d.text for d in g.drafts()] for g in gens]


def tool_call_scores(items: Sequence[EvalItem], answers: Sequence[str]) -> dict[str, np.ndarray]:
    """Per item (of those with tools): function-name accuracy (the answer calls the same
    functions as the reference, in any order), argument exact-match (the same calls with the
    same arguments, compared as JSON) and argument validity (the tool-call verifier passes)."""
    from flywheel.domains.tool_calls import call_key, parse_answer
    from training.labeling.verify import verify_answer_calls

    name, exact, valid = [], [], []
    for it, answer in zip(items, answers):
        ref = sorted(call_key(c) for c in parse_answer(it.reference)[1])
        got = sorted(call_key(c) for c in parse_answer(answer)[1])
        name.append(float(bool(ref) and sorted(k[0] or "" for k in ref) == sorted(k[0] or "" for k in got)))
        exact.append(float(bool(ref) and ref == got))
        valid.append(float(bool(got) and verify_answer_calls(it.tools or [], answer, it.tool_choice).passed))
    return {"name_accuracy": np.array(name), "arguments_exact": np.array(exact), "arguments_valid": np.array(valid)}


def _tool_summary(items: Sequence[EvalItem], ans_c: Sequence[str], ans_p: Sequence[str]) -> dict:
    c, p = tool_call_scores(items, ans_c), tool_call_scores(items, ans_p)
    return {"n": len(items), **{k: _summary(c[k], p[k]) for k in c}}


# -- the evaluation ---------------------------------------------------------------------------------
@dataclass
class TypeResult:
    task_type: str
    n: int
    loss: dict  # candidate, production, delta, ci
    pass_rate: dict
    usability: dict
    judge: dict | None = None
    resample: dict | None = None
    #: Tool-calling types: name_accuracy, arguments_exact, arguments_valid (each candidate,
    #: production, delta, ci) and n.
    tool_calls: dict | None = None
    verdict: str = "ok"  # ok | better | fluctuation | regression | worse-loss
    reasons: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    candidate: str
    production: str
    dataset: str | None
    created_at: str
    types: list[TypeResult]
    overall: dict
    general: dict
    gate: dict
    samples: list[dict]
    #: The judge's agreement with people's own preferences in the dataset (`judge.agreement_on_pairs`),
    #: when a judge is configured and the dataset has such pairs.
    judge_agreement: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def passed(self) -> bool:
        return bool(self.gate["passed"])


def _summary(c: np.ndarray, p: np.ndarray) -> dict:
    delta, lo, hi = paired_ci(c, p)
    return {"candidate": float(np.mean(c)) if len(c) else None, "production": float(np.mean(p)) if len(p) else None,
            "delta": delta, "ci": [lo, hi]}


def _verify_scores(items: Sequence[EvalItem], answers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    from training.labeling.verify import verify, verify_answer_calls

    verdicts = [verify_answer_calls(it.tools, a, it.tool_choice) if it.tools else verify(it.task_type, it.messages, a)
                for it, a in zip(items, answers)]
    return (np.array([v.passed for v in verdicts], dtype=np.float64),
            np.array([v.score for v in verdicts], dtype=np.float64))


def evaluate(candidate: Version, production: Version, items: Sequence[EvalItem], *, scorer: ReferenceScorer,
             generator: BackendGenerator, settings, judge=None, general: Sequence[EvalItem] | None = None,
             dataset: str | None = None, progress: Progress | None = None) -> EvalReport:
    cfg = settings.evaluate
    say = progress or (lambda _m: None)
    if not items:
        raise EvaluationError("the evaluation split is empty: build a dataset with held-out items first")
    general = list(general_items() if general is None else general)
    say(f"reference loss on {len(items)} held-out items (+{len(general)} general)")
    loss_c, loss_p = scorer.nll(candidate, items), scorer.nll(production, items)
    gen_c = scorer.nll(candidate, general) if general else np.array([])
    gen_p = scorer.nll(production, general) if general else np.array([])

    say(f"answers from {candidate.name} and {production.name}")
    prompts = [it.messages for it in items]
    offered = _offered(items)
    ans_c = [a[0] for a in generator.generate(candidate, prompts, max_tokens=cfg.max_tokens, **offered)]
    ans_p = [a[0] for a in generator.generate(production, prompts, max_tokens=cfg.max_tokens, **offered)]
    pass_c, score_c = _verify_scores(items, ans_c)
    pass_p, score_p = _verify_scores(items, ans_p)
    judged = np.full(len(items), np.nan)
    if judge is not None:
        say("pairwise judge, both orders")
        for i, it in enumerate(items):
            winner = judge.judge_pair(it.messages, ans_c[i], ans_p[i], reference=it.reference, task_type=it.task_type).winner
            judged[i] = {"a": 1.0, "b": 0.0}.get(winner, 0.5)
    use_c = np.where(np.isnan(judged), score_c, (score_c + judged) / 2)
    use_p = np.where(np.isnan(judged), score_p, (score_p + (1 - judged)) / 2)

    by_type: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_type[it.task_type].append(i)
    results = []
    for task_type, idx in sorted(by_type.items()):
        ix = np.array(idx)
        r = TypeResult(task_type, len(idx), _summary(loss_c[ix], loss_p[ix]), _summary(pass_c[ix], pass_p[ix]),
                       _summary(use_c[ix], use_p[ix]))
        with_tools = [i for i in idx if items[i].tools]
        if with_tools:
            r.tool_calls = _tool_summary([items[i] for i in with_tools], [ans_c[i] for i in with_tools],
                                         [ans_p[i] for i in with_tools])
        if judge is not None:
            j = judged[ix]
            r.judge = {"win_rate": float(np.mean(j)), "wins": int((j == 1).sum()), "ties": int((j == 0.5).sum()),
                       "losses": int((j == 0).sum())}
        if r.loss["ci"][0] > cfg.max_loss_increase:
            r.verdict = "worse-loss"
            r.reasons.append(f"reference loss up {r.loss['delta']:+.3f} nats/token (95% CI {r.loss['ci'][0]:+.3f}.."
                             f"{r.loss['ci'][1]:+.3f}), beyond {cfg.max_loss_increase:+.3f}")
        for key, what in (("name_accuracy", "function-name accuracy"), ("arguments_exact", "argument exact-match")):
            fig = (r.tool_calls or {}).get(key)
            if fig and fig["ci"][1] < -cfg.max_pass_rate_drop:
                r.verdict = "regression"
                r.reasons.append(f"{what} down {-fig['delta']:.1%} ({fig['production']:.0%} -> {fig['candidate']:.0%}, "
                                 f"95% CI {fig['ci'][0]:+.1%}..{fig['ci'][1]:+.1%}; allowed {cfg.max_pass_rate_drop:.1%})")
        if r.verdict == "regression":
            pass  # tool-call accuracy fell: no resampling can make that a fluctuation
        elif r.pass_rate["delta"] < 0 or r.usability["delta"] < 0:
            say(f"{task_type}: seems to drop; resampling {cfg.resample_k}x per prompt")
            r.resample = _resample(candidate, production, [items[i] for i in idx], generator, cfg)
            if r.resample["pass_at_k"]["ci"][1] < 0:
                r.verdict = "regression"
                r.reasons.append(f"pass@{cfg.resample_k} down {r.resample['pass_at_k']['delta']:+.2f} (95% CI "
                                 f"{r.resample['pass_at_k']['ci'][0]:+.2f}..{r.resample['pass_at_k']['ci'][1]:+.2f})")
            elif r.verdict == "ok":
                r.verdict = "fluctuation"
        elif r.verdict == "ok" and (r.loss["ci"][1] < 0 or r.usability["ci"][0] > 0 or (
                r.tool_calls and r.tool_calls["arguments_exact"]["ci"][0] > 0)):
            r.verdict = "better"
        results.append(r)

    overall = {"loss": _summary(loss_c, loss_p), "pass_rate": _summary(pass_c, pass_p),
               "usability": _summary(use_c, use_p), "n": len(items)}
    general_fig = _summary(gen_c, gen_p) if general else {}
    if general:
        general_fig["relative"] = (general_fig["candidate"] - general_fig["production"]) / max(general_fig["production"], 1e-9)
    gate = _gate(results, overall, general_fig, cfg)
    samples = [{"task_type": it.task_type, "prompt": it.messages[-1]["content"][-300:], "reference": it.reference[:300],
                "candidate": ans_c[i][:300], "production": ans_p[i][:300], "candidate_passed": bool(pass_c[i]),
                "production_passed": bool(pass_p[i])} for i, it in enumerate(items[: cfg.report_samples])]
    return EvalReport(candidate.name, production.name, dataset, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      results, overall, general_fig, gate, samples)


def _offered(items: Sequence[EvalItem]) -> dict:
    """The ``tools`` keyword of `BackendGenerator.generate` for items (none without tools)."""
    if not any(it.tools for it in items):
        return {}
    return {"tools": [(it.tools, it.tool_choice) if it.tools else None for it in items]}


def _resample(candidate: Version, production: Version, items: list[EvalItem], generator, cfg) -> dict:
    prompts = [it.messages for it in items]
    out = {}
    for v in (candidate, production):
        answers = generator.generate(v, prompts, n=cfg.resample_k, temperature=cfg.resample_temperature,
                                     max_tokens=cfg.max_tokens, **_offered(items))
        passed = np.array([[p for p in _verify_scores([it] * len(a), a)[0]] for it, a in zip(items, answers)])
        out[v.name] = passed.max(axis=1)  # pass@k: any of the k samples passes
    return {"k": cfg.resample_k, "pass_at_k": _summary(out[candidate.name], out[production.name])}


def _gate(results: list[TypeResult], overall: dict, general: dict, cfg) -> dict:
    reasons = []
    for r in results:
        if r.verdict in ("regression", "worse-loss"):
            reasons.extend(f"{r.task_type}: {why}" for why in r.reasons)
    pr = overall["pass_rate"]
    if pr["ci"][1] < -cfg.max_pass_rate_drop:
        reasons.append(f"verifier pass rate down {-pr['delta']:.1%} overall (95% CI {pr['ci'][0]:+.1%}..{pr['ci'][1]:+.1%}; "
                       f"allowed {cfg.max_pass_rate_drop:.1%})")
    if general and general["relative"] > cfg.max_forgetting:
        reasons.append(f"general-set reference loss up {general['relative']:.1%} (allowed {cfg.max_forgetting:.1%}): "
                       "forgetting")
    return {"passed": not reasons, "reasons": reasons or ["no task type worse, pass rate held, no forgetting"],
            "rules": cfg.model_dump()}


# -- the report -----------------------------------------------------------------------------------
def _bars(title: str, rows: list[tuple[str, float, float, float]], unit: str) -> str:
    """A horizontal bar chart of deltas with their intervals, as inline SVG."""
    if not rows:
        return ""
    width, row_h, left = 640, 26, 230
    span = max(1e-9, max(max(abs(d), abs(lo), abs(hi)) for _, d, lo, hi in rows))
    scale = (width - left - 20) / (2 * span)
    mid = left + (width - left - 20) / 2
    parts = [f'<svg width="{width}" height="{row_h * len(rows) + 30}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{mid}" y1="0" x2="{mid}" y2="{row_h * len(rows)}" stroke="#888"/>']
    for i, (name, d, lo, hi) in enumerate(rows):
        y = i * row_h + 4
        x0, x1 = sorted((mid, mid + d * scale))
        colour = "#3a7" if d <= 0 and unit == "nats" or d >= 0 and unit != "nats" else "#c44"
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{html.escape(name)}</text>')
        parts.append(f'<rect x="{x0}" y="{y}" width="{max(x1 - x0, 1)}" height="16" fill="{colour}"/>')
        parts.append(f'<line x1="{mid + lo * scale}" y1="{y + 8}" x2="{mid + hi * scale}" y2="{y + 8}" stroke="#222"/>')
        parts.append(f'<text x="{width - 15}" y="{y + 14}" font-size="11" text-anchor="end">{d:+.3f}</text>')
    parts.append(f'<text x="{left}" y="{row_h * len(rows) + 20}" font-size="12">{html.escape(title)} '
                 f'(candidate - production, 95% CI)</text></svg>')
    return "".join(parts)


def render_html(report: dict, run: dict | None = None) -> str:
    types = report["types"]
    verdict = "PASS" if report["gate"]["passed"] else "FAIL"
    rows = ""
    for t in types:
        judge = f"{t['judge']['win_rate']:.0%}" if t.get("judge") else "-"
        rows += (f"<tr><td>{html.escape(t['task_type'])}</td><td>{t['n']}</td><td>{t['loss']['delta']:+.3f}</td>"
                 f"<td>{t['pass_rate']['production']:.0%} → {t['pass_rate']['candidate']:.0%}</td>"
                 f"<td>{t['usability']['delta']:+.3f}</td><td>{judge}</td></tr>")
    tool_rows = "".join(
        f"<tr><td>{html.escape(t['task_type'])}</td><td>{t['tool_calls']['n']}</td>"
        + "".join(f"<td>{t['tool_calls'][k]['production']:.0%} → {t['tool_calls'][k]['candidate']:.0%} "
                  f"({t['tool_calls'][k]['ci'][0]:+.0%}..{t['tool_calls'][k]['ci'][1]:+.0%})</td>"
                  for k in ("name_accuracy", "arguments_exact", "arguments_valid")) + "</tr>"
        for t in types if t.get("tool_calls"))
    if tool_rows:
        tool_rows = ("<h2>Tool calls</h2><table><tr><th>task type</th><th>n</th><th>function name</th>"
                     f"<th>arguments exact</th><th>arguments valid</th></tr>{tool_rows}</table>")
    verdicts = "".join(f"<li>{html.escape(t['task_type'])}: {t['verdict']}"
                       f"{' — ' + html.escape('; '.join(t['reasons'])) if t['reasons'] else ''}</li>" for t in types)
    charts = _bars("reference loss per task type", [(t["task_type"], t["loss"]["delta"], *t["loss"]["ci"]) for t in types],
                   "nats")
    charts += _bars("usability per task type", [(t["task_type"], t["usability"]["delta"], *t["usability"]["ci"])
                                                 for t in types], "score")
    loss_chart = ""
    if run:
        channels = _run_channels(run)
        if channels:
            loss_chart = "<h2>Training: eval loss per task type</h2>" + _lines(channels)
    samples = "".join(f"<details><summary>{html.escape(s['task_type'])}: {html.escape(s['prompt'][-80:])}</summary>"
                      f"<pre>candidate ({'pass' if s['candidate_passed'] else 'fail'}): {html.escape(s['candidate'])}\n\n"
                      f"production ({'pass' if s['production_passed'] else 'fail'}): {html.escape(s['production'])}\n\n"
                      f"reference: {html.escape(s['reference'])}</pre></details>" for s in report["samples"])
    ja = report.get("judge_agreement")
    agreement = (f"<p>Judge vs people: agrees on {ja['agreement']:.0%} of {ja['pairs']} of their preference pairs "
                 f"(ties {ja['tie_rate']:.0%}, kappa {ja['kappa'] if ja['kappa'] is not None else '–'}).</p>"
                 if ja and ja.get("n") else "")
    g = report.get("general") or {}
    general = (f"<p>General set (forgetting check): reference loss {g['production']:.3f} → {g['candidate']:.3f} "
               f"({g['relative']:+.1%}).</p>") if g else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Evaluation {html.escape(report['candidate'])}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>{html.escape(report['candidate'])} vs {html.escape(report['production'])}: {verdict}</h1>
<p>Dataset {html.escape(str(report.get('dataset')))}, {report['overall']['n']} held-out items, {report['created_at']}.</p>
<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in report['gate']['reasons'])}</ul>
<table><tr><th>task type</th><th>n</th><th>Δ loss</th><th>verifier pass</th><th>Δ usability</th><th>judge win</th></tr>
{rows}</table>{tool_rows}<ul>{verdicts}</ul>{general}{agreement}{charts}{loss_chart}<h2>Samples</h2>{samples}</body></html>"""


def _run_channels(run: dict) -> dict[str, list[tuple[int, float]]]:
    """{task type: [(step, eval loss), ...]} of a training run.json's SFT stage."""
    sft = (run.get("stages") or {}).get("sft") or {}
    return {task: [(int(p["step"]), float(p["loss"])) for p in points]
            for task, points in (sft.get("eval_loss") or {}).items() if points}


def _lines(channels: dict[str, list[tuple[int, float]]]) -> str:
    width, height, pad = 640, 240, 40
    pts = [p for series in channels.values() for p in series]
    if not pts:
        return ""
    x_max = max(s for s, _ in pts) or 1
    y_min, y_max = min(v for _, v in pts), max(v for _, v in pts)
    y_span = (y_max - y_min) or 1.0
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    parts = [f'<svg width="{width}" height="{height + 20 * math.ceil(len(channels) / 3)}" xmlns="http://www.w3.org/2000/svg">']
    for i, (name, series) in enumerate(sorted(channels.items())):
        c = colours[i % len(colours)]
        coords = " ".join(f"{pad + s / x_max * (width - 2 * pad):.1f},{height - pad - (v - y_min) / y_span * (height - 2 * pad):.1f}"
                          for s, v in sorted(series))
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{coords}"/>')
        parts.append(f'<text x="{pad + (i % 3) * 200}" y="{height + 14 + 20 * (i // 3)}" fill="{c}" font-size="12">'
                     f'{html.escape(name)}</text>')
    parts.append(f'<text x="{pad}" y="14" font-size="11">{y_max:.2f}</text><text x="{pad}" y="{height - pad + 14}" '
                 f'font-size="11">{y_min:.2f} (step 0..{x_max})</text></svg>')
    return "".join(parts)


def write_report(report: EvalReport, out_dir: Path | str, run: dict | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(data, indent=2))
    html_path.write_text(render_html(data, run))
    return json_path, html_path


# -- running one from the registry -------------------------------------------------------------------
def resolve_versions(versions: list[dict], candidate: str, production: str | None) -> tuple[Version, Version, dict]:
    """(candidate, production, the candidate's registry row) from the registry's rows;
    production defaults to the version in production (else the base model)."""
    by_name = {v["version"]: v for v in versions}
    if candidate not in by_name:
        raise EvaluationError(f"no model version {candidate!r}; `flywheel models list` shows them")
    if production is None:
        prod = [v for v in versions if v.get("status") == "production"]
        production = max(prod, key=lambda v: str(v.get("updated_at") or ""))["version"] if prod else "base"
    if production not in by_name:
        raise EvaluationError(f"no model version {production!r}; `flywheel models list` shows them")
    if production == candidate:
        raise EvaluationError(f"{candidate!r} is the production version; evaluate a candidate against it")
    c, p = by_name[candidate], by_name[production]
    return Version(candidate, c.get("adapter_path")), Version(production, p.get("adapter_path")), c


def run_evaluation(settings, versions: list[dict], candidate: str, *, production: str | None = None,
                   dataset: str | None = None, model_dir: Path | str, judge=None,
                   progress: Progress | None = None) -> tuple[EvalReport, Path]:
    """Evaluate ``candidate`` on ``dataset``'s held-out split (default: the dataset it was
    trained on), write the report under DATA_DIR/evals/, and return it with its folder."""
    from serving.backends.local import LocalBackend
    from training.datasets.snapshot import load_snapshot, snapshot_dir

    cand, prod, row = resolve_versions(versions, candidate, production)
    dataset = dataset or row.get("dataset")
    if not dataset:
        raise EvaluationError(f"{candidate!r} names no dataset; pass --dataset VERSION")
    folder = Path(dataset) if Path(dataset).is_dir() else snapshot_dir(settings.data_path, dataset)
    snap = load_snapshot(folder)
    items = items_from_records(snap.eval)
    scorer = ReferenceScorer(model_dir)
    backend = LocalBackend(model_dir, max_batch=settings.model.max_batch)
    try:
        report = evaluate(cand, prod, items, scorer=scorer, generator=BackendGenerator(backend), settings=settings,
                          judge=judge, dataset=snap.version, progress=progress)
    finally:
        backend.close()
    if judge is not None:
        from training.evaluation.judge import agreement_on_pairs, human_preference_pairs

        pairs = human_preference_pairs(snap.dpo)
        if pairs and settings.evaluate.judge_human_pairs > 0:
            if progress:
                progress(f"judge agreement with people on {min(len(pairs), settings.evaluate.judge_human_pairs)} of "
                         f"{len(pairs)} preference pairs")
            report.judge_agreement = agreement_on_pairs(judge, pairs, limit=settings.evaluate.judge_human_pairs)
    run = None
    if row.get("training_run"):
        from training.trainers.job import RUN_FILE

        run_file = Path(settings.training.runs_dir or settings.data_path / "runs") / row["training_run"] / RUN_FILE
        run = json.loads(run_file.read_text()) if run_file.is_file() else None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    out = settings.data_path / "evals" / f"{candidate}-vs-{prod.name}-{stamp}"
    write_report(report, out, run)
    return report, out


def record_evaluation(conn, report: dict, folder: Path | str, *, source: str = "job",
                      recorded_by: str | None = None) -> str:
    """The `evaluations` row of a report (written by the DuckDB writer). ``source`` says
    where the result came from: "job" (the control plane read its own evaluation job's
    report), "cli" (`flywheel eval` with no control plane) or "api" (posted by an admin,
    ``recorded_by`` naming the token)."""
    eval_id = Path(folder).name
    conn.execute("INSERT OR REPLACE INTO evaluations (eval_id, candidate, production, dataset, passed, reasons, "
                 "overall, report_path, created_at, source, recorded_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 [eval_id, report["candidate"], report["production"], report.get("dataset"), report["gate"]["passed"],
                  json.dumps(report["gate"]["reasons"]), json.dumps(report["overall"]), str(folder),
                  report["created_at"], source, recorded_by])
    return eval_id


def list_evaluations(conn, candidate: str | None = None) -> list[dict]:
    where, args = ("WHERE candidate = ?", [candidate]) if candidate else ("", [])
    cur = conn.execute(f"SELECT eval_id, candidate, production, dataset, passed, reasons, report_path, created_at, "
                       f"source, recorded_by FROM evaluations {where} ORDER BY created_at DESC", args)
    return [{"eval_id": e, "candidate": c, "production": p, "dataset": d, "passed": ok, "reasons": json.loads(r),
             "report_path": path, "created_at": str(t), "source": src, "recorded_by": by}
            for e, c, p, d, ok, r, path, t, src, by in cur.fetchall()]
