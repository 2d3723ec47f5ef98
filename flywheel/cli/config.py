"""`flywheel config` and `flywheel schema`: the settings in effect, the events' JSON Schemas."""

from __future__ import annotations

import json

import click

from flywheel.cli._common import settings_of
from flywheel.settings import describe_settings, settings_markdown


@click.command()
@click.option("--event", help="Only this event type (interaction, feedback, ...).")
def schema(event: str | None) -> None:
    """Print the JSON Schema of every event (for producers outside Python)."""
    from streams.schemas import json_schemas

    schemas = json_schemas()
    if event is not None and event not in schemas:
        raise click.BadParameter(f"unknown event {event!r}; known: {', '.join(schemas)}", param_hint="--event")
    click.echo(json.dumps(schemas[event] if event else schemas, indent=2))


@click.command("config")
@click.option("--describe", is_flag=True, help="List every setting with its default and meaning.")
@click.option("--markdown", is_flag=True, help="The same as a Markdown table (the one in docs/settings.md).")
@click.pass_context
def config_cmd(ctx: click.Context, describe: bool, markdown: bool) -> None:
    """Print the effective settings (defaults < file < FLYWHEEL_* environment)."""
    if markdown:
        click.echo(settings_markdown(), nl=False)
    elif describe:
        for key, default, text in describe_settings():
            click.echo(f"{key} = {default}\n    {text}")
    else:
        click.echo(settings_of(ctx).model_dump_json(indent=2))
