"""`flywheel eval`: a candidate against production, per task type, and the gate
(library: training/evaluation/)."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from flywheel.cli._common import ask, console, control, model_versions, read_db, settings_of, with_db


@click.command("eval")
@click.option("--candidate", default=None, help="The version to evaluate (required unless --list).")
@click.option("--production", default=None, help="The version to compare with. Default: the one in production (else base).")
@click.option("--dataset", default=None, help="Dataset version (or snapshot folder) whose held-out split to use. "
              "Default: the one the candidate was trained on.")
@click.option("--list", "list_only", is_flag=True, help="List recorded evaluations (of --candidate) instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-record", is_flag=True,
              help="Only write the report; record nothing (the control plane's flywheel turn records its own job's "
              "report itself).")
@click.pass_context
def eval_cmd(ctx, candidate, production, dataset, list_only, as_json, no_record) -> None:
    """Evaluate a candidate against production on the held-out split, per task type:
    reference loss, verifier pass rate, judge win rate (when judge.base_url is set),
    usability, with confidence intervals, a forgetting check and pass@k resampling of task
    types that seem to drop; then the gate's pass/fail with reasons. Writes report.json and
    report.html under DATA_DIR/evals/ and records the result: through the control plane
    when one runs (it reads the report from that folder; needs an admin operator token),
    else in the DuckDB file. Exits 1 when the gate fails."""
    from serving.model_store import ensure_hf_model
    from training.errors import TrainingError
    from training.evaluation.evaluate import list_evaluations, record_evaluation, run_evaluation

    s = settings_of(ctx)
    if not list_only and not candidate:
        raise click.UsageError("--candidate is required (or --list)")
    if list_only:
        rows = ask(s, "GET", "/api/evaluations" + (f"?candidate={candidate}" if candidate else ""), key="data",
                   local=lambda: read_db(s, lambda c: list_evaluations(c, candidate)))
        for r in rows:
            by = f" (posted by {r['recorded_by']})" if r.get("source") == "api" else ""
            console.print(f"{r['created_at'][:19]}  {r['candidate']} vs {r['production']}  "
                          f"{'[green]PASS[/]' if r['passed'] else '[red]FAIL[/]'}  {r['report_path']}{by}")
        return
    from training.job_limits import job_threads, limit_this_process

    # An evaluation is a job (the turn runs it beside the gateway): bounded threads, lower priority.
    limit_this_process(job_threads(s.training.threads), s.training.nice)
    versions = model_versions(s)
    judge = None
    if s.judge.base_url:
        from training.evaluation.judge import judge_from_settings

        judge = judge_from_settings(s)
    try:
        report, folder = run_evaluation(s, versions, candidate, production=production, dataset=dataset,
                                        model_dir=ensure_hf_model(s.model_cache_path), judge=judge,
                                        progress=lambda m: console.print(f"  {m}"))
    except TrainingError as e:
        raise click.ClickException(str(e)) from None
    data = report.to_dict()
    if not no_record and control(s, "POST", "/api/evaluations", {"folder": str(folder)}) is None:
        with_db(s, lambda conn: record_evaluation(conn, data, folder, source="cli", recorded_by="flywheel eval"))
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        print_report(data, folder)
    verdict = "[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    console.print(f"gate: {verdict}: " + "; ".join(report.gate["reasons"]))
    if not report.passed:
        sys.exit(1)


def print_report(report: dict, folder) -> None:
    """An evaluation report (``report.json``'s content) as the table per task type:
    production → candidate, with the general set's forgetting figure and the judge's."""
    table = Table(title=f"{report['candidate']} vs {report['production']} on {report['dataset']}")
    for col in ("task type", "n", "Δ loss [95% CI]", "pass rate", "Δ usability", "verdict"):
        table.add_column(col, justify="left" if col in ("task type", "verdict") else "right")
    for t in report["types"]:
        loss = t["loss"]
        table.add_row(t["task_type"], str(t["n"]), f"{loss['delta']:+.3f} [{loss['ci'][0]:+.3f}, {loss['ci'][1]:+.3f}]",
                      f"{t['pass_rate']['production']:.0%} → {t['pass_rate']['candidate']:.0%}",
                      f"{t['usability']['delta']:+.3f}", t["verdict"])
    console.print(table)
    general = report.get("general")
    if general:
        console.print(f"general set reference loss: {general['production']:.3f} → "
                      f"{general['candidate']:.3f} ({general['relative']:+.1%})")
    ja = report.get("judge_agreement") or {}
    if ja.get("n"):
        console.print(f"judge vs people: agrees on {ja['agreement']:.0%} of {ja['pairs']} preference pairs "
                      f"(ties {ja['tie_rate']:.0%}, kappa {ja['kappa']})")
    console.print(f"report: {folder / 'report.html'}")
