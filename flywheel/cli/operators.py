"""`flywheel operators`: operator tokens of the control plane and the console
(library: services/control/operators.py)."""

from __future__ import annotations

import click

from flywheel.cli._common import settings_of

ROLE_HELP = ("viewer: read everything; reviewer: also review decisions; admin: also routing, models, rollouts, "
             "datasets, curation, refresh, evaluations and approving by filter.")


@click.group()
def operators() -> None:
    """Manage operator tokens (stored hashed in DATA_DIR/operators.json, mode 600). The
    control plane's first start makes an admin token and writes it to DATA_DIR/operator_token:
    the CLI sends that one unless control.token is set. Changes count at once, no restart."""


@operators.command("create")
@click.option("--role", type=click.Choice(["viewer", "reviewer", "admin"]), required=True, help=ROLE_HELP)
@click.option("--name", required=True, help="Who holds the token; recorded with every change they make.")
@click.pass_context
def operators_create(ctx, role: str, name: str) -> None:
    """Create a token and print it (the only time it is shown)."""
    from services.control.operators import create_operator

    op, token = create_operator(settings_of(ctx), role, name)
    click.echo(token)
    click.echo(f"made {op.id} ({op.role}) for {op.name}: log in to the console with it, or send it as "
               "Authorization: Bearer (FLYWHEEL_CONTROL__TOKEN for the CLI and gateways)", err=True)


@operators.command("list")
@click.pass_context
def operators_list(ctx) -> None:
    """List tokens: id, role, created, name (never the tokens themselves)."""
    from services.control.operators import list_operators

    for op in list_operators(settings_of(ctx)):
        click.echo(f"{op.id}\t{op.role}\t{op.created_at}\t{op.name}")


@operators.command("revoke")
@click.argument("operator_id")
@click.pass_context
def operators_revoke(ctx, operator_id: str) -> None:
    """Revoke a token by id: refused from its next request on, console sessions included."""
    from services.control.operators import revoke_operator

    s = settings_of(ctx)
    op = revoke_operator(s, operator_id)
    if op is None:
        raise click.ClickException(f"no operator token with id {operator_id}; see `flywheel operators list`")
    click.echo(f"revoked {op.id} ({op.role}, {op.name})")
