"""`flywheel mine`: a curation run and its funnel (library: training/curation/pipeline.py)."""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.table import Table

from flywheel.cli._common import ask, console, control, settings_of, with_db


@click.command()
@click.option("--full", is_flag=True, help="Re-mine everything landed, ignoring the watermark.")
@click.option("--list", "list_runs", is_flag=True, help="List recent curation runs instead of starting one.")
@click.option("--show", "show_run", metavar="RUN", default=None, help="Print the funnel of run RUN instead of starting one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def mine(ctx, full: bool, list_runs: bool, show_run: str | None, as_json: bool) -> None:
    """Run a curation run: mine what landed since the last run, clean it, clean the users'
    labels, type, dedup and select it, queue it for review; then print the funnel (counts
    per stage and task type, and why items left). Runs in the control plane when one is
    running, else directly on the DuckDB file."""
    from training.curation import pipeline as curation

    s = settings_of(ctx)
    if list_runs:
        runs = ask(s, "GET", "/api/curation/runs", key="data", local=lambda: with_db(s, curation.list_runs))
        if as_json:
            click.echo(json.dumps(runs, indent=2))
            return
        table = Table(title="curation runs")
        for col in ("run", "started", "status", "mined", "kept", "error"):
            table.add_column(col)
        for r in runs:
            table.add_row(r["run_id"], str(r["started_at"])[:19], r["status"], str(r["mined"] or "-"),
                          str(r["kept"] or "-"), (r.get("error") or "")[:60])
        console.print(table)
        return
    if show_run:
        run = ask(s, "GET", f"/api/curation/runs/{show_run}",
                  local=lambda: with_db(s, lambda conn: curation.get_run(conn, show_run)))
        if run is None:
            raise click.ClickException(f"no curation run {show_run!r}; list them with `flywheel mine --list`")
        _print_run(run, as_json)
        return
    started = control(s, "POST", "/api/curation/runs", {"full": full})
    if started is not None:
        run = _follow_run(s, started["run_id"])
    else:
        with _Progress() as update:
            result = with_db(s, lambda conn: curation.curate(conn, s, full=full, progress=update))
        run = with_db(s, lambda conn: curation.get_run(conn, result.run_id))
    _print_run(run, as_json)
    if run.get("status") == "failed":
        raise click.ClickException(f"curation run {run['run_id']} failed: {run.get('error')}")


class _Progress:
    """A rich progress bar driven by curate's (stage, done, total) callbacks."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=False)
        self.bar.start()
        self.tasks: dict[str, int] = {}
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=max(total, 1))
        self.bar.update(self.tasks[stage], completed=done if total else 1, total=max(total, 1))

    def __exit__(self, *exc):
        self.bar.stop()


def _follow_run(s, run_id: str) -> dict:
    with _Progress() as update:
        while True:
            run = control(s, "GET", f"/api/curation/runs/{run_id}")
            if run is None:
                raise click.ClickException("the control plane stopped answering during the run")
            p = run.get("progress") or {}
            if p.get("stage"):
                update(p["stage"], p.get("done", 0), p.get("total", 0))
            if run.get("status") in ("finished", "failed"):
                return run
            time.sleep(0.5)


def _print_run(run: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
        return
    funnel = run.get("funnel") or {}
    console.print(f"curation run [bold]{run['run_id']}[/]: {run.get('status')}"
                  + (f" ({funnel.get('events', 0)} events, {funnel.get('sessions', 0)} sessions)" if funnel else ""))
    if not funnel:
        return
    stages = funnel["stages"]
    table = Table(title="funnel")
    for col in ("stage", "in", "out", "why items left"):
        table.add_column(col, justify="right" if col in ("in", "out") else "left")
    for st in stages:
        why = ", ".join(f"{k} {v}" for k, v in st["dropped"].items())
        table.add_row(st["stage"], str(st["in"]), str(st["out"]), why)
    console.print(table)
    by_type = Table(title="kept per task type, stage by stage")
    by_type.add_column("task type")
    for st in stages:
        by_type.add_column(st["stage"], justify="right")
    by_type.add_column("why items left (top 3)")
    why = funnel.get("dropped_by_task_type", {})
    for t, row in funnel["by_task_type"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(why.get(t, {}).items())[:3])
        by_type.add_row(t, *(str(row.get(st["stage"], 0)) for st in stages), top)
    console.print(by_type)
    review = funnel.get("review") or {}
    extras = [f"{funnel.get('robust', 0)} tagged robust",
              f"dedup threshold {funnel.get('dedup', {}).get('threshold', '-')}",
              f"{funnel.get('orphan_feedback', 0)} feedback events wait for their request"]
    if review and not review.get("auto"):
        extras.append("auto review off (review.auto_approve)")
    elif review:
        extras.append("auto review: " + (review["error"] if "error" in review else
                                         ", ".join(f"{k} {v}" for k, v in review.items() if k != "auto") or "nothing"))
    console.print("; ".join(extras))
