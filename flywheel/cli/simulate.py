"""`flywheel simulate`: the demo domain's users against the gateway (`flywheel up --simulate`
uses the same). The CLI is the simulator's front end; product code never imports it."""

from __future__ import annotations

import threading
from pathlib import Path

import click

from flywheel.cli._common import console, kv_table, settings_of


@click.command()
@click.option("--duration", type=float, default=60, show_default=True, help="Seconds of traffic.")
@click.option("--sessions", type=int, default=None, help="Stop after this many sessions instead.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Sessions in parallel.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives the same traffic.")
@click.option("--base-url", default=None, help="Gateway base URL. Default: the configured gateway's /v1.")
@click.option("--api-key", envvar="FLYWHEEL_API_KEY", default=None, help="Chat API key. Default: the local dev key.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Where to write the ground truth (JSONL). Default: DATA_DIR/simulations/seed-N.jsonl.")
@click.option("--max-tokens", type=int, default=200, show_default=True, help="max_tokens of each request.")
@click.option("--structured/--free-text", default=True, show_default=True,
              help="The chart app sends its dataset's JSON Schema as response_format (structured outputs), "
                   "or asks for free text.")
@click.option("--agent-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of sessions for the second app, a support-desk agent with five tools (tool calls, "
                   "users who correct wrong calls); 0: the analytics assistant only.")
@click.pass_context
def simulate(ctx, duration, sessions, concurrency, seed, base_url, api_key, manifest, max_tokens, structured,
             agent_share) -> None:
    """Play the demo domain's users against the gateway with the openai client: chart-config
    and other tasks, messy prompts, honest/random/reverse raters, draft choices and edits;
    with --agent-share, a support-desk agent's tool calls too."""
    s = settings_of(ctx)
    report = run_simulation(s, duration_s=duration if sessions is None else None, max_sessions=sessions,
                            concurrency=concurrency, seed=seed, base_url=base_url, api_key=api_key,
                            manifest=manifest, max_tokens=max_tokens, structured=structured, agent_share=agent_share)
    if report is not None and getattr(report, "requests", 0) and getattr(report, "errors", 0) == report.requests:
        raise click.ClickException("every request failed: is the gateway up (`flywheel up`) and the key right?")


def run_simulation(s, *, duration_s=None, max_sessions=None, concurrency=4, seed=0, base_url=None, api_key=None,
                   manifest=None, max_tokens=200, structured=True, stop: threading.Event | None = None,
                   agent_share: float = 0.0):
    """Run the simulator with progress, print its report and return it."""
    from flywheel.simulate import SimulationConfig
    from flywheel.simulate import run_simulation as simulate_traffic
    from services.gateway.auth import dev_key

    api_key = api_key or dev_key(s, "chat")
    manifest_path = Path(manifest) if manifest else s.data_path / "simulations" / f"seed-{seed}.jsonl"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"simulating traffic: seed {seed}, concurrency {concurrency}, "
                  f"{f'{duration_s:.0f}s' if duration_s else f'{max_sessions} sessions'}; truth in {manifest_path}")
    report = simulate_traffic(base_url or f"{s.gateway_url}/v1", api_key or "", seed=seed, duration_s=duration_s,
                              max_sessions=max_sessions, concurrency=concurrency, manifest_path=manifest_path,
                              max_tokens=max_tokens, progress=True,
                              config=SimulationConfig(structured_outputs=structured, agent_share=agent_share))
    _print_report(report)
    return report


def emit_history(s, sessions: int, seed: int = 1) -> None:
    """Earlier traffic for a stack that just started: ``sessions`` simulated sessions of the
    offline simulator produced straight to Kafka (what a backend in service for a while
    would have sent), landed like any traffic."""
    from flywheel.simulate.synthetic import emit_synthetic

    console.print(f"earlier traffic: {sessions} simulated sessions produced to Kafka (landing them)")
    emit_synthetic(s, sessions, seed=seed, run_tag="history")


def _print_report(report) -> None:
    table = kv_table("simulated traffic")
    d = report.to_dict()
    for key in ("sessions", "requests", "errors", "elapsed_s", "chart_drafts", "chart_correct", "chart_accuracy",
                "agent_drafts", "agent_correct", "feedback_errors"):
        if key in d:
            table.add_row(key.replace("_", " "), str(d[key]))
    for group in ("feedback", "requests_by_task", "requests_by_persona"):
        for name, value in sorted((d.get(group) or {}).items()):
            table.add_row(f"{group.replace('_', ' ')}: {name}", str(value))
    console.print(table)
