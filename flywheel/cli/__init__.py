"""The `flywheel` command. Commands stay thin: parse, call one library function, print.

One module per command group; what they share (settings, the control plane's API, the
DuckDB file when no control plane runs, the registry, printing) is in `_common`. The
modules know nothing of `main`: this package defines it and adds their commands, so
nothing here imports back up.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from flywheel.cli import (config, datasets, evaluate, keys, mine, models, operators, refresh, review, rollout, simulate,
                          stack, status, train)
from flywheel.domains import configure_domains
from flywheel.errors import FlywheelError
from flywheel.settings import load_settings

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "werkzeug", "httpx", "httpx2", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python's event loop warns whenever a task runs over 0.1 s, which a busy 2-core
    # machine makes routine; it says nothing an operator can act on.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FlywheelError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="FLYWHEEL_CONFIG",
              help="Settings file (TOML). Default: ./flywheel.toml if present. FLYWHEEL_* variables override it.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Flywheel: capture chat traffic and feedback, land it in DuckDB, and (later issues)
    turn it into a better model.

    Start the whole local stack with `flywheel up`; see `flywheel COMMAND --help`."""
    try:
        settings = load_settings(config_path)
    except FlywheelError as e:
        raise click.ClickException(str(e)) from None
    if config_path:
        os.environ["FLYWHEEL_CONFIG"] = str(Path(config_path).resolve())  # children read the same file
    _setup_logging(settings.log_level)
    configure_domains(settings.domains.modules)  # the installed domain plugins plus those the settings name
    ctx.obj = {"settings": settings}


for _command in (
    # the stack and its processes
    stack.up, stack.gateway_cmd, stack.control_plane_cmd, stack.stream_worker_cmd,
    # inspection
    status.status, status.metrics_cmd, config.schema, config.config_cmd,
    # traffic, keys, models and routing
    simulate.simulate, keys.keys, operators.operators, models.models, models.routes, rollout.rollout,
    # the flywheel's stages and one whole turn
    mine.mine, review.review, datasets.datasets, train.train, evaluate.eval_cmd, refresh.refresh_cmd,
):
    main.add_command(_command)
del _command
