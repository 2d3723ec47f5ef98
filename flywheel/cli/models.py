"""`flywheel models` and `flywheel routes`: the model registry and the routing table
(library: serving/registry.py). Through the control plane when it runs, else on the file."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from flywheel.cli._common import ask, console, model_versions, settings_of, with_registry


@click.group()
def models() -> None:
    """The model registry: the base model and LoRA adapter versions."""


@models.command("list")
@click.pass_context
def models_list(ctx) -> None:
    """List versions with their status."""
    table = Table(title="model versions")
    for col in ("version", "status", "parent", "created", "notes"):
        table.add_column(col)
    for m in model_versions(settings_of(ctx)):
        table.add_row(m["version"], m["status"], m["parent_version"] or "-", m["created_at"][:19], m["notes"] or "")
    console.print(table)


@models.command("show")
@click.argument("version")
@click.pass_context
def models_show(ctx, version: str) -> None:
    """Show one version as JSON."""
    s = settings_of(ctx)
    data = ask(s, "GET", f"/api/models/{version}", local=lambda: with_registry(s, lambda r: r.get(version).to_dict()))
    click.echo(json.dumps(data, indent=2))


@models.command("register")
@click.argument("version")
@click.argument("adapter_path", type=click.Path(exists=True, file_okay=False))
@click.option("--parent", help="The version it was trained from.")
@click.option("--notes", help="Free text.")
@click.pass_context
def models_register(ctx, version: str, adapter_path: str, parent: str | None, notes: str | None) -> None:
    """Register a PEFT LoRA adapter folder as VERSION (a candidate). It is copied under
    DATA_DIR/models and must load on the base model."""
    s = settings_of(ctx)
    body = {"version": version, "adapter_path": str(Path(adapter_path).resolve()), "parent": parent, "notes": notes}
    data = ask(s, "POST", "/api/models", body, local=lambda: with_registry(
        s, lambda r: r.register(version, Path(adapter_path), parent=parent, notes=notes).to_dict()))
    click.echo(f"registered {data['version']} ({data['status']}) at {data['adapter_path']}")


@models.command("retire")
@click.argument("version")
@click.pass_context
def models_retire(ctx, version: str) -> None:
    """Retire a version that takes no traffic."""
    s = settings_of(ctx)
    data = ask(s, "POST", f"/api/models/{version}/retire", {},
               local=lambda: with_registry(s, lambda r: r.retire(version).to_dict()))
    click.echo(f"{data['version']} is {data['status']}")


@click.group()
def routes() -> None:
    """The routing table: which versions serve each alias, and with what weight."""


@routes.command("show")
@click.pass_context
def routes_show(ctx) -> None:
    """Print the current routing table as JSON."""
    s = settings_of(ctx)
    data = ask(s, "GET", "/api/routing", local=lambda: with_registry(s, lambda r: r.routing_table().to_dict()))
    click.echo(json.dumps(data, indent=2))


@routes.command("set")
@click.argument("alias")
@click.argument("weights", nargs=-1, required=True)
@click.option("--reason", default="set by an operator", help="Recorded with the new revision.")
@click.pass_context
def routes_set(ctx, alias: str, weights: tuple[str, ...], reason: str) -> None:
    """Split ALIAS's traffic: VERSION=PERCENT ... (adding up to 100; list the canary first).
    Gateways pick the new table up within gateway.routing_poll_s."""
    parsed = {}
    for item in weights:
        version, sep, pct = item.partition("=")
        try:
            parsed[version] = float(pct)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"{item!r}: write VERSION=PERCENT", param_hint="WEIGHTS")
    s = settings_of(ctx)
    data = ask(s, "POST", "/api/routing", {"alias": alias, "weights": parsed, "reason": reason},
               local=lambda: with_registry(s, lambda r: r.set_routes(alias, parsed, reason).to_dict()))
    click.echo(f"routing revision {data['revision']}: " + ", ".join(
        f"{r['version']}={r['weight']:g}%" for r in data["routes"][alias]))
