"""`flywheel rollout`: canary rollouts, which only the control plane runs
(library: serving/rollout/)."""

from __future__ import annotations

import click

from flywheel.cli._common import require_control, settings_of


@click.group()
def rollout() -> None:
    """Canary rollouts: a candidate takes a growing, sticky share of an alias's traffic and
    is promoted or rolled back on live feedback (run by the control plane)."""


def _rollout_call(ctx, method: str, path: str, body: dict | None = None) -> dict:
    return require_control(settings_of(ctx), method, path, body, what="rollouts run there")


def _print_rollout(d: dict) -> None:
    weights = ", ".join(f"{v}={w:g}%" for v, w in d["weights"].items())
    click.echo(f"{d['alias']}: {d['candidate']} vs {d['production']} is {d['status']} "
               f"(step {d['step_index'] + 1}, {weights}; failures {d['failures']}, inconclusive {d['inconclusive']})")
    if d.get("last_decision"):
        click.echo(f"last decision: {d['last_decision']['action']}: {d['last_decision']['reason']}")


@rollout.command("start")
@click.argument("candidate")
@click.option("--alias", default=None, help="The alias to roll out on. Default: model.alias.")
@click.option("--override-gate", is_flag=True,
              help="Start it although its latest evaluation did not pass the gate (or it has none); needs --reason. "
              "Admin only, recorded in the audit log and the deployment event.")
@click.option("--reason", default=None, help="Why the gate is overridden (with --override-gate).")
@click.pass_context
def rollout_start(ctx, candidate: str, alias: str | None, override_gate: bool, reason: str | None) -> None:
    """Start rolling CANDIDATE out (first step of rollout.steps). Only a candidate whose
    latest evaluation passed the gate starts, unless an admin overrides it."""
    body = {"candidate": candidate, "alias": alias}
    if override_gate:
        if not (reason or "").strip():
            raise click.UsageError("--override-gate needs --reason: it is recorded in the audit log")
        body.update(override_gate=True, reason=reason)
    _print_rollout(_rollout_call(ctx, "POST", "/api/rollouts", body))


@rollout.command("status")
@click.option("--alias", default=None, help="Default: model.alias.")
@click.pass_context
def rollout_status(ctx, alias: str | None) -> None:
    """The current rollout of an alias and its last decision."""
    _print_rollout(_rollout_call(ctx, "GET", f"/api/rollouts/{alias or settings_of(ctx).model.alias}"))


def _rollout_action(action: str, help_text: str):
    @rollout.command(action, help=help_text)
    @click.option("--alias", default=None, help="Default: model.alias.")
    @click.option("--reason", default=None, help="Recorded in the deployment event.")
    @click.pass_context
    def command(ctx, alias: str | None, reason: str | None) -> None:
        path = f"/api/rollouts/{alias or settings_of(ctx).model.alias}/{action}"
        _print_rollout(_rollout_call(ctx, "POST", path, {"reason": reason} if reason else {}))

    return command


_rollout_action("pause", "Hold the current weights; verdicts are ignored until resumed.")
_rollout_action("resume", "Resume a paused rollout.")
_rollout_action("promote", "Promote the candidate now (100%); the old production is kept for rollback.")
_rollout_action("rollback", "Send 100% back to the previous production version at once.")
