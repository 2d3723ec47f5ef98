"""`flywheel up` and the processes it runs: `gateway`, `control-plane`, `stream-worker`."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import click

from flywheel.cli._common import console, control, settings_of
from flywheel.cli.refresh import follow_refresh
from flywheel.cli.simulate import emit_history, run_simulation
from flywheel.cli.status import print_status


def _stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@click.command()
@click.option("--simulate", "simulate_s", type=float, default=0, show_default=True,
              help="After start-up, send simulated traffic for this many seconds, then print the status.")
@click.option("--history", "history_sessions", type=int, default=0, show_default=True,
              help="Before the live traffic, produce this many sessions of earlier traffic straight to Kafka (the "
              "offline simulator: what a backend in service for a while would have sent), so a first turn has data.")
@click.option("--refresh", "refresh_after", is_flag=True,
              help="After the simulation, run one turn of the flywheel (mine, dataset, train, evaluate, canary) and "
              "show its steps.")
@click.option("--exit-after-simulate", is_flag=True,
              help="Stop the stack after the simulation (and the turn) instead of waiting for Ctrl-C.")
@click.pass_context
def up(ctx: click.Context, simulate_s: float, history_sessions: int, refresh_after: bool,
       exit_after_simulate: bool) -> None:
    """Run the stack: embedded broker (unless kafka.bootstrap is set), topics, control plane
    (landing), stream worker (live metrics), gateway. Ctrl-C or SIGTERM stops it cleanly: the
    gateway drains its spool, the stream worker publishes its last figures, landing lands
    everything produced, then the broker stops."""
    from flywheel.stack import Stack
    from services.gateway.auth import dev_keys_path

    s = settings_of(ctx)
    stop = _stop_on_signals()
    stack = Stack(s, console=console)
    code = 0
    try:
        stack.start()
        console.print(f"[bold green]flywheel is up[/]: gateway {s.gateway_url}/v1  console {s.control_url}/console/  "
                      f"data {s.data_path}")
        console.print(f"API keys for local use: {dev_keys_path(s.data_path)}.  Stop with Ctrl-C.")
        console.print(f"operator token (console login, CLI): {s.operator_token_path}" if s.operator_token_path.exists()
                      else "operator token: set control.token (the local one was revoked; `flywheel operators create`)")
        if simulate_s > 0 and not stop.is_set():
            run_simulation(s, duration_s=simulate_s, stop=stop)
            time.sleep(2.0)  # let landing catch up before the figures
            print_status(s)
        if history_sessions > 0 and not stop.is_set():
            emit_history(s, history_sessions)
        if refresh_after and not stop.is_set():
            console.print("one turn of the flywheel (training and evaluation run as jobs; logs in "
                          f"{s.data_path / 'logs' / 'refresh'})")
            running = _scheduled_turn(s, stop)
            if running:
                console.print(f"the scheduler started turn {running}; following it")
            else:
                running = control(s, "POST", "/api/refresh", {})["run_id"]
                console.print(f"no scheduled turn running: started turn {running} on request")
            run = follow_refresh(s, running, stop)
            _print_turn_outcome(s, run)
        if exit_after_simulate:
            stop.set()
        dead = stack.wait(stop)
        if dead is not None:
            console.print(f"[red]{dead.name} exited unexpectedly (code {dead.proc.returncode}); see {dead.log_path}[/]")
            code = 1
    finally:
        console.print("stopping: gateway (draining its spool), stream worker, control plane (landing what was "
                      "produced), broker")
        stack.stop()
        console.print("stopped.")
    sys.exit(code)


def _scheduled_turn(s, stop: threading.Event) -> str | None:
    """The turn the scheduler started, waiting up to two of its checks for one when a
    schedule is set; None when none started."""
    cfg = s.refresh
    wait_s = 2 * cfg.check_s + 10 if cfg.after_feedback else 0
    if wait_s:
        console.print(f"waiting for the scheduler: a turn after {cfg.after_feedback} new feedback events, "
                      f"counted every {cfg.check_s:g}s")
    deadline = time.monotonic() + wait_s
    while True:
        running = (control(s, "GET", "/api/refresh?limit=1") or {}).get("running")
        if running or time.monotonic() >= deadline or stop.is_set():
            return running
        stop.wait(2.0)


def _print_turn_outcome(s, run: dict) -> None:
    """After a turn: its evaluation, production → candidate per task type, and the canary."""
    import json
    from pathlib import Path

    from flywheel.cli.evaluate import print_report

    candidate = run.get("candidate")
    if not candidate:
        return
    rows = (control(s, "GET", f"/api/evaluations?candidate={candidate}") or {}).get("data") or []
    if rows and rows[0].get("report_path"):
        folder = Path(rows[0]["report_path"])
        if (folder / "report.json").is_file():
            print_report(json.loads((folder / "report.json").read_text()), folder)
    try:
        rollout = control(s, "GET", f"/api/rollouts/{s.model.alias}") or {}
    except click.ClickException:  # no rollout of the alias yet (the gate said no, or auto_rollout is off)
        rollout = {}
    if rollout.get("candidate") == candidate:
        console.print(f"canary: {candidate} at {rollout.get('weights')} ({rollout.get('status')}); "
                      "follow it with `flywheel rollout status` or the console")


@click.command("gateway")
@click.pass_context
def gateway_cmd(ctx: click.Context) -> None:
    """Run the OpenAI-compatible gateway (gunicorn) on gateway.host:gateway.port."""
    from services.gateway.server import serve

    serve(settings_of(ctx))


@click.command("control-plane")
@click.pass_context
def control_plane_cmd(ctx: click.Context) -> None:
    """Run the control plane: migrations, landing consumer (Kafka -> DuckDB), JSON API."""
    from services.control.plane import ControlPlane

    s = settings_of(ctx)
    stop = _stop_on_signals()
    plane = ControlPlane(s).start()
    logging.getLogger("flywheel").info("control plane up on %s", s.control_url)
    plane.wait(stop)
    plane.stop(drain=True)
    if plane.failed is not None:
        raise click.ClickException(f"landing failed: {plane.failed}")


@click.command("stream-worker")
@click.pass_context
def stream_worker_cmd(ctx: click.Context) -> None:
    """Run the faust stream worker: live per-version window figures (requests, errors,
    latency, feedback) from the interactions and feedback topics to the metrics topic."""
    from streams.stream_worker import run_worker

    run_worker(settings_of(ctx))
