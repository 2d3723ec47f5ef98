"""`flywheel keys`: the gateway's API keys (library: services/gateway/auth.py)."""

from __future__ import annotations

import click

from flywheel.cli._common import settings_of


@click.group()
def keys() -> None:
    """Manage API keys (stored hashed in DATA_DIR/api_keys.json)."""


@keys.command("create")
@click.option("--role", type=click.Choice(["chat", "ingest", "admin"]), required=True,
              help="chat: chat + feedback; ingest: /v1/events; admin: all.")
@click.option("--name", default="", help="A label for the key.")
@click.pass_context
def keys_create(ctx, role: str, name: str) -> None:
    """Create a key and print it (the only time it is shown)."""
    from services.gateway.auth import KeyStore

    s = settings_of(ctx)
    store = KeyStore.load(s.keys_path)
    token = store.create(role, name)
    store.save(s.keys_path)
    click.echo(token)


@keys.command("list")
@click.pass_context
def keys_list(ctx) -> None:
    """List keys (ids and roles; never the keys themselves)."""
    from services.gateway.auth import KeyStore

    for k in KeyStore.load(settings_of(ctx).keys_path).keys:
        click.echo(f"{k.id}\t{k.role}\t{k.created_at}\t{k.name}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx, key_id: str) -> None:
    """Revoke a key by id (restart gateways to apply)."""
    from services.gateway.auth import KeyStore

    s = settings_of(ctx)
    store = KeyStore.load(s.keys_path)
    if not store.revoke(key_id):
        raise click.ClickException(f"no key with id {key_id}; see `flywheel keys list`")
    store.save(s.keys_path)
    click.echo(f"revoked {key_id}")
