"""`flywheel refresh`: one turn of the flywheel, run by the control plane
(library: services/control/turn.py)."""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timezone

import click
from rich.markup import escape

from flywheel.cli._common import console, control, require_control, settings_of
from flywheel.humanize import format_duration as duration

_COLOUR = {"finished": "green", "done": "green", "stopped": "yellow", "skipped": "yellow", "failed": "red"}


def _elapsed(step: dict) -> float | None:
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(step["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _step_line(step: dict) -> str:
    status = step["status"]
    took = duration(step.get("duration_s")) if status != "running" else f"{duration(_elapsed(step))} so far"
    detail = step.get("detail") or step.get("progress") or ""
    return f"  {step['name']:<9} [{_COLOUR.get(status, 'white')}]{status:<8}[/] {took:>10}  {escape(detail)}"


def _print_refresh(run: dict) -> None:
    colour = _COLOUR.get(run["status"], "white")
    total = sum(st.get("duration_s") or 0 for st in run["steps"])
    console.print(f"refresh [bold]{run['run_id']}[/] (started {str(run.get('started_at', ''))[:19]}): "
                  f"[{colour}]{run['status']}[/]" + (f" in {duration(total)}" if run["steps"] else "")
                  + (f" ({escape(run['reason'])})" if run.get("reason") else ""))
    for step in run["steps"]:
        console.print(_step_line(step))


def _print_schedule(schedule: dict | None) -> None:
    if not schedule:
        return
    parts = []
    if schedule.get("cron"):
        parts.append(f"cron {schedule['cron']} (UTC)")
    if schedule.get("interval_min"):
        parts.append(f"every {schedule['interval_min']:g} min")
    if schedule.get("after_feedback"):
        parts.append(f"after {schedule['after_feedback']} new feedback events")
    when = f"; next scheduled turn {schedule['next_run_at'][:19]}" if schedule.get("next_run_at") else ""
    console.print(f"schedule: {', '.join(parts) if parts else 'none (turns run on request)'}{when}")


@click.command("refresh")
@click.option("--list", "list_runs", is_flag=True, help="List recent flywheel turns (and the schedule) instead of "
              "starting one.")
@click.option("--no-wait", is_flag=True, help="Start the turn and return at once.")
@click.pass_context
def refresh_cmd(ctx, list_runs: bool, no_wait: bool) -> None:
    """Run one turn of the flywheel in the control plane: mine what landed, build the dataset,
    train a candidate (SFT then DPO, a job in its own process), evaluate it against
    production, and start a canary rollout if the gate passes. Shows each stage as it starts
    and ends, with its duration and outcome. The scheduler runs the same on refresh.cron,
    every refresh.interval_min minutes, or after refresh.after_feedback new feedback events."""
    s = settings_of(ctx)
    answer = require_control(s, "GET", "/api/refresh?limit=10", what="the flywheel turns there")
    if list_runs:
        _print_schedule(answer.get("schedule"))
        for run in answer["data"]:
            _print_refresh(run)
        if not answer["data"]:
            console.print("no flywheel turns yet")
        return
    run_id = control(s, "POST", "/api/refresh", {})["run_id"]
    console.print(f"started refresh {run_id}")
    if not no_wait and follow_refresh(s, run_id)["status"] == "failed":
        sys.exit(1)


def follow_refresh(s, run_id: str, stop: threading.Event | None = None, *, poll_s: float = 2.0,
                   progress_every_s: float = 15.0) -> dict:
    """Show a turn as it goes, until it ends (or ``stop`` is set); return it: each stage when
    it starts, its latest progress line (at most every ``progress_every_s``), and when it
    ends, its duration and outcome."""
    announced: set[str] = set()
    ended: set[str] = set()
    last_progress: dict[str, tuple[str, float]] = {}
    while stop is None or not stop.is_set():
        time.sleep(poll_s)
        run = control(s, "GET", f"/api/refresh/{run_id}")
        if run is None:
            continue  # the control plane is away for a moment
        for step in run["steps"]:
            name = step["name"]
            if name not in announced:
                announced.add(name)
                console.print(f"▶ {name} ...")
            if step["status"] == "running":
                line, at = last_progress.get(name, ("", 0.0))
                if step.get("progress") and step["progress"] != line and time.monotonic() - at >= progress_every_s:
                    last_progress[name] = (step["progress"], time.monotonic())
                    console.print(f"    {name} ({duration(_elapsed(step))}): {step['progress']}", markup=False,
                                  highlight=False)
            elif name not in ended:
                ended.add(name)
                console.print(_step_line(step))
        if run["status"] != "running":
            _print_refresh(run)
            return run
    return {"status": "interrupted"}
